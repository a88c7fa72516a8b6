"""Graph passes: each rewrite checked against onnxruntime or the QONNX executor, exhaustively
where the input space is small."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import tamec
from tamec.errors import CheckMismatchError, PassError, UsageError
from tamec.evaluator import Evaluator
from tamec.ir.text import print_graph
from tests.helpers import all_bipolar, bipolar_dense_bn_sign, model, ort_run


def compiled(m, pipeline=None, **kw):
    mod = tamec.compile(m, pipeline, **kw)
    return mod, Evaluator(mod.graph)


def ops_of(mod) -> list[str]:
    return [op.qualname for op in mod.graph.ops()]


def bipolar_input(mod):
    """Declare the graph input bipolar, as a binarized upstream layer would make it."""
    from tamec.ir.graph import BIPOLAR

    for name in mod.graph.inputs:
        mod.graph.values[name].domain = BIPOLAR
    return mod


@pytest.mark.parametrize("seed", range(6))
def test_fold_thresholds_exhaustive(seed):
    """BN + Sign after a +-1 dense layer folds to one Threshold equal to onnxruntime on all 2^k inputs."""
    m = bipolar_dense_bn_sign(k=7, n=8, seed=seed)
    mod = bipolar_input(tamec.load(m))
    from tamec.passmanager import run_pipeline

    mod = run_pipeline(mod, None)
    assert "BatchNormalization" not in ops_of(mod) and ops_of(mod).count("tamec.Threshold") == 1
    x = all_bipolar(7)
    (ref,) = ort_run(m, {"x": x})
    got = Evaluator(mod.graph).run({"x": x})["y"]
    assert np.array_equal(got, ref)


def test_fold_ties_flips_constants():
    """Exact ties keep ONNX Sign's 0, gamma < 0 flips, gamma = 0 gives a constant neuron, an
    unreachable tau gives a constant, and taus land on the parity lattice (k odd: even tau is off)."""
    k = 5
    gamma = [1, -1, 0, 1, 1, -3]
    beta = [0, 0, 0.5, 0, 100, 0]
    mean = [1, -3, 0, 0.5, 0, 3]  # ties at s=1 and s=-3 (odd, reachable for k=5); s=0.5 never
    var = [1 - 1e-5] * 6
    m = bipolar_dense_bn_sign(k=k, n=6, gamma=gamma, beta=beta, mean=mean, var=var)
    mod = bipolar_input(tamec.load(m))
    from tamec.passmanager import run_pipeline

    mod = run_pipeline(mod, None)
    (t,) = [op for op in mod.graph.ops() if op.qualname == "tamec.Threshold"]
    tau, flip = t.attrs["tau"], t.attrs["flip"]
    assert t.attrs["tie"] == 0.0
    # ties at 1 and 3 (flipped); gamma = 0 and beta = 100 are constant +1; 0.5 falls between the
    # odd lattice points -1 and 1, so tau is their midpoint 0 and never ties
    np.testing.assert_array_equal(tau, [1, -3, -np.inf, 0, -np.inf, 3])
    np.testing.assert_array_equal(flip, [False, True, False, False, False, True])
    x = all_bipolar(k)
    (ref,) = ort_run(m, {"x": x})
    got = Evaluator(mod.graph).run({"x": x})["y"]
    assert np.array_equal(got, ref)
    assert (got == 0).any(), "the tie input must give Sign's 0"


def test_tie_rules_carried():
    """BipolarQuant folds with tie +1, ONNX Sign with tie 0: the same BN, different outputs at the tie."""
    k = 3
    qonnx = pytest.importorskip("qonnx")  # noqa: F841
    for op_type, domain, tie in (("Sign", "", 0.0), ("BipolarQuant", "qonnx.custom_op.general", 1.0)):
        nodes = [helper.make_node("MatMul", ["x", "w"], ["s"], name="mm"),
                 helper.make_node("Sub", ["s", "c"], ["z"], name="sub")]
        ins = ["z"] + (["one"] if op_type == "BipolarQuant" else [])
        nodes.append(helper.make_node(op_type, ins, ["y"], name="q", domain=domain))
        inits = {"w": np.ones((k, 2), np.float32), "c": np.array([1.0, 2.0], np.float32)}
        if op_type == "BipolarQuant":
            inits["one"] = np.array(1.0, np.float32)
        m = model(nodes, [("x", ["N", k])], [("y", ["N", 2])], inits,
                  extra_opsets=[("qonnx.custom_op.general", 1)] if domain else ())
        mod = bipolar_input(tamec.load(m))
        from tamec.passmanager import run_pipeline

        mod = run_pipeline(mod, None)
        (t,) = [op for op in mod.graph.ops() if op.qualname == "tamec.Threshold"]
        assert t.attrs["tie"] == tie
        assert t.attrs["tau"][0] == 1.0  # s = 1 is on the odd lattice of k = 3: a reachable tie
        got = Evaluator(mod.graph).run({"x": np.array([[1, 1, -1]], np.float32)})["y"]
        assert got[0, 0] == tie


def test_ste_idiom_recognized_not_evaluated():
    """x + (Sign(x) - x) becomes Sign(x) exactly, even where float32 evaluation of the literal
    expression is not +-1 (large |x|)."""
    nodes = [helper.make_node("Sign", ["x"], ["sg"], name="sign"),
             helper.make_node("Sub", ["sg", "x"], ["d"], name="sub"),
             helper.make_node("Add", ["x", "d"], ["y"], name="add")]
    m = model(nodes, [("x", ["N", 4])], [("y", ["N", 4])])
    mod, ev = compiled(m)
    assert ops_of(mod) == ["tamec.Threshold"]
    x = np.array([[3e8, -0.3, 0.0, 1.5]], np.float32)
    (literal,) = ort_run(m, {"x": x})
    assert literal[0, 0] != 1.0  # float32: 3e8 + (1 - 3e8) rounds away from 1
    assert np.array_equal(ev.run({"x": x})["y"], np.sign(x))


def test_ste_output_that_is_also_consumed():
    """An STE result that is a graph output and also feeds the next op is recognized (the consumer
    follows the renamed Threshold output): found by the generated-model harness."""
    nodes = [helper.make_node("Sign", ["x"], ["sg"], name="sign"),
             helper.make_node("Sub", ["sg", "x"], ["d"], name="sub"),
             helper.make_node("Add", ["x", "d"], ["h"], name="add"),
             helper.make_node("Neg", ["h"], ["y"], name="neg")]
    m = model(nodes, [("x", ["N", 3])], [("y", ["N", 3]), ("h", ["N", 3])])
    mod, ev = compiled(m)
    assert ops_of(mod) == ["tamec.Threshold", "Neg"]
    x = np.array([[-0.5, 0.0, 2.5]], np.float32)
    got = ev.run({"x": x})
    assert np.array_equal(got["h"], np.sign(x)) and np.array_equal(got["y"], -np.sign(x))


def test_larq_sign_idiom():
    """Sign(Add(Sign(x), 0.1)) is one Threshold with tie +1 (Larq's sign at 0)."""
    nodes = [helper.make_node("Sign", ["x"], ["a"], name="s1"),
             helper.make_node("Add", ["a", "c"], ["b"], name="add"),
             helper.make_node("Sign", ["b"], ["y"], name="s2")]
    m = model(nodes, [("x", ["N", 3])], [("y", ["N", 3])], {"c": np.array(0.1, np.float32)})
    mod, ev = compiled(m)
    (t,) = mod.graph.ops()
    assert t.qualname == "tamec.Threshold" and t.attrs["tie"] == 1.0
    x = np.array([[-0.5, 0.0, 0.5]], np.float32)
    assert np.array_equal(ev.run({"x": x})["y"], ort_run(m, {"x": x})[0])


@pytest.mark.parametrize("cmp,tie", [("Greater", -1.0), ("Less", 1.0), ("GreaterOrEqual", 1.0), ("LessOrEqual", -1.0)])
def test_where_quantizers(cmp, tie):
    """Where(cmp(x, 0), +-1, -+1) becomes a Threshold whose tie is what the comparison gives at 0."""
    a, b = (1.0, -1.0) if cmp.startswith("Greater") else (-1.0, 1.0)
    nodes = [helper.make_node(cmp, ["x", "z"], ["c"], name="cmp"),
             helper.make_node("Where", ["c", "a", "b"], ["y"], name="where")]
    m = model(nodes, [("x", ["N", 3])], [("y", ["N", 3])],
              {"z": np.array(0, np.float32), "a": np.array(a, np.float32), "b": np.array(b, np.float32)})
    mod, ev = compiled(m)
    (t,) = mod.graph.ops()
    assert t.qualname == "tamec.Threshold" and t.attrs["tie"] == tie
    x = np.array([[-2.0, 0.0, 2.0]], np.float32)
    assert np.array_equal(ev.run({"x": x})["y"], ort_run(m, {"x": x})[0])


def _qonnx_run(m, feeds):
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    w = ModelWrapper(m)
    return execute_onnx(w, feeds)[m.graph.output[0].name]


@pytest.mark.parametrize("signed,narrow", [(1, 0), (1, 1), (0, 0), (0, 1)])
@pytest.mark.parametrize("mode", ["ROUND", "DOWN", "UP", "FLOOR", "CEIL", "HALF_UP"])
def test_quant_1bit(signed, narrow, mode):
    """1-bit Quant: the two variants whose integer range is one point are reported degenerate;
    the other two become Thresholds equal to the QONNX executor, ties included."""
    nodes = [helper.make_node("Quant", ["x", "s", "z", "bw"], ["y"], name="q", domain="qonnx.custom_op.general",
                              signed=signed, narrow=narrow, rounding_mode=mode)]
    m = model(nodes, [("x", [1, 9])], [("y", [1, 9])],
              {"s": np.array(0.5, np.float32), "z": np.array(0, np.float32), "bw": np.array(1, np.float32)},
              extra_opsets=[("qonnx.custom_op.general", 1)])
    mod = tamec.compile(m, ["canonicalize"])
    x = (np.arange(-4, 5, dtype=np.float32) * 0.25).reshape(1, 9)  # every boundary is a sample
    if narrow:
        assert mod.history[-1].stats["degenerate_quant"] == ["q"]
    else:
        assert ops_of(mod) == ["tamec.Threshold"]
    got = Evaluator(mod.graph).run({"x": x})["y"]
    assert np.array_equal(got, _qonnx_run(m, {"x": x}))


def test_multithreshold_single():
    """A one-threshold MultiThreshold with out_scale 2, out_bias -1 is a bipolar Threshold (tie = hi)."""
    t = np.array([[0.5], [-1.0], [0.0]], np.float32)
    nodes = [helper.make_node("MultiThreshold", ["x", "t"], ["y"], name="mt", domain="qonnx.custom_op.general",
                              out_scale=2.0, out_bias=-1.0)]
    m = model(nodes, [("x", [1, 3])], [("y", [1, 3])], {"t": t}, extra_opsets=[("qonnx.custom_op.general", 1)])
    mod, ev = compiled(m, ["canonicalize"])
    (op,) = mod.graph.ops()
    assert op.qualname == "tamec.Threshold" and op.attrs["tie"] == 1.0
    for x in ([[0.5, -1.0, 0.0]], [[0.4, -0.9, -0.1]], [[9, 9, 9]]):
        x = np.array(x, np.float32)
        assert np.array_equal(ev.run({"x": x})["y"], _qonnx_run(m, {"x": x}))


def test_flatten_idiom_symbolic_batch():
    """Shape->Gather->Unsqueeze->Concat->Reshape with a symbolic batch becomes Flatten(axis=1)."""
    nodes = [helper.make_node("Shape", ["x"], ["sh"], name="shape"),
             helper.make_node("Gather", ["sh", "i0"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"], name="unsq"),
             helper.make_node("Concat", ["n1", "m1"], ["shp"], name="cat", axis=0),
             helper.make_node("Reshape", ["x", "shp"], ["y"], name="reshape")]
    m = model(nodes, [("x", ["N", 2, 3])], [("y", ["N", 6])],
              {"i0": np.array(0, np.int64), "ax": np.array([0], np.int64), "m1": np.array([-1], np.int64)})
    mod, ev = compiled(m, ["canonicalize"])
    assert ops_of(mod) == ["Flatten"]
    x = np.random.default_rng(0).normal(size=(5, 2, 3)).astype(np.float32)
    assert np.array_equal(ev.run({"x": x})["y"], x.reshape(5, 6))


def test_gemm_and_transpose_matmul_to_linear():
    """Gemm(transB) and Transpose+MatMul both become tamec.Linear with W as (out, in)."""
    rng = np.random.default_rng(1)
    w = rng.choice([-1.0, 1.0], (4, 6)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="gemm", transB=1),
             helper.make_node("Transpose", ["w2"], ["w2t"], name="tr", perm=[1, 0]),
             helper.make_node("MatMul", ["h", "w2t"], ["y"], name="mm")]
    m = model(nodes, [("x", ["N", 6])], [("y", ["N", 3])],
              {"w": w, "b": rng.normal(size=4).astype(np.float32), "w2": rng.normal(size=(3, 4)).astype(np.float32)})
    mod, ev = compiled(m)
    assert ops_of(mod) == ["tamec.Linear", "tamec.Linear"]
    x = rng.normal(size=(7, 6)).astype(np.float32)
    np.testing.assert_allclose(ev.run({"x": x})["y"], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_binarize_weights_factors_scale():
    """A weight alpha_c * B is split into bipolar B and a per-channel Mul; outputs unchanged."""
    rng = np.random.default_rng(2)
    b = rng.choice([-1.0, 1.0], (6, 4)).astype(np.float32)
    alpha = np.array([0.5, 2.0, 0.25, 1.5], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    m = model(nodes, [("x", ["N", 6])], [("y", ["N", 4])], {"w": b * alpha})
    mod, ev = compiled(m, ["canonicalize", "binarize-weights"])
    assert mod.history[-1].stats["scales_factored"] == 1
    (lin,) = [op for op in mod.graph.ops() if op.qualname == "tamec.Linear"]
    assert mod.graph.values[lin.inputs[1]].domain.kind == "bipolar"
    x = rng.normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_allclose(ev.run({"x": x})["y"], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_bounds_sound_and_stable_claims_true():
    """Every evaluated tensor lies inside its bounds on 2^k inputs, and each neuron the report
    calls stable never changes output."""
    m = bipolar_dense_bn_sign(k=8, n=12, seed=3)
    mod = bipolar_input(tamec.load(m))
    from tamec.passmanager import PassContext, run_pipeline

    mod = run_pipeline(mod, None, ctx=PassContext(input_bounds={"*": (-1, 1)}))
    x = all_bipolar(8)
    vals = Evaluator(mod.graph).run({"x": x}, keep_all=True)
    for name, v in mod.graph.values.items():
        if v.bounds is not None and name in vals:
            lo, hi = v.bounds
            assert np.all(vals[name] >= lo) and np.all(vals[name] <= hi), name
    (t,) = [op for op in mod.graph.ops() if op.qualname == "tamec.Threshold"]
    lo, hi = mod.graph.values[t.inputs[0]].bounds
    tau = t.attrs["tau"]
    stable = (lo > tau) | (hi < tau) | ~np.isfinite(tau)
    y = vals[t.outputs[0]]
    assert np.all((y[:, stable] == y[:1, stable]))
    assert mod.reports["bounds"][0]["stable"] == int(stable.sum())


def test_pass_reports_modified_honestly():
    """A second canonicalize on canonical IR changes nothing and says so."""
    mod = tamec.compile(bipolar_dense_bn_sign(), ["canonicalize"])
    from tamec.passmanager import run_pipeline

    again = run_pipeline(mod, ["canonicalize"])
    assert mod.history[-1].modified and not again.history[-1].modified
    assert print_graph(mod.graph) == print_graph(again.graph)


def test_check_names_first_diverging_tensor(monkeypatch):
    """--check catches a wrong pass and names the pass and the first tensor that diverges."""
    from tamec.passmanager import REGISTRY, Pass, _load_passes

    _load_passes()

    class Broken(Pass):
        name = "broken-for-test"

        def rewrite(self, g, ctx, module):
            for op in g.ops():
                if op.qualname == "tamec.Threshold":
                    op.attrs["flip"] = ~np.asarray(op.attrs["flip"])
            return {}

    monkeypatch.setitem(REGISTRY, "broken-for-test", Broken)
    with pytest.raises(CheckMismatchError, match=r"broken-for-test.*first diverging tensor %y"):
        tamec.compile(bipolar_dense_bn_sign(), ["canonicalize", "broken-for-test"], check=8)


def test_pipeline_errors():
    """Unknown passes and unmet requirements are user errors naming what to do."""
    with pytest.raises(UsageError, match="unknown pass"):
        tamec.compile(bipolar_dense_bn_sign(), ["canonicalise"])
    with pytest.raises(PassError, match="requires"):
        tamec.compile(bipolar_dense_bn_sign(), ["fold-thresholds"])
