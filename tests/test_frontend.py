"""The ONNX/QONNX importer: real exporter output imports faithfully; every bad file gets a TamecError."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from tamec.errors import ModelLoadError, ModelStructureError, TamecError, UnsupportedModelError
from tamec.frontend.onnx import import_onnx
from tamec.ir.graph import BIN01, BIPOLAR, REAL
from tamec.ops import QONNX_DOMAIN

TFC = Path(__file__).resolve().parents[2] / "shared/models/TFC_1W1A.onnx"
needs_tfc = pytest.mark.skipif(not TFC.exists(), reason="TFC_1W1A.onnx not present")
F = TensorProto.FLOAT


# -- small models -------------------------------------------------------------------------------
def _model(nodes, inputs, outputs, inits=(), opset=13, extra_opsets=(), ir_version=None):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    if ir_version is not None:
        m.ir_version = ir_version
    return m


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _w(name, shape, seed=0, binary=False):
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(np.where(a >= 0, 1.0, -1.0).astype(np.float32) if binary else a, name)


def mlp_sign() -> onnx.ModelProto:
    """x[1,8] -> MatMul -> Add -> Sign -> MatMul -> y[1,3], opset 13."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["s"], name="add1"),
             helper.make_node("Sign", ["s"], ["a"], name="sign1"),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="mm2")]
    return _model(nodes, [_vi("x", [1, 8])], [_vi("y", [1, 3])],
                  [_w("W1", [8, 4], 1, True), _w("b1", [4], 2), _w("W2", [4, 3], 3, True)])


def conv_net() -> onnx.ModelProto:
    """Conv -> BatchNorm -> Sign -> MaxPool -> Flatten -> Gemm, symbolic batch, opset 13."""
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["n"], name="bn"),
             helper.make_node("Sign", ["n"], ["q"], name="sign"),
             helper.make_node("MaxPool", ["q"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "Wf"], ["y"], name="fc", transB=1)]
    inits = [_w("Wc", [4, 1, 3, 3], 1, True), _w("g", [4], 2), _w("be", [4], 3), _w("mu", [4], 4),
             numpy_helper.from_array(np.full(4, 2.0, np.float32), "var"), _w("Wf", [10, 64], 5, True)]
    return _model(nodes, [_vi("x", ["N", 1, 8, 8])], [_vi("y", ["N", 10])], inits)


def legacy_brevitas() -> onnx.ModelProto:
    """Brevitas-style legacy export: opset 9, undeclared onnx.brevitas domain, weights also inputs."""
    nodes = [helper.make_node("BipolarQuant", ["x", "s"], ["q"], name="bq_in", domain="onnx.brevitas"),
             helper.make_node("BipolarQuant", ["W", "s"], ["wq"], name="bq_w", domain="onnx.brevitas"),
             helper.make_node("Transpose", ["wq"], ["wt"], name="tr", perm=[1, 0]),
             helper.make_node("MatMul", ["q", "wt"], ["y"], name="mm")]
    inits = [_w("W", [5, 6], 1), numpy_helper.from_array(np.array(1.0, np.float32), "s")]
    return _model(nodes, [_vi("x", [1, 6]), _vi("W", [5, 6]), _vi("s", [])], [_vi("y", [1, 5])], inits,
                  opset=9, ir_version=6)


def _bipolar_quant_ref(domain):
    class BipolarQuant(OpRun):
        op_domain = domain

        def _run(self, x, scale):
            return (np.where(x >= 0, 1.0, -1.0).astype(np.float32) * scale,)
    return BipolarQuant


def _actual_shapes(m: onnx.ModelProto, feeds: dict, domain: str | None = None) -> dict:
    """Shape of every tensor computed by the ONNX reference evaluator on `feeds`."""
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    if domain and domain not in {o.domain for o in m2.opset_import}:
        m2.opset_import.add(domain=domain, version=1)
    ref = ReferenceEvaluator(m2, new_ops=[_bipolar_quant_ref(domain)] if domain else None)
    res = ref.run(None, feeds, intermediate=True)
    return {k: tuple(v.shape) for k, v in res.items() if v is not None and k}


