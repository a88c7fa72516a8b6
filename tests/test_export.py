"""Graph IR -> ONNX: the faithful dump passes the checker and keeps everything; the standard export
computes exactly the rules of tamec/ops.py under onnxruntime; tamec re-imports its own dumps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from tamec.errors import UnsupportedModelError
from tamec.export.onnx import save_onnx, to_onnx
from tamec.ir.graph import BIPOLAR, REAL, Domain, Graph, Op, Value
from tamec.verifier import verify_graph
from tamec.ops import QONNX_DOMAIN

TFC = Path(__file__).resolve().parents[2] / "shared/models/TFC_1W1A.onnx"


# -- the rules of tamec/ops.py, in numpy ---------------------------------------------------------

def threshold_ref(x, tau, flip, axis, lo, hi, tie):
    """y = hi if x > tau else lo if x < tau else tie; hi/lo swapped where flip (tau f64, y f32)."""
    tau, flip = np.asarray(tau, np.float64), np.asarray(flip, bool)
    if tau.size > 1:
        shape = (tau.size,) + (1,) * (x.ndim - axis % x.ndim - 1)
        tau, flip = tau.reshape(shape), flip.reshape(shape)
    xd = x.astype(np.float64)
    return np.where(xd > tau, np.where(flip, lo, hi), np.where(xd < tau, np.where(flip, hi, lo), tie)) \
        .astype(np.float32)


def linear_ref(x, w, b=None):
    """y = x @ W^T + B, accumulated in float64."""
    y = x.astype(np.float64) @ w.astype(np.float64).T
    return (y if b is None else y + b.astype(np.float64)).astype(np.float32)


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


# -- graph builders -----------------------------------------------------------------------------

def _thr_attrs(tau, flip, axis=1, lo=-1.0, hi=1.0, tie=1.0) -> dict:
    return {"tau": np.asarray(tau, np.float64), "flip": np.asarray(flip, bool), "axis": axis,
            "lo": lo, "hi": hi, "tie": tie}


def threshold_graph(x_shape, attrs, opset=13, x_dtype="float32", out_domain=None) -> Graph:
    g = Graph("thr", {"": opset})
    g.add_value(Value("x", x_shape, x_dtype))
    g.inputs = ["x"]
    dom = out_domain or Domain.of_array(np.array([attrs["lo"], attrs["hi"], attrs["tie"]]))
    g.add_value(Value("y", x_shape, "float32", dom))
    g.add_op(Op("thr", "Threshold", ["x"], ["y"], attrs, domain="tamec", origin=("BN_1", "Sign_2")))
    g.outputs = ["y"]
    return g


def linear_graph(x_shape, w, b=None, opset=13, x_dtype="float32", x_domain=REAL, y_domain=REAL) -> Graph:
    g = Graph("lin", {"": opset})
    g.add_value(Value("x", x_shape, x_dtype, x_domain))
    g.inputs = ["x"]
    g.add_const("W", w)
    ins = ["x", "W"]
    if b is not None:
        g.add_const("B", b)
        ins.append("B")
    y_shape = None if x_shape is None else tuple(x_shape[:-1]) + (w.shape[0],)
    g.add_value(Value("y", y_shape, "float32", y_domain))
    g.add_op(Op("lin", "Linear", ins, ["y"], domain="tamec"))
    g.outputs = ["y"]
    return g


def mixed_graph(opset=13) -> Graph:
    """Input -> BipolarQuant -> Linear -> Threshold -> Linear+B -> Relu, with symbolic batch."""
    rng = np.random.default_rng(3)
    g = Graph("mixed", {"": opset, QONNX_DOMAIN: 1})
    g.add_value(Value("in put", ("N", 16), "float32"))
    g.inputs = ["in put"]
    g.add_const("scale", np.array(1.0, np.float32))
    g.add_value(Value("q", ("N", 16), "float32", BIPOLAR))
    g.add_op(Op("BipolarQuant_0", "BipolarQuant", ["in put", "scale"], ["q"], domain=QONNX_DOMAIN))
    g.add_const("W1", rng.choice([-1.0, 1.0], (8, 16)).astype(np.float32))
    g.add_value(Value("s", ("N", 8), "float32", Domain.integer(-16, 16, 2)))
    g.add_op(Op("MatMul_1", "Linear", ["q", "W1"], ["s"], domain="tamec"))
    g.add_value(Value("t", ("N", 8), "float32", BIPOLAR))
    g.add_op(Op("T_2", "Threshold", ["s"], ["t"],
                _thr_attrs(rng.integers(-4, 4, 8) * 2 + 1.0, rng.random(8) < 0.5), domain="tamec",
                origin=("BatchNormalization_2", "BipolarQuant_3")))
    g.add_const("W2", rng.choice([-1.0, 1.0], (4, 8)).astype(np.float32))
    g.add_const("B2", rng.normal(size=4).astype(np.float32))
    g.add_value(Value("z", ("N", 4), "float32"))
    g.add_op(Op("Gemm_4", "Linear", ["t", "W2", "B2"], ["z"], domain="tamec"))
    g.add_value(Value("y", ("N", 4), "float32"))
    g.add_op(Op("Relu_5", "Relu", ["z"], ["y"]))
    g.outputs = ["y"]
    verify_graph(g)
    return g


def mixed_ref(g: Graph, x: np.ndarray) -> np.ndarray:
    q = np.where(x >= 0, 1.0, -1.0).astype(np.float32)
    t_attrs = g.op("T_2").attrs
    t = threshold_ref(linear_ref(q, g.const("W1")), **t_attrs)
    return np.maximum(linear_ref(t, g.const("W2"), g.const("B2")), 0)


# -- faithful export ----------------------------------------------------------------------------------

def test_faithful_export_passes_checker_and_keeps_everything():
    """Every op is one node named by its id in its own domain, provenance in doc_string, constants
    as initializers, every value typed (symbolic dims as dim_param), an opset for every domain."""
    g = mixed_graph()
    m = to_onnx(g)
    onnx.checker.check_model(m, full_check=True)
    assert [(n.name, n.domain, n.op_type) for n in m.graph.node] == [
        (op.id, op.domain, op.op_type) for op in g.ops()]
    assert {o.domain: o.version for o in m.opset_import} == {"": 13, "tamec": 1, QONNX_DOMAIN: 1}
    node = {n.name: n for n in m.graph.node}
    assert json.loads(node["T_2"].doc_string.removeprefix("origin=")) == ["BatchNormalization_2", "BipolarQuant_3"]
    attrs = {a.name: a for a in node["T_2"].attribute}
    assert attrs["tau"].t.data_type == TensorProto.DOUBLE and attrs["flip"].t.data_type == TensorProto.BOOL
    np.testing.assert_array_equal(numpy_helper.to_array(attrs["tau"].t), g.op("T_2").attrs["tau"])
    assert (attrs["tie"].f, attrs["lo"].f, attrs["axis"].i) == (1.0, -1.0, 1)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert sorted(inits) == ["B2", "W1", "W2", "scale"]
    np.testing.assert_array_equal(inits["W1"], g.const("W1"))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert m.graph.input[0].name == "in put" and [d.dim_param or d.dim_value for d in dims] == ["N", 16]
    vi = {v.name: v for v in m.graph.value_info}
    assert sorted(vi) == ["q", "s", "t", "z"]
    assert vi["s"].doc_string == "domain=int[-16:16:2]" and vi["t"].doc_string == "domain=bipolar"


def test_faithful_export_types_and_attribute_kinds():
    """An unknown shape exports as a type without a shape; every attribute kind maps to its ONNX
    type; a list mixing strings and numbers is refused naming the op."""
    g = Graph("attrs", {"": 13})
    g.add_value(Value("x", ("N",), "float64"))
    g.inputs = ["x"]
    g.add_value(Value("m", None, "float64"))
    g.add_value(Value("y", ("N",), "float64"))
    g.add_op(Op("relu", "Relu", ["m"], ["y"]))
    attrs = {"i": 3, "b": True, "f": 0.25, "s": "text", "ints": [1, 2], "floats": [0.5, 2],
             "strs": ["a", "b"], "empty": [], "t": np.array([np.nan, np.inf, -1.0]),
             "ts": [np.ones(2, np.int64), np.zeros((1, 2), np.float32)], "np_scalar": np.float32(1.5)}
    g.add_op(Op("odd", "Custom", ["x"], ["m"], attrs, domain="tamec"))
    g.outputs = ["y"]
    m = to_onnx(g)
    onnx.checker.check_model(m)
    (vi,) = m.graph.value_info
    assert vi.name == "m" and not vi.type.tensor_type.HasField("shape")
    assert vi.type.tensor_type.elem_type == TensorProto.DOUBLE
    A = onnx.AttributeProto
    got = {a.name: a for a in m.graph.node[0].attribute}
    assert {k: got[k].type for k in got} == {
        "i": A.INT, "b": A.INT, "f": A.FLOAT, "s": A.STRING, "ints": A.INTS, "floats": A.FLOATS,
        "strs": A.STRINGS, "empty": A.INTS, "t": A.TENSOR, "ts": A.TENSORS, "np_scalar": A.FLOAT}
    assert list(got["floats"].floats) == [0.5, 2.0] and got["b"].i == 1
    np.testing.assert_array_equal(numpy_helper.to_array(got["t"].t), attrs["t"])
    assert numpy_helper.to_array(got["ts"].tensors[1]).shape == (1, 2)
    g.op("odd").attrs["mixed"] = [1, "a"]
    with pytest.raises(UnsupportedModelError, match="odd"):
        to_onnx(g)


def test_save_onnx_writes_the_model(tmp_path):
    """save_onnx writes exactly what to_onnx builds, in both modes."""
    g = mixed_graph()
    for standard in (False, True):
        p = save_onnx(g, tmp_path / f"m{standard}.onnx", standard=standard)
        assert onnx.load(str(p)) == to_onnx(g, standard=standard)


# -- standard export under onnxruntime -----------------------------------------------------------------

FLIPS = {"none": lambda c: np.zeros(c, bool), "all": lambda c: np.ones(c, bool),
         "mixed": lambda c: np.arange(c) % 2 == 1}


def _x_with_ties(shape, tau, axis, rng) -> np.ndarray:
    """Random x where about a third of the entries sit exactly on their channel's tau."""
    x = rng.integers(-3, 4, shape).astype(np.float32)
    t = np.broadcast_to(np.asarray(tau).reshape((-1,) + (1,) * (len(shape) - axis - 1)), shape)
    hit = (rng.random(shape) < 0.33) & np.isfinite(t)
    x[hit] = t[hit].astype(np.float32)
    return x


