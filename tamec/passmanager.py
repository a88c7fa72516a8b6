"""Passes, pipelines, and the hooks around every pass: verify, check, print, dump, time.

A pass follows the protocol `name`, `requires`, `ensures`, `run(module, ctx) -> PassResult`.
Subclasses of `Pass` set a kebab-case `name`, a one-line `description`, and implement
`rewrite(graph, ctx, module) -> stats` on a private copy: `Pass.run` makes the copy and computes
`modified` by comparing before and after, so a pass never reports a change it did not make
(onnx-ir's PassResult, QONNX's `(model, changed)`).

The default pipeline and why its order:
  canonicalize      first: every later pass sees one spelling per idiom (Linear, Threshold).
  binarize-weights  needs canonical Linear/Conv to find their weights; folds weight quantizers.
  fold-thresholds   needs binary weights to know pre-activations are integers on a lattice.
  bounds            last: interval bounds are tightest on folded, integer-typed graphs.

The MIP passes that follow (`MIP_PASSES`, appended by `tamec train` and by `--pipeline`):
  partition         needs bounds: blocks are cut at the binarized layers the bounds typed.
  lower-mip         needs the blocks and their bounds (every big-M comes from them).
  dualize           needs the MIP: dual functions and certificates per block.
  tame-check        after dualize: it checks what dualize produced (the relaxation's dual is
                    feasible; a jump counts as replaced only where a certified dual covers it).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TextIO

import numpy as np

from tamec.errors import CheckMismatchError, PassError, TamecError, UsageError
from tamec.ir.graph import Graph
from tamec.ir.text import print_graph
from tamec.module import Module, PassRecord
from tamec.passes.base import REGISTRY, Pass, PassContext, PassResult, input_box, register  # noqa: F401  (API)

DEFAULT_PIPELINE = ("canonicalize", "binarize-weights", "fold-thresholds", "bounds")
MIP_PASSES = ("partition", "lower-mip", "dualize", "tame-check")

def _load_passes() -> None:
    import tamec.passes.binarize_weights  # noqa: F401  (registration side effect)
    import tamec.passes.bounds  # noqa: F401
    import tamec.passes.canonicalize  # noqa: F401
    import tamec.passes.dualize  # noqa: F401
    import tamec.passes.fold_thresholds  # noqa: F401
    import tamec.passes.lower_mip  # noqa: F401
    import tamec.passes.partition  # noqa: F401
    import tamec.passes.plan  # noqa: F401
    import tamec.passes.tame_check  # noqa: F401


# pass name -> its module under tamec.passes: get_pass imports only the passes a pipeline names, so
# a forward Session (the default pipeline) does not pay for dualize's scipy.sparse and the MIP
# passes at cold start (~1.4 s on the 2-core machine)
_PASS_MODULES = {n: n.replace("-", "_") for n in (
    "binarize-weights", "bounds", "canonicalize", "dualize", "fold-thresholds", "lower-mip", "partition",
    "tame-check")}


def get_pass(name: str) -> Pass:
    if name not in REGISTRY:
        if name in _PASS_MODULES:
            importlib.import_module(f"tamec.passes.{_PASS_MODULES[name]}")
        else:
            _load_passes()  # unknown name: load every pass, so the hint lists them all
    if name not in REGISTRY:
        raise UsageError(f"unknown pass {name!r}", hint="known passes: " + ", ".join(sorted(REGISTRY)))
    return REGISTRY[name]()


def parse_pipeline(spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if spec is None:
        return list(DEFAULT_PIPELINE)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n and n != "import"]  # import is the frontend, always first
    for n in names:
        get_pass(n)
    return names


# -- probes for --check -------------------------------------------------------------------------

class Probe:
    """N probe inputs and the original model's outputs on them, for `--check`.

    The reference is onnxruntime on the original file when it can load it, else the evaluator on
    the freshly imported graph (QONNX ops onnxruntime does not know)."""

    def __init__(self, module: Module, n: int, ctx: PassContext, original=None, seed: int = 0):
        from tamec.evaluator import Evaluator

        g = module.graph
        rng = np.random.default_rng(seed)
        self.batches: list[dict[str, np.ndarray]] = []
        per_batch = n
        fixed = any(isinstance(g.values[i].shape[0], int) for i in g.inputs if g.values[i].shape)
        if fixed:
            per_batch = 1
        for b in range(max(1, n // per_batch)):
            feeds = {}
            for name in g.inputs:
                v = g.values[name]
                shape = [per_batch if k == 0 and not isinstance(d, int) else d
                         for k, d in enumerate(v.shape or ())]
                shape = [d if isinstance(d, int) else 1 for d in shape]
                lo, hi = input_box(name, v, ctx)
                feeds[name] = _probe_array(rng, shape, v.dtype, lo, hi, b)
            self.batches.append(feeds)
        self.reference_graph = g
        self.reference = None
        self.reference_name = "evaluator on the imported graph"
        if original is not None:
            try:
                import onnxruntime as ort

                if hasattr(original, "SerializeToString"):
                    original = original.SerializeToString()
                elif not isinstance(original, bytes):
                    original = str(original)

                so = ort.SessionOptions()
                so.intra_op_num_threads = 1
                so.log_severity_level = 3
                sess = ort.InferenceSession(original, so,
                                            providers=["CPUExecutionProvider"])
                self.reference = [dict(zip(g.outputs, sess.run(list(g.outputs), f))) for f in self.batches]
                self.reference_name = "onnxruntime on the original model"
            except Exception:  # noqa: BLE001  onnxruntime cannot run QONNX ops: fall back
                self.reference = None
        if self.reference is None:
            ev = Evaluator(g)
            self.reference = [ev.run(f) for f in self.batches]

    def compare(self, g: Graph, pass_name: str) -> int:
        """Run the probes on `g`; raise CheckMismatchError naming the first diverging tensor."""
        from tamec.evaluator import Evaluator

        ev = Evaluator(g)
        for feeds, ref in zip(self.batches, self.reference):
            got = ev.run(feeds)
            for name in g.outputs:
                bad = _differs(ref[name], got[name], g.values[name].domain.is_integer)
                if bad:
                    where, first = self._first_divergence(g, feeds)
                    err = CheckMismatchError(
                        f"after pass {pass_name}: output %{name} differs from {self.reference_name} "
                        f"({bad}); {where}",
                        hint="this is a bug in the pass; rerun with --dump-dir and report the dumps")
                    # what a viewer highlights (stats.json, the HTML report)
                    err.divergence = {"pass": pass_name, "output": name, "output_diff": bad, **first}
                    raise err
        return len(self.batches)

    def _first_divergence(self, g: Graph, feeds) -> tuple[str, dict]:
        from tamec.evaluator import Evaluator

        before = Evaluator(self.reference_graph).run(feeds, keep_all=True)
        after = Evaluator(g).run(feeds, keep_all=True)
        for op in g.ops():
            for o in op.outputs:
                if o in before and o in after:
                    bad = _differs(before[o], after[o], g.values[o].domain.is_integer)
                    if bad:
                        return (f"first diverging tensor %{o} ({bad}), produced by op {op.id} "
                                f"({op.qualname}) from ONNX node(s) {', '.join(op.origin) or '?'}",
                                {"tensor": o, "diff": bad, "op": op.id, "op_type": op.qualname,
                                 "origin": list(op.origin)})
        return "no shared intermediate tensor diverges; only the outputs do", {"tensor": None, "op": None}


def _probe_array(rng, shape, dtype, lo, hi, k) -> np.ndarray:
    """Half the probes are corner points of the box (exact 0/1 images), half uniform."""
    if np.dtype(dtype).kind in "iub":
        return rng.integers(int(lo), int(hi) + 1, size=shape).astype(dtype)
    if k % 2 == 0:
        x = np.where(rng.random(shape) < 0.5, lo, hi)
    else:
        x = rng.uniform(lo, hi, size=shape)
    return x.astype(dtype)


def _differs(a, b, exact: bool) -> str:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    if a.dtype.kind in "iub" or exact:
        n = int(np.sum(a != b))
        return f"{n} of {a.size} elements differ" if n else ""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    tol = 1e-5 * (1 + np.abs(a.astype(np.float64)))
    with np.errstate(invalid="ignore"):
        bad = ~(diff <= tol) & ~(np.isnan(a) & np.isnan(b))
    return f"max abs difference {np.nanmax(diff):.3g}" if bad.any() else ""


# -- running a pipeline -------------------------------------------------------------------------

def run_pipeline(module: Module, pipeline=None, *, ctx: PassContext | None = None,
                 print_after: str | None = None, stop_after: str | None = None,
                 dump_dir: str | os.PathLike | None = None, check: int = 0, verify: bool = True,
                 original=None, out: TextIO | None = None, force: bool = False) -> Module:
    """Run the named passes in order with the verifier, probes, printing and dumps around each.
    A `dump_dir` holding another model's dump is refused unless `force` (see `_claim_dump`)."""
    names = parse_pipeline(pipeline)
    if verify:
        from tamec.verifier import verify_graph
    ctx = ctx or PassContext()
    unknown = sorted(set(ctx.input_bounds) - {"*"} - set(module.graph.inputs))
    if unknown:
        raise UsageError(f"--input-bounds names {', '.join(map(repr, unknown))}, not an input of the model",
                         file=module.source, hint="its inputs: " + ", ".join(module.graph.inputs)
                         + "; or write LO:HI for all of them")
    out = out or sys.stdout
    for flag, val in (("--print-after", print_after), ("--stop-after", stop_after)):
        if val and val not in ("all", "import") and val not in names:
            raise UsageError(f"{flag} {val}: no such pass in the pipeline", hint="pipeline: " + ",".join(names))
    dump = Path(dump_dir) if dump_dir else None
    if dump:
        _claim_dump(dump, module.source, force)
    mips: dict[str, str] = {}  # pass -> the dump stem of the MIP it saw (written once per change)
    probe = Probe(module, check, ctx, original) if check else None
    if verify:
        verify_graph(module.graph)
    if not module.history:
        module.history.append(PassRecord("import", module.reports.get("import_seconds", 0.0), True, {},
                                         module.graph.op_counts()))
    _after(module, "import", 0, print_after, dump, out, mips)
    if stop_after == "import":
        _write_stats(module, dump, mips)
        return module
    for k, name in enumerate(names, 1):
        p = get_pass(name)
        t0 = time.perf_counter()
        try:
            res = p.run(module, ctx)
            if verify:
                verify_graph(res.module.graph)
        except TamecError as e:
            e.message = f"in pass {name}: {e.message}"
            raise e.at(file=module.source)
        except Exception as e:  # noqa: BLE001  a bug: say which pass, keep the cause chained
            raise PassError(f"pass {name} crashed: {type(e).__name__}: {e}", file=module.source,
                            hint="this is a bug in tamec; please report it with the model") from e
        seconds = time.perf_counter() - t0
        module = res.module
        stats = dict(res.stats)
        if probe:
            try:
                stats["check_batches"] = probe.compare(module.graph, name)
            except CheckMismatchError as e:  # dump the diverging graph too: it is what to look at
                stats["check_failed"] = e.divergence
                module.history.append(PassRecord(name, seconds, res.modified, stats, module.graph.op_counts()))
                _after(module, name, k, None, dump, out)
                _write_stats(module, dump)
                raise
        module.history.append(PassRecord(name, seconds, res.modified, stats, module.graph.op_counts()))
        _after(module, name, k, print_after, dump, out, mips)
        if stop_after == name:
            break
    _write_stats(module, dump, mips)
    return module


