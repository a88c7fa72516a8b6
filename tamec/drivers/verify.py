"""Robustness verification: is the network's prediction constant over a ball around an input?

The question is answered with the inference MIP: for the predicted class c and every other
class j, maximize logit_j - logit_c over the ball. The MIP is sound for the float32 network that
runs, not only for its exact-arithmetic twin: every real pre-activation carries a bound on its
float32 rounding error (tamec.lower.float_error), a neuron within it of its threshold may take
either side or the tie, and a class is proven only below the line by the logits' own error.
Answers:
  robust          every maximum (or HiGHS's dual bound, when a limit stopped it) is below the
                  argmax tie-break line (j < c needs logit_j < logit_c; j > c allows equality)
                  by more than the logits' rounding error; or the ball holds one input only, or
                  is a Hamming ball of at most ENUMERATE_MAX inputs, and the network classifies
                  every one as c;
  counterexample  a float32 point of the ball where another class wins; tamec runs the network
                  on it (reference evaluator) before saying so, and writes it. Candidates are the
                  MIP's point cast to float32, points searched near it in the ball (the MIP's
                  point can sit on an exact real tie no float32 input realises), and the strict
                  MIP's point (gap eps at real thresholds);
  unknown         with `reason`, one of REASONS.
The interval bounds are recomputed on the ball itself, so neurons the ball cannot flip are
stable and carry no big-M rows.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from tamec.errors import Interrupted, TamecError, UsageError
from tamec.ir.mip import Milp

NORMS = ("linf", "bits")
# why an answer is "unknown": these are the only reasons `verify` gives
REASONS = {
    "limit": "a time or node limit stopped HiGHS before its bound proved the class",
    "near-tie": "the MIP's best point is within float32 rounding error of a threshold or of the decision "
                "line, and no float32 input found at it, near it or at the strict MIP's point flips the class",
    "unbounded-error": "the float32 rounding error of the logits has no bound (an op the bound has no rule for)",
    "infeasible": "the MIP of the ball is infeasible (a lowering bug or a numeric issue)",
    "interrupted": "Ctrl-C stopped verify before every class was decided",
}


@dataclass
class VerifyResult:
    answer: str
    label: int
    eps: float
    norm: str
    counterexample: np.ndarray | None = None
    counterexample_label: int | None = None
    per_class: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""
    reason: str = ""  # a key of REASONS when the answer is unknown
    interrupted: bool = False  # Ctrl-C: per_class holds the classes decided before it

    def to_json(self) -> dict:
        return {"answer": self.answer, "label": self.label, "eps": self.eps, "norm": self.norm,
                "counterexample_label": self.counterexample_label, "per_class": self.per_class,
                "seconds": self.seconds, "note": self.note, "reason": self.reason,
                "interrupted": self.interrupted}


def _add_rows(p: Milp, A: sp.spmatrix, lo, hi, name: str) -> Milp:
    A = sp.csr_matrix(A, shape=(A.shape[0], p.A.shape[1]))
    return dataclasses.replace(p, A=sp.vstack([p.A, A]).tocsr(), lo=np.r_[p.lo, lo], hi=np.r_[p.hi, hi],
                               row_names=p.row_names + [f"{name}.{i}" for i in range(A.shape[0])])


def encode_solution(mip, p: Milp, values: dict[str, np.ndarray]) -> np.ndarray | None:
    """The MIP point of a network evaluation (`values` from Evaluator.run(keep_all=True), one
    example), or None when some variable encodes no evaluated tensor."""
    from tamec.lower.inference import encode_value

    x = np.full(p.A.shape[1], np.nan)
    for b in mip.blocks:
        for grp in b.vars:
            if grp.encodes in values:
                try:
                    x[p.col(b.name, grp.name)] = encode_value(grp, np.asarray(values[grp.encodes])[0])
                except TamecError:
                    return None
    return None if np.isnan(x).any() else x


def attack(ev, inp: str, out: str, x: np.ndarray, box, eps: float, norm: str, label: int, shape,
           n: int = 64, seed: int = 0) -> np.ndarray | None:
    """Cheap search before the MIP: random corners of the ball (or random bit flips); returns a
    point the network classifies differently, checked by running it."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        if norm == "bits":
            k = int(min(eps, x.size))
            xc = x.copy().reshape(-1)
            idx = rng.choice(x.size, size=k, replace=False)
            lo, hi = box[0].reshape(-1)[idx], box[1].reshape(-1)[idx]
            xc[idx] = np.where(xc[idx] == lo, hi, lo)
            xc = xc.reshape(x.shape)
        else:
            xc = np.where(rng.random(x.shape) < 0.5, box[0], box[1])
        xc = xc.astype(x.dtype)
        if int(np.argmax(ev.run({inp: xc.reshape(shape)})[out].reshape(-1))) != label:
            return xc
    return None


