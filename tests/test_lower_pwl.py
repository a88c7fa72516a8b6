"""Piecewise-linear ops (Relu, LeakyRelu, Abs, Clip, HardSigmoid, Max, Min) in the MIP lowering,
the bounds pass and `tamec verify`.

Each op sits in the head of a small sign network whose head input crosses every kink over the
enumerated inputs: with the input fixed, the MIP (HiGHS through tamec.solve) decodes to
onnxruntime's output, and the op's output is unique (its min and max over the MIP agree).
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import tamec
from tamec.errors import UnsupportedModelError
from tamec.evaluator import Evaluator
from tamec.lower.inference import decode, fix_inputs, lower_inference
from tamec.solve import solve
from tamec.drivers.verify import verify
from tests.conftest import MODELS
from tests.helpers import all_bipolar, model, ort_run

K, H, OUT = 4, 3, 3  # input width, hidden width, head width
BIAS = np.array([0.0, 0.5, -1.0], np.float32)  # column 0 sits on the integer kinks (ties), 1 and 2 do not
SEED = 12  # weights under which every element of h crosses a kink of every case (asserted in the test)


def sign_net(op_type: str, extra_inputs=(), inits=None, seed: int = SEED, shift: float = 0.0, **attrs):
    """x (real, width K) -> MatMul(+-1) -> Sign -> MatMul(+-1) -> Add(BIAS + shift) = h -> op(h, ...) = y."""
    rng = np.random.default_rng(seed)
    init = {"w1": rng.choice([-1.0, 1.0], (K, H)).astype(np.float32),
            "w2": rng.choice([-1.0, 1.0], (H, OUT)).astype(np.float32),
            "w3": rng.choice([-1.0, 1.0], (H, OUT)).astype(np.float32),
            "bias": BIAS + np.float32(shift), **(inits or {})}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["s"], name="mm1"),
             helper.make_node("Sign", ["s"], ["a"], name="sign"),
             helper.make_node("MatMul", ["a", "w2"], ["m"], name="mm2"),
             helper.make_node("Add", ["m", "bias"], ["h"], name="add"),
             helper.make_node(op_type, ["h", *extra_inputs], ["y"], name="pwl", **attrs)]
    if "h2" in extra_inputs:  # a second variable operand for Max/Min
        nodes.insert(-1, helper.make_node("MatMul", ["a", "w3"], ["h2"], name="mm3"))
    else:
        init.pop("w3")
    return model(nodes, [("x", ["N", K])], [("y", ["N", OUT])], init)


# (id, op_type, extra inputs, extra initializers, attrs, kinks of h: None = the kink is h == h2 or h == c)
CASES = [
    ("relu", "Relu", (), {}, {}, [0.0]),
    ("leaky_relu", "LeakyRelu", (), {}, {"alpha": 0.1}, [0.0]),
    ("leaky_relu_neg_alpha", "LeakyRelu", (), {}, {"alpha": -0.5}, [0.0]),
    ("leaky_relu_alpha_above_1", "LeakyRelu", (), {}, {"alpha": 2.5}, [0.0]),
    ("abs", "Abs", (), {}, {}, [0.0]),
    ("clip_hardtanh", "Clip", ("lo", "hi"), {"lo": np.float32(-1), "hi": np.float32(1)}, {}, [-1.0, 1.0]),
    ("clip_min_only", "Clip", ("lo",), {"lo": np.float32(-0.5)}, {}, [-0.5]),
    ("clip_max_only", "Clip", ("", "hi"), {"hi": np.float32(0.5)}, {}, [0.5]),
    ("hard_sigmoid", "HardSigmoid", (), {}, {"alpha": 0.25, "beta": 0.5}, [-2.0, 2.0]),
    ("hard_sigmoid_neg_alpha", "HardSigmoid", (), {}, {"alpha": -0.25, "beta": 0.5}, [2.0, -2.0]),
    ("max_tensor", "Max", ("h2",), {}, {}, None),
    ("min_tensor", "Min", ("h2",), {}, {}, None),
    ("max_const_broadcast", "Max", ("c",), {"c": np.array([0.0, -1.0, 1.5], np.float32)}, {}, None),
    ("min_three_inputs", "Min", ("h2", "c"), {"c": np.float32(0.5)}, {}, None),
]


def lowered(m):
    """(graph, mip, assembled milp, all 2^K corner inputs) of model m compiled on the box [-1, 1]."""
    mod = tamec.compile(m, input_bounds=(-1.0, 1.0))
    mip = lower_inference(mod.graph)
    return mod.graph, mip, mip.assemble(), all_bipolar(K)


def element_range(mip, p, name: str, elem: int) -> tuple[float, float]:
    """min and max of element `elem` of graph value `name` over the MILP `p`."""
    (blk, grp), = mip.meta["values"][name]
    col = p.col(blk, grp)[elem]
    c = np.zeros(p.A.shape[1])
    c[col] = 1.0
    lo, hi = solve(p, c=c, sense="min"), solve(p, c=c, sense="max")
    assert lo.status == hi.status == "optimal"
    return lo.objective, hi.objective


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fixed_input_unique_solution_equals_onnxruntime(case):
    """Every kink reachable (each element of h is seen on both sides over the inputs): for each
    input fixed, the MIP's solution decodes to onnxruntime's y and the evaluator's h, and y is
    the only feasible value (min = max per element)."""
    _, op_type, extra, inits, attrs, kinks = case
    m = sign_net(op_type, extra, inits, **attrs)
    g, mip, p, X = lowered(m)
    (y_ort,) = ort_run(m, {"x": X})
    ref = Evaluator(g).run({"x": X}, keep_all=True)
    h = ref["h"].astype(np.float64)
    other = ref["h2"] if "h2" in extra else inits.get("c")
    for e in range(OUT):  # the bounds cannot prove a side: each element crosses a kink
        if kinks is None:
            d = h[:, e] - np.broadcast_to(np.asarray(other, np.float64), h.shape)[:, e]
            assert d.min() < 0 < d.max(), f"element {e} never crosses h == {extra[0]}"
        else:
            assert any(h[:, e].min() < k < h[:, e].max() for k in kinks), f"element {e} crosses no kink"
    for k in kinks or ():
        assert any(h[:, e].min() < k < h[:, e].max() for e in range(OUT)), f"no element crosses kink {k}"
    head = mip.block("head")
    assert head.meta["kinks"] >= OUT and any(r.kind == "big-m" for r in head.rows)
    for j in range(len(X)):
        q = fix_inputs(mip, p, {"x": X[j:j + 1]})
        sol = solve(q)
        assert sol.status == "optimal", sol.message
        got = decode(mip, q, sol.x)
        np.testing.assert_allclose(got["y"], y_ort[j], rtol=1e-6, atol=1e-6, err_msg=f"input {j}")
        np.testing.assert_allclose(got["h"], h[j], rtol=1e-6, atol=1e-6)
        for e in range(OUT):
            lo, hi = element_range(mip, q, "y", e)
            assert abs(hi - lo) <= 1e-7 and abs(lo - y_ort[j, e]) <= 1e-6, f"input {j}, y[{e}] in [{lo}, {hi}]"


@pytest.mark.parametrize("op_type,extra,inits,attrs", [
    ("Relu", (), {}, {}),
    ("Clip", ("lo", "hi"), {"lo": np.float32(-10), "hi": np.float32(20)}, {}),
    ("Max", ("c",), {"c": np.float32(-10)}, {}),
    ("LeakyRelu", (), {}, {"alpha": 0.2}),
], ids=["relu", "clip", "max", "leaky_relu"])
def test_stable_elements_get_no_binary(op_type, extra, inits, attrs):
    """Bounds that prove one side of every kink (h shifted into [3, 10.5]; limits -10 and 20) give the
    affine form: no kink binary and no big-M row in the head, and the MIP still computes y."""
    m = sign_net(op_type, extra, inits, shift=7.0, **attrs)
    g, mip, p, X = lowered(m)
    head = mip.block("head")
    assert head.meta["kinks"] == 0 and head.meta["kinks_stable"] >= OUT
    assert not [v for v in head.vars if v.kind == "binary" and v.role != "input"]
    assert not [r for r in head.rows if r.kind == "big-m"]
    (y_ort,) = ort_run(m, {"x": X})
    for j in range(0, len(X), 5):
        q = fix_inputs(mip, p, {"x": X[j:j + 1]})
        np.testing.assert_allclose(decode(mip, q, solve(q).x)["y"], y_ort[j], rtol=1e-6, atol=1e-6)


def test_clip_opset6_attributes():
    """Clip before opset 11 takes min/max as attributes: lowered with those limits."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["s"], name="mm1"),
             helper.make_node("Sign", ["s"], ["a"], name="sign"),
             helper.make_node("MatMul", ["a", "w2"], ["h"], name="mm2"),
             helper.make_node("Clip", ["h"], ["y"], name="clip", min=-0.5, max=2.0)]
    m = model(nodes, [("x", ["N", K])], [("y", ["N", OUT])],
              {"w1": rng.choice([-1.0, 1.0], (K, H)).astype(np.float32),
               "w2": rng.choice([-1.0, 1.0], (H, OUT)).astype(np.float32)}, opset=9)
    g, mip, p, X = lowered(m)
    (y_ort,) = ort_run(m, {"x": X})
    assert mip.block("head").meta["kinks"] > 0
    for j in range(len(X)):
        q = fix_inputs(mip, p, {"x": X[j:j + 1]})
        np.testing.assert_allclose(decode(mip, q, solve(q).x)["y"], y_ort[j], atol=1e-6)


