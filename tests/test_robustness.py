"""`tamec verify`: robust answers cross-checked by enumeration, counterexamples confirmed on the
network, limits reported as unknown."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import helper

from tamec.errors import UsageError
from tamec.drivers.verify import verify
from tests.helpers import model


def tiny_bnn(k: int, seed: int):
    """x in {0,1}^k -> 2x-1 -> +-1 MatMul -> BN -> Sign -> +-1 MatMul -> 3 logits."""
    rng = np.random.default_rng(seed)
    h = 5
    inits = {"two": np.array(2, np.float32), "one": np.array(1, np.float32),
             "w1": rng.choice([-1.0, 1.0], (k, h)).astype(np.float32),
             "g": rng.uniform(0.5, 1.5, h).astype(np.float32) * rng.choice([-1, 1], h).astype(np.float32),
             "b": rng.normal(0, 0.5, h).astype(np.float32), "m": rng.normal(0, 1, h).astype(np.float32),
             "v": rng.uniform(0.5, 2, h).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], (h, 3)).astype(np.float32)}
    nodes = [helper.make_node("Mul", ["x", "two"], ["x2"], name="mul"),
             helper.make_node("Sub", ["x2", "one"], ["xb"], name="sub"),
             helper.make_node("Sign", ["xb"], ["xs"], name="in_sign"),
             helper.make_node("MatMul", ["xs", "w1"], ["s"], name="mm1"),
             helper.make_node("BatchNormalization", ["s", "g", "b", "m", "v"], ["z"], name="bn"),
             helper.make_node("Sign", ["z"], ["hdn"], name="sign"),
             helper.make_node("MatMul", ["hdn", "w2"], ["y"], name="mm2")]
    return model(nodes, [("x", [1, k])], [("y", [1, 3])], inits)


def predict(m, x):
    from tests.helpers import ort_run

    return int(np.argmax(ort_run(m, {"x": x.reshape(1, -1).astype(np.float32)})[0]))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eps", [1, 2, 3])
def test_bits_answers_match_enumeration(seed, eps):
    """With sampling off, every answer comes from the MIP: robust iff no input within eps
    flipped bits changes the prediction (enumerated), and a counterexample is a real one."""
    k = 8
    m = tiny_bnn(k, seed)
    x = np.random.default_rng(seed + 10).integers(0, 2, k).astype(np.float32)
    c = predict(m, x)
    robust = True
    for r in range(1, eps + 1):
        for idx in itertools.combinations(range(k), r):
            xc = x.copy()
            xc[list(idx)] = 1 - xc[list(idx)]
            if predict(m, xc) != c:
                robust = False
    res = verify(m, x.reshape(1, k), eps, norm="bits", sample=False, enumerate_max=0)
    assert res.answer == ("robust" if robust else "counterexample"), (res.answer, res.note)
    if res.answer == "counterexample":
        xc = res.counterexample.reshape(-1)
        assert np.sum(xc != x) <= eps and predict(m, xc) != c


def test_linf_counterexample_and_robust():
    """linf: a radius that cannot move any pixel across 1/2 is robust; one that can find (with
    the MIP only) a counterexample confirmed by onnxruntime, inside the ball."""
    m = tiny_bnn(6, 3)
    x = np.array([[0.1, 0.9, 0.45, 0.7, 0.2, 0.55]], np.float32)
    assert verify(m, x, 0.04, sample=False).answer == "robust"
    res = None
    for seed in range(20):
        m = tiny_bnn(6, seed)
        res = verify(m, x, 0.5, sample=False)
        if res.answer == "counterexample":
            break
    assert res.answer == "counterexample"
    xc = res.counterexample.reshape(-1)
    assert np.all(np.abs(xc - x.reshape(-1)) <= 0.5 + 1e-6) and np.all((xc >= 0) & (xc <= 1))
    assert predict(m, xc) != predict(m, x)


def test_limit_is_unknown_never_wrong():
    """A node limit of 1 on a problem the root cannot settle gives unknown (or a proven answer),
    never a false robust."""
    m = tiny_bnn(10, 1)
    x = np.random.default_rng(0).integers(0, 2, 10).astype(np.float32).reshape(1, 10)
    full = verify(m, x, 3, norm="bits", sample=False)
    limited = verify(m, x, 3, norm="bits", sample=False, node_limit=1, time_limit=5)
    assert limited.answer in ("unknown", full.answer)


def test_bad_requests():
    """Bad norms, radii, shapes and non-binary inputs for --norm bits are user errors."""
    m = tiny_bnn(4, 0)
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(UsageError):
        verify(m, x, 1, norm="l2")
    with pytest.raises(UsageError):
        verify(m, x, -1)
    with pytest.raises(UsageError):
        verify(m, np.zeros((1, 5), np.float32), 0.1)
    with pytest.raises(UsageError):
        verify(m, np.full((1, 4), 0.3, np.float32), 1, norm="bits")
