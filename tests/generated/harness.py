"""Running a property over generated models with a replayable seed, and the oracles it compares with."""
from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from tests.generated.strategies import FIXED_SEED, rotating_seed

SEEDS = {"fixed": FIXED_SEED, "rotating": rotating_seed()}


def run_property(prop, strategy, n: int, seed: int, name: str) -> None:
    """Check `prop(spec)` on `n` models drawn from `strategy` with hypothesis seeded by `seed`;
    a failure is shrunk to a minimal Spec and names the seed and the command that replays it."""

    @hypothesis_seed(seed)
    @settings(max_examples=n, deadline=None, database=None, print_blob=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(spec):
        prop(spec)

    try:
        check()
    except BaseException as e:
        which = "fixed" if seed == FIXED_SEED else "rotating"
        e.add_note(f"tamec harness seed {seed}: replay with TAMEC_HARNESS_SEED={seed} "
                   f"python -m pytest -q tests/generated -k '{name} and {which}'")
        raise


def onnxruntime_outputs(m: onnx.ModelProto, x: np.ndarray, extra=()) -> dict[str, np.ndarray]:
    """Every graph output (and the tensors `extra`) of `m` on the batch `x`, by onnxruntime."""
    from tests.test_reference_equality import reference_ort

    return reference_ort(m, x, list(extra), m.graph.input[0].name)[0]


def qonnx_outputs(m: onnx.ModelProto, x: np.ndarray, extra=()) -> dict[str, np.ndarray]:
    """The same by the QONNX executor (models with QONNX ops), on the whole batch at once."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    m2.graph.input[0].type.tensor_type.shape.dim[0].dim_value = len(x)  # the executor reads N as 0
    w = ModelWrapper(m2).transform(InferShapes())
    ctx = execute_onnx(w, {m.graph.input[0].name: x}, return_full_exec_context=True)
    return {k: ctx[k] for k in [o.name for o in m.graph.output] + list(extra)}


def oracle(m: onnx.ModelProto, x: np.ndarray, extra=()) -> dict[str, np.ndarray]:
    """onnxruntime, or the QONNX executor when `m` has ops outside the standard domain."""
    qonnx = any(n.domain not in ("", "ai.onnx") for n in m.graph.node)
    return (qonnx_outputs if qonnx else onnxruntime_outputs)(m, x, extra)


def labels(m: onnx.ModelProto, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's logits (first graph output) and argmax labels on the batch `pts`."""
    y = oracle(m, pts.astype(np.float32))[m.graph.output[0].name].reshape(len(pts), -1)
    return y, np.argmax(y, axis=1)


def _margin(y: np.ndarray, c: int) -> np.ndarray:
    """How far each row is from changing the argmax away from c (> 0 or, for j < c, >= 0 flips)."""
    other = np.delete(y, c, axis=1)
    idx = np.delete(np.arange(y.shape[1]), c)
    gap = other - y[:, c:c + 1]
    return np.max(gap + np.where(idx < c, 1e-30, 0.0), axis=1)


class _Oracle:
    """The oracle behind the evaluator's `run({name: batch})[out]` interface."""

    def __init__(self, m: onnx.ModelProto):
        self.m = m

    def run(self, feeds: dict) -> dict:
        return {"y": labels(self.m, next(iter(feeds.values())))[0]}


def attack_ball(m: onnx.ModelProto, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, c: int, norm: str, eps: float,
                seed: int = 0, n: int = 96, rounds: int = 3) -> np.ndarray | None:
    """A float32 point of the ball the oracle does not classify as c, or None: random corners, random
    points, corners one ulp inside (float32 tie corners) and a gradient-free coordinate search from
    the best of them (each coordinate tried at both ends and the middle). Bits: random flips."""
    rng = np.random.default_rng(seed)
    shp = x.shape
    if norm == "bits":
        from tamec.drivers.verify import _ball_size, _enumerate_bits

        flat = x.reshape(-1)
        k = int(min(eps, flat.size))
        if _ball_size(flat.size, k) <= 4096:  # small: every input of the ball, run by the oracle
            return _enumerate_bits(_Oracle(m), "x", "y", x, (lo, hi), k, c, (1,) + x.shape)
        pts = []
        for _ in range(n):
            p = flat.copy()
            idx = rng.choice(flat.size, size=rng.integers(1, k + 1), replace=False)
            p[idx] = np.where(p[idx] == lo.reshape(-1)[idx], hi.reshape(-1)[idx], lo.reshape(-1)[idx])
            pts.append(p)
        pts = np.stack(pts).reshape((n,) + shp).astype(np.float32)
        _, lab = labels(m, pts)
        bad = np.flatnonzero(lab != c)
        return pts[bad[0]] if bad.size else None
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    corners = np.where(rng.random((n,) + shp) < 0.5, lo32, hi32)
    inner = np.where(corners == lo32, np.nextafter(lo32, hi32), np.nextafter(hi32, lo32))
    uni = rng.uniform(lo, hi, (n,) + shp).astype(np.float32)
    pts = np.concatenate([x[None].astype(np.float32), corners, inner, uni])
    for r in range(rounds + 1):
        y, lab = labels(m, pts)
        bad = np.flatnonzero(lab != c)
        if bad.size:
            return pts[bad[0]]
        if r == rounds:
            return None
        best = pts[int(np.argmax(_margin(y, c)))].reshape(-1)
        cands = []
        for i in range(best.size):
            for v in (lo32.reshape(-1)[i], hi32.reshape(-1)[i], np.float32((lo.reshape(-1)[i] + hi.reshape(-1)[i]) / 2)):
                p = best.copy()
                p[i] = v
                cands.append(p)
        pts = np.stack(cands).reshape((-1,) + shp)
    return None