def test_unbounded_input_refused_naming_node():
    """A Relu whose input has no finite bounds (no bounds pass) cannot get big-M rows: a
    TamecError naming the node and asking for --input-bounds."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu_head")]
    m = model(nodes, [("x", ["N", 3])], [("y", ["N", 2])], {"w": np.ones((3, 2), np.float32)})
    mod = tamec.compile(m, ["canonicalize", "binarize-weights", "fold-thresholds"])
    with pytest.raises(UnsupportedModelError, match="--input-bounds") as e:
        lower_inference(mod.graph)
    assert e.value.node == "relu_head" and "Relu" in str(e.value) and "finite bounds" in str(e.value)


def test_clip_with_variable_limit_refused():
    """Clip whose max is a tensor fed at run time is refused at partition, naming the node and why."""
    from tamec.lower.inference import partition

    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"], name="mm"),
             helper.make_node("Sign", ["s"], ["a"], name="sign"),
             helper.make_node("Clip", ["a", "", "t"], ["y"], name="clip_var")]
    m = model(nodes, [("x", [1, 3]), ("t", [])], [("y", [1, 2])], {"w": np.ones((3, 2), np.float32)})
    mod = tamec.compile(m, input_bounds=(-1.0, 1.0))
    with pytest.raises(UnsupportedModelError, match="min and max must be constants") as e:
        partition(mod.graph)
    assert "clip_var" in str(e.value)


def test_piecewise_op_inside_a_binarized_block():
    """Sign(|W x| - 1.5): the Abs sits between the Linear and the threshold; the threshold reads
    the Abs output's group, and for every input fixed the MIP decodes to onnxruntime's tensors."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"], name="mm"),
             helper.make_node("Abs", ["s"], ["t"], name="abs"),
             helper.make_node("Add", ["t", "c"], ["u"], name="add"),
             helper.make_node("Sign", ["u"], ["a"], name="sign"),
             helper.make_node("MatMul", ["a", "w2"], ["y"], name="mm2")]
    m = model(nodes, [("x", ["N", K])], [("y", ["N", 2])],
              {"w": rng.choice([-1.0, 1.0], (K, 3)).astype(np.float32), "c": np.float32(-1.5),
               "w2": rng.choice([-1.0, 1.0], (3, 2)).astype(np.float32)})
    g, mip, p, X = lowered(m)
    assert mip.blocks[0].meta["kinks"] == 3 and mip.blocks[0].meta["threshold"]
    ref = Evaluator(g).run({"x": X}, keep_all=True)
    (y_ort,) = ort_run(m, {"x": X})
    assert set(np.unique(ref["a"])) == {-1.0, 1.0}  # both sides of the threshold are reached
    for j in range(len(X)):
        q = fix_inputs(mip, p, {"x": X[j:j + 1]})
        got = decode(mip, q, solve(q).x)
        np.testing.assert_allclose(got["t"], ref["t"][j], atol=1e-6)
        np.testing.assert_array_equal(got["a"], ref["a"][j])
        np.testing.assert_array_equal(got["y"], y_ort[j])


