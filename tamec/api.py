"""The Python API: `tamec.compile` and `tamec.Session` (onnxruntime's `run` signature)."""
from __future__ import annotations

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
            stop_after=None, check: int = 0, out=None, **options) -> Module:
    """Import `model` and run `pipeline` (default: the graph pipeline) on it.

    `check=N` runs N probe inputs after every pass and compares with the original model
    (onnxruntime when it can run it); `dump_dir` writes NN-<pass>.tir/.onnx and stats.json.
    Other keyword options go to the passes (e.g. `tighten="lp"` for the bounds pass)."""
    module = load(model)
    ctx = PassContext(input_bounds=parse_bounds(input_bounds), options=options)
    return run_pipeline(module, pipeline, ctx=ctx, print_after=print_after, stop_after=stop_after,
                        dump_dir=dump_dir, check=check, original=model, out=out)


@dataclass(frozen=True)
class NodeArg:
    """Name, shape and type of a session input or output (as onnxruntime's NodeArg)."""

    name: str
    shape: list
    type: str


class Session:
    """Runs a compiled model; `run(output_names, input_feed)` as onnxruntime's InferenceSession.

    Backed by the reference evaluator on the compiled graph. Feeds are checked, never cast:
    wrong names, shapes, dtypes and non-finite real values are `InputError`s."""

    def __init__(self, model, pipeline=None, input_bounds=None):
        from tamec.evaluator import Evaluator

        self.module = model if isinstance(model, Module) else compile(model, pipeline, input_bounds)
        self.graph = self.module.graph
        self._ev = Evaluator(self.graph)

    def get_inputs(self) -> list[NodeArg]:
        return [self._arg(n) for n in self.graph.inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [self._arg(n) for n in self.graph.outputs]

    def _arg(self, n: str) -> NodeArg:
        v = self.graph.values[n]
        return NodeArg(n, list(v.shape or []), f"tensor({v.dtype.replace('float32', 'float')})")

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any], run_options=None) -> list[np.ndarray]:
        g = self.graph
        names = list(output_names) if output_names else list(g.outputs)
        for n in names:
            if n not in g.outputs:
                raise InputError(f"unknown output {n!r}", hint="outputs: " + ", ".join(g.outputs))
        feeds = self.check_feeds(input_feed)
        res = self._ev.run(feeds)
        return [res[n] for n in names]

    def check_feeds(self, input_feed: dict[str, Any]) -> dict[str, np.ndarray]:
        g = self.graph
        extra = sorted(set(input_feed) - set(g.inputs))
        missing = [n for n in g.inputs if n not in input_feed]
        if missing or extra:
            raise InputError(f"inputs missing {missing} / unknown {extra}",
                             hint="feed exactly: " + ", ".join(g.inputs))
        feeds = {}
        for n in g.inputs:
            v, a = g.values[n], input_feed[n]
            if not isinstance(a, np.ndarray):
                raise InputError(f"input {n!r} must be a numpy array, got {type(a).__name__}")
            if a.dtype.name != v.dtype:
                raise InputError(f"input {n!r} has dtype {a.dtype.name}, the model wants {v.dtype}",
                                 hint=f"convert it yourself, e.g. x.astype(np.{v.dtype})")
            shape = v.shape or ()
            if a.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, a.shape)):
                raise InputError(f"input {n!r} has shape {list(a.shape)}, the model wants {list(shape)}")
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise InputError(f"input {n!r} holds NaN or infinite values", hint="feed finite values")
            feeds[n] = a
        return feeds