DUMP_FILES = ("[0-9][0-9]-*.tir", "[0-9][0-9]-*.onnx", "[0-9][0-9]-*.mps", "stats.json", "certificates.json")


def _claim_dump(dump: Path, source: str | None, force: bool) -> None:
    """Make `dump` ready for this model's dump: tamec's own files there (NN-<pass>.*, stats.json,
    certificates.json) are removed, so no file of an earlier run survives to be mixed in; any
    other file is left alone. Files of another model (stats.json names another source, or
    NN-* files without one) are refused unless `force`. stats.json is written first, so even an
    interrupted dump names its model."""
    try:
        dump.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create dump folder {dump}: {e.strerror}", hint="pick a writable --dump-dir") from None
    own = sorted({f for pat in DUMP_FILES for f in dump.glob(pat) if f.is_file()})
    if not own:
        return
    try:
        previous = json.loads((dump / "stats.json").read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous != source and not force:
        what = f"the dump of {previous}" if previous else f"{len(own)} dump files of an unknown model"
        raise UsageError(f"dump folder {dump} holds {what}, not of {source}",
                         hint="pick another --dump-dir, or add --force to replace tamec's files there")
    try:
        for f in own:
            f.unlink()
        (dump / "stats.json").write_text(json.dumps({"source": source, "passes": [], "reports": {}}) + "\n")
    except OSError as e:
        raise UsageError(f"cannot clear dump folder {dump}: {e.strerror}", hint="pick a writable --dump-dir") from None


def _after(module: Module, name: str, k: int, print_after, dump: Path | None, out, mips: dict | None = None) -> None:
    """Print and dump after pass `name`; `mips` (pass -> dump stem of its MIP) is updated so each
    MIP is written once."""
    mips = {} if mips is None else mips
    mip = getattr(module, "mip", None)
    if print_after in ("all", name):
        out.write(f"// ----- AFTER {name} -----\n{print_graph(module.graph)}")
        if mip is not None:
            from tamec.ir.text import print_mip

            out.write(f"// ----- MIP AFTER {name} -----\n{print_mip(mip)}")
    if dump:
        from tamec.export.onnx import save_onnx

        stem = dump / f"{k:02d}-{name}"
        stem.with_suffix(".tir").write_text(print_graph(module.graph))
        save_onnx(module.graph, str(stem) + ".onnx")
        if mip is not None:  # MIP-stage passes: the MIP IR as text and as the assembled MILP,
            from tamec.export.mps import write_mps  # once per MIP: a pass that keeps it points back
            from tamec.ir.text import print_mip

            text = print_mip(mip)
            last = next(reversed(mips.values()), None)
            if last is not None and Path(dump / f"{last}.mip.tir").read_text() == text:
                mips[name] = last
            else:
                Path(str(stem) + ".mip.tir").write_text(text)
                write_mps(mip.assemble(), str(stem) + ".mps", name=Path(module.source or "tamec").stem)
                mips[name] = stem.name


def _write_stats(module: Module, dump: Path | None, mips: dict | None = None) -> None:
    if dump:
        data = {"source": module.source, "passes": [r.to_json() for r in module.history],
                "reports": module.reports,
                # pass -> the NN-<pass> stem of its MIP's .mip.tir/.mps (written by the pass that made it)
                "mip_files": mips or {}}
        (dump / "stats.json").write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
        entries = certificate_entries(module)
        if entries:
            (dump / "certificates.json").write_text(json.dumps(entries, indent=1, default=_json_default) + "\n")


def certificate_entries(module: Module) -> list[dict]:
    """One entry per block, its dualize and tame-check reports side by side (certificates.json)."""
    by_block: dict[str, dict] = {}
    for name in ("dualize", "tame-check"):
        for rep in module.reports.get(name) or []:
            by_block.setdefault(rep["block"], {"block": rep["block"]})[name] = rep
    return list(by_block.values())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)