def test_full_pipeline_reports_kink_binaries():
    """partition .. dualize .. tame-check on a Clip head: the head is nice (semialgebraic), its
    big-M rows are counted, and dualize does not call it exact (its kink rows have no dual)."""
    from tamec.passmanager import DEFAULT_PIPELINE

    m = sign_net("Clip", ("lo", "hi"), {"lo": np.float32(-1), "hi": np.float32(1)})
    mod = tamec.compile(m, list(DEFAULT_PIPELINE) + ["partition", "lower-mip", "dualize", "tame-check"],
                        input_bounds=(-1.0, 1.0), options={"executor": "threads"})
    head = {r["block"]: r for r in mod.reports["lower-mip"]}["head"]
    assert head["big_m_rows"] > 0 and head["big_m_source"] == "interval"
    tame = {c["block"]: c for c in mod.reports["tame-check"]}["head"]
    assert tame["verdict"] == "nice" and tame["structure"] == "semialgebraic"
    dual = {r["block"]: r for r in mod.reports["dualize"]}["head"]
    assert not dual.get("exact") and "kink" in dual["note"] and dual["uncovered_rows"]


# ------------------------------------------------------------------------------------------------
# bounds pass
# ------------------------------------------------------------------------------------------------
CLIP = (["lo", "hi"], {"lo": np.float32(-1.5), "hi": np.float32(0.25)})


