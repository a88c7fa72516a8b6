"""The Python API: `tamec.compile` and `tamec.Session` (onnxruntime's `run` signature)."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tamec.errors import InputError, UsageError
from tamec.module import Module
from tamec.passmanager import PassContext, run_pipeline

def default_model() -> str:
    """The bundled default model (installed with the package as tamec.models)."""
    from importlib.resources import files

    return str(files("tamec.models") / "mlp_sign.onnx")


def parse_bounds(spec) -> dict[str, tuple[float, float]]:
    """`"LO:HI"`, `"name=LO:HI,name2=LO:HI"`, a (lo, hi) pair or a dict -> {input or "*": (lo, hi)}."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return {k: (float(v[0]), float(v[1])) for k, v in spec.items()}
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and not isinstance(spec[0], str):
        return {"*": (float(spec[0]), float(spec[1]))}
    out = {}
    for part in str(spec).split(","):
        name, _, box = part.rpartition("=")
        try:
            lo, hi = (float(x) for x in box.split(":"))
        except ValueError:
            raise UsageError(f"bad input bounds {part!r}", hint="write LO:HI, e.g. 0:1, or name=LO:HI") from None
        if not lo <= hi:
            raise UsageError(f"input bounds {part!r} have LO > HI", hint="write LO:HI with LO <= HI")
        out[name or "*"] = (lo, hi)
    return out


def load(model) -> Module:
    """Import a model (path, bytes or ModelProto) into a fresh Module."""
    from tamec.frontend.onnx import import_onnx

    t0 = time.perf_counter()
    g = import_onnx(model)
    source = str(model) if isinstance(model, (str, os.PathLike)) else getattr(g, "source", None)
    return Module(g, source=source, reports={"import_seconds": time.perf_counter() - t0})


def compile(model, pipeline=None, input_bounds=None, dump_dir=None, *, print_after=None,
            stop_after=None, check: int = 0, out=None, force: bool = False, **options) -> Module:
    """Import `model` and run `pipeline` (default: the graph pipeline) on it.

    `check=N` runs N probe inputs after every pass and compares with the original model
    (onnxruntime when it can run it); `dump_dir` writes NN-<pass>.tir/.onnx and stats.json
    (a folder holding another model's dump is refused unless `force`).
    Other keyword options go to the passes (e.g. `tighten="lp"` for the bounds pass)."""
    module = load(model)
    ctx = PassContext(input_bounds=parse_bounds(input_bounds), options=options)
    return run_pipeline(module, pipeline, ctx=ctx, print_after=print_after, stop_after=stop_after,
                        dump_dir=dump_dir, check=check, original=model, out=out, force=force)


@dataclass(frozen=True)
class NodeArg:
    """Name, shape and type of a session input or output (as onnxruntime's NodeArg)."""

    name: str
    shape: list
    type: str


ENGINES = ("numba", "reference")