def _assert_shapes_match(g, actual: dict, batch: dict | None = None):
    for op in g.ops():
        for o in op.outputs:
            want = actual[o]
            got = tuple((batch or {}).get(d, d) for d in g.values[o].shape)
            assert got == want, (op.id, o, got, want)


# -- real exporter output -----------------------------------------------------------------------
@needs_tfc
def test_tfc_imports_faithfully():
    """TFC_1W1A: one op per node (31; none are Constant) with 8 BipolarQuant normalized to the QONNX domain, one real input,
    initializers-as-inputs turned into constants, and every shape equal to the reference run's."""
    g = import_onnx(TFC)
    m = onnx.load(TFC)
    assert len(g) == len(m.graph.node) == 31
    counts = g.op_counts()
    assert counts[f"{QONNX_DOMAIN}.BipolarQuant"] == 8
    assert all(op.domain == QONNX_DOMAIN for op in g.ops() if op.op_type == "BipolarQuant")
    assert g.inputs == ["0"] and g.values["0"].shape == (1, 1, 28, 28)
    assert g.values["0"].dtype == "float32" and g.values["0"].domain == REAL
    for t in m.graph.initializer:
        v = g.values[t.name]
        assert v.is_const and np.array_equal(v.const, numpy_helper.to_array(t))
    assert g.values["38"].domain == BIPOLAR
    assert g.outputs == ["74"] and g.values["74"].shape == (1, 10)
    assert g.opset[""] == 9 and g.source == str(TFC)
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    _assert_shapes_match(g, _actual_shapes(m, {"0": x}, "onnx.brevitas"))
    op = g.op("BipolarQuant_11")
    assert op.origin == ("BipolarQuant_11",) and op.inputs == ["35", "36"]
    assert g.op("Transpose_15").attrs == {"perm": [1, 0]}


@needs_tfc
def test_tfc_path_bytes_proto_equal():
    """A path, its bytes and its ModelProto import to equal graphs; only `source` differs."""
    a = import_onnx(TFC)
    b = import_onnx(TFC.read_bytes())
    c = import_onnx(onnx.load(TFC))
    assert a == b == c
    assert (a.source, b.source, c.source) == (str(TFC), "<bytes>", "<ModelProto>")


def test_small_models_path_bytes_proto_equal(tmp_path):
    """Same for the small models, and the caller's ModelProto is not modified."""
    for make in (mlp_sign, conv_net, legacy_brevitas):
        m = make()
        before = m.SerializeToString()
        p = tmp_path / f"{make.__name__}.onnx"
        onnx.save(m, p)
        assert import_onnx(p) == import_onnx(before) == import_onnx(m)
        assert m.SerializeToString() == before


def test_shapes_match_reference_mlp_and_conv():
    """Every op output's shape equals the shape the ONNX reference evaluator computes;
    the symbolic batch dim stays symbolic."""
    g = import_onnx(mlp_sign())
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    _assert_shapes_match(g, _actual_shapes(mlp_sign(), {"x": x}))
    g = import_onnx(conv_net())
    assert g.values["x"].shape == ("N", 1, 8, 8) and g.values["y"].shape == ("N", 10)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    _assert_shapes_match(g, _actual_shapes(conv_net(), {"x": x}), batch={"N": 3})


def test_legacy_brevitas_export_imports():
    """Opset 9, undeclared onnx.brevitas domain and weights listed as inputs still import:
    the weights become constants, shapes flow through the custom ops into the MatMul."""
    m = legacy_brevitas()
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(m)  # the raw file really is rejected by the checker
    g = import_onnx(m)
    assert g.inputs == ["x"]
    assert g.values["W"].is_const and g.values["s"].is_const
    assert g.op("bq_in").domain == QONNX_DOMAIN and g.opset["onnx.brevitas"] == 1
    x = np.random.default_rng(0).standard_normal((1, 6)).astype(np.float32)
    _assert_shapes_match(g, _actual_shapes(m, {"x": x}, "onnx.brevitas"))
    assert g.values["y"].shape == (1, 5) and g.values["q"].dtype == "float32"


