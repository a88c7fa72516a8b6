"""The graph-IR verifier accepts well-formed graphs and rejects each kind of broken one, naming the op."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tamec.errors import VerificationError
from tamec.ir.graph import BIPOLAR, REAL, TERNARY, Domain, Graph, Op, Value
from tamec.verifier import broadcast, threshold_tau_shape, verify_graph

TFC = Path(__file__).resolve().parents[2] / "shared/models/TFC_1W1A.onnx"


def _threshold(tau, *, flip=None, axis=1, lo=-1.0, hi=1.0, tie=1.0) -> dict:
    tau = np.asarray(tau, dtype=np.float64)
    return {"tau": tau, "flip": np.zeros(tau.shape, bool) if flip is None else np.asarray(flip, bool),
            "axis": axis, "lo": lo, "hi": hi, "tie": tie}


def tfc_graph(batch="N", dims=(784, 64, 64, 64), seed=0) -> Graph:
    """A TFC-shaped binarized MLP after threshold folding: Linear -> Threshold per layer, real head."""
    rng = np.random.default_rng(seed)
    g = Graph("tfc", {"": 13})
    g.add_value(Value("x", (batch, dims[0]), "float32"))
    g.inputs = ["x"]
    prev = "x"
    for layer, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
        g.add_const(f"W{layer}", rng.choice([-1.0, 1.0], (n, k)).astype(np.float32))
        g.add_value(Value(f"s{layer}", (batch, n), "float32", Domain.integer(-k, k, 2) if layer else REAL))
        g.add_op(Op(f"L{layer}", "Linear", [prev, f"W{layer}"], [f"s{layer}"], domain="tamec",
                    origin=(f"MatMul_{layer}",)))
        g.add_value(Value(f"t{layer}", (batch, n), "float32", BIPOLAR))
        g.add_op(Op(f"T{layer}", "Threshold", [f"s{layer}"], [f"t{layer}"],
                    _threshold(rng.integers(-9, 9, n) * 2 + 1.0, flip=rng.random(n) < 0.3),
                    domain="tamec", origin=(f"BatchNormalization_{layer}", f"BipolarQuant_{layer}")))
        prev = f"t{layer}"
    g.add_const("Wh", rng.choice([-1.0, 1.0], (10, dims[-1])).astype(np.float32))
    g.add_const("Bh", rng.normal(size=10).astype(np.float32))
    g.add_value(Value("y", (batch, 10), "float32"))
    g.add_op(Op("Lh", "Linear", [prev, "Wh", "Bh"], ["y"], domain="tamec"))
    g.outputs = ["y"]
    return g


def cnn_graph() -> Graph:
    """Standard ops with static and symbolic shapes: Conv, BN, Threshold on axis 1, MaxPool, Reshape,
    Transpose, MatMul, Gemm, Flatten, broadcasting Add, Dropout with an empty optional input."""
    rng = np.random.default_rng(1)
    g = Graph("cnn", {"": 13})
    g.add_value(Value("x", ("N", 3, 8, 8), "float32"))
    g.inputs = ["x"]

    def val(name, shape, dtype="float32", dom=REAL):
        g.add_value(Value(name, shape, dtype, dom))
        return name

    g.add_const("w", rng.choice([-1.0, 1.0], (4, 3, 3, 3)).astype(np.float32))
    g.add_op(Op("conv", "Conv", ["x", "w"], [val("c", ("N", 4, 6, 6))], {"kernel_shape": [3, 3]}))
    for p, a in zip(("scale", "bias", "mean", "var"), (rng.random(4) + 0.5, rng.normal(size=4),
                                                       rng.normal(size=4), rng.random(4) + 0.1)):
        g.add_const(p, a.astype(np.float32))
    g.add_op(Op("bn", "BatchNormalization", ["c", "scale", "bias", "mean", "var"], [val("b", ("N", 4, 6, 6))],
                {"epsilon": 1e-5}))
    g.add_op(Op("thr", "Threshold", ["b"], [val("t", ("N", 4, 6, 6), dom=BIPOLAR)],
                _threshold([0.0, 0.5, -0.5, 1.0], flip=[True, False, False, True]), domain="tamec"))
    g.add_op(Op("pool", "MaxPool", ["t"], [val("p", ("N", 4, 3, 3), dom=BIPOLAR)],
                {"kernel_shape": [2, 2], "strides": [2, 2]}))
    g.add_const("shape", np.array([0, -1], np.int64))
    g.add_op(Op("reshape", "Reshape", ["p", "shape"], [val("r", ("N", 36), dom=BIPOLAR)]))
    g.add_const("wt", rng.choice([-1.0, 1.0], (36, 5)).astype(np.float32))
    g.add_op(Op("mm", "MatMul", ["r", "wt"], [val("m", ("N", 5), dom=Domain.integer(-36, 36, 2))]))
    g.add_const("g_w", rng.normal(size=(7, 5)).astype(np.float32))
    g.add_op(Op("gemm", "Gemm", ["m", "g_w"], [val("gm", ("N", 7))], {"transB": 1}))
    g.add_op(Op("tr", "Transpose", ["gm"], [val("gt", (7, "N"))], {"perm": [1, 0]}))
    g.add_const("row", rng.normal(size=(7, 1)).astype(np.float32))
    g.add_op(Op("add", "Add", ["gt", "row"], [val("a", (7, "N"))]))
    g.add_op(Op("drop", "Dropout", ["a", ""], [val("d", (7, "N"))]))
    g.add_op(Op("flat", "Flatten", ["d"], [val("f", (7, None))], {"axis": 1}))
    g.outputs = ["f"]
    return g


def _rejects(g: Graph, op_id: str, *words: str) -> str:
    with pytest.raises(VerificationError) as e:
        verify_graph(g)
    msg = str(e.value)
    assert op_id in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_good_graphs_pass():
    """A folded TFC and a CNN with symbolic dims, empty optional inputs and standard ops verify."""
    verify_graph(tfc_graph())
    verify_graph(tfc_graph(batch=1))
    verify_graph(cnn_graph())


def test_tfc_size_graph_verifies_fast():
    """The verifier runs after every pass: a TFC-size graph (784-64-64-64-10) takes < 50 ms."""
    g = tfc_graph()
    verify_graph(g)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        verify_graph(g)
        times.append(time.perf_counter() - t)
    assert sorted(times)[2] < 0.05, times


def test_imported_tfc_verifies():
    """The real Brevitas TFC, as the importer builds it, passes the verifier."""
    frontend = pytest.importorskip("tamec.frontend.onnx")
    if not TFC.exists():
        pytest.skip("TFC_1W1A.onnx not present")
    import onnx
    verify_graph(frontend.import_onnx(onnx.load(str(TFC))))


def test_cycle_rejected():
    """Two ops feeding each other are a cycle; the message names an op on it."""
    g = Graph()
    g.add_value(Value("x", (2,), "float32"))
    g.inputs = ["x"]
    g.add_value(Value("a", (2,), "float32"))
    g.add_value(Value("b", (2,), "float32"))
    g.add_op(Op("add", "Add", ["x", "b"], ["a"]))
    g.add_op(Op("relu", "Relu", ["a"], ["b"]))
    g.outputs = ["b"]
    msg = _rejects(g, "", "cycle")
    assert "add" in msg or "relu" in msg


def test_linear_shape_mismatch_rejected():
    """Linear with W (64, 780) on x (N, 784) is rejected, naming the Linear."""
    g = tfc_graph()
    g.values["W0"] = Value("W0", (64, 780), "float32", BIPOLAR, const=np.ones((64, 780), np.float32))
    _rejects(g, "L0", "tamec.Linear", "784", "780")


def test_linear_bias_and_declared_output_checked():
    """A bias of the wrong length, and an output declared with the wrong N, are both caught."""
    g = tfc_graph()
    g.values["Bh"] = Value("Bh", (9,), "float32", const=np.zeros(9, np.float32))
    _rejects(g, "Lh", "B has shape")
    g = tfc_graph()
    g.values["s1"].shape = ("N", 63)
    _rejects(g, "L1", "declared")


def test_tau_not_broadcastable_rejected():
    """A Threshold with 32 taus on 64 channels is rejected, naming the Threshold."""
    g = tfc_graph()
    g.op("T1").attrs.update(_threshold(np.zeros(32)))
    _rejects(g, "T1", "tau", "32", "64")


@pytest.mark.parametrize("change, words", [
    ({"flip": np.zeros(5, bool)}, ["flip has shape"]),
    ({"lo": float("nan")}, ["lo=nan"]),
    ({"tie": float("inf")}, ["tie=inf"]),
    ({"hi": "1"}, ["hi="]),
    ({"flip": np.zeros(64, np.int64)}, ["bool"]),
])
def test_threshold_attribute_errors_rejected(change, words):
    """flip must match tau in shape and be bool; lo/hi/tie must be finite numbers."""
    g = tfc_graph()
    g.op("T2").attrs.update(change)
    _rejects(g, "T2", *words)


def test_threshold_missing_tie_rejected():
    """The tie rule must travel with every Threshold: a Threshold without `tie` is rejected."""
    g = tfc_graph()
    del g.op("T0").attrs["tie"]
    _rejects(g, "T0", "tie")


def test_const_outside_bipolar_domain_rejected():
    """A weight declared bipolar that holds 0.5 is rejected, naming the op that reads it."""
    g = tfc_graph()
    w = np.ones((64, 784), np.float32)
    w[3, 7] = 0.5
    g.values["W0"] = Value("W0", (64, 784), "float32", BIPOLAR, const=w)
    _rejects(g, "L0", "%W0", "bipolar")


def test_large_const_domain_checked_cheaply():
    """Constants past a million elements are still checked: range in full, lattice on a sample."""
    g = Graph()
    g.add_value(Value("x", (1, 1200), "float32"))
    g.inputs = ["x"]
    w = np.ones((1000, 1200), np.float32)
    g.add_value(Value("W", w.shape, "float32", BIPOLAR, const=w))
    g.add_value(Value("y", (1, 1000), "float32", Domain.integer(-1200, 1200, 2)))
    g.add_op(Op("lin", "Linear", ["x", "W"], ["y"], domain="tamec"))
    g.outputs = ["y"]
    g.values["x"].domain = BIPOLAR
    verify_graph(g)
    w2 = w.copy()
    w2[500, 5] = 3.0  # outside the interval: the full range check sees it
    g.values["W"] = Value("W", w.shape, "float32", BIPOLAR, const=w2)
    _rejects(g, "lin", "%W")


def test_bounds_lo_above_hi_rejected():
    """Bounds with lo > hi somewhere are rejected, naming the producing op and the position."""
    g = tfc_graph()
    lo, hi = np.full(64, -5.0), np.full(64, 5.0)
    lo[10] = 6.0
    g.values["s1"].bounds = (lo, hi)
    _rejects(g, "L1", "lo > hi", "(10,)")


def test_bounds_shape_and_domain_checked():
    """Bounds must broadcast to the shape without the batch dim and lie in the domain's interval."""
    g = tfc_graph()
    g.values["s1"].bounds = (np.full(64, -64.0), np.full(64, 64.0))
    verify_graph(g)
    g.values["s1"].bounds = (np.full(32, -64.0), np.full(32, 64.0))
    _rejects(g, "L1", "broadcast")
    g.values["s1"].bounds = (np.full(64, -70.0), np.full(64, 64.0))
    _rejects(g, "L1", "domain")


