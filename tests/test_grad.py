"""Gradients: the runtime (GradProgram) against its exported gradient graph, torch, and onnxruntime.

Numbers: the gradient graph and the runtime compute the same float32 formulas op for op; on the
models in models/ they agree within 1e-5 (observed <= 1e-6). TFC_1W1A is held to 1e-5 of its largest
gradient instead: its trained BN has near-zero gammas, so some neurons' proven pre-activation range
is ~1e-5 wide, the lp-dual slope 2/|L| is ~1e5, gradients reach ~1e4, and float32 summation order
alone moves them by ~1e-3 (relative ~1e-7).
"""
from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

from tamec.errors import InputError, TamecError, UsageError
from tamec.export.grad import gradient_model
from tamec.runtime import rules as R
from tamec.runtime.autograd import GradProgram
from tests.conftest import MODELS, TFC, all_models
from tests.helpers import model, ort_run

RULES = ["lp-dual", "bb-dual:1", "bb-dual:2", "lp-mid", "bb-mid:4", "ste", "ste-clip"]
TOL = 1e-5


@functools.lru_cache(maxsize=None)
def program(path) -> GradProgram:
    return GradProgram.from_model(str(path))


def batch(prog: GradProgram, n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *prog.sample_shape)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    return x, y


def run_graph(prog: GradProgram, m: onnx.ModelProto, x, y) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {prog.input_name: x, "labels": y, **prog.params})
    return dict(zip([o.name for o in sess.get_outputs()], outs))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("path", all_models())
def test_gradient_graph_equals_runtime(path, rule):
    """The exported gradient graph (standard ONNX, checked, run by onnxruntime) gives the runtime's
    loss and every weight's gradient within 1e-5 (for TFC_1W1A: 1e-5 of its largest gradient)."""
    prog = program(path)
    prog.set_rule(rule)
    x, y = batch(prog)
    loss, grads, _ = prog.loss_and_grads(x, y)
    m = gradient_model(prog, rule)
    onnx.checker.check_model(m, full_check=True)
    assert {o.domain for o in m.opset_import} == {""} and all(n.domain == "" for n in m.graph.node)
    assert [i.name for i in m.graph.input] == [prog.input_name, "labels", *prog.params]
    assert [o.name for o in m.graph.output] == ["loss"] + [f"grad_{k}" for k in prog.params]
    res = run_graph(prog, m, x, y)
    scale = max(1.0, *(float(np.abs(g).max()) for g in grads.values())) if path == TFC else 1.0
    diff = max([abs(float(res["loss"]) - loss)] + [float(np.abs(res[f"grad_{k}"] - g).max()) for k, g in grads.items()])
    assert diff <= TOL * scale, f"max |diff| {diff:.3g} (max |grad| {scale:.3g})"
    assert any(np.any(g != 0) for g in grads.values()), "all gradients zero: the comparison proves nothing"


def test_rules_differ_where_they_should():
    """On mlp_sign every rule gives a different gradient for the first layer (bounds are used), and
    the real head's gradient does not depend on the rule."""
    prog = program(MODELS / "mlp_sign.onnx")
    x, y = batch(prog, 32)
    out = {}
    for rule in RULES:
        prog.set_rule(rule)
        out[rule] = prog.loss_and_grads(x, y)[1]
    prog.set_rule("lp-dual")
    for a in RULES:
        for b in RULES:
            if a < b:
                assert not np.allclose(out[a]["fc1.weight"], out[b]["fc1.weight"]), (a, b)
                np.testing.assert_array_equal(out[a]["bn3.bias"], out[b]["bn3.bias"])