@pytest.mark.parametrize("op_type,attrs,extra", [
    ("Relu", {}, None), ("LeakyRelu", {"alpha": 0.1}, None), ("LeakyRelu", {"alpha": -0.5}, None),
    ("LeakyRelu", {"alpha": 3.0}, None), ("Abs", {}, None), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, None),
    ("HardSigmoid", {"alpha": -0.3, "beta": 0.4}, None), ("Clip", {}, CLIP),
    ("Clip", {}, (["lo", "hi"], {"lo": np.float32(0.5), "hi": np.float32(-0.5)})),  # min > max: constant max
    ("Max", {}, (["c"], {"c": np.float32(-0.5)})), ("Min", {}, (["c"], {"c": np.float32(-0.5)})),
], ids=lambda v: str(v))
def test_bounds_contain_and_match_the_range(op_type, attrs, extra):
    """On the box [-2, 1]: the bounds contain the op's value at a dense grid (kinks included) and
    are within the 1e-5 widening of its exact range (a negative alpha reverses the slope)."""
    extra, inits = extra or ([], {})
    m = model([helper.make_node(op_type, ["x", *extra], ["y"], name="n", **attrs)], [("x", ["N", 1])],
              [("y", ["N", 1])], inits)
    lo, hi = tamec.compile(m, input_bounds=(-2.0, 1.0)).graph.values["y"].bounds
    grid = np.unique(np.r_[np.linspace(-2, 1, 3001), 0.0, -4 / 3, 2.0]).astype(np.float32)
    grid = grid[(grid >= -2) & (grid <= 1)].reshape(-1, 1)
    (y,) = ort_run(m, {"x": grid})
    assert lo[0] <= y.min() and y.max() <= hi[0]
    assert y.min() - lo[0] <= 1e-4 and hi[0] - y.max() <= 1e-4, (lo, hi, y.min(), y.max())


