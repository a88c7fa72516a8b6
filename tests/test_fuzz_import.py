"""Fuzzing the ONNX importer: for any bytes and any mangled ModelProto, import either succeeds with
a well-formed graph or raises a TamecError that names the file; nothing else escapes, nothing hangs."""
from __future__ import annotations

import atexit
import shutil
import signal
import tempfile
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from onnx import TensorProto, helper, numpy_helper

from tamec.errors import TamecError
from tamec.frontend.onnx import import_onnx
from tamec.ir.graph import Graph

TFC = Path(__file__).resolve().parents[2] / "shared/models/TFC_1W1A.onnx"
F = TensorProto.FLOAT
HANG_SECONDS = 5.0
FUZZ = settings(deadline=timedelta(seconds=3), suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])


# -- seed models --------------------------------------------------------------------------------
def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _w(name, shape, seed, binary=True):
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(np.where(a >= 0, 1.0, -1.0).astype(np.float32) if binary else a, name)


def _mlp_sign() -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["s"], name="add1"),
             helper.make_node("Sign", ["s"], ["a"], name="sign1"),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="mm2")]
    g = helper.make_graph(nodes, "mlp", [_vi("x", [1, 8])], [_vi("y", [1, 3])],
                          [_w("W1", [8, 4], 1), _w("b1", [4], 2, False), _w("W2", [4, 3], 3)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _conv_net() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["n"], name="bn"),
             helper.make_node("Sign", ["n"], ["q"], name="sign"),
             helper.make_node("MaxPool", ["q"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Shape", ["p"], ["ps"], name="shape"),
             helper.make_node("Gather", ["ps", "zero"], ["b"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["b", "zero1"], ["b1"], name="unsq"),
             helper.make_node("Concat", ["b1", "minus1"], ["tgt"], name="cat", axis=0),
             helper.make_node("Reshape", ["p", "tgt"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "Wf"], ["y"], name="fc", transB=1)]
    inits = [_w("Wc", [4, 1, 3, 3], 1), _w("g", [4], 2, False), _w("be", [4], 3, False),
             _w("mu", [4], 4, False), numpy_helper.from_array(np.full(4, 2.0, np.float32), "var"),
             _w("Wf", [10, 64], 5), numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "zero1"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    g = helper.make_graph(nodes, "conv", [_vi("x", [1, 1, 8, 8])], [_vi("y", [1, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _qonnx_net() -> onnx.ModelProto:
    """QONNX ops (Quant, MultiThreshold, BipolarQuant) with Constant nodes, opset 11."""
    q = "qonnx.custom_op.general"
    nodes = [helper.make_node("Constant", [], ["sc"], value=numpy_helper.from_array(np.array(1.0, np.float32))),
             helper.make_node("Quant", ["x", "sc", "zp", "bw"], ["xq"], name="quant", domain=q,
                              signed=1, narrow=0, rounding_mode="ROUND"),
             helper.make_node("MultiThreshold", ["xq", "thr"], ["t"], name="mt", domain=q,
                              out_dtype="BIPOLAR", out_scale=2.0, out_bias=-1.0),
             helper.make_node("BipolarQuant", ["W", "sc"], ["wq"], name="bq", domain="finn"),
             helper.make_node("MatMul", ["t", "wq"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zp"),
             numpy_helper.from_array(np.array(4.0, np.float32), "bw"),
             numpy_helper.from_array(np.zeros((6, 1), np.float32), "thr"), _w("W", [6, 2], 7, False)]
    g = helper.make_graph(nodes, "qnet", [_vi("x", [1, 6])], [_vi("y", [1, 2])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 11), helper.make_opsetid(q, 1),
                                               helper.make_opsetid("finn", 1)])


def _shape_chain9() -> onnx.ModelProto:
    """Opset 9 shape arithmetic (attribute forms) that the importer folds to find Reshape targets."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Size", ["x"], ["n"]),
             helper.make_node("Slice", ["s"], ["hw"], starts=[2], ends=[100], axes=[0]),
             helper.make_node("Slice", ["s"], ["b1"], starts=[0], ends=[1]),
             helper.make_node("Squeeze", ["b1"], ["b"], axes=[0]),
             helper.make_node("Unsqueeze", ["b"], ["bu"], axes=[0]),
             helper.make_node("Unsqueeze", ["n"], ["nn"], axes=[0]),
             helper.make_node("Cast", ["hw"], ["hwf"], to=TensorProto.INT64),
             helper.make_node("Mul", ["hwf", "two"], ["hw2"]),
             helper.make_node("Concat", ["bu", "hw2"], ["tgt"], axis=0),
             helper.make_node("Reshape", ["x", "tgt"], ["y"]),
             helper.make_node("Reshape", ["x", "nn"], ["flat"]),
             helper.make_node("Gather", ["s", "idx"], ["g"], axis=0)]
    g = helper.make_graph(nodes, "chain", [_vi("x", [2, 1, 4, 4])],
                          [_vi("y", ["a", "b", "c"]), _vi("flat", ["d"]), _vi("g", [2], TensorProto.INT64)],
                          [numpy_helper.from_array(np.array([1, 1], np.int64), "two"),
                           numpy_helper.from_array(np.array([0, -1], np.int64), "idx")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])


@lru_cache(maxsize=None)
def _seed_bytes() -> tuple[bytes, ...]:
    seeds = [m().SerializeToString() for m in (_mlp_sign, _conv_net, _qonnx_net, _shape_chain9)]
    if TFC.exists():
        seeds.append(TFC.read_bytes())
    return tuple(seeds)


def _seed_model(k: int) -> onnx.ModelProto:
    return onnx.load_model_from_string(_seed_bytes()[k])


# -- the property -------------------------------------------------------------------------------
class Hang(BaseException):
    """Raised by the alarm; a BaseException so no `except Exception` in the importer can swallow it."""


@contextmanager
def _alarm(seconds: float):
    if not hasattr(signal, "setitimer"):  # no SIGALRM (Windows): rely on hypothesis' deadline
        yield
        return

    def fire(*_):
        raise Hang(f"import_onnx ran longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _event(what: str) -> None:
    """Count outcomes for --hypothesis-show-statistics (a no-op outside a hypothesis test)."""
    try:
        event(what)
    except InvalidArgument:
        pass


def _check_import(model) -> None:
    """Import succeeds with a consistent graph, or fails with a located, non-internal TamecError."""
    try:
        with _alarm(HANG_SECONDS):
            g = import_onnx(model)
    except TamecError as e:
        _event(f"{type(e).__name__}: {e.message[:40]}")
        assert not getattr(e, "internal", False), f"internal error escaped a check: {e!r} from {e.__cause__!r}"
        assert e.file, f"error does not name the file: {e}"
        assert e.hint, f"error has no hint: {e}"
        return
    _event("imported")
    assert isinstance(g, Graph)
    order = g.ops()  # topologically sortable
    for op in order:
        assert all(i in g.values for i in op.inputs if i) and all(o in g.values for o in op.outputs)
    assert all(n in g.values for n in (*g.inputs, *g.outputs))


# -- byte-level fuzzing -------------------------------------------------------------------------
@st.composite
def _mutated_bytes(draw) -> bytes:
    data = bytearray(_seed_bytes()[draw(st.integers(0, len(_seed_bytes()) - 1))])
    # Mostly one or two length-preserving edits, which keep the protobuf parseable often enough
    # to reach the later checks; deletions and insertions mostly test the parser.
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3]))):
        n = len(data)
        # Graph structure sits at both ends of a serialized model (nodes first, inputs and
        # outputs after the initializers): aim there often, not only into weight bytes.
        region = draw(st.sampled_from(["head", "tail", "any"]))
        lo, hi = {"head": (0, min(n, 3000)), "tail": (max(0, n - 3000), n), "any": (0, n)}[region]
        pos = draw(st.integers(lo, max(lo, hi - 1))) if n else 0
        kind = draw(st.sampled_from(["flip", "flip", "flip", "set", "set", "delete", "insert",
                                     "truncate", "duplicate"]))
        if kind == "flip" and n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and n:
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "duplicate" and n:
            chunk = data[pos:pos + draw(st.integers(1, 64))]
            data[pos:pos] = chunk
    return bytes(data)


@settings(FUZZ, max_examples=1500)
@given(_mutated_bytes())
def test_fuzz_mutated_bytes(data):
    """Flipped, deleted, inserted, duplicated and truncated bytes of real and small models."""
    _check_import(data)


@settings(FUZZ, max_examples=200)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data):
    """Arbitrary bytes, most of them not protobuf at all."""
    _check_import(data)


def test_truncations_of_small_models():
    """Truncations of each small seed model at about 250 evenly spaced cut points."""
    for data in _seed_bytes()[:4]:
        for cut in range(0, len(data), max(1, len(data) // 250)):
            _check_import(data[:cut])


# -- structured fuzzing -------------------------------------------------------------------------
OP_TYPES = ["Relu", "MatMul", "Add", "Sign", "Reshape", "Conv", "Gemm", "Concat", "Gather", "Shape",
            "BipolarQuant", "Quant", "MultiThreshold", "Trunc", "Constant", "Identity", "Transpose",
            "Unsqueeze", "Squeeze", "Slice", "BatchNormalization", "MaxPool", "Flatten", "If", "Loop",
            "NoSuchOp", "", "Linear", "Threshold", "ConstantOfShape", "Expand", "Range", "Pad", "Cast"]
DOMAINS = ["", "ai.onnx", "onnx.brevitas", "finn", "qonnx.custom_op.general", "tamec", "com.example"]
DIMS = [0, 1, 2, 3, 64, -1, -(2**40), 2**31, 2**62, 10**6]


def _names(m: onnx.ModelProto) -> list[str]:
    g = m.graph
    return sorted({*(i.name for i in g.input), *(t.name for t in g.initializer),
                   *(o for n in g.node for o in n.output)}) or ["x"]


def _mutate(m: onnx.ModelProto, draw) -> None:
    """One structural change of `m`, in place."""
    g = m.graph
    kind = draw(st.sampled_from([
        "dims", "op_type", "domain", "drop_init", "rename_input", "cycle", "drop_node", "attr",
        "opset", "data_type", "dup_node", "output_name", "elem_type", "value_info", "init_as_input",
        "raw_len", "empty_name", "external", "swap_nodes", "int_values", "int_values"]))
    k_node = draw(st.integers(0, max(0, len(g.node) - 1)))
    node = g.node[k_node] if len(g.node) else None
    names = _names(m)
    if kind == "dims":
        target = draw(st.sampled_from(["init", "input", "output"]))
        if target == "init" and len(g.initializer):
            t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
            dims = draw(st.lists(st.sampled_from(DIMS), max_size=4))
            del t.dims[:]
            t.dims.extend(dims)
        else:
            vis = g.input if target == "input" else g.output
            if len(vis):
                shape = vis[draw(st.integers(0, len(vis) - 1))].type.tensor_type.shape
                if len(shape.dim):
                    shape.dim[draw(st.integers(0, len(shape.dim) - 1))].dim_value = draw(st.sampled_from(DIMS))
                else:
                    shape.dim.add().dim_value = draw(st.sampled_from(DIMS))
    elif kind == "op_type" and node is not None:
        node.op_type = draw(st.sampled_from(OP_TYPES))
    elif kind == "domain" and node is not None:
        node.domain = draw(st.sampled_from(DOMAINS))
    elif kind == "drop_init" and len(g.initializer):
        del g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
    elif kind == "rename_input" and node is not None and len(node.input):
        j = draw(st.integers(0, len(node.input) - 1))
        node.input[j] = draw(st.one_of(st.sampled_from(names), st.text(max_size=6)))
    elif kind == "cycle" and node is not None and len(node.input):
        later = [o for n in g.node[k_node:] for o in n.output if o]
        if later:
            node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(later))
    elif kind == "drop_node" and node is not None:
        del g.node[k_node]
    elif kind == "attr" and node is not None:
        name = draw(st.sampled_from(["axis", "perm", "to", "value", "axes", "body", "kernel_shape", "x"]))
        value = draw(st.sampled_from([0, -5, 7, [1, 0], [2**40], 1.5, "ROUND", b"\xff\xfe",
                                      numpy_helper.from_array(np.array([3, -1], np.int64)),
                                      helper.make_graph([], "sub", [], [])]))
        node.attribute.append(helper.make_attribute(name, value))
    elif kind == "opset":
        m.opset_import[0].version = draw(st.sampled_from([1, 7, 8, 9, 11, 13, 17, 21, 99, -3]))
    elif kind == "data_type" and len(g.initializer):
        g.initializer[draw(st.integers(0, len(g.initializer) - 1))].data_type = draw(st.integers(0, 30))
    elif kind == "dup_node" and node is not None:
        g.node.add().CopyFrom(node)
    elif kind == "output_name" and len(g.output):
        g.output[0].name = draw(st.sampled_from(names + ["", "ghost"]))
    elif kind == "elem_type" and len(g.input):
        g.input[0].type.tensor_type.elem_type = draw(st.integers(0, 30))
    elif kind == "value_info":
        vi = g.value_info.add()
        vi.CopyFrom(helper.make_tensor_value_info(
            draw(st.sampled_from(names)), draw(st.sampled_from([F, TensorProto.INT64, TensorProto.BOOL])),
            draw(st.lists(st.sampled_from(DIMS[:5]), max_size=4))))
    elif kind == "init_as_input" and len(g.initializer):
        t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        g.input.append(helper.make_tensor_value_info(t.name, t.data_type or F, list(t.dims)))
    elif kind == "raw_len" and len(g.initializer):
        t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        t.raw_data = t.raw_data[: draw(st.integers(0, max(0, len(t.raw_data))))] + draw(st.binary(max_size=8))
    elif kind == "empty_name" and node is not None and len(node.output):
        node.output[0] = ""
    elif kind == "external" and len(g.initializer):
        t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        t.data_location = TensorProto.EXTERNAL
        t.ClearField("raw_data")
        t.external_data.add(key="location", value=draw(st.sampled_from(
            ["w.bin", "link.bin", "../w.bin", "/etc/passwd", "sub/../w.bin", "gone.bin", "", ".", "sub"])))
        for key in draw(st.lists(st.sampled_from(["offset", "length", "checksum"]), max_size=2, unique=True)):
            t.external_data.add(key=key, value=draw(st.sampled_from(["0", "4", "-1", "x", "99999", str(2**70)])))
    elif kind == "int_values":  # new values for a small integer initializer (shape targets, indices)
        ints = [t for t in g.initializer if t.data_type == TensorProto.INT64]
        if ints:
            t = ints[draw(st.integers(0, len(ints) - 1))]
            vals = draw(st.lists(st.sampled_from([0, 1, -1, 2, 3, -7, 64, 2**31, -(2**40), 2**62]),
                                 max_size=5))
            t.CopyFrom(numpy_helper.from_array(np.array(vals, np.int64), t.name))
    elif kind == "swap_nodes" and len(g.node) > 1:
        j = draw(st.integers(0, len(g.node) - 1))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(g.node[k_node])
        b.CopyFrom(g.node[j])
        g.node[k_node].CopyFrom(b)
        g.node[j].CopyFrom(a)


@lru_cache(maxsize=None)
def _model_dir() -> Path:
    """A folder for file-based imports: data `w.bin`, a folder `sub`, and `link.bin`, a symlink to a
    file outside it (kept for the whole session)."""
    root = Path(tempfile.mkdtemp(prefix="tamec-fuzz-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    (root / "outside.bin").write_bytes(bytes(range(256)) * 64)
    d = root / "model"
    (d / "sub").mkdir(parents=True)
    (d / "w.bin").write_bytes(np.ones(4096, np.float32).tobytes())
    (d / "link.bin").symlink_to(root / "outside.bin")
    return d


@st.composite
def _mutated_model(draw) -> onnx.ModelProto:
    m = _seed_model(draw(st.integers(0, len(_seed_bytes()) - 1)))
    for _ in range(draw(st.integers(1, 3))):
        _mutate(m, draw)
    return m


@settings(FUZZ, max_examples=2500)
@given(_mutated_model(), st.sampled_from(["proto", "bytes", "file"]))
def test_fuzz_structured_mutations(m, form):
    """Changed dims, op types, domains, attributes, opsets and dtypes; removed initializers and
    nodes; renamed inputs; cycles; external data; given as a ModelProto, as bytes or as a file
    in a folder with external data files and a symlink pointing out of it."""
    try:
        data = m.SerializeToString()
    except Exception:  # noqa: BLE001 -- protobuf refuses some mutations itself; import the proto
        form = "proto"
    if form == "file":
        path = _model_dir() / "m.onnx"
        path.write_bytes(data)
        _check_import(path)
    else:
        _check_import(data if form == "bytes" else m)


def test_seeds_import():
    """The unmutated seeds import: the fuzzers start from valid models."""
    for data in _seed_bytes():
        assert len(import_onnx(data)) > 0