@pytest.mark.parametrize("rank", [2, 4])
@pytest.mark.parametrize("flip", sorted(FLIPS))
@pytest.mark.parametrize("tie", [0.0, 1.0])
def test_standard_threshold_equals_rule(rank, flip, tie):
    """Threshold exported to Greater/Less/Where equals the ops.py rule bit for bit, ties included."""
    rng = np.random.default_rng(rank * 10 + int(tie))
    c = 6
    tau = np.array([0.0, 1.0, -2.0, 0.5, 3.0, -1.0])
    shape = (3, c) if rank == 2 else (2, c, 4, 5)
    attrs = _thr_attrs(tau, FLIPS[flip](c), axis=1, tie=tie)
    x = _x_with_ties(shape, tau, 1, rng)
    g = threshold_graph(shape, attrs)
    (y,) = run_ort(to_onnx(g, standard=True), {"x": x})
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, threshold_ref(x, **attrs))
    assert (x == tau.reshape((-1,) + (1,) * (rank - 2))).any()  # the tie branch was exercised


def test_standard_threshold_nan_inf_and_f64_tau():
    """NaN tau gives the constant tie, +-inf tau a constant lo/hi, and a tau float32 cannot hold
    (0.1) is compared in float64: float32(0.1) > 0.1, so it is not a tie."""
    tau = np.array([np.nan, np.inf, -np.inf, 0.1, float(np.float32(0.1)), 2.0])
    flip = np.array([False, False, True, False, True, True])
    attrs = _thr_attrs(tau, flip, axis=-1, lo=0.0, hi=1.0, tie=0.0)
    x = np.array([[np.float32(0.1)] * 6, [np.inf, np.inf, -np.inf, 0.0, 1.0, 2.0],
                  [-7.0, 1e30, -1e30, np.float32(0.1), np.float32(0.1), 3.0]], np.float32)
    g = threshold_graph((3, 6), attrs, out_domain=Domain("bin01"))
    (y,) = run_ort(to_onnx(g, standard=True), {"x": x})
    want = threshold_ref(x, **attrs)
    np.testing.assert_array_equal(y, want)
    assert (want[:, 0] == 0).all()  # NaN tau: tie
    assert want[0, 3] == 1.0 and want[0, 4] == 0.0  # f64 compare: > 0.1 but == float32(0.1)