def test_initializer_listed_as_input_is_constant():
    """An initializer that is also a graph input is a constant and not a graph input."""
    m = mlp_sign()
    m.graph.input.append(_vi("W1", [8, 4]))
    g = import_onnx(m)
    assert g.inputs == ["x"]
    assert np.array_equal(g.values["W1"].const, numpy_helper.to_array(m.graph.initializer[0]))


def test_constant_nodes_become_values_and_attrs_convert():
    """Constant nodes are constant values, not ops; tensor attributes become arrays, strings str."""
    nodes = [helper.make_node("Constant", [], ["k"], name="const",
                              value=numpy_helper.from_array(np.array([1, -1], np.int64))),
             helper.make_node("Constant", [], ["f"], value_float=0.5),
             helper.make_node("Unsqueeze", ["x", "k"], ["u"], name="unsq"),
             helper.make_node("Mul", ["u", "f"], ["m"]),
             helper.make_node("ConstantOfShape", ["sh"], ["z"], name="cos",
                              value=numpy_helper.from_array(np.array([0.25], np.float32))),
             helper.make_node("Pad", ["x", "pads"], ["y"], name="pad", mode="reflect")]
    m = _model(nodes, [_vi("x", [2, 3])], [_vi("m", [2, 1, 3, 1]), _vi("z", [2]), _vi("y", [2, 5])],
               [numpy_helper.from_array(np.array([2], np.int64), "sh"),
                numpy_helper.from_array(np.array([0, 1, 0, 1], np.int64), "pads")])
    g = import_onnx(m)
    assert "const" not in g.nx and len(g) == 4
    assert g.values["k"].is_const and g.values["k"].const.tolist() == [1, -1]
    assert g.values["f"].const.dtype == np.float32 and g.values["f"].shape == ()
    assert g.op("Mul_3").origin == ("Mul_3",)
    a = g.op("cos").attrs["value"]
    assert isinstance(a, np.ndarray) and a.tolist() == [0.25]
    assert g.op("pad").attrs["mode"] == "reflect"
    assert g.values["u"].shape == (2, 1, 3, 1) and g.values["z"].shape == (2,)