class _Network:
    """The network that runs, as the judge of every candidate point: onnxruntime on the original
    model when it can load it (QONNX ops: the evaluator), `run(feeds)` -> {out: logits} as the
    evaluator's. The evaluator's float32 BatchNorm and MatMul need not round as onnxruntime's do,
    so at a near-tie point they can disagree: the answer is about the model the user runs."""

    def __init__(self, model, inp: str, out: str, ev):
        self.inp, self.out, self.ev, self.sess = inp, out, ev, None
        try:
            import onnx
            import onnxruntime as ort

            data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.log_severity_level = 1, 3
            self.sess = ort.InferenceSession(data if isinstance(data, bytes) else str(data), so,
                                             providers=["CPUExecutionProvider"])
            self.name = self.sess.get_inputs()[0].name
        except Exception:  # noqa: BLE001  QONNX ops, or no file onnxruntime reads: the evaluator judges
            self.sess = None

    def run(self, feeds: dict) -> dict:
        x = feeds[self.inp]
        if self.sess is None:
            return {self.out: self.ev.run(feeds)[self.out]}
        try:
            return {self.out: self.sess.run(None, {self.name: x})[0]}
        except Exception:  # noqa: BLE001  a fixed batch size: one point at a time
            if len(x) == 1:
                raise
            return {self.out: np.concatenate([self.sess.run(None, {self.name: x[i:i + 1]})[0] for i in range(len(x))])}


def _labels_of(ev, inp: str, out: str, pts: np.ndarray, shape) -> np.ndarray:
    """The network's label of every point of the batch `pts` (one run per point when the model's
    batch dim is fixed, which the evaluator refuses as an InputError)."""
    try:
        y = ev.run({inp: pts.reshape((len(pts),) + tuple(shape[1:]))})[out].reshape(len(pts), -1)
    except TamecError:  # a model with a fixed batch size: one point at a time
        y = np.stack([ev.run({inp: p.reshape(shape)})[out].reshape(-1) for p in pts])
    return np.argmax(y, axis=1)


