"""verify is sound for the float32 network that runs, and decides where it can (issue 15, items 1-2)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import tamec
from tamec.drivers.verify import REASONS, verify
from tests.generated.strategies import Layer, Spec, build, probe_inputs


def ort_logits(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {m.graph.input[0].name: np.asarray(x, np.float32).reshape(-1, *x.shape[-1:])})[0]


def rounding_model(scale: float = 1024.0, tiny: float = 3e-5) -> onnx.ModelProto:
    """s = -scale x0 + tiny x1 + scale; y = Sign(s); logits = (y, 0.5). In exact arithmetic s >= 0.99 tiny > 0
    on x1 >= 0.99, so y = +1 and class 0 everywhere; float32 rounds -scale + tiny x1 to -scale at x0 = 1,
    so s = 0, Sign(0) = 0 and class 1 wins there."""
    inits = [nh.from_array(np.array([[-scale], [tiny]], np.float32), "W"),
             nh.from_array(np.array([scale], np.float32), "B"),
             nh.from_array(np.array([[1.0, 0.0]], np.float32), "H"),
             nh.from_array(np.array([0.0, 0.5], np.float32), "C")]
    nodes = [h.make_node("MatMul", ["x", "W"], ["m"]), h.make_node("Add", ["m", "B"], ["s"]),
             h.make_node("Sign", ["s"], ["y"]), h.make_node("MatMul", ["y", "H"], ["z"]),
             h.make_node("Add", ["z", "C"], ["logits"])]
    g = h.make_graph(nodes, "f32", [h.make_tensor_value_info("x", T.FLOAT, ["N", 2])],
                     [h.make_tensor_value_info("logits", T.FLOAT, ["N", 2])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def test_float32_rounding_flip_is_a_counterexample_not_robust():
    """A ball whose exact-arithmetic MIP is robust but whose float32 network ties at a corner gets a
    counterexample that onnxruntime confirms (the old MIP said "robust")."""
    m = rounding_model()
    x = np.array([0.99, 1.0], np.float32)
    assert np.argmax(ort_logits(m, x)) == 0 and np.argmax(ort_logits(m, np.ones(2, np.float32))) == 1
    res = verify(m, x, 0.01, sample=False, progress=False)
    assert res.answer == "counterexample", res.note
    xc = np.asarray(res.counterexample, np.float32).reshape(2)
    assert np.all(np.abs(xc - x) <= 0.01 + 1e-7) and np.argmax(ort_logits(m, xc)) == 1


def test_robust_cases_stay_robust_with_the_float32_bound():
    """Where float32 rounding cannot matter (the same model with a margin far above its error) verify
    still answers robust."""
    m = rounding_model(tiny=0.5)  # s >= 0.495: no rounding reaches the tie
    res = verify(m, np.array([0.99, 1.0], np.float32), 0.01, sample=False, progress=False)
    assert res.answer == "robust", res.note


@pytest.mark.parametrize("seed", range(12))
def test_rounding_error_bound_holds(seed):
    """tamec.lower.float_error bounds |float32 - exact| of every real tensor of random Linear + BatchNorm
    nets on corners and random points of the box (exact = float64 of the same float32 weights)."""
    from tamec.lower.float_error import rounding_error

    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(2, 40)), int(rng.integers(1, 6))
    w = (rng.normal(0, 1, (k, n)) * 10.0 ** rng.integers(-3, 4)).astype(np.float32)
    b = rng.normal(0, 3, n).astype(np.float32)
    sc, bb, mu = (rng.normal(0, 1, n).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.01, 4, n).astype(np.float32)
    inits = [nh.from_array(a, nm) for a, nm in ((w, "W"), (b, "B"), (sc, "sc"), (bb, "bb"), (mu, "mu"), (var, "var"))]
    nodes = [h.make_node("MatMul", ["x", "W"], ["m"]), h.make_node("Add", ["m", "B"], ["s"]),
             h.make_node("BatchNormalization", ["s", "sc", "bb", "mu", "var"], ["out"])]
    g = h.make_graph(nodes, "lin", [h.make_tensor_value_info("x", T.FLOAT, ["N", k])],
                     [h.make_tensor_value_info("out", T.FLOAT, ["N", n])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    lo, hi = -2.0, 3.0
    cg = tamec.compile(model, pipeline=["canonicalize", "bounds"], input_bounds=(lo, hi)).graph
    err = rounding_error(cg)
    xs = np.concatenate([np.where(rng.random((64, k)) < 0.5, lo, hi), rng.uniform(lo, hi, (64, k))]).astype(np.float32)
    got = ort_logits(model, xs).astype(np.float64)
    x64 = xs.astype(np.float64)
    s = x64 @ w.astype(np.float64) + b
    exact = (s - mu) / np.sqrt(var.astype(np.float64) + np.float32(1e-5)) * sc + bb
    assert np.all(np.isfinite(err[cg.outputs[0]]))
    assert np.all(np.abs(got - exact) <= err[cg.outputs[0]]), \
        float(np.max(np.abs(got - exact) - err[cg.outputs[0]]))


def test_exact_real_tie_at_eps0_is_robust():
    """Input 0.5 into Sign(x - 0.5) at eps = 0: the ball is one input, which the network classifies; the
    old verify said "unknown" (/work/repros/harness_verify_eps0_tie.py)."""
    spec = Spec(kind="mlp", in_shape=(1,), first="binary", in_act="sign", layers=(Layer(width=1),), n_conv=0,
                n_out=2, head_norm="bn", head="logits", expose=False, seed=0)
    res = verify(build(spec), np.array([0.5], np.float32), 0.0, sample=False, progress=False)
    assert res.answer == "robust", res.note


@pytest.mark.parametrize("seed", range(4))
def test_tiny_gamma_at_eps0_is_robust(seed):
    """A real layer with BatchNorm gamma ~1e-6..1e-30 at eps = 0 is robust at every probe input (the old
    verify said "unknown": /work/repros/harness_verify_tiny_gamma.py)."""
    spec = Spec(kind="mlp", in_shape=(1,), first="real", in_act="sign", layers=(Layer(width=1, norm="bn-tiny"),),
                n_conv=0, n_out=5, head_norm="bn", head="logits", expose=False, seed=seed)
    for x in probe_inputs(spec, 4, seed=seed):
        res = verify(build(spec), x, 0.0, sample=False, progress=False)
        assert res.answer == "robust", f"x={x.tolist()}: {res.answer} {res.note}"


def test_unknown_reasons_are_documented():
    """A time limit of 0 leaves every class undecided: the answer is unknown with the reason "limit"."""
    m = rounding_model(tiny=0.5)
    res = verify(m, np.array([0.5, 0.5], np.float32), 0.5, sample=False, progress=False, time_limit=0.0)
    assert res.answer == "unknown" and res.reason == "limit" and res.reason in REASONS, res.note
    assert res.to_json()["reason"] == "limit"


def test_cli_prints_the_unknown_reason(tmp_path, capsys):
    """`tamec verify` prints the reason beside "unknown" on its first line."""
    from tamec.cli import main

    onnx.save(rounding_model(tiny=0.5), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.array([0.5, 0.5], np.float32))
    assert main(["verify", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.npy"), "--eps", "0.5",
                 "--no-sample", "--time-limit", "0", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("unknown (limit): label")


def test_witness_near_an_exact_tie_is_searched_not_discarded():
    """A generated CNN (bn-tiny larq layer, tie-exact biases) whose MIP witness is no float32 counterexample
    itself: the search near it finds one, which onnxruntime confirms (the old verify said "unknown")."""
    from tests.generated.harness import labels

    spec = Spec(kind="cnn", in_shape=(2, 6, 7), first="real", in_act="sign", layers=(
        Layer(width=5, weights="const", norm="bn-tiny", act="larq", kernel=1, stride=1, dilation=2, pad="VALID",
              pool="none", pool_stride=1, pool_pad="SAME_UPPER"),
        Layer(width=1, weights="const", norm="none", act="bipolarquant", kernel=3, pads=(0, 0, 2, 1), pool="max",
              pool_stride=2, pool_pad="VALID"),
        Layer(width=6, weights="sign", norm="bias-ties", act="mt-neg", kernel=3, pool="none")),
        n_conv=2, n_out=8, head_norm="bias", head="hardtanh", expose=False, seed=555)
    m = build(spec)
    x = probe_inputs(spec, 6, seed=spec.seed)[4]
    res = verify(m, x, 0.1, sample=False, progress=False)
    assert res.answer == "counterexample", f"{res.answer} ({res.reason}): {res.note}"
    xc = np.asarray(res.counterexample, np.float32).reshape(x.shape)
    assert np.all(np.abs(xc - x) <= 0.1 + 1e-6) and np.all((xc >= 0) & (xc <= 1))
    assert labels(m, xc[None])[1][0] != labels(m, x[None])[1][0]


@pytest.mark.parametrize("seed", range(4))
def test_small_hamming_ball_is_decided_by_running_it(seed):
    """A Hamming ball of at most ENUMERATE_MAX inputs (fixed batch-1 model) gets robust or a real
    counterexample, matching onnxruntime on every input of the ball, never unknown."""
    import itertools

    from tests.test_robustness import predict, tiny_bnn

    k, eps = 8, 2
    m = tiny_bnn(k, seed)
    x = np.random.default_rng(seed + 10).integers(0, 2, k).astype(np.float32)
    c = predict(m, x)
    flips = [xc for r in range(1, eps + 1) for idx in itertools.combinations(range(k), r)
             for xc in [np.where(np.isin(np.arange(k), idx), 1 - x, x)] if predict(m, xc) != c]
    res = verify(m, x.reshape(1, k), eps, norm="bits", sample=False, progress=False, time_limit=0.0)
    assert res.answer == ("counterexample" if flips else "robust"), res.note
    if flips:
        xc = res.counterexample.reshape(-1)
        assert np.sum(xc != x) <= eps and predict(m, xc) != c


def test_counterexample_is_judged_by_onnxruntime():
    """On models/sign_ties.onnx the MIP reaches near-tie points where tamec's evaluator and onnxruntime
    round differently: every counterexample verify gives is one onnxruntime labels differently (the old
    verify gave one its evaluator labelled 0 and onnxruntime labelled 6, the input's own label)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "models" / "sign_ties.onnx"
    m = onnx.load(path)
    rng = np.random.default_rng(0)
    x = [rng.integers(0, 65, 16).astype(np.float32) / 64 for _ in range(3)][-1]
    res = verify(str(path), x, 0.05, sample=False, progress=False)
    assert res.answer == "counterexample", f"{res.answer}: {res.note}"
    xc = np.asarray(res.counterexample, np.float32).reshape(1, 16)
    assert np.max(np.abs(xc - x)) <= 0.05 + 1e-6
    assert np.argmax(ort_logits(m, xc)) == res.counterexample_label != np.argmax(ort_logits(m, x[None]))