def test_op_ids_unique_and_deterministic():
    """Unnamed and duplicate-named nodes get `<op_type>_<index>` ids, made unique; origin keeps
    the ONNX name; importing twice gives the same ids."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="dup"),
             helper.make_node("Relu", ["a"], ["b"], name="dup"),
             helper.make_node("Neg", ["b"], ["c"], name="Relu_0"),
             helper.make_node("Abs", ["c"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"], name="last")]
    m = _model(nodes, [_vi("x", [3])], [_vi("y", [3])])
    g = import_onnx(m)
    ids = [op.id for op in g.ops()]
    assert ids == ["Relu_0.1", "Relu_1", "Relu_0", "Abs_3", "last"]
    assert [op.origin for op in g.ops()] == [("dup",), ("dup",), ("Relu_0",), ("Abs_3",), ("last",)]
    assert [op.id for op in import_onnx(m).ops()] == ids


def test_symbolic_unknown_and_bool_inputs():
    """Symbolic dims keep their names, unknown dims get fresh `unk__` names, bool inputs are bin01."""
    t = onnx.TypeProto()
    t.tensor_type.elem_type = F
    t.tensor_type.shape.dim.add().dim_param = "B"
    t.tensor_type.shape.dim.add()  # neither value nor name
    x = helper.make_value_info("x", t)
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Not", ["c"], ["nc"])]
    g = import_onnx(_model(nodes, [x, _vi("c", [2], TensorProto.BOOL)],
                           [helper.make_value_info("y", t), _vi("nc", [2], TensorProto.BOOL)]))
    assert g.values["x"].shape == ("B", "unk__0") and g.values["x"].domain == REAL
    assert g.values["y"].shape == ("B", "unk__0")  # the fresh name flows through inference
    assert g.values["c"].dtype == "bool" and g.values["c"].domain == BIN01
    assert g.values["nc"].dtype == "bool"


def test_nodes_out_of_order_are_sorted():
    """An acyclic graph whose nodes are listed out of order imports (ONNX Runtime accepts it too)."""
    m = mlp_sign()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    g = import_onnx(m)
    assert [op.id for op in g.ops()] == ["mm1", "add1", "sign1", "mm2"]
    assert g == import_onnx(mlp_sign())


# -- load errors --------------------------------------------------------------------------------
def _raises(cls, model, *words, **kw):
    with pytest.raises(cls) as ei:
        import_onnx(model, **kw)
    e = ei.value
    assert type(e) is cls and not getattr(e, "internal", False), e
    assert e.hint, e
    for w in words:
        assert w in str(e), (w, str(e))
    return e


def test_missing_file_and_directory(tmp_path):
    """A missing path and a directory are load errors naming the path."""
    p = tmp_path / "nope.onnx"
    e = _raises(ModelLoadError, p, str(p), "no such file")
    assert e.file == str(p)
    _raises(ModelLoadError, tmp_path, str(tmp_path), "directory")


def test_truncated_bytes(tmp_path):
    """Truncated model bytes (from a file or as bytes) are a load error, not a protobuf traceback."""
    data = TFC.read_bytes() if TFC.exists() else conv_net().SerializeToString()
    cut = data[: len(data) // 2]
    _raises(ModelLoadError, cut, "<bytes>", "not a readable ONNX model")
    p = tmp_path / "cut.onnx"
    p.write_bytes(cut)
    _raises(ModelLoadError, p, str(p), "truncated")


def test_garbage_and_empty_bytes(tmp_path):
    """Non-protobuf bytes, an empty file and a protobuf that is no model are load errors."""
    _raises(ModelLoadError, b"this is not an onnx model at all", "<bytes>")
    _raises(ModelLoadError, bytes(range(256)) * 4, "<bytes>")
    _raises(ModelLoadError, b"", "no ONNX graph")
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    _raises(ModelLoadError, p, str(p), "no ONNX graph")
    _raises(ModelLoadError, onnx.ModelProto(ir_version=8), "<ModelProto>", "no ONNX graph")


# -- external data ------------------------------------------------------------------------------
def _external(tmp_path, location, offset=0, length=None, write=True, data_dir=None):
    """mlp_sign with W1 stored externally at `location` (file holding W1 written in data_dir)."""
    m = mlp_sign()
    w = m.graph.initializer[0]
    raw = numpy_helper.to_array(w).tobytes()
    if write:
        (data_dir or tmp_path).mkdir(parents=True, exist_ok=True)
        ((data_dir or tmp_path) / "w.bin").write_bytes(b"\0" * offset + raw)
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length or len(raw)))):
        w.external_data.add(key=k, value=v)
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    p = model_dir / "m.onnx"
    p.write_bytes(m.SerializeToString())
    return p, m


def test_external_data_inside_folder_loads(tmp_path):
    """External data next to the model (with an offset) loads and equals the inline model."""
    p, _ = _external(tmp_path, "w.bin", offset=16, data_dir=tmp_path / "model")
    assert import_onnx(p) == import_onnx(mlp_sign())
    p, _ = _external(tmp_path, "sub/w.bin", data_dir=tmp_path / "model" / "sub")
    assert import_onnx(p) == import_onnx(mlp_sign())


def test_external_data_outside_folder_refused(tmp_path):
    """`..`, absolute paths and symlinks out of the model's folder are refused, naming the initializer."""
    p, _ = _external(tmp_path, "../w.bin")  # the file exists, one folder up
    _raises(ModelLoadError, p, "'W1'", "..", str(p))
    p, _ = _external(tmp_path, str(tmp_path / "w.bin"))
    _raises(ModelLoadError, p, "'W1'", "absolute")
    p, _ = _external(tmp_path, "link.bin")
    os.symlink(tmp_path / "w.bin", tmp_path / "model" / "link.bin")
    _raises(ModelLoadError, p, "'W1'", "symlink")


