"""The op registry: every op tamec understands, defined once, and what each stage does with it.

An `OpDef` holds what an op *is*: its key (`qualname`: `Conv`, `tamec.Threshold`,
`qonnx.custom_op.general.Quant`), its family module, its arity and attribute schema (tamec and
QONNX ops; standard ops take theirs from `onnx.defs`), its tame class (tamec/tame.py reads it), and
its interval bounds rule. Stages attach their implementation of an op to its entry with
`attach(stage, qualnames, implementation)`, the way MLIR attaches interface models to ops it does not own;
a stage calls `require(ops, stage)` before it starts, so an op it cannot handle is refused at
compile time by name, with what to do, and never reaches that stage to fail inside it.

The stages (`STAGES`), in pipeline order; `how(qualname, stage)` says how each op is handled (the coverage table).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

STAGES = ("evaluate", "verify", "bounds", "tame-check", "lower-mip", "runtime", "backward", "export")

# Tame classes: the smallest o-minimal structure that defines the op on a box (tamec/tame.py).
PL = "piecewise-linear"       # semilinear, Lipschitz
STEP = "step"                 # semilinear, discontinuous at its threshold(s)
POLY = "polynomial"           # semialgebraic, not PL in general (PL with a constant operand)
RATIONAL = "rational"         # semialgebraic with a pole where the denominator holds 0
EXP = "exp"                   # R_exp
LOG = "log"                   # R_exp on (0, inf) only
ANALYTIC = "analytic"         # R_an on a proven compact box only
ROUNDING = "rounding"         # semilinear on a bounded box, else locally o-minimal; discontinuous
TAME_CLASSES = (PL, STEP, POLY, RATIONAL, EXP, LOG, ANALYTIC, ROUNDING)
DISCONTINUOUS = frozenset({STEP, ROUNDING})


@dataclass
class OpDef:
    """One op. `arity` = (min, max) inputs for custom ops (standard ops: the ONNX schema);
    `attrs` = {name: (kind, default)} for custom ops (kind: 'float', 'int', 'str', 'tensor'); `bounds`
    = f(ctx, op, ins) -> (lo, hi) or None (None: unbounded, which is sound); `hooks` = {stage:
    implementation} filled in by the stages."""

    domain: str
    op_type: str
    family: str
    tame: str
    arity: tuple[int, int] | None = None
    attrs: dict[str, tuple[str, Any]] | None = None
    bounds: Callable | None = None
    doc: str = ""
    hooks: dict[str, Any] = field(default_factory=dict)

    @property
    def qualname(self) -> str:
        return f"{self.domain}.{self.op_type}" if self.domain else self.op_type

    @property
    def discontinuous(self) -> bool:
        return self.tame in DISCONTINUOUS


REGISTRY: dict[str, OpDef] = {}


def define(domain: str, op_type: str, family: str, tame: str, **kw) -> OpDef:
    """Add one op to the registry (once: a second definition is a bug)."""
    if tame not in TAME_CLASSES:
        raise ValueError(f"{op_type}: unknown tame class {tame!r}")
    d = OpDef(domain, op_type, family, tame, **kw)
    if d.qualname in REGISTRY:
        raise ValueError(f"op {d.qualname} defined twice")
    REGISTRY[d.qualname] = d
    return d


def define_all(names: str, family: str, tame: str, **kw) -> None:
    """Several standard ops of one family and tame class (whitespace-separated names)."""
    for t in names.split():
        define("", t, family, tame, **kw)


def attach(stage: str, qualnames, value, how: str | None = None) -> None:
    """Attach `value` as `stage`'s implementation of each op (`how`: one line for the coverage table)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    for q in qualnames:
        REGISTRY[q].hooks[stage] = value
        if how:
            REGISTRY[q].hooks[stage + ":how"] = how


def get(qualname: str) -> OpDef | None:
    return REGISTRY.get(qualname)


def has(qualname: str, stage: str) -> bool:
    """Does `stage` implement the op (a hook may be None: e.g. export writes standard ops as is)?"""
    d = REGISTRY.get(qualname)
    return d is not None and stage in d.hooks


def how(qualname: str, stage: str) -> str:
    """One line for the coverage table: how `stage` handles the op, or 'refused'."""
    d = REGISTRY.get(qualname)
    if d is not None and stage == "bounds":
        return "interval rule" if d.bounds else "unbounded (sound)"
    if d is not None and stage == "tame-check":
        return d.tame
    if d is None or stage not in d.hooks:
        return "refused"
    return d.hooks.get(stage + ":how") or "yes"


def hook(qualname: str, stage: str, default=None):
    """The stage's implementation of the op, or `default`."""
    d = REGISTRY.get(qualname)
    return default if d is None else d.hooks.get(stage, default)