class Session:
    """Runs a compiled model; `run(output_names, input_feed)` as onnxruntime's InferenceSession.

    `engine="numba"` (default) executes the forward plan of tamec.runtime (bit-packed
    xnor-popcount kernels; `session.plan` prints the kernel chosen per op); `engine="reference"`
    runs the reference evaluator, the oracle the plan is tested against. Feeds are checked,
    never cast: wrong names, shapes, dtypes and non-finite real values are `InputError`s."""

    def __init__(self, model, pipeline=None, input_bounds=None, engine: str = "numba"):
        if engine not in ENGINES:
            raise UsageError(f"unknown engine {engine!r}", hint="use " + " or ".join(map(repr, ENGINES)))
        self.module = model if isinstance(model, Module) else compile(model, pipeline, input_bounds)
        self.graph = self.module.graph
        self.engine = engine
        self.plan = None
        checked: frozenset = frozenset()
        if engine == "numba":
            from tamec.runtime.plan import compile_plan  # numba loads here, not at import

            self.plan = compile_plan(self.graph)
            self._exec = self.plan.run
            checked = self.plan.finite_checked  # the kernel reading these checks them for free
        else:
            from tamec.evaluator import Evaluator

            self._exec = Evaluator(self.graph).run
        # per input: name, dtype, its name, rank, (axis, size) of the fixed dims, check finite here
        self._specs = []
        for n in self.graph.inputs:
            v = self.graph.values[n]
            shape = tuple(v.shape or ())
            fixed = tuple((k, d) for k, d in enumerate(shape) if isinstance(d, int))
            finite = _is_dtype(v.dtype) and np.dtype(v.dtype).kind == "f" and n not in checked
            self._specs.append((n, np.dtype(v.dtype) if _is_dtype(v.dtype) else None, v.dtype, len(shape),
                                fixed, finite))
        self._names = frozenset(self.graph.inputs)

    def get_inputs(self) -> list[NodeArg]:
        return [self._arg(n) for n in self.graph.inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [self._arg(n) for n in self.graph.outputs]

    def _arg(self, n: str) -> NodeArg:
        v = self.graph.values[n]
        return NodeArg(n, list(v.shape or []), f"tensor({v.dtype.replace('float32', 'float')})")

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any], run_options=None) -> list[np.ndarray]:
        g = self.graph
        feeds = self.check_feeds(input_feed)
        if not output_names:
            res = self._exec(feeds)
            return [res[n] for n in g.outputs]
        for n in output_names:
            if n not in g.outputs:
                raise InputError(f"unknown output {n!r}", hint="outputs: " + ", ".join(g.outputs))
        res = self._exec(feeds)
        return [res[n] for n in output_names]

    def check_feeds(self, input_feed: dict[str, Any]) -> dict[str, np.ndarray]:
        """The feeds, checked: exactly the graph's inputs, numpy arrays of the declared dtype and
        shape (symbolic dims take any size), finite where real. Raises InputError naming the input."""
        g = self.graph
        if not isinstance(input_feed, dict):
            raise InputError(f"input_feed must be a dict of name -> array, got {type(input_feed).__name__}",
                             hint="feed exactly: " + ", ".join(g.inputs))
        if len(input_feed) != len(self._names) or not self._names.issuperset(input_feed):
            extra = sorted(map(str, set(input_feed) - self._names))
            missing = [n for n in g.inputs if n not in input_feed]
            raise InputError(f"inputs missing {missing} / unknown {extra}",
                             hint="feed exactly: " + ", ".join(g.inputs))
        for n, dt, dname, rank, fixed, finite in self._specs:
            a = input_feed[n]
            if not isinstance(a, np.ndarray):
                raise InputError(f"input {n!r} must be a numpy array, got {type(a).__name__}")
            if a.dtype != dt:
                raise InputError(f"input {n!r} has dtype {a.dtype.name}, the model wants {dname}",
                                 hint=f"convert it yourself, e.g. x.astype(np.{dname})")
            shape = a.shape
            bad = len(shape) != rank
            for k, d in fixed:
                bad = bad or shape[k] != d
            if bad:
                want = list(g.values[n].shape or ())
                raise InputError(f"input {n!r} has shape {list(shape)}, the model wants {want}",
                                 hint="symbolic dims may take any size")
            if finite and not _finite(a):
                raise InputError(f"input {n!r} holds NaN or infinite values", hint="feed finite values")
        return input_feed if type(input_feed) is dict else dict(input_feed)


def _finite(a: np.ndarray) -> bool:
    """No NaN or inf in a float array. v.v is one BLAS call and is finite when every element is
    (an overflow to inf only sends us to the exact elementwise check)."""
    v = a.reshape(-1)
    if v.size and not math.isfinite(v.dot(v)):
        return bool(np.all(np.isfinite(v)))
    return True


def _is_dtype(name: str) -> bool:
    try:
        np.dtype(name)
        return True
    except TypeError:
        return False