def test_external_data_missing_or_short_refused(tmp_path):
    """A missing data file, an offset past its end, a wrong length field, and external data
    without a folder (bytes, ModelProto) are load errors naming the initializer."""
    p, _ = _external(tmp_path, "gone.bin")
    _raises(ModelLoadError, p, "'W1'", "does not exist")
    p, m = _external(tmp_path, "w.bin", data_dir=tmp_path / "model")
    m.graph.initializer[0].external_data[1].value = "100"  # offset
    p.write_bytes(m.SerializeToString())
    _raises(ModelLoadError, p, "'W1'", "offset 100")
    m.graph.initializer[0].external_data[1].value = "0"
    m.graph.initializer[0].external_data[2].value = "7"  # length
    p.write_bytes(m.SerializeToString())
    _raises(ModelLoadError, p, "'W1'", "length field 7")
    _raises(ModelLoadError, m.SerializeToString(), "'W1'", "<bytes>", "external")
    _raises(ModelLoadError, m, "'W1'", "<ModelProto>")


# -- size errors --------------------------------------------------------------------------------
def test_absurd_sizes_refused_before_allocation():
    """Dims of 2**40 elements with tiny data, negative dims, raw data of the wrong length and an
    absurd declared input are refused naming the tensor; max_elements is honoured."""
    m = mlp_sign()
    t = m.graph.initializer[0]
    t.ClearField("float_data")
    del t.dims[:]
    t.dims.extend([2**20, 2**20])
    t.raw_data = b"\0" * 16
    _raises(ModelStructureError, m, "'W1'", "1099511627776 elements", "max_elements")
    t.dims[:] = [-8, -4]
    _raises(ModelStructureError, m, "'W1'", "negative")
    t.dims[:] = [8, 4]
    _raises(ModelStructureError, m, "'W1'", "16 bytes of raw data")
    m = mlp_sign()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2**40
    _raises(ModelStructureError, m, "graph input 'x'", "max_elements")
    _raises(ModelStructureError, mlp_sign(), "'W1'", "max_elements=16", max_elements=16)
    m = mlp_sign()
    m.graph.initializer[0].CopyFrom(helper.make_tensor("W1", F, [8, 4], [1.0] * 32))
    del m.graph.initializer[0].float_data[3:]
    _raises(ModelStructureError, m, "'W1'", "holds 3 values")


def test_absurd_inferred_size_refused():
    """An op whose inferred output is absurdly big (ConstantOfShape of 2**40) is refused naming it."""
    nodes = [helper.make_node("ConstantOfShape", ["sh"], ["z"], name="huge")]
    m = _model(nodes, [], [_vi("z", ["a", "b"])],
               [numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "sh")])
    _raises(ModelStructureError, m, "'huge'", "max_elements")