def test_standard_threshold_scalar_tau_and_int_input():
    """A scalar tau broadcasts over any shape, and an int64 x compares exactly."""
    attrs = _thr_attrs(np.array(5.0), np.array(True), axis=1, lo=-1.0, hi=1.0, tie=0.0)
    x = np.array([[4, 5, 6], [2**40, -(2**40), 5]], np.int64)
    g = threshold_graph((2, 3), attrs, x_dtype="int64", out_domain=Domain("ternary"))
    (y,) = run_ort(to_onnx(g, standard=True), {"x": x})
    np.testing.assert_array_equal(y, threshold_ref(x, **attrs))


@pytest.mark.parametrize("x_shape", [(5, 12), (2, 3, 12), (2, 3, 4, 12)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("opset", [9, 13])
def test_standard_linear_equals_rule(x_shape, bias, opset):
    """Linear exported to Gemm (2-D x, any opset: C supplied below 11) or MatMul + Add equals x @ W^T + B;
    binary operands give exact integers."""
    rng = np.random.default_rng(len(x_shape))
    w = rng.choice([-1.0, 1.0], (7, 12)).astype(np.float32)
    b = rng.normal(size=7).astype(np.float32) if bias else None
    g = linear_graph(x_shape, w, b, opset=opset, x_domain=BIPOLAR,
                     y_domain=REAL if bias else Domain.integer(-12, 12, 2))
    verify_graph(g)
    m = to_onnx(g, standard=True)
    assert {n.op_type for n in m.graph.node} == ({"Gemm"} if len(x_shape) == 2 else {"MatMul", "Add"} if bias
                                                 else {"MatMul"})
    x = rng.choice([-1.0, 1.0], x_shape).astype(np.float32)
    (y,) = run_ort(m, {"x": x})
    np.testing.assert_allclose(y, linear_ref(x, w, b), rtol=0, atol=1e-5)
    if not bias:
        np.testing.assert_array_equal(y, linear_ref(x, w))


def test_standard_linear_real_inputs():
    """Real-valued x and W (a first layer or head) match within 1e-5."""
    rng = np.random.default_rng(7)
    w, b = rng.normal(size=(5, 9)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    x = rng.normal(size=(4, 9)).astype(np.float32)
    (y,) = run_ort(to_onnx(linear_graph((4, 9), w, b), standard=True), {"x": x})
    np.testing.assert_allclose(y, linear_ref(x, w, b), rtol=1e-5, atol=1e-5)


def test_standard_linear_integer_exact_past_float32():
    """Integer x and W whose sums pass 2^24 are computed in float64, so the result stays exact."""
    k = 2048
    w = np.ones((3, k), np.float32)
    w[1, ::2] = -1
    x = np.full((2, k), 9999.0, np.float32)
    x[1, 1::3] = 9997.0
    g = linear_graph((2, k), w, x_domain=Domain.integer(-10000, 10000), y_domain=Domain.integer(-2e7, 2e7))
    m = to_onnx(g, standard=True)
    assert any(n.op_type == "Cast" for n in m.graph.node)
    (y,) = run_ort(m, {"x": x})
    exact = (x.astype(np.int64) @ w.astype(np.int64).T).astype(np.float32)
    np.testing.assert_array_equal(y, exact)


def test_standard_linear_int64_input():
    """An integer-typed x is lifted to float64 for the product and the result cast to y's dtype."""
    w = np.array([[1.0, -1.0, 1.0]], np.float32)
    x = np.array([[3, 4, 5], [-1, 0, 7]], np.int64)
    g = linear_graph((2, 3), w, x_dtype="int64", x_domain=Domain.integer(-10, 10))
    (y,) = run_ort(to_onnx(g, standard=True), {"x": x})
    np.testing.assert_array_equal(y, linear_ref(x, w))


@pytest.mark.parametrize("opset", [9, 11, 13])
def test_standard_bipolar_quant(opset):
    """BipolarQuant becomes Where(x >= 0, s, -s) (Not(Less) below opset 12): +s at 0."""
    g = Graph("bq", {"": opset, QONNX_DOMAIN: 1})
    g.add_value(Value("x", (2, 4), "float32"))
    g.inputs = ["x"]
    g.add_const("s", np.array([0.5, 1.0, 2.0, 4.0], np.float32))
    g.add_value(Value("y", (2, 4), "float32"))
    g.add_op(Op("bq", "BipolarQuant", ["x", "s"], ["y"], domain=QONNX_DOMAIN))
    g.outputs = ["y"]
    m = to_onnx(g, standard=True)
    assert ("GreaterOrEqual" in {n.op_type for n in m.graph.node}) == (opset >= 12)
    x = np.array([[0.0, -0.0, 1e-30, -1e-30], [-3.0, 2.0, 0.0, -1.0]], np.float32)
    (y,) = run_ort(m, {"x": x})
    np.testing.assert_array_equal(y, np.where(x >= 0, 1.0, -1.0) * g.const("s"))


def quant_graph(signed, narrow, bw, opset=13):
    g = Graph("q", {"": opset, QONNX_DOMAIN: 1})
    g.add_value(Value("x", (3, 8), "float32"))
    g.inputs = ["x"]
    g.add_const("s", np.float32(0.125))
    g.add_const("z", np.float32(0.0))
    g.add_const("bw", np.float32(bw))
    g.add_value(Value("y", (3, 8), "float32"))
    g.add_op(Op("q", "Quant", ["x", "s", "z", "bw"], ["y"], domain=QONNX_DOMAIN,
                attrs={"signed": signed, "narrow": narrow, "rounding_mode": "ROUND"}))
    g.outputs = ["y"]
    return g


@pytest.mark.parametrize("signed,narrow,bw", [(1, 0, 8), (1, 1, 4), (0, 0, 3), (0, 1, 2)])
def test_standard_quant_equals_evaluator(signed, narrow, bw):
    """QONNX Quant (8-bit CNV input and others) exports as standard ops equal to the evaluator, ties
    rounded half to even and both clip ends hit."""
    from tamec.evaluator import Evaluator

    g = quant_graph(signed, narrow, bw)
    x = np.random.default_rng(1).uniform(-20, 20, (3, 8)).astype(np.float32)
    x[0, :6] = [0.0625, 0.1875, -0.0625, 30.0, -30.0, 0.3125]  # halves of the 0.125 step, out of range
    (y,) = run_ort(to_onnx(g, standard=True), {"x": x})
    np.testing.assert_array_equal(y, Evaluator(g).run({"x": x})["y"])


def test_standard_quant_refuses_unsupported_rounding():
    """Quant with a rounding mode ONNX's Round does not have is a named UnsupportedModelError."""
    g = quant_graph(1, 0, 8)
    g.op("q").attrs["rounding_mode"] = "FLOOR"
    with pytest.raises(UnsupportedModelError, match="rounding_mode FLOOR"):
        to_onnx(g, standard=True)


@pytest.mark.parametrize("opset", [9, 13])
def test_standard_mixed_graph_equals_rules(opset):
    """A whole BNN (BipolarQuant -> Linear -> Threshold -> Linear + B -> Relu) equals the numpy rules."""
    g = mixed_graph(opset)
    x = np.random.default_rng(0).normal(size=(6, 16)).astype(np.float32)
    x[0, :4] = 0.0
    (y,) = run_ort(to_onnx(g, standard=True), {"in put": x})
    np.testing.assert_allclose(y, mixed_ref(g, x), rtol=0, atol=1e-5)


def test_faithful_qonnx_export_runs_in_qonnx_executor():
    """The faithful dump of BipolarQuant + standard ops runs in QONNX's executor and equals the
    standard export under onnxruntime."""
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    g = Graph("bq", {"": 13, QONNX_DOMAIN: 1})
    g.add_value(Value("x", (3, 5), "float32"))
    g.inputs = ["x"]
    g.add_const("s", np.array(1.0, np.float32))
    g.add_value(Value("q", (3, 5), "float32", BIPOLAR))
    g.add_op(Op("bq", "BipolarQuant", ["x", "s"], ["q"], domain=QONNX_DOMAIN))
    g.add_const("w", np.random.default_rng(2).choice([-1.0, 1.0], (5, 2)).astype(np.float32))
    g.add_value(Value("y", (3, 2), "float32", Domain.integer(-5, 5, 2)))
    g.add_op(Op("mm", "MatMul", ["q", "w"], ["y"]))
    g.outputs = ["y"]
    x = np.random.default_rng(5).normal(size=(3, 5)).astype(np.float32)
    x[1, 2] = 0.0
    want = execute_onnx(ModelWrapper(to_onnx(g)), {"x": x})["y"]
    (got,) = run_ort(to_onnx(g, standard=True), {"x": x})
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op_type, n_in", [("Quant", 4), ("MultiThreshold", 2)])
def test_standard_refuses_other_qonnx_ops(op_type, n_in):
    """QONNX ops without a standard form are refused, naming the op."""
    g = Graph("q", {"": 13, QONNX_DOMAIN: 1})
    g.add_value(Value("x", (2,), "float32"))
    g.inputs = ["x"]
    for k in range(1, n_in):
        g.add_const(f"c{k}", np.array(1.0, np.float32))
    g.add_value(Value("y", (2,), "float32"))
    g.add_op(Op("q", op_type, ["x"] + [f"c{k}" for k in range(1, n_in)], ["y"], domain=QONNX_DOMAIN))
    g.outputs = ["y"]
    onnx.checker.check_model(to_onnx(g))
    with pytest.raises(UnsupportedModelError, match=f"{QONNX_DOMAIN}.{op_type}"):
        to_onnx(g, standard=True)


def test_standard_refuses_opset_below_9():
    """Lowering needs Where (opset 9): an older graph with custom ops is refused with a hint."""
    g = threshold_graph((2, 3), _thr_attrs(0.0, False), opset=8)
    with pytest.raises(UnsupportedModelError, match="opset"):
        to_onnx(g, standard=True)


# -- re-import -----------------------------------------------------------------------------------------

def _reimport(g: Graph) -> Graph:
    frontend = pytest.importorskip("tamec.frontend.onnx")
    return frontend.import_onnx(to_onnx(g))


def test_reimport_round_trip():
    """Importing the faithful dump gives back the same ops (ids, types, wiring, attributes) and the
    same values (shapes, dtypes, constants)."""
    g = mixed_graph()
    h = _reimport(g)
    assert [(op.id, op.qualname, op.inputs, op.outputs) for op in h.ops()] == [
        (op.id, op.qualname, op.inputs, op.outputs) for op in g.ops()]
    for op in g.ops():
        a, b = op.attrs, h.op(op.id).attrs
        assert sorted(a) == sorted(b), op.id
        for k in a:
            np.testing.assert_array_equal(np.asarray(b[k]), np.asarray(a[k]), err_msg=f"{op.id}.{k}")
    assert (h.inputs, h.outputs) == (g.inputs, g.outputs)
    for name, v in g.values.items():
        w = h.values[name]
        assert (w.shape, w.dtype) == (v.shape, v.dtype), name
        if v.const is not None:
            np.testing.assert_array_equal(w.const, v.const)


def test_reimport_keeps_provenance():
    """The origin written to each node's doc_string comes back as the op's origin."""
    g = mixed_graph()
    h = _reimport(g)
    assert {op.id: op.origin for op in h.ops()} == {op.id: op.origin for op in g.ops()}


def test_reimport_real_tfc_dump_runs():
    """The real TFC, imported, dumped faithfully and re-imported, still passes the checker and the
    verifier; its standard export runs in onnxruntime and equals QONNX's executor on the original."""
    frontend = pytest.importorskip("tamec.frontend.onnx")
    pytest.importorskip("qonnx")
    if not TFC.exists():
        pytest.skip("TFC_1W1A.onnx not present")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    g = frontend.import_onnx(onnx.load(str(TFC)))
    m = to_onnx(g)
    onnx.checker.check_model(m)
    verify_graph(frontend.import_onnx(m))
    x = np.random.default_rng(0).random((1, 1, 28, 28)).astype(np.float32)
    original = ModelWrapper(str(TFC)).transform(InferShapes())
    want = execute_onnx(original, {original.graph.input[0].name: x})[original.graph.output[0].name]
    (got,) = run_ort(to_onnx(g, standard=True), {g.inputs[0]: x})
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