# ------------------------------------------------------------------------------------------------
# tamec verify on sign MLPs with a Clip (hardtanh) or Relu head
# ------------------------------------------------------------------------------------------------
def tiny_head_bnn(k: int, seed: int, head: str):
    """x in {0,1}^k -> 2x-1 -> +-1 MatMul -> BN -> Sign -> +-1 MatMul -> BN -> Clip(-1, 1) or Relu."""
    rng = np.random.default_rng(seed)
    h, c = 5, 3
    inits = {"two": np.array(2, np.float32), "one": np.array(1, np.float32),
             "w1": rng.choice([-1.0, 1.0], (k, h)).astype(np.float32),
             "g": rng.uniform(0.5, 1.5, h).astype(np.float32) * rng.choice([-1, 1], h).astype(np.float32),
             "b": rng.normal(0, 0.5, h).astype(np.float32), "m": rng.normal(0, 1, h).astype(np.float32),
             "v": rng.uniform(0.5, 2, h).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], (h, c)).astype(np.float32),
             "g2": rng.uniform(0.2, 0.6, c).astype(np.float32), "b2": rng.normal(0, 0.3, c).astype(np.float32),
             "m2": np.zeros(c, np.float32), "v2": np.ones(c, np.float32),
             "lo": np.float32(-1), "hi": np.float32(1)}
    act = (helper.make_node("Clip", ["z2", "lo", "hi"], ["y"], name="hardtanh") if head == "Clip"
           else helper.make_node("Relu", ["z2"], ["y"], name="relu"))
    nodes = [helper.make_node("Mul", ["x", "two"], ["x2"], name="mul"),
             helper.make_node("Sub", ["x2", "one"], ["xb"], name="sub"),
             helper.make_node("Sign", ["xb"], ["xs"], name="in_sign"),
             helper.make_node("MatMul", ["xs", "w1"], ["s"], name="mm1"),
             helper.make_node("BatchNormalization", ["s", "g", "b", "m", "v"], ["z"], name="bn"),
             helper.make_node("Sign", ["z"], ["hdn"], name="sign"),
             helper.make_node("MatMul", ["hdn", "w2"], ["s2"], name="mm2"),
             helper.make_node("BatchNormalization", ["s2", "g2", "b2", "m2", "v2"], ["z2"], name="bn2"), act]
    if head == "Relu":
        inits.pop("lo"), inits.pop("hi")
    return model(nodes, [("x", [1, k])], [("y", [1, c])], inits)


def predict(m, x) -> int:
    """onnxruntime's class (first maximum) of one input."""
    return int(np.argmax(ort_run(m, {"x": x.reshape(1, -1).astype(np.float32)})[0]))


@pytest.mark.parametrize("head", ["Clip", "Relu"])
@pytest.mark.parametrize("seed", [0, 1, 2, 10])
def test_verify_bits_matches_enumeration(head, seed):
    """MIP only (sampling off): robust at eps 0; for radii 1-3, robust iff no input within that
    many flipped bits changes onnxruntime's class, and a counterexample is one onnxruntime confirms
    (seed 10, Clip: HiGHS returns a 0 bit as -4e-16, which verify must snap to the box's end)."""
    k = 7
    m = tiny_head_bnn(k, seed, head)
    x = np.random.default_rng(seed + 20).integers(0, 2, k).astype(np.float32)
    c = predict(m, x)
    assert verify(m, x.reshape(1, k), 0, norm="bits", sample=False).answer == "robust"
    flips = {}
    for r in range(1, 4):
        for idx in itertools.combinations(range(k), r):
            xc = x.copy()
            xc[list(idx)] = 1 - xc[list(idx)]
            flips.setdefault(r, []).append(predict(m, xc) != c)
    for eps in (1, 2, 3):
        robust = not any(f for r in range(1, eps + 1) for f in flips[r])
        res = verify(m, x.reshape(1, k), eps, norm="bits", sample=False)
        assert res.answer == ("robust" if robust else "counterexample"), (eps, res.answer, res.note)
        if res.answer == "counterexample":
            xc = res.counterexample.reshape(-1)
            assert np.sum(xc != x) <= eps and predict(m, xc) != c


@pytest.mark.parametrize("head", ["Clip", "Relu"])
def test_verify_linf_counterexample_confirmed(head):
    """linf: robust at eps 0; at eps 0.5 (every pixel can cross 1/2) the MIP's counterexample,
    when there is one, lies in the ball and onnxruntime classifies it differently."""
    x = np.array([[0.1, 0.9, 0.45, 0.7, 0.2, 0.55]], np.float32)
    found = 0
    for seed in range(6):
        m = tiny_head_bnn(6, seed, head)
        assert verify(m, x, 0.0, sample=False).answer == "robust"
        res = verify(m, x, 0.5, sample=False)
        assert res.answer in ("robust", "counterexample"), res.note
        if res.answer == "counterexample":
            found += 1
            xc = res.counterexample.reshape(-1)
            assert np.all(np.abs(xc - x.reshape(-1)) <= 0.5 + 1e-6)
            assert predict(m, xc) != predict(m, x)
    assert found