# -- structure errors ---------------------------------------------------------------------------
def test_cycle_names_its_ops():
    """Nodes that feed each other are a structure error naming every op of the cycle."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="head"),
             helper.make_node("Add", ["a", "c"], ["b"], name="left"),
             helper.make_node("Neg", ["b"], ["c"], name="right"),
             helper.make_node("Relu", ["b"], ["y"], name="tail")]
    e = _raises(ModelStructureError, _model(nodes, [_vi("x", [2])], [_vi("y", [2])]), "cycle", "'left'", "'right'")
    assert "'head'" not in str(e) and "'tail'" not in str(e)
    selfloop = [helper.make_node("Add", ["x", "s"], ["s"], name="loop")]
    _raises(ModelStructureError, _model(selfloop, [_vi("x", [2])], [_vi("s", [2])]), "cycle", "'loop'")


def test_undefined_input_and_duplicate_outputs():
    """An input no one defines, and a value defined twice, are structure errors naming the node."""
    m = mlp_sign()
    m.graph.node[1].input[1] = "nowhere"
    _raises(ModelStructureError, m, "'nowhere'", "'add1'", "never defined")
    m = mlp_sign()
    m.graph.node[2].output[0] = "h"
    _raises(ModelStructureError, m, "'h'", "'sign1'", "already defined")
    m = mlp_sign()
    m.graph.node[0].output[0] = "W2"
    _raises(ModelStructureError, m, "'W2'", "initializer")
    m = mlp_sign()
    m.graph.output[0].name = "zz"
    _raises(ModelStructureError, m, "'zz'", "graph output")


def test_matmul_shape_mismatch_names_node():
    """MatMul with inner dims 8 vs 5 is a structure error naming the node, also behind a QONNX op."""
    m = mlp_sign()
    m.graph.initializer[0].CopyFrom(_w("W1", [5, 4]))
    _raises(ModelStructureError, m, "'mm1'", "MatMul", "Incompatible")
    m = legacy_brevitas()
    m.graph.initializer[0].CopyFrom(_w("W", [6, 5]))
    m.graph.input[1].CopyFrom(_vi("W", [6, 5]))
    _raises(ModelStructureError, m, "'mm'", "MatMul")


def test_checker_errors_become_structure_errors():
    """A model the ONNX checker rejects (unknown attribute on a standard op) names the node."""
    m = mlp_sign()
    m.graph.node[2].attribute.append(helper.make_attribute("bogus", 1))
    _raises(ModelStructureError, m, "checker", "sign1")


# -- unsupported --------------------------------------------------------------------------------
def test_opset_8_refused():
    """Opset 8 is an UnsupportedModelError saying to re-export with opset >= 9."""
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    _raises(UnsupportedModelError, _model(nodes, [_vi("x", [2])], [_vi("y", [2])], opset=8), "opset 8", "9")


def test_all_unsupported_ops_listed_at_once():
    """Two unsupported nodes (standard and custom domain) are reported in one error, with names
    and the supported set."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("LSTMish", ["a"], ["b"], name="weird1"),
             helper.make_node("FancyOp", ["b"], ["y"], name="weird2", domain="com.example")]
    m = _model(nodes, [_vi("x", [2])], [_vi("y", [2])], extra_opsets=[helper.make_opsetid("com.example", 1)])
    e = _raises(UnsupportedModelError, m, "2 unsupported", "'weird1' (LSTMish, domain '')",
                "'weird2' (FancyOp, domain 'com.example')", "BipolarQuant", "MatMul")
    assert e.unsupported == [("weird1", "LSTMish", ""), ("weird2", "FancyOp", "com.example")]


def test_subgraph_attribute_refused():
    """A graph-valued attribute (here on a QONNX op the checker cannot inspect) is unsupported."""
    m = legacy_brevitas()
    body = helper.make_graph([], "body", [], [])
    m.graph.node[0].attribute.append(helper.make_attribute("body", body))
    _raises(UnsupportedModelError, m, "'bq_in'", "subgraph")


def test_error_message_names_file(tmp_path):
    """Errors from a file name the file in their text."""
    m = mlp_sign()
    m.graph.node[1].input[1] = "nowhere"
    p = tmp_path / "broken.onnx"
    onnx.save(m, p)
    e = _raises(ModelStructureError, p)
    assert str(p) in str(e) and e.file == str(p) and e.node == "add1"
    assert isinstance(e, TamecError)


def test_custom_op_arity_checked():
    """A QONNX op with too few inputs (which the ONNX checker cannot see) names the node."""
    m = legacy_brevitas()
    del m.graph.node[0].input[1:]
    _raises(ModelStructureError, m, "'bq_in'", "BipolarQuant takes 2 inputs")


def test_tamec_ops_and_ai_onnx_domain():
    """tamec's own Linear/Threshold get shapes from their semantics (y = x W^T + B), and nodes in
    the domain spelled 'ai.onnx' import as standard ops."""
    nodes = [helper.make_node("Linear", ["x", "W", "B"], ["z"], name="lin", domain="tamec"),
             helper.make_node("Threshold", ["z"], ["t"], name="thr", domain="tamec",
                              tau=numpy_helper.from_array(np.zeros(2)), lo=-1.0, hi=1.0, tie=1.0),
             helper.make_node("Relu", ["t"], ["y"], name="relu", domain="ai.onnx")]
    m = _model(nodes, [_vi("x", [1, 3])], [_vi("y", [1, 2])], [_w("W", [2, 3]), _w("B", [2])],
               extra_opsets=[helper.make_opsetid("tamec", 1)])
    g = import_onnx(m)
    assert g.values["z"].shape == (1, 2) and g.values["t"].shape == (1, 2)
    assert g.op("lin").domain == "tamec" and g.op("relu").domain == ""
    assert g.op("thr").attrs["tau"].dtype == np.float64
    m.graph.initializer[0].CopyFrom(_w("W", [2, 4]))
    _raises(ModelStructureError, m, "'lin'", "MatMul")