def test_undefined_input_rejected():
    """An op reading a value nobody defines is rejected, naming the op and the value."""
    g = tfc_graph()
    g.op("L2").inputs[1] = "ghost"
    _rejects(g, "L2", "%ghost", "never defined")


def test_structure_bookkeeping_rejected():
    """Two producers of one value, a stale use list and an unproduced graph output are each caught."""
    g = tfc_graph()
    g.op("T1").outputs = ["t0"]
    _rejects(g, "T1", "%t0")
    g = tfc_graph()
    g._users["t1"].append("T0")
    _rejects(g, "T0", "%t1", "does not read it")
    g = tfc_graph()
    g.add_value(Value("orphan", (1,), "float32"))
    g.outputs.append("orphan")
    with pytest.raises(VerificationError, match="%orphan"):
        verify_graph(g)


def test_op_spec_counts_and_attrs():
    """Input counts (Linear takes 2..3), unknown ops and missing required ONNX attributes are caught."""
    g = tfc_graph()
    g.op("Lh").inputs.append("Bh")
    g._users["Bh"].append("Lh")
    _rejects(g, "Lh", "4 inputs")
    g = cnn_graph()
    g.op("thr").op_type = "Thresh"
    _rejects(g, "thr", "unknown op tamec.Thresh")
    g = cnn_graph()
    g.add_value(Value("cast", ("N", 7), "float64"))
    g.add_op(Op("cast_op", "Cast", ["gm"], ["cast"]))
    _rejects(g, "cast_op", "to")


