"""The text form round-trips (`parse_graph(print_graph(g, full=True)) == g`), prints deterministically,
and `diff_graphs` / `diff_text` report each kind of change by stable id."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tamec.errors import ModelStructureError
from tamec.ir.diff import diff_graphs, diff_text
from tamec.ir.graph import BIN01, BIPOLAR, REAL, TERNARY, Domain, Graph, Op, Value
from tamec.ir.text import _NAME, parse_graph, print_graph


def roundtrip(g: Graph) -> Graph:
    """Print in full, parse back, and check equality, idempotence and a stable second print."""
    text = print_graph(g, full=True)
    assert print_graph(g, full=True) == text
    h = parse_graph(text)
    assert h == g, f"round trip changed the graph:\n{text}\n{print_graph(h, full=True)}"
    assert print_graph(h, full=True) == text
    assert diff_graphs(g, h) == [] and diff_text(text, print_graph(h, full=True)) == []
    return h


def zoo_graph() -> Graph:
    """One graph with every feature of the text form."""
    g = Graph("zoo \"graph\"", {"": 13, "tamec": 1, "qonnx.custom_op.general": 1})
    g.add_value(Value("0", ("N", 3, 4, 4), "float32"))
    g.add_value(Value("in put", ("batch", 5), "float64", bounds=(np.full(5, -1.0), np.arange(5.0))))
    g.add_value(Value('q"uote', None, "int64", Domain.integer(-8, 8, 2)))
    g.inputs = ["0", "in put", 'q"uote']
    g.add_const("w", np.array([[1, -1, 1], [-1, -1, 1]], np.float32))
    g.add_const("big", np.linspace(-1, 1, 300).astype(np.float32))  # past `inline`: base64
    g.add_const("special", np.array([np.nan, np.inf, -np.inf, -0.0, 1e-300], np.float64))
    g.add_const("mask", np.array([True, False, True]))
    g.add_const("1st", np.array(7, np.int8), Domain.integer(7, 7))
    g.add_const("empty", np.zeros((0, 2), np.float32))

    def val(name, shape, dtype="float32", dom=REAL, bounds=None):
        g.add_value(Value(name, shape, dtype, dom, bounds=bounds))
        return name

    g.add_op(Op("Conv 1", "Conv", ["0", "w", ""], [val("c", ("N", 2, 4, 4))],
                {"pads": [1, 1, 1, 1], "kernel_shape": [1, 1], "auto_pad": "NOTSET", "group": 1}))
    g.add_op(Op("thr", "Threshold", ["c"], [val("t", ("N", 2, 4, 4), dom=BIPOLAR,
                                                 bounds=(np.array(-1.0), np.array(1.0)))],
                {"tau": np.array([0.5, np.nan]), "flip": np.array([False, True]), "axis": 1,
                 "lo": -1.0, "hi": 1.0, "tie": 0.0, "inf_tau": np.array([np.inf, -np.inf])},
                domain="tamec", origin=("BatchNormalization_17", "Sign \"18\"")))
    g.add_op(Op("split", "Split", ["t"], [val("s0", ("N", 1, 4, 4), dom=BIPOLAR),
                                          val("s1", ("N", 1, 4, 4), dom=BIPOLAR)],
                {"axis": 1, "split_f": 0.1, "neg": -3, "flag": True, "names": ["a b", "\u00e9\n"],
                 "floats": [1.5, -2.25, 1e-30], "ints": [1, -2], "none": [], "text": "x}y,z\"",
                 "big_t": np.arange(40, dtype=np.int64), "scalar_t": np.array(2.5, np.float32)},
                origin=()))
    g.add_op(Op("bq", "BipolarQuant", ["s1", "big"], [val("b", ("N", 1, 4, 4), dom=TERNARY)],
                domain="qonnx.custom_op.general", origin=("bq",)))
    g.add_op(Op("16", "Add", ["s0", "b"], [val("sum", ("N", 1, 4, 4), dom=Domain.integer(-2, 2))]))
    g.add_op(Op("mix", "Where", ["mask", "special", "1st"], [val("m", None, "float64", dom=BIN01)]))
    g.add_op(Op("cat", "Concat", ["empty", "empty"], [val("e", (0, 4))], {"axis": 1}))
    g.outputs = ["sum", "m", "e", "in put"]
    return g


def test_zoo_round_trip():
    """Every attribute kind, NaN/inf tensors, symbolic dims, bounds, empty optional inputs, quoted
    names, a multi-output op and elided origins survive print -> parse unchanged."""
    g = zoo_graph()
    h = roundtrip(g)
    assert h.op("Conv 1").inputs == ["0", "w", ""]
    assert np.isnan(h.op("thr").attrs["tau"][1]) and h.op("split").attrs["names"] == ["a b", "\u00e9\n"]
    assert h.values["in put"].bounds[1].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert h.op("thr").origin == ("BatchNormalization_17", 'Sign "18"') and h.op("split").origin == ()


def test_print_is_deterministic_and_stable_under_copy():
    """The same graph built twice, or copied, prints to identical text (no id(), no set order)."""
    a, b = zoo_graph(), zoo_graph()
    assert print_graph(a) == print_graph(b) == print_graph(a.copy())
    assert print_graph(a, full=True) == print_graph(b, full=True)


def test_default_print_elides_and_parse_says_so():
    """The default dump shows digests for big constants; parsing it fails with a clear hint."""
    text = print_graph(zoo_graph())
    assert "<sha256:" in text and 'b64"' not in text
    with pytest.raises(ModelStructureError, match="full=True"):
        parse_graph(text)


def test_text_format_matches_documented_example():
    """The lines look like the module docstring says: inputs, consts, `%out = op(...) : type @id <- origin`."""
    g = Graph("tfc", {"": 9})
    g.add_value(Value("0", (1, 784), "float32"))
    g.inputs = ["0"]
    g.add_const("38", np.ones((64, 784), np.float32), BIPOLAR)
    g.add_value(Value("42", (1, 64), "float32"))
    g.add_op(Op("MatMul_16", "MatMul", ["0", "38"], ["42"], origin=("MatMul_16",)))
    g.outputs = ["42"]
    lines = print_graph(g).splitlines()
    assert lines[0] == 'graph "tfc" opset(""=9) {'
    assert lines[1] == "  input %0 : f32[1,784] real"
    assert re.fullmatch(r"  const %38 : f32\[64,784\] bipolar = <sha256:[0-9a-f]{12} n=50176 min=1.0 max=1.0>",
                        lines[2])
    assert lines[3] == "  %42 = MatMul(%0, %38) : f32[1,64] real @MatMul_16"
    assert lines[4:] == ["  output %42", "}"]


# -- names and attributes exporters write that are awkward for a text form ---------------------------

def _one_op(op_id="op", dims=(2,), attrs=None) -> Graph:
    g = Graph()
    g.add_value(Value("x", dims, "float32"))
    g.inputs = ["x"]
    g.add_value(Value("y", dims, "float32"))
    g.add_op(Op(op_id, "Relu", ["x"], ["y"], attrs or {}, origin=(op_id,)))
    g.outputs = ["y"]
    return g


@pytest.mark.parametrize("op_id", ["/features.0/MatMul", "0abc", "-x", ".a"])
def test_op_ids_from_pytorch_round_trip(op_id):
    """Op ids as PyTorch and other exporters write them survive the round trip."""
    roundtrip(_one_op(op_id))


@pytest.mark.parametrize("dim", ["batch size", "2N"])
def test_odd_symbolic_dims_round_trip(dim):
    """Symbolic dim names exporters write (ONNX allows any string) survive the round trip."""
    roundtrip(_one_op(dims=(dim, 3)))


@pytest.mark.parametrize("attrs", [{"f": float("nan")}, {"fs": [1.0, float("nan")]},
                                   {"ts": [np.ones(2), np.zeros(3)]}])
def test_nan_and_tensor_list_attributes_round_trip(attrs):
    """NaN float attributes and lists of tensors (ONNX FLOAT/FLOATS/TENSORS) survive the round trip."""
    roundtrip(_one_op(attrs=attrs))


# -- property test ------------------------------------------------------------------------------------

# Names the printer quotes, or bare names its parser reads back; ids with the bare-name gap above
# (e.g. "/a", "0a") are covered by the tests above.
_ANY = st.text(min_size=1, max_size=8)
_VALUE_NAMES = st.one_of(st.from_regex(r"[A-Za-z0-9_.:/\-]{1,6}", fullmatch=True), _ANY)
_OP_IDS = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:/\-]{0,6}", fullmatch=True), _ANY) \
    .filter(lambda s: not _NAME.match(s) or re.match(r"[A-Za-z_]", s))
_DIMS = st.one_of(st.integers(0, 4), st.from_regex(r"[A-Z_][A-Za-z0-9_]{0,4}", fullmatch=True))
_DTYPES = ["float32", "float64", "float16", "int8", "int64", "uint8", "bool"]
_DOMAINS = st.one_of(st.sampled_from([REAL, BIPOLAR, TERNARY, BIN01]),
                     st.builds(lambda lo, n, step: Domain.integer(lo, lo + n * step, step),
                               st.integers(-50, 50), st.integers(0, 20), st.integers(1, 3)))


def _arrays(max_side=3):
    return st.sampled_from(_DTYPES).flatmap(lambda dt: hnp.arrays(
        np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=max_side),
        elements={"allow_nan": True, "allow_infinity": True} if dt.startswith("float") else None))


_SCALARS = st.one_of(st.integers(-2**40, 2**40), st.booleans(), st.text(max_size=6),
                     st.floats(allow_nan=False, allow_infinity=True))
_ATTRS = st.one_of(_SCALARS, _arrays(), st.lists(st.integers(-9, 9), max_size=4),
                   st.lists(st.floats(allow_nan=False), max_size=4), st.lists(st.text(max_size=4), max_size=3),
                   hnp.arrays(np.float64, st.integers(17, 40)))  # past `inline`: base64


@st.composite
def graphs(draw, with_bounds=True):
    """Random small graphs: inputs, constants, ops of several domains with random attributes,
    random (quoted or bare) names, multi-output ops, empty optional inputs and bounds."""
    opset = draw(st.dictionaries(st.sampled_from(["", "tamec", "x.y"]), st.integers(1, 20), min_size=1))
    g = Graph(draw(st.text(max_size=6)), opset)
    names = iter(draw(st.lists(_VALUE_NAMES, min_size=40, max_size=40, unique=True)))
    ids = iter(draw(st.lists(_OP_IDS, min_size=6, max_size=6, unique=True)))

    def bounds(shape):
        if not with_bounds or not draw(st.booleans()):
            return None
        lo = draw(hnp.arrays(np.float64, st.sampled_from([(), (1,), (3,)]), elements=st.floats(-5, 5)))
        return lo, lo + draw(st.floats(0, 3))

    def value(shape=None, const=None):
        shape = tuple(draw(st.lists(_DIMS, max_size=3))) if shape is None and draw(st.booleans()) else shape
        v = Value(next(names), shape if const is None else const.shape,
                  draw(st.sampled_from(_DTYPES)) if const is None else const.dtype.name,
                  draw(_DOMAINS), const=const, bounds=bounds(shape))
        return g.add_value(v).name

    pool = [value() for _ in range(draw(st.integers(1, 3)))]
    g.inputs = list(pool)
    for _ in range(draw(st.integers(0, 6))):
        ins = []
        for _ in range(draw(st.integers(0, 3))):
            choice = draw(st.sampled_from(["use", "use", "const", "empty"]))
            ins.append(draw(st.sampled_from(pool)) if choice == "use" else
                       value(const=draw(_arrays(4))) if choice == "const" else "")
        outs = [value() for _ in range(draw(st.integers(1, 2)))]
        domain, op_type = draw(st.sampled_from([("", "Relu"), ("", "Add"), ("tamec", "Linear"),
                                                ("tamec", "Threshold"), ("qonnx.custom_op.general", "Quant"),
                                                ("x.y", "Custom_Op2")]))
        op_id = next(ids)
        origin = draw(st.one_of(st.just((op_id,)), st.tuples(), st.lists(_ANY, max_size=3).map(tuple)))
        attrs = draw(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True), _ATTRS, max_size=4))
        g.add_op(Op(op_id, op_type, ins, outs, attrs, domain, origin))
        pool += outs
    g.outputs = draw(st.lists(st.sampled_from(pool), max_size=3))
    return g


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graphs_round_trip(g):
    """Random graphs print and parse back to an equal graph, and print identically twice."""
    roundtrip(g)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(with_bounds=False), graphs(with_bounds=False))
def test_diff_text_agrees_with_diff_graphs(a, b):
    """On any two graphs (without bounds, which the default dump summarizes), the text diff of
    their dumps equals the graph diff; a graph differs from itself in nothing."""
    assert diff_text(print_graph(a), print_graph(b)) == diff_graphs(a, b)
    assert diff_graphs(a, a) == [] and diff_text(print_graph(a), print_graph(a)) == []


# -- diff ----------------------------------------------------------------------------------------------

def _mlp() -> Graph:
    g = Graph("mlp", {"": 9})
    g.add_value(Value("0", (1, 784), "float32"))
    g.inputs = ["0"]
    g.add_const("41", np.ones((784, 64), np.float32))
    g.add_value(Value("42", (1, 64), "float32"))
    g.add_op(Op("MatMul_16", "MatMul", ["0", "41"], ["42"]))
    for p in ("scale", "bias", "mean", "var"):
        g.add_const(p, np.ones(64, np.float32))
    g.add_value(Value("43", (1, 64), "float32"))
    g.add_op(Op("BatchNormalization_17", "BatchNormalization", ["42", "scale", "bias", "mean", "var"], ["43"],
                {"epsilon": 1e-5}))
    g.outputs = ["43"]
    return g


def test_diff_reports_each_kind_of_change():
    """Removing, adding and rewiring ops, retyping values and changing outputs each give one line,
    in the documented format and order; the text diff of the dumps says the same."""
    a = _mlp()
    b = a.copy()
    b.remove_op("BatchNormalization_17")
    b.values["42"].domain = Domain.integer(-784, 784, 2)
    b.add_const("44", 2 * np.ones((784, 64), np.float32))
    b.set_inputs("MatMul_16", ["0", "44"])
    b.add_value(Value("t", (1, 64), "float32", BIPOLAR))
    b.add_op(Op("Threshold_3", "Threshold", ["42"], ["t"],
                {"tau": np.zeros(64), "flip": np.zeros(64, bool), "axis": 1, "lo": -1.0, "hi": 1.0,
                 "tie": 1.0}, domain="tamec", origin=("BatchNormalization_17", "BipolarQuant_19")))
    b.outputs = ["t"]
    want = [
        "~ graph: outputs [%43] -> [%t]",
        "- op BatchNormalization_17",
        "+ op Threshold_3 tamec.Threshold(%42) {axis=1, flip=tensor<bool[64]><sha256:",
        "~ op MatMul_16: inputs [%0, %41] -> [%0, %44]",
        "- value %41", "- value %bias", "- value %mean", "- value %scale", "- value %var", "- value %43",
        "+ value %44: f32[784,64] int[2:2] = <sha256:",
        "+ value %t: f32[1,64] bipolar",
        "~ value %42: domain real -> int[-784:784:2]",
    ]
    got = diff_graphs(a, b)
    assert len(got) == len(want) and all(g.startswith(w) for g, w in zip(got, want)), "\n".join(got)
    assert got[2].endswith('-> %t') and "tie=1.0" in got[2]
    assert diff_text(print_graph(a), print_graph(b)) == got


def test_diff_attrs_origin_type_and_consts():
    """Attribute, origin, op type, dtype, shape, constant and bound changes are reported per field."""
    a = _mlp()
    b = a.copy()
    bn = b.op("BatchNormalization_17")
    bn.attrs["epsilon"] = 1e-3
    bn.attrs["momentum"] = 0.9
    bn.origin = ("x", "y")
    b.op("MatMul_16").op_type = "Gemm"
    b.values["43"].dtype = "float64"
    b.values["42"].shape = ("N", 64)
    b.values["scale"] = Value("scale", (64,), "float32", const=np.full(64, 2.0, np.float32))
    b.values["43"].bounds = (np.zeros(64), np.ones(64))
    got = diff_graphs(a, b)
    want = [
        "~ op MatMul_16: type MatMul -> Gemm",
        "~ op BatchNormalization_17: attr epsilon 1e-05 -> 0.001",
        "~ op BatchNormalization_17: attr momentum (none) -> 0.9",
        '~ op BatchNormalization_17: origin () -> "x", "y"',
        "~ value %scale: domain bipolar -> real",
        "~ value %scale: const <sha256:",
        "~ value %42: shape [1,64] -> [N,64]",
        "~ value %43: dtype f32 -> f64",
        "~ value %43: bounds (none) -> bounds(tensor<f64[64]><sha256:",
    ]
    assert len(got) == len(want) and all(g.startswith(w) for g, w in zip(got, want)), "\n".join(got)
    assert got[5].endswith("n=64 min=2.0 max=2.0>") and "min=1.0 max=1.0> -> <sha256:" in got[5]
    text = diff_text(print_graph(a), print_graph(b))
    assert text[:-1] == got[:-1] and text[-1] == "~ value %43: bounds (none) -> bounds[0.0..1.0]"


def test_diff_text_reads_unparseable_dumps():
    """diff_text works on dumps parse_graph cannot read: digests, summarized bounds, PyTorch op ids."""
    a = _mlp()
    a.remove_op("BatchNormalization_17")
    a.outputs = ["42"]
    b = a.copy()
    b.remove_op("MatMul_16", drop_outputs=False)
    b.add_op(Op("/features.0/MatMul", "MatMul", ["0", "41"], ["42"]))
    b.values["42"].bounds = (np.full(64, -784.0), np.full(64, 784.0))
    ta, tb = print_graph(a), print_graph(b)
    assert '@"/features.0/MatMul"' in tb and "bounds[" in tb
    assert diff_text(ta, tb) == ["- op MatMul_16", "+ op /features.0/MatMul MatMul(%0, %41) -> %42",
                                 "~ value %42: bounds (none) -> bounds[-784.0..784.0]"]
    assert diff_text(tb, tb) == []