def shape_chain(opset: int) -> onnx.ModelProto:
    """Reshape targets computed from Shape/Size through Slice, Squeeze, Cast, Mul, Unsqueeze and
    Concat, in the attribute form (opset 9) or the input form (opset 13)."""
    c = {n: numpy_helper.from_array(np.array(v, np.int64), n)
         for n, v in (("two", [1, 1]), ("st", [2]), ("en", [100]), ("ax", [0]), ("z", [0]), ("one", [1]))}
    if opset == 9:
        chain = [helper.make_node("Slice", ["s"], ["hw"], starts=[2], ends=[100], axes=[0]),
                 helper.make_node("Slice", ["s"], ["b1"], starts=[0], ends=[1]),
                 helper.make_node("Squeeze", ["b1"], ["b"], axes=[0]),
                 helper.make_node("Unsqueeze", ["b"], ["bu"], axes=[0]),
                 helper.make_node("Unsqueeze", ["n"], ["nn"], axes=[0])]
        inits = [c["two"]]
    else:
        chain = [helper.make_node("Slice", ["s", "st", "en", "ax"], ["hw"]),
                 helper.make_node("Slice", ["s", "z", "one"], ["b1"]),
                 helper.make_node("Squeeze", ["b1", "ax"], ["b"]),
                 helper.make_node("Unsqueeze", ["b", "ax"], ["bu"]),
                 helper.make_node("Unsqueeze", ["n", "ax"], ["nn"])]
        inits = list(c.values())
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Size", ["x"], ["n"]), *chain,
             helper.make_node("Cast", ["hw"], ["hwf"], to=TensorProto.INT64),
             helper.make_node("Mul", ["hwf", "two"], ["hw2"]),
             helper.make_node("Concat", ["bu", "hw2"], ["tgt"], axis=0),
             helper.make_node("Reshape", ["x", "tgt"], ["y"]),
             helper.make_node("Reshape", ["x", "nn"], ["flat"])]
    return _model(nodes, [_vi("x", [2, 1, 4, 4])], [_vi("y", ["a", "b", "c"]), _vi("flat", ["d"])],
                  inits, opset=opset)


@pytest.mark.parametrize("opset", [9, 13])
def test_shape_arithmetic_folded_like_onnxruntime(opset):
    """Reshape outputs whose target is computed from Shape get the shapes onnxruntime produces."""
    ort = pytest.importorskip("onnxruntime")
    m = shape_chain(opset)
    g = import_onnx(m)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    y, flat = sess.run(None, {"x": np.zeros((2, 1, 4, 4), np.float32)})
    assert g.values["y"].shape == y.shape == (2, 4, 4)
    assert g.values["flat"].shape == flat.shape == (32,)
    assert g.values["tgt"].shape == (3,) and g.values["b"].shape == ()


@pytest.mark.parametrize("make", [lambda: TFC, mlp_sign, conv_net, legacy_brevitas, lambda: shape_chain(9)],
                         ids=["tfc", "mlp_sign", "conv_net", "legacy_brevitas", "shape_chain"])
def test_imported_graphs_round_trip_through_text(make):
    """What the importer builds prints and parses back to an equal graph (fixtures can be text)."""
    from tamec.ir.text import parse_graph, print_graph
    model = make()
    if isinstance(model, Path) and not model.exists():
        pytest.skip("TFC_1W1A.onnx not present")
    g = import_onnx(model)
    assert parse_graph(print_graph(g, full=True)) == g


def test_bad_arguments_are_usage_errors():
    """A model of the wrong type or a non-positive max_elements is a UsageError, not a TypeError."""
    from tamec.errors import UsageError
    with pytest.raises(UsageError):
        import_onnx(123)
    with pytest.raises(UsageError):
        import_onnx(mlp_sign(), max_elements=0)