def one_neuron(lo: float, hi: float):
    """x[N,1] -> Sign -> MatMul([[1, 1]]) -> y[N,2], input box [lo, hi]: s = x, L = lo, U = hi."""
    from onnx import helper

    m = model([helper.make_node("Sign", ["x"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["y"])],
              [("x", ["N", 1])], [("y", ["N", 2])], {"w": np.array([[1.0, 1.0]], np.float32)})
    return GradProgram.from_model(m, input_bounds=(lo, hi))


def test_lp_dual_worked_example():
    """One sign unit, L = -4, U = 2 (DESIGN.md worked example): dloss/ds = 2g/|L| for g < 0, s < 0;
    2g/U for g > 0, s > 0; 0 otherwise. Numbers: g = -1.5, s = -1 -> -0.75; g = 1, s = 0.5 -> 1;
    g = -1.5, s = 0.5 -> 0; g = 1, s = -1 -> 0; s = 0 -> 0."""
    rule = R.parse_rule("lp-dual")
    co = R.coefficients(rule, np.array([-4.0]), np.array([2.0]), np.array([2.0]))
    s = np.array([[-1.0], [0.5], [0.5], [-1.0], [0.0]], np.float32)
    g = np.array([[-1.5], [1.0], [-1.5], [1.0], [1.0]], np.float32)
    got = R.backward(rule, s, g, np.zeros(1), co)
    np.testing.assert_array_equal(got[:, 0], [-0.75, 1.0, 0.0, 0.0, 0.0])
    # the same numbers through the runtime: upstream g = dy . [1, 1]; the bounds pass widens the
    # box [-4, 2] by 1e-5 relative (float32 safety), hence the tolerance
    prog = one_neuron(-4.0, 2.0)
    t = next(iter(prog.thresholds.values()))
    assert t.L[0] == pytest.approx(-4.0, rel=1e-4) and t.U[0] == pytest.approx(2.0, rel=1e-4)
    x = s.copy()
    dy = np.repeat(g / 2, 2, axis=1)
    _, _, dx = prog.vjp(x, dy)
    np.testing.assert_allclose(dx[:, 0], [-0.75, 1.0, 0.0, 0.0, 0.0], rtol=1e-4)


def test_parse_rule():
    """Rule names parse; unknown names and a missing depth are UsageErrors (TamecErrors)."""
    assert R.parse_rule("bb-dual:2") == R.Rule("bb-dual", 2)
    assert R.parse_rule("ste").name == "ste" and R.parse_rule("bb-dual:0").name == "bb-dual:0"
    assert R.parse_rule("bb-mid:4") == R.Rule("bb-mid", 4) and R.parse_rule(" lp-mid ").name == "lp-mid"
    assert R.parse_rule("bb-mid:3").midpoint and R.parse_rule("bb-mid:3").from_dual
    assert not R.parse_rule("bb-dual:3").midpoint and not R.parse_rule("ste-clip").from_dual
    for bad in ["sgd", "bb-dual", "bb-dual:x", "bb-dual:-1", "ste:1", "", "bb-mid", "lp-mid:2", "bb-mid:53"]:
        with pytest.raises(UsageError):
            R.parse_rule(bad)
    with pytest.raises(TamecError):
        GradProgram.from_model(str(MODELS / "mlp_sign.onnx"), rule="straight-through")


def bn_model(shape):
    from onnx import helper

    c = shape[1]
    rng = np.random.default_rng(3)
    inits = {"g": rng.uniform(0.5, 1.5, c), "b": rng.normal(0, 1, c), "m": rng.normal(0, 1, c),
             "v": rng.uniform(0.5, 2, c)}
    return model([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-5,
                                   momentum=0.9)], [("x", ["N", *shape[1:]])], [("y", ["N", *shape[1:]])],
                 {k: v.astype(np.float32) for k, v in inits.items()})


