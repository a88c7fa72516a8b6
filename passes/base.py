"""The pass protocol, below the pass manager so that passes never import it (DESIGN.md's arrows):
`Pass` (name, requires, ensures, `rewrite` on a private copy, `modified` computed), `PassContext`,
`PassResult`, the registry of passes by unique kebab-case name, and `input_box`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tamec.errors import PassError
from tamec.ir.graph import Graph
from tamec.module import Module

REGISTRY: dict[str, type["Pass"]] = {}


@dataclass
class PassContext:
    """Options passes read. `input_bounds` maps graph input names (or "*") to (lo, hi)."""

    input_bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassResult:
    module: Module
    modified: bool
    stats: dict[str, Any]


class Pass:
    """Base class; subclasses set the class attributes and implement `rewrite`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    ensures: ClassVar[frozenset[str]] = frozenset()

    def rewrite(self, graph: Graph, ctx: PassContext, module: Module) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, module: Module, ctx: PassContext) -> PassResult:
        """Run on a copy; the input module is never touched."""
        missing = self.requires - module.properties
        if missing:
            raise PassError(f"pass {self.name} requires {sorted(missing)}",
                            hint="run the passes that establish it first, e.g. the default pipeline order")
        out = module.copy()
        stats = self.rewrite(out.graph, ctx, out) or {}
        out.properties = module.properties | self.ensures
        return PassResult(out, not out.graph.structurally_equal(module.graph) or _mip_changed(module.mip, out.mip), stats)


def _mip_changed(before, after) -> bool:
    if before is None or after is None:
        return (before is None) != (after is None)
    from tamec.ir.text import print_mip

    return print_mip(before) != print_mip(after)


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: file a pass under its unique name."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"pass name {cls.name!r} missing or registered twice")
    REGISTRY[cls.name] = cls
    return cls


def input_box(name: str, v, ctx: PassContext) -> tuple[float, float]:
    """The box a graph input ranges over: --input-bounds, else its domain, else [0, 1] for real
    inputs (pixel intensities: the convention of every bundled model)."""
    if name in ctx.input_bounds:
        return ctx.input_bounds[name]
    if "*" in ctx.input_bounds:
        return ctx.input_bounds["*"]
    lo, hi = v.domain.interval()
    return (0.0, 1.0) if not np.isfinite(lo) or not np.isfinite(hi) else (lo, hi)