@pytest.mark.parametrize("op_id, mutate, words", [
    ("conv", lambda g: g.values.__setitem__("w", Value("w", (4, 2, 3, 3), "float32",
                                                       const=np.ones((4, 2, 3, 3), np.float32))), ["channels"]),
    ("conv", lambda g: setattr(g.values["c"], "shape", ("N", 4, 5, 6)), ["declared"]),
    ("reshape", lambda g: setattr(g.values["r"], "shape", ("N", 35)), ["declared"]),
    ("pool", lambda g: setattr(g.values["p"], "shape", ("N", 4, 4, 4)), ["declared"]),
    ("mm", lambda g: setattr(g.values["m"], "shape", ("N", 6)), ["declared"]),
    ("gemm", lambda g: g.op("gemm").attrs.__setitem__("transB", 0), ["inner dims"]),
    ("tr", lambda g: g.op("tr").attrs.__setitem__("perm", [0, 0]), ["perm"]),
    ("add", lambda g: setattr(g.values["a"], "shape", (8, "N")), ["declared"]),
    ("add", lambda g: g.values.__setitem__("row", Value("row", (6, 1), "float32",
                                                       const=np.zeros((6, 1), np.float32))), ["broadcast"]),
    ("bn", lambda g: g.values.__setitem__("mean", Value("mean", (5,), "float32",
                                                        const=np.zeros(5, np.float32))), ["mean"]),
])
def test_standard_op_shapes_rejected(op_id, mutate, words):
    """Shape rules of standard ops (ours and ONNX's node inference for MaxPool) catch wrong shapes."""
    g = cnn_graph()
    verify_graph(g)
    mutate(g)
    _rejects(g, op_id, *words)