@pytest.mark.parametrize("shape", [(16, 5), (6, 3, 4, 4)])
def test_batchnorm_train_equals_torch(shape):
    """train=True BatchNormalization equals torch's batch_norm in training mode: forward, backward
    (input, scale, bias) and the running statistics update (torch momentum 0.1 = 1 - ONNX 0.9)."""
    torch = pytest.importorskip("torch")
    prog = GradProgram.from_model(bn_model(shape))
    rng = np.random.default_rng(4)
    x = rng.normal(2, 3, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    rm, rv = torch.tensor(prog.state["m"]), torch.tensor(prog.state["v"])
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(prog.params["g"], requires_grad=True)
    bt = torch.tensor(prog.params["b"], requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, rm, rv, wt, bt, training=True, momentum=0.1, eps=1e-5)
    yt.backward(torch.tensor(dy))
    y, grads, dx = prog.vjp(x, dy, train=True)
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(grads["g"], wt.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(grads["b"], bt.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(prog.state["m"], rm.numpy(), atol=1e-6)
    np.testing.assert_allclose(prog.state["v"], rv.numpy(), atol=1e-5)
    # train=False now uses the updated running statistics, as torch's eval mode
    ye = torch.nn.functional.batch_norm(torch.tensor(x), rm, rv, wt, bt, training=False, eps=1e-5)
    np.testing.assert_allclose(prog.forward(x), ye.detach().numpy(), atol=1e-5)


class _SignSTE:
    """torch sign with an identity backward (the `ste` rule of a sign unit)."""

    @staticmethod
    def make(torch):
        class F(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return torch.sign(x)

            @staticmethod
            def backward(ctx, g):
                return g

        return F.apply


def test_cnn_ste_gradients_equal_torch():
    """cnn_sign with the ste rule equals the same network in torch with an identity-backward sign:
    Conv, BatchNorm (eval), MaxPool (first maximum of ternary ties), Flatten, Linear, and the
    stored +-1 conv2 weight trained as a latent (identity backward)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    prog = GradProgram.from_model(str(MODELS / "cnn_sign.onnx"), rule="ste")
    x, y = batch(prog, 16, seed=5)
    loss, grads, logits = prog.loss_and_grads(x, y)
    sign = _SignSTE.make(torch)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in prog.params.items()}
    s = {k: torch.tensor(v) for k, v in prog.state.items()}
    h = F.conv2d(torch.tensor(x), p["conv1.weight"], p["conv1.bias"], padding=1)
    h = F.batch_norm(h, s["bn1.running_mean"], s["bn1.running_var"], p["bn1.weight"], p["bn1.bias"], eps=1e-5)
    h = F.max_pool2d(sign(h), 2)
    h = F.conv2d(h, sign(p["conv2.weight"]), padding=1)
    h = F.batch_norm(h, s["bn2.running_mean"], s["bn2.running_var"], p["bn2.weight"], p["bn2.bias"], eps=1e-5)
    h = F.max_pool2d(sign(h), 2).flatten(1)
    out = F.linear(h, p["fc.weight"], p["fc.bias"])
    lt = F.cross_entropy(out, torch.tensor(y))
    lt.backward()
    np.testing.assert_allclose(logits, out.detach().numpy(), atol=1e-5)
    assert loss == pytest.approx(lt.item(), abs=1e-5)
    for k, g in grads.items():
        np.testing.assert_allclose(g, p[k].grad.numpy(), atol=1e-5, err_msg=k)
    assert np.abs(grads["conv1.weight"]).max() > 1e-3  # gradient reached the first layer


@pytest.mark.parametrize("path", all_models())
def test_export_onnx_equals_forward(path):
    """The trained model (perturbed parameters) exported with export_onnx is standard ONNX with +-1
    weights, and onnxruntime gives prog.forward's logits; export_qonnx (BipolarQuant weights) gives
    them in the qonnx executor."""
    prog = program(path)
    rng = np.random.default_rng(6)
    params = {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in prog.params.items()}
    n = 1 if prog.static_batch == 1 else 4
    x = batch(prog, n, seed=7)[0]
    want = prog.forward(x, params)
    m = prog.export_onnx(params)
    onnx.checker.check_model(m)
    assert all(nd.domain == "" for nd in m.graph.node)
    np.testing.assert_allclose(ort_run(m, {m.graph.input[0].name: x})[0], want, atol=1e-5)
    assert not np.array_equal(want, prog.forward(x)), "the perturbation changed nothing"
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    q = prog.export_qonnx(params)
    assert sum(nd.op_type == "BipolarQuant" for nd in q.graph.node) >= len(prog.binary)
    for vi in [*q.graph.input, *q.graph.output, *q.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_value = n
    mw = ModelWrapper(q).transform(InferShapes())
    got = execute_onnx(mw, {mw.graph.input[0].name: x})[mw.graph.output[0].name]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_bad_inputs():
    """Wrong dtype, shape, non-finite data, labels out of range or of the wrong shape, unknown or
    misshapen parameters: TamecErrors naming the problem, never a numpy traceback."""
    prog = program(MODELS / "mlp_sign.onnx")
    x, y = batch(prog, 4)
    with pytest.raises(InputError, match="dtype"):
        prog.loss_and_grads(x.astype(np.float64), y)
    with pytest.raises(InputError, match="shape"):
        prog.loss_and_grads(x[:, :10], y)
    with pytest.raises(InputError, match="NaN"):
        prog.forward(np.full_like(x, np.nan))
    with pytest.raises(InputError, match=r"\[0, 9\]"):
        prog.loss_and_grads(x, np.array([0, 1, 2, 10]))
    with pytest.raises(InputError, match="shape"):
        prog.loss_and_grads(x, y[:3])
    with pytest.raises(InputError, match="integer"):
        prog.loss_and_grads(x, y.astype(np.float32))
    with pytest.raises(UsageError, match="unknown parameter"):
        prog.forward(x, params={"nope": np.zeros(3)})
    with pytest.raises(UsageError, match="shape"):
        prog.forward(x, params={"fc1.weight": np.zeros((3, 3))})


def test_unsupported_op_is_named():
    """An op the backward pass lacks is reported by node and op, all at once."""
    from onnx import helper

    m = model([helper.make_node("Sign", ["x"], ["a"]), helper.make_node("Softsign", ["a"], ["b"], name="soft"),
               helper.make_node("Tanh", ["b"], ["y"], name="th")], [("x", ["N", 3])], [("y", ["N", 3])])
    with pytest.raises(TamecError, match="Softsign") as e:
        GradProgram.from_model(m)
    assert "Tanh" in str(e.value)


def test_cli_round_trip(tmp_path):
    """`tamec export-grad` writes the gradient graph, `tamec grad` the runtime's loss and gradients
    (keys: loss and the initializer names); onnxruntime on the graph gives the same numbers. Bad
    input exits 2 with one line."""
    from tamec.cli import main

    path = MODELS / "sign_ties.onnx"
    prog = program(path)
    x, y = batch(prog, 5, seed=8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    assert main(["export-grad", str(path), "--rule", "bb-mid:2", "-o", str(tmp_path / "g.onnx")]) == 0
    assert main(["grad", str(path), "--input", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--rule", "bb-mid:2", "-o", str(tmp_path / "g.npz")]) == 0
    npz = np.load(tmp_path / "g.npz")
    assert set(npz.files) == {"loss", *prog.params} and "onnx::MatMul_30" in npz.files
    res = run_graph(prog, onnx.load(str(tmp_path / "g.onnx")), x, y)
    assert float(npz["loss"]) == pytest.approx(float(res["loss"]), abs=1e-5)
    for k in prog.params:
        assert npz[k].shape == prog.params[k].shape
        np.testing.assert_allclose(npz[k], res[f"grad_{k}"], atol=1e-5)
    np.save(tmp_path / "bad.npy", np.array([0, 1, 2, 3, 99]))
    np.save(tmp_path / "x2.npy", x[:, :3])
    bad = [["grad", str(path), "--input", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "bad.npy"),
            "-o", str(tmp_path / "b.npz")],
           ["grad", str(path), "--input", str(tmp_path / "x2.npy"), "--labels", str(tmp_path / "y.npy"),
            "-o", str(tmp_path / "b.npz")],
           ["export-grad", str(path), "--rule", "magic", "-o", str(tmp_path / "b.onnx")]]
    for argv in bad:
        assert main(argv) == 2
    assert not (tmp_path / "b.npz").exists() and not (tmp_path / "b.onnx").exists()