def mlp_sign_with_head(path, head: str):
    """models/mlp_sign.onnx (torch.onnx, TorchScript) with the head torch.onnx writes appended:
    hardtanh as Clip(logits, Constant(-1), Constant(1)), or Relu(logits)."""
    m = onnx.load(str(MODELS / "mlp_sign.onnx"))
    g = m.graph
    logits = "/bn3/BatchNormalization_output_0"
    for n in g.node:
        if n.output[0] == "y":
            n.output[0] = logits
    if head == "Clip":
        g.node.extend([
            helper.make_node("Constant", [], ["/act/Constant_output_0"], name="/act/Constant",
                             value=numpy_helper.from_array(np.array(-1, np.float32))),
            helper.make_node("Constant", [], ["/act/Constant_1_output_0"], name="/act/Constant_1",
                             value=numpy_helper.from_array(np.array(1, np.float32))),
            helper.make_node("Clip", [logits, "/act/Constant_output_0", "/act/Constant_1_output_0"], ["y"],
                             name="/act/Clip")])
    else:
        g.node.append(helper.make_node("Relu", [logits], ["y"], name="/act/Relu"))
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return m


@pytest.mark.parametrize("head", ["Clip", "Relu"])
def test_verify_cli_torch_mlp_with_pwl_head(tmp_path, head):
    """The issue's failure: `tamec verify` on a torch sign MLP with a hardtanh (or Relu) head
    answers robust at eps 0 (it refused 'op Clip cannot be lowered'); at eps 0.5 its
    counterexample is confirmed by onnxruntime on the model and lies in the ball."""
    path = tmp_path / f"mlp_{head}.onnx"
    m = mlp_sign_with_head(path, head)
    x = np.random.default_rng(0).uniform(0, 1, (1, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = lambda *a: subprocess.run([sys.executable, "-m", "tamec", "verify", str(path), "--input",  # noqa: E731
                                     str(tmp_path / "x.npy"), *map(str, a)], capture_output=True, text=True,
                                    timeout=300)
    r = run("--eps", 0, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["answer"] == "robust"
    cex = tmp_path / "cex.npy"
    r = run("--eps", 0.5, "--counterexample-out", cex)
    assert r.returncode == 0 and r.stdout.startswith("counterexample"), r.stdout + r.stderr
    xc = np.load(cex).reshape(1, 64)
    assert np.all(np.abs(xc - x) <= 0.5 + 1e-6)
    (y0,), (y1,) = ort_run(m, {"x": x}), ort_run(m, {"x": xc})
    assert y0.argmax() != y1.argmax()


def test_torch_hardtanh_export_verifies(tmp_path):
    """A torch.onnx export (opset 17) of a sign MLP with an nn.Hardtanh head: verify answers
    robust at eps 0, and a counterexample at eps 0.5 is confirmed by onnxruntime."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class SignLinear(nn.Linear):
        def forward(self, x):
            return nn.functional.linear(x, torch.sign(self.weight))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.bn1 = SignLinear(16, 12, bias=False), nn.BatchNorm1d(12)
            self.fc2, self.bn2 = SignLinear(12, 4, bias=False), nn.BatchNorm1d(4)
            self.act = nn.Hardtanh()

        def forward(self, x):
            return self.act(self.bn2(self.fc2(torch.sign(self.bn1(self.fc1(x))))))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-2, 2)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.1, 0.5)
    net.eval()
    path = tmp_path / "hardtanh.onnx"
    torch.onnx.export(net, (torch.rand(2, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    m = onnx.load(str(path))
    assert "Clip" in {n.op_type for n in m.graph.node}
    x = np.random.default_rng(0).uniform(0, 1, (1, 16)).astype(np.float32)
    assert verify(str(path), x, 0.0, sample=False).answer == "robust"
    res = verify(str(path), x, 0.5, sample=False)
    assert res.answer in ("robust", "counterexample"), res.note
    if res.answer == "counterexample":
        xc = res.counterexample.reshape(1, 16).astype(np.float32)
        assert np.all(np.abs(xc - x) <= 0.5 + 1e-6)
        assert ort_run(m, {"x": xc})[0].argmax() != ort_run(m, {"x": x})[0].argmax()