def test_integer_domain_claims_checked():
    """An output declared integer must be derivable: real inputs, BN, or a reachable tie value refute it."""
    g = tfc_graph()
    g.values["s0"].domain = Domain.integer(-784, 784, 2)  # x is real: the product is not integer
    _rejects(g, "L0", "%x is real")
    g = cnn_graph()
    g.values["b"].domain = TERNARY
    _rejects(g, "bn", "real values")
    g = tfc_graph()
    g.op("T1").attrs.update(tie=0.0, tau=np.zeros(64))  # integer s can hit tau=0: tie 0 is reachable
    _rejects(g, "T1", "bipolar", "0.0")
    g = tfc_graph()
    g.op("T1").attrs.update(tie=0.0)  # odd taus on the even lattice never tie: bipolar is right
    verify_graph(g)
    g = cnn_graph()
    g.values["p"].domain = Domain("bin01")  # MaxPool passes bipolar values through
    _rejects(g, "pool", "bin01")


def test_unknown_dtype_rejected():
    """Every value's dtype must be one the IR knows."""
    g = tfc_graph()
    g.values["t1"].dtype = "float128x"
    _rejects(g, "T1", "float128x")


def test_shape_helpers():
    """broadcast follows numpy (symbolic dims equal by name); tau lines up along its axis."""
    assert broadcast((3, 1, 5), (4, 1)) == (3, 4, 5)
    assert broadcast(("N", 1), ("N", 7)) == ("N", 7)
    assert broadcast(("N", 3), (1, 3)) == ("N", 3)
    assert broadcast(("N", 3), ("M", 3)) == (None, 3)
    assert broadcast((2, 3), None) is None
    with pytest.raises(Exception):
        broadcast((2, 3), (4, 3))
    assert threshold_tau_shape((4,), 1, ("N", 4, 6, 6)) == (4, 1, 1)
    assert threshold_tau_shape((4,), -1, ("N", 4)) == (4,)
    assert threshold_tau_shape((), 1, None) == ()
    assert threshold_tau_shape((1,), 1, ("N", 4)) == ()
    with pytest.raises(ValueError):
        threshold_tau_shape((4,), 1, ("N", 5))
    with pytest.raises(ValueError):
        threshold_tau_shape((4, 1), 1, ("N", 4, 1))