def search_near(ev, inp: str, out: str, xc: np.ndarray, x: np.ndarray, box, eps: float, norm: str, label: int,
                shape, n: int = 256, seed: int = 0) -> np.ndarray | None:
    """A float32 input of the ball near the point `xc` (a MIP solution) that the network does not
    classify as `label`, or None. The MIP's point may need rounding to float32, or may sit on an
    exact real tie that no float32 input realises: the candidates are xc itself, xc one ulp off
    toward either end of the box, and random nudges of relative sizes 1e-7..1e-2 of the box,
    all clipped into the ball; for --norm bits, xc and its single-bit flips within the ball."""
    rng = np.random.default_rng(seed)
    xc = xc.reshape(x.shape).astype(np.float64)
    lo, hi = box[0].astype(np.float64), box[1].astype(np.float64)
    if norm == "bits":
        flat = xc.reshape(-1)
        cands = [flat]
        for i in range(flat.size):
            y = flat.copy()
            y[i] = lo.reshape(-1)[i] if y[i] == hi.reshape(-1)[i] else hi.reshape(-1)[i]
            cands.append(y)
        pts = np.stack(cands).reshape((-1,) + x.shape).astype(x.dtype)
        pts = pts[[bool(np.sum(p != x) <= eps + 1e-9) for p in pts]]
    else:
        f = xc.astype(x.dtype)
        up, down = np.nextafter(f, np.asarray(hi, x.dtype)), np.nextafter(f, np.asarray(lo, x.dtype))
        scales = np.repeat(10.0 ** -np.arange(2, 8), max(1, (n - 3) // 6))
        noise = rng.uniform(-1, 1, (scales.size,) + x.shape) * scales.reshape((-1,) + (1,) * x.ndim) * (hi - lo)
        pts = np.concatenate([np.stack([f, up, down]).astype(np.float64), xc + noise])
        pts = np.clip(pts, lo, hi).astype(x.dtype)
        pts = np.clip(pts, box[0].astype(x.dtype), box[1].astype(x.dtype))  # float32 rounding stays in
    if not len(pts):
        return None
    bad = np.flatnonzero(_labels_of(ev, inp, out, pts, shape) != label)
    return pts[bad[0]] if bad.size else None


ENUMERATE_MAX = 4096  # Hamming balls up to this many inputs are decided by running every input


def _ball_size(n: int, k: int) -> int:
    from math import comb

    return sum(comb(n, i) for i in range(min(k, n) + 1))


def _enumerate_bits(ev, inp, out, x, box, k, label, shape, batch: int = 1024) -> np.ndarray | None:
    """The first input of the Hamming ball of radius k (fewest flips first) the network does not
    classify as `label`, or None when every one is."""
    from itertools import chain, combinations

    flat = x.reshape(-1)
    flipped = np.where(flat == box[0].reshape(-1), box[1].reshape(-1), box[0].reshape(-1)).astype(x.dtype)
    subsets = chain.from_iterable(combinations(range(flat.size), i) for i in range(1, min(k, flat.size) + 1))
    while True:
        chunk = [idx for _, idx in zip(range(batch), subsets)]
        if not chunk:
            return None
        pts = np.repeat(flat[None], len(chunk), axis=0)
        for r, idx in enumerate(chunk):
            pts[r, list(idx)] = flipped[list(idx)]
        bad = np.flatnonzero(_labels_of(ev, inp, out, pts, shape) != label)
        if bad.size:
            return pts[bad[0]].reshape(x.shape)


def _ball_milp(g, mip, inp, x, box, eps, norm, lo_dom, hi_dom) -> Milp:
    """The assembled MIP of `mip` with its input restricted to the ball."""
    p = mip.assemble()
    (blk, grp), = mip.meta["inputs"][inp][:1]
    cols = p.col(blk, grp)
    enc = mip.block(blk).group(grp).encoding
    if norm == "bits":
        # integral inputs: each element at one end of the box; Hamming distance <= eps
        if enc != "value":
            raise UsageError("--norm bits on a non-real input encoding is not supported")
        z = (x.reshape(-1) - lo_dom) / (hi_dom - lo_dom)  # 0/1
        integ = p.integrality.copy()
        integ[cols] = 1
        lb, ub = p.lb.copy(), p.ub.copy()
        lb[cols], ub[cols] = lo_dom, hi_dom
        p = dataclasses.replace(p, lb=lb, ub=ub, integrality=integ)
        # t = (x - lo)/(hi - lo) in {0,1}: flipped = sum_{z=0} t + sum_{z=1} (1 - t)
        coef = np.where(z == 0, 1.0, -1.0) / (hi_dom - lo_dom)
        rhs = eps - z.sum() - float(np.sum(np.where(z == 0, -lo_dom, lo_dom) / (hi_dom - lo_dom)))
        row = sp.csr_matrix((coef, (np.zeros(cols.size, int), cols)), shape=(1, p.A.shape[1]))
        return _add_rows(p, row, -np.inf, rhs, "ball.bits")
    lb, ub = p.lb.copy(), p.ub.copy()
    lb[cols] = np.maximum(lb[cols], box[0].reshape(-1))
    ub[cols] = np.minimum(ub[cols], box[1].reshape(-1))
    return dataclasses.replace(p, lb=lb, ub=ub)


def verify(model, x: np.ndarray, eps: float, *, norm: str = "linf", label: int | None = None,
           time_limit: float | None = None, node_limit: int | None = None,
           margin_tol: float = 1e-6, sample: bool = True, progress: bool = True,
           enumerate_max: int | None = None) -> VerifyResult:
    """Decide whether the prediction of `model` (path, bytes, ModelProto) is constant over the
    `norm` ball of radius `eps` around the single input `x` (with or without its batch dim).
    `sample=False` skips the sampling search, so every answer comes from the MIP (or from running
    every input of a Hamming ball of at most `enumerate_max` inputs, default ENUMERATE_MAX; 0 sends
    every ball to the MIP).
    `time_limit` is the budget of the whole call in seconds: each HiGHS solve gets what is left
    (a class reached with nothing left is `limit`, so the answer is unknown, never a guess).
    `progress` shows a bar per class on stderr when it is a terminal. Ctrl-C raises
    `tamec.errors.Interrupted` whose `partial` is the result with the classes decided so far."""
    import tamec
    from tamec.evaluator import Evaluator
    from tamec.lower.float_error import rounding_error
    from tamec.lower.inference import decode, lower_inference
    from tamec.solve import solve

    t0 = time.perf_counter()
    if norm not in NORMS:
        raise UsageError(f"unknown norm {norm!r}", hint="use linf or bits")
    if not np.isfinite(eps) or eps < 0:
        raise UsageError(f"eps must be a finite number >= 0, got {eps}")
    base = tamec.load(model)
    g0 = base.graph
    if len(g0.inputs) != 1:
        raise UsageError(f"verify needs a model with one input, this one has {g0.inputs}")
    (inp,) = g0.inputs
    v = g0.values[inp]
    shape = tuple(d if isinstance(d, int) else 1 for d in (v.shape or ()))
    x = np.asarray(x)
    if x.size != int(np.prod(shape[1:], dtype=np.int64)):
        raise UsageError(f"input has {x.size} elements, the model's input {inp!r} wants shape {list(shape)}",
                         hint="pass one example, e.g. X of shape " + str(list(shape)))
    if x.dtype.kind != "f" or not np.all(np.isfinite(x)):
        raise UsageError("the input must be a finite float array")
    x = x.reshape(shape[1:]).astype(v.dtype)
    from tamec.passmanager import PassContext, input_box, run_pipeline

    lo_dom, hi_dom = input_box(inp, v, PassContext())
    if np.any(x < lo_dom) or np.any(x > hi_dom):
        raise UsageError(f"the input lies outside the model's input box [{lo_dom}, {hi_dom}]")
    if norm == "bits":
        if not np.all(np.isin(x, (lo_dom, hi_dom))):
            raise UsageError("--norm bits needs a binary input (every element at an end of the input box)",
                             hint="use --norm linf for real-valued inputs")
        box = (np.full(x.shape, lo_dom), np.full(x.shape, hi_dom))
    else:
        box = (np.maximum(x - eps, lo_dom), np.minimum(x + eps, hi_dom))
    mod = run_pipeline(base, None, ctx=PassContext(input_bounds={inp: box}))
    g = mod.graph
    ev = Evaluator(g)
    feeds = {inp: x.reshape(shape)}
    net = _Network(model, inp, g.outputs[0], ev)
    logits = net.run(feeds)[g.outputs[0]].reshape(-1)
    pred = int(np.argmax(logits))
    if label is not None and not 0 <= int(label) < logits.size:
        raise UsageError(f"--label {label} is not a class of this model", file=str(model) if isinstance(model, str) else None,
                         hint=f"its {logits.size} classes are 0..{logits.size - 1}")
    res = VerifyResult("robust", pred if label is None else int(label), float(eps), norm)
    if label is not None and int(label) != pred:
        res.answer, res.counterexample, res.counterexample_label = "counterexample", x.reshape(shape), pred
        res.note = "the input itself is classified differently"
        res.seconds = time.perf_counter() - t0
        return res
    c = res.label
    if (norm == "bits" and eps < 1) or (norm == "linf" and np.all(box[0] == box[1])):
        # the ball is the single float32 input x: running the network on it is the proof
        res.note = "the ball holds one input, which the network classifies as the label"
        res.seconds = time.perf_counter() - t0
        return res
    if norm == "bits" and _ball_size(x.size, int(eps)) <= (ENUMERATE_MAX if enumerate_max is None else enumerate_max):
        # a small Hamming ball: running the network on every input in it decides exactly
        found = _enumerate_bits(net, inp, g.outputs[0], x, box, int(eps), c, shape)
        if found is not None:
            res.answer, res.counterexample = "counterexample", found.reshape(shape)
            res.counterexample_label = int(np.argmax(net.run({inp: found.reshape(shape)})[g.outputs[0]].reshape(-1)))
        res.note = (f"all {_ball_size(x.size, int(eps))} inputs of the Hamming ball run on the network"
                    + ("" if found is None else "; this one is classified differently"))
        res.seconds = time.perf_counter() - t0
        return res
    found = attack(net, inp, g.outputs[0], x, box, eps, norm, c, shape) if sample else None
    if found is not None:
        res.answer, res.counterexample = "counterexample", found.reshape(shape)
        res.counterexample_label = int(np.argmax(net.run({inp: found.reshape(shape)})[g.outputs[0]].reshape(-1)))
        res.note = "found by sampling the ball before the MIP; confirmed on the network"
        res.seconds = time.perf_counter() - t0
        return res
    # proofs use the sound MIP: no gap at strict thresholds, and each real pre-activation's
    # float32 rounding error as slack around its threshold, so it over-approximates the float32
    # network; candidate counterexamples are cast to float32, searched near, re-solved on the
    # strict MIP (gap eps) whose points the network realizes, and always run on the network
    steps: dict = {}  # binary inputs (--norm bits): rows float32 computes exactly, on their grid
    err = rounding_error(g, {inp: (box[0], box[1])} if norm == "bits" else None, steps)
    thr = [op.inputs[0] for op in g.ops() if op.qualname == "tamec.Threshold"]
    mip = lower_inference(g, eps=0.0, rel_eps=0.0, float_slack={s_: err[s_] for s_ in thr},
                          float_grid={s_: steps[s_] for s_ in thr if s_ in steps})
    p = _ball_milp(g, mip, inp, x, box, eps, norm, lo_dom, hi_dom)
    start = encode_solution(mip, p, ev.run(feeds, keep_all=True))
    (oblk, ogrp), = mip.meta["outputs"][g.outputs[0]][:1]
    ocols = p.col(oblk, ogrp)
    lerr = err.get(mip.block(oblk).group(ogrp).encodes, np.full(len(logits), np.inf))
    left = (lambda: None) if time_limit is None else (lambda: time_limit - (time.perf_counter() - t0))  # noqa: E731
    others = [j for j in range(len(logits)) if j != c]

    def per_class(classes) -> None:
        """Maximize logit_j - logit_c for each class j, filling `res`; stops at a counterexample."""
        strict = None
        for j in classes:
            obj = np.zeros(p.A.shape[1])
            obj[ocols[j]], obj[ocols[c]] = 1.0, -1.0
            sol = solve(p, time_limit=left(), node_limit=node_limit, c=obj, sense="max", start=start)
            line = 0.0  # j beats c when logit_j - logit_c > 0, or == 0 with j < c
            fe = float(lerr[j] + lerr[c])  # the float32 logits differ from the exact ones by <= fe
            entry = {"class": j, **sol.to_json(), "float_error": fe}
            res.per_class.append(entry)
            if sol.interrupted:
                raise KeyboardInterrupt
            if sol.status == "infeasible":
                from tamec.solve import infeasible_row_groups

                rows = infeasible_row_groups(mip)
                res.answer, res.reason = "unknown", "infeasible"
                res.note = ("the MIP of the ball is infeasible (a lowering bug or a numeric issue); conflicting "
                            "rows: " + "; ".join(f"{b}/{r} (op {op})" for b, r, op in rows))
                return
            proven = sol.bound is not None and (sol.bound < line - fe - margin_tol or (j > c and sol.bound <= line - fe))
            entry["decided"] = proven
            if proven:
                continue
            if sol.x is not None and sol.objective is not None and sol.objective >= line - fe - margin_tol:
                xc = _point(decode(mip, p, sol.x)[inp], norm, lo_dom, hi_dom).reshape(shape).astype(v.dtype)
                yc = net.run({inp: xc})[g.outputs[0]].reshape(-1)
                near = None if int(np.argmax(yc)) != c else search_near(
                    net, inp, g.outputs[0], xc, x, box, eps, norm, c, shape)
                if near is not None:  # the MIP's point needed a nudge to a float32 input that flips
                    xc = near.reshape(shape)
                    yc = net.run({inp: xc})[g.outputs[0]].reshape(-1)
                if int(np.argmax(yc)) == c:  # a tie artefact of the relaxed MIP: ask the strict one
                    if strict is None:
                        smip = lower_inference(g)
                        strict = (smip, _ball_milp(g, smip, inp, x, box, eps, norm, lo_dom, hi_dom))
                    smip, sp_ = strict
                    ssol = solve(sp_, time_limit=left(), node_limit=node_limit, c=obj, sense="max")
                    entry["strict"] = ssol.to_json()
                    if ssol.interrupted:
                        raise KeyboardInterrupt
                    if ssol.x is not None and ssol.objective is not None and ssol.objective >= line - margin_tol:
                        xc = _point(decode(smip, sp_, ssol.x)[inp], norm, lo_dom, hi_dom).reshape(shape).astype(v.dtype)
                        yc = net.run({inp: xc})[g.outputs[0]].reshape(-1)
                        near = None if int(np.argmax(yc)) != c else search_near(
                            net, inp, g.outputs[0], xc, x, box, eps, norm, c, shape, seed=1)
                        if near is not None:
                            xc = near.reshape(shape)
                            yc = net.run({inp: xc})[g.outputs[0]].reshape(-1)
                if int(np.argmax(yc)) != c and _in_ball(xc.reshape(x.shape), x, eps, norm, box):
                    res.answer, res.counterexample, res.counterexample_label = "counterexample", xc, int(np.argmax(yc))
                    entry["confirmed"] = entry["decided"] = True
                    return
                entry["confirmed"] = False
            res.answer = "unknown"
            why = ("unbounded-error" if not np.isfinite(fe) else
                   "near-tie" if sol.status == "optimal" else "limit")
            res.reason = res.reason or why
            entry["reason"] = why
            res.note = (res.note or "") + f" class {j}: {sol.status}, bound {sol.bound} ({why});"

    from tqdm import tqdm

    if progress:  # one line even off a terminal: logs say what the silence is
        budget = "" if time_limit is None else f", time budget {time_limit:g} s in all"
        print(f"verify: maximizing logit_j - logit_{c} over the ball for {len(others)} classes{budget} "
              "(Ctrl-C stops with the classes decided so far)", file=sys.stderr, flush=True)
    bar = tqdm(others, desc="verify", unit="class", file=sys.stderr, leave=False, disable=None if progress else True)
    try:
        per_class(bar)
    except KeyboardInterrupt:
        res.interrupted = True
        res.answer = "counterexample" if res.counterexample is not None else "unknown"
        res.reason = "" if res.counterexample is not None else "interrupted"
        done = [e["class"] for e in res.per_class if e.get("decided")]
        res.note = (f"interrupted after {time.perf_counter() - t0:.1f} s: classes {done or 'none'} decided, "
                    f"{[j for j in others if j not in done]} not. " + res.note).strip()
        res.seconds = time.perf_counter() - t0
        raise Interrupted(res) from None
    finally:
        bar.close()
    res.seconds = time.perf_counter() - t0
    res.note = res.note.strip()
    return res


def _point(xc: np.ndarray, norm: str, lo: float, hi: float) -> np.ndarray:
    """The input of a MIP solution: for --norm bits each element snapped to its end of the box
    (HiGHS returns the integral columns within its tolerance, e.g. -4e-16 for 0, which would
    count as a flipped bit and miss the network's corner)."""
    return np.where(xc > (lo + hi) / 2, hi, lo) if norm == "bits" else xc


def _in_ball(xc, x, eps, norm, box) -> bool:
    if norm == "bits":
        return bool(np.sum(xc != x) <= eps + 1e-9)
    return bool(np.all(xc >= box[0] - 1e-6) and np.all(xc <= box[1] + 1e-6))
