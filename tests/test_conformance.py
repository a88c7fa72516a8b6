"""ONNX conformance: onnx's own node tests, built in memory, run on `tamec.backend.TamecBackend`
for every standard op tamec supports (`tamec.ops.STANDARD_OPS`).

A node test of a supported op that fails is a bug in tamec, never a skip. The only exclusions are
variants outside what tamec claims (listed in EXCLUDE, one reason each); every excluded case is
also run below to prove tamec refuses it with a clear TamecError rather than computing garbage.

The per-op table in /work/notes/conformance.md comes from a real run of this file:
    python tests/test_conformance.py          # runs pytest on this file and prints the table
"""
from __future__ import annotations

import os
import re
import sys
import warnings

import numpy as np
import onnx
import onnx.backend.test
import pytest
from onnx import helper, numpy_helper
from onnx.backend.test.loader import load_model_tests
from onnx.backend.test.runner import Runner, _normalize_tensor

from tamec.backend import TamecBackend
from tamec.errors import InputError, ModelLoadError, TamecError, UnsupportedModelError, UsageError
from tamec.ops import QONNX_DOMAIN, STANDARD_OPS

# The node tests of each supported op, as patterns on the test names ("test_relu_cpu"). Names
# follow no single rule (Conv is test_basic_conv_*, Pad is test_*_pad), so they are spelled out;
# test_patterns_select_exactly_the_supported_ops checks them against the graphs themselves.
INCLUDE: dict[str, str] = {
    "Abs": r"^test_abs_", "Add": r"^test_add_", "And": r"^test_and(\d|_bcast)",
    "ArgMax": r"^test_argmax_", "AveragePool": r"^test_averagepool_",
    "BatchNormalization": r"^test_batchnorm_", "Cast": r"^test_cast_", "CastLike": r"^test_castlike_",
    "Ceil": r"^test_ceil_",
    "Clip": r"^test_clip_", "Concat": r"^test_concat_", "Constant": r"^test_constant_cpu$",
    "ConstantOfShape": r"^test_constantofshape_", "Conv": r"^test_(basic_conv|conv_with)_",
    "ConvTranspose": r"^test_convtranspose", "OneHot": r"^test_onehot_",
    "ScatterElements": r"^test_scatter_elements_",
    "Div": r"^test_div_", "Dropout": r"^test_(training_)?dropout_", "Elu": r"^test_elu_",
    "Equal": r"^test_equal_", "Erf": r"^test_erf_", "Exp": r"^test_exp_", "Expand": r"^test_expand_",
    "Flatten": r"^test_flatten_", "Floor": r"^test_floor_",
    "Gather": r"^test_gather_(\d|2d_indices|negative_indices)_", "Gemm": r"^test_gemm_",
    "GlobalAveragePool": r"^test_globalaveragepool_", "Greater": r"^test_greater_(?!equal)",
    "GreaterOrEqual": r"^test_greater_equal_", "HardSigmoid": r"^test_hardsigmoid_",
    "Identity": r"^test_identity_", "LeakyRelu": r"^test_leakyrelu_", "Less": r"^test_less_(?!equal)",
    "LessOrEqual": r"^test_less_equal_", "Log": r"^test_log_", "LogSoftmax": r"^test_logsoftmax_",
    "MatMul": r"^test_matmul_", "Max": r"^test_max_", "MaxPool": r"^test_maxpool_",
    "Mean": r"^test_mean_", "Min": r"^test_min_", "Mul": r"^test_mul_", "Neg": r"^test_neg_",
    "Not": r"^test_not_", "Or": r"^test_or(\d|_bcast)", "Pad": r"^test_(constant|edge|reflect|wrap)_pad",
    "Pow": r"^test_pow_", "Range": r"^test_range_", "Reciprocal": r"^test_reciprocal_",
    "ReduceMax": r"^test_reduce_max_", "ReduceMean": r"^test_reduce_mean_",
    "ReduceSum": r"^test_reduce_sum_(?!square)", "Relu": r"^test_relu_", "Reshape": r"^test_reshape_",
    "Round": r"^test_round_", "Shape": r"^test_shape_", "Sigmoid": r"^test_sigmoid_", "Sign": r"^test_sign_",
    "Size": r"^test_size_", "Slice": r"^test_slice_", "Softmax": r"^test_softmax_",
    "Softplus": r"^test_softplus_", "Softsign": r"^test_softsign_", "Sqrt": r"^test_sqrt_",
    "Squeeze": r"^test_squeeze_", "Sub": r"^test_sub_", "Sum": r"^test_sum_", "Tanh": r"^test_tanh_",
    "Transpose": r"^test_transpose_", "Unsqueeze": r"^test_unsqueeze_", "Where": r"^test_where_",
}

_CASTS_NONFINITE = "DOUBLE_to_FLOAT|DOUBLE_to_FLOAT16|FLOAT16_to_DOUBLE|FLOAT16_to_FLOAT|FLOAT_to_BFLOAT16|" \
                   "FLOAT_to_DOUBLE|FLOAT_to_FLOAT16"
# (pattern, short label, reason, the TamecError tamec must raise, text its message must hold)
EXCLUDE: list[tuple[str, str, str, type, str]] = [
    (r"^test_batchnorm_.*_training_mode_", "training-mode",
     "training_mode=1 BatchNormalization (batch statistics, running-stat outputs): tamec imports inference graphs",
     UnsupportedModelError, "training mode"),
    (r"^test_cast(like)?_(.*_to_)?(FLOAT8|FLOAT4|INT4|UINT4|INT2|UINT2|e8m0)", "exotic-dtype",
     "float8/float4/int4/int2 element types: tamec computes in float16/32/64, bfloat16, (u)int8-64 and bool",
     UnsupportedModelError, "element type tamec does not compute in"),
    (rf"^test_cast(like)?_({_CASTS_NONFINITE})_", "nonfinite-feed",
     "feeds NaN/inf, which tamec.Session refuses in real inputs by design (issue 5, 'Bad input'); "
     "test_nonfinite_cast_cases_pass_on_the_evaluator runs them on the evaluator",
     InputError, "NaN or infinite"),
    (r"^test_equal_string", "string", "string tensors: tamec handles numeric tensors only",
     UnsupportedModelError, "STRING"),
    (r"^test_identity_(opt|sequence)_", "non-tensor", "optional and sequence types: tamec handles tensors only",
     UnsupportedModelError, "not a tensor"),
    (r"^test_range_.*_expanded", "Loop-body",
     "the function body uses Loop (control flow), outside the supported set",
     UnsupportedModelError, "Loop"),
    (r"^test_(and(\d|_bcast)|or(\d|_bcast)|not_)", "opset<9",
     "declares opset 7 (Not: 1), older than 9, the oldest tamec reads; "
     "test_old_opset_cases_pass_after_version_conversion runs them converted to opset 9",
     UnsupportedModelError, "older than 9"),
]

# Failures whose fix lies in a file this suite does not own: strict xfails, so a fix turns them
# into an unexpected success and the entry must go.
XFAIL: list[tuple[str, str]] = []

# The backend's semantics-preserving default (canonicalize) unless TAMEC_CONFORMANCE_PIPELINE says
# otherwise ("" runs the bare import; same results).
_ENV_PIPELINE = os.environ.get("TAMEC_CONFORMANCE_PIPELINE")
CONFORMANCE_PIPELINE = None if _ENV_PIPELINE is None else [p for p in _ENV_PIPELINE.split(",") if p]


class ConformanceBackend(TamecBackend):
    """TamecBackend compiling with the conformance pipeline."""

    @classmethod
    def prepare(cls, model, device="CPU", pipeline=None, **kwargs):
        return super().prepare(model, device, pipeline=CONFORMANCE_PIPELINE if pipeline is None else pipeline,
                               **kwargs)


with warnings.catch_warnings():  # building the cases runs onnx's generators, which warn on overflow
    warnings.simplefilter("ignore")
    backend_test = onnx.backend.test.BackendTest(ConformanceBackend, __name__)
    NODE_CASES = {c.name: c for c in load_model_tests(kind="node")}

for _pattern in INCLUDE.values():
    backend_test.include(_pattern)
for _pattern, *_ in EXCLUDE:
    backend_test.exclude(_pattern)
for _pattern, _ in XFAIL:
    backend_test.xfail(_pattern)

# The node category only: the others are model files (PyTorch exports at opset 6, which tamec does
# not read, and downloads), outside this suite.
globals().update({k: v for k, v in backend_test.test_cases.items() if k == "OnnxBackendNodeModelTest"})


# -- which op a node test is about ----------------------------------------------------------------
def primary_op(name: str) -> str | None:
    """The op a node test exercises: its graph's one node, or for an `_expanded` (function body)
    test, the op of the test it expands."""
    base = NODE_CASES.get(re.sub(r"_expanded(_ver\d+)?$", "", name))
    if base is None:
        return None
    ops = {n.op_type for n in base.model.graph.node}
    return ops.pop() if len(ops) == 1 else None


def _matches(pattern: str, name: str) -> bool:
    return re.search(pattern, name + "_cpu") is not None


def _excluded(name: str):
    return next((e for e in EXCLUDE if _matches(e[0], name)), None)


def _run_case(case, backend=ConformanceBackend, model=None) -> None:
    """Run one node test on `backend` and compare with its expected outputs as onnx's runner does."""
    rep = backend.prepare(model or case.model, "CPU")
    for inputs, outputs in case.data_sets:
        got = rep.run([_normalize_tensor(x) for x in inputs])
        Runner.assert_similar_outputs([_normalize_tensor(y) for y in outputs], got, case.rtol, case.atol)


SUPPORTED_CASES = sorted(n for n in NODE_CASES if primary_op(n) in STANDARD_OPS)
EXCLUDED_CASES = sorted(n for n in SUPPORTED_CASES if _excluded(n))


# -- the selection is honest ----------------------------------------------------------------------
def test_patterns_select_exactly_the_supported_ops():
    """Every node test whose op is in STANDARD_OPS is included under that op's pattern, and no test
    of another op is; every supported op has a pattern and at least one case that runs."""
    assert set(INCLUDE) == set(STANDARD_OPS)
    for name in NODE_CASES:
        hits = [op for op, p in INCLUDE.items() if _matches(p, name)]
        want = primary_op(name)
        assert hits == ([want] if want in STANDARD_OPS else []), (name, hits, want)
    running = {primary_op(n) for n in SUPPORTED_CASES if not _excluded(n)}
    assert running | {"And", "Or", "Not"} == set(STANDARD_OPS)  # those three: opset-converted below


def test_every_exclusion_and_xfail_pattern_matches_a_case():
    """No stale entries: each EXCLUDE / XFAIL pattern selects at least one supported node test."""
    for pattern, *_ in EXCLUDE + [(p, r) for p, r in XFAIL]:
        assert any(_matches(pattern, n) for n in SUPPORTED_CASES), pattern


@pytest.mark.parametrize("name", EXCLUDED_CASES)
def test_excluded_case_is_refused_clearly(name):
    """tamec refuses each excluded case with the TamecError its exclusion names (never a crash,
    never a wrong answer), and the message says what is unsupported."""
    _, _, _, cls, text = _excluded(name)
    with pytest.raises(cls) as err:
        _run_case(NODE_CASES[name])
    assert text in str(err.value)
    assert getattr(err.value, "internal", False) is False


@pytest.mark.parametrize("name", [n for n in EXCLUDED_CASES if _excluded(n)[1] == "nonfinite-feed"])
def test_nonfinite_cast_cases_pass_on_the_evaluator(name):
    """The Cast cases that feed NaN/inf are right on tamec's reference evaluator (the oracle behind
    Session), which does not apply Session's input policy."""
    from tamec.evaluator import Evaluator
    from tamec.frontend.onnx import import_onnx

    case = NODE_CASES[name]
    g = import_onnx(case.model)
    ev = Evaluator(g)
    for inputs, outputs in case.data_sets:
        res = ev.run(dict(zip(g.inputs, (_normalize_tensor(x) for x in inputs))))
        assert any(not np.all(np.isfinite(_normalize_tensor(x))) for x in inputs)
        Runner.assert_similar_outputs([_normalize_tensor(y) for y in outputs], [res[o] for o in g.outputs],
                                      case.rtol, case.atol)


@pytest.mark.parametrize("name", [n for n in EXCLUDED_CASES if _excluded(n)[1] == "opset<9"])
def test_old_opset_cases_pass_after_version_conversion(name):
    """And/Or/Not node tests declare opset 7/1; converted to opset 9 with onnx.version_converter
    (the hint of tamec's error), they pass on the backend with onnx's expected outputs."""
    from onnx import version_converter

    case = NODE_CASES[name]
    converted = version_converter.convert_version(case.model, 9)
    assert converted.opset_import[0].version == 9
    _run_case(case, model=converted)


# -- QONNX ops: single nodes through the backend against qonnx's executor ------------------------
def _qonnx_case(op_type, x, consts, attrs, qonnx_opset=1):
    names = ["x"] + [f"c{k}" for k in range(len(consts))]
    node = helper.make_node(op_type, names, ["y"], domain=QONNX_DOMAIN, **attrs)
    vi = lambda n, a: helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, a.shape)  # noqa: E731
    graph = helper.make_graph([node], "q", [vi("x", x)], [vi("y", x)],
                              [numpy_helper.from_array(np.asarray(c), f"c{k}") for k, c in enumerate(consts)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11),
                                                   helper.make_opsetid(QONNX_DOMAIN, qonnx_opset)])


_RX = np.random.default_rng(5)
_XQ = np.concatenate([np.array([-1.5, -0.0, 0.0, 0.25, -0.25, 0.5, -0.5, 2.0]),
                      np.round(_RX.standard_normal(40) * 8) / 4]).astype(np.float32).reshape(2, 3, 8)
_F = np.float32
QONNX_CASES = {
    "bipolar_quant": ("BipolarQuant", [_F(0.5)], {}, 1),
    "quant_1bit_signed": ("Quant", [_F(1.0), _F(0.0), _F(1.0)], {"signed": 1, "narrow": 0}, 1),
    "quant_4bit_narrow_half_even": ("Quant", [np.array([[[0.5]], [[1.0]]], _F), _F(1.0), _F(4.0)],
                                    {"signed": 1, "narrow": 1, "rounding_mode": "HALF_EVEN"}, 1),
    "quant_3bit_unsigned_floor": ("Quant", [_F(0.25), _F(0.0), _F(3.0)],
                                  {"signed": 0, "narrow": 0, "rounding_mode": "FLOOR"}, 1),
    "multithreshold_bipolar": ("MultiThreshold", [np.array([[-0.5, 0.0, 0.5]] * 3, _F)],
                               {"out_dtype": "BIPOLAR", "out_scale": 2.0, "out_bias": -1.0,
                                "data_layout": "NCW"}, 1),
    "trunc_v1": ("Trunc", [_F(0.25), _F(0.0), _F(8.0), _F(4.0)], {"rounding_mode": "FLOOR"}, 1),
    "trunc_v2": ("Trunc", [_F(0.25), _F(0.0), _F(8.0), _F(2.0), _F(4.0)],
                 {"rounding_mode": "ROUND", "signed": 1, "narrow": 0}, 2),
}


@pytest.mark.parametrize("case", sorted(QONNX_CASES))
def test_qonnx_op_matches_qonnx_executor(case):
    """Each QONNX op, as a one-node model through the backend (import, Session), equals qonnx's
    own execution bit for bit, ties at 0 and on .5 boundaries included."""
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    op_type, consts, attrs, qopset = QONNX_CASES[case]
    model = _qonnx_case(op_type, _XQ, consts, attrs, qopset)
    want = np.asarray(execute_onnx(ModelWrapper(model), {"x": _XQ})["y"], np.float32)
    got = ConformanceBackend.prepare(model).run([_XQ])[0]
    np.testing.assert_array_equal(got, want)


# -- the backend API itself ------------------------------------------------------------------------
def _relu_model():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    z = helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"])]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [z, y]),
                             opset_imports=[helper.make_opsetid("", 13)])


def test_backend_devices():
    """Only the CPU device is supported; preparing for CUDA is a UsageError, not a silent CPU run."""
    assert TamecBackend.supports_device("CPU") and TamecBackend.supports_device("CPU:0")
    assert not TamecBackend.supports_device("CUDA") and not TamecBackend.supports_device("TPU")
    with pytest.raises(UsageError, match="CPU only"):
        TamecBackend.prepare(_relu_model(), "CUDA")


def test_backend_run_returns_outputs_in_graph_order_by_position_and_name():
    """run() returns the graph outputs in declaration order (z before y here), indexable by name;
    run_model gives the same; list and dict feeds are equivalent."""
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    rep = TamecBackend.prepare(_relu_model())
    z, y = rep.run([x])
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(z, -np.maximum(x, 0))
    np.testing.assert_array_equal(rep.run({"x": x})["y"], y)
    np.testing.assert_array_equal(TamecBackend.run_model(_relu_model(), [x])[0], z)


def test_backend_prepares_paths_and_bytes(tmp_path):
    """prepare takes a path or serialized bytes as well as a ModelProto, with any pipeline ([]: the
    bare import); a missing file is tamec's ModelLoadError, not an onnx exception."""
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    path = tmp_path / "m.onnx"
    onnx.save(_relu_model(), str(path))
    want = TamecBackend.prepare(_relu_model()).run([x])
    for model, pipe in ((str(path), None), (path.read_bytes(), []), (_relu_model(), ["canonicalize"])):
        got = TamecBackend.prepare(model, pipeline=pipe).run([x])
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ModelLoadError, match="no such file"):
        TamecBackend.prepare(str(tmp_path / "missing.onnx"))


def test_backend_never_casts_feeds():
    """A float64 feed to a float32 input is an InputError naming the input, as in Session."""
    rep = TamecBackend.prepare(_relu_model())
    with pytest.raises(InputError, match="'x'"):
        rep.run([np.zeros((2, 3), np.float64)])
    with pytest.raises(InputError, match="takes 1"):
        rep.run([np.zeros((2, 3), np.float32)] * 2)


def test_backend_run_node():
    """run_node runs one NodeProto on its inputs (list or dict), with attributes and int dtypes."""
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    node = helper.make_node("Transpose", ["a"], ["t"], perm=[1, 0])
    np.testing.assert_array_equal(TamecBackend.run_node(node, [a])[0], a.T)
    node = helper.make_node("Gemm", ["a", "b"], ["c"], alpha=2.0, transB=1)
    p, q = np.ones((2, 3), np.float32), np.full((4, 3), 0.5, np.float32)
    np.testing.assert_array_equal(TamecBackend.run_node(node, {"a": p, "b": q})[0], np.full((2, 4), 3.0))


def test_unsupported_op_is_a_clear_error():
    """A node test of an op outside STANDARD_OPS is refused at prepare with UnsupportedModelError
    naming the op and listing what tamec supports."""
    with pytest.raises(UnsupportedModelError, match="GatherElements") as err:
        _run_case(NODE_CASES["test_gather_elements_0"])
    assert "tamec supports" in str(err.value)
    assert isinstance(err.value, TamecError)


# -- the table for /work/notes/conformance.md ------------------------------------------------------
def _table(junit_xml: str) -> str:
    """Per-op passed / failed / xfail / excluded counts of the onnx node tests (CPU) from a pytest
    junit report, with how the excluded cases were checked, and a legend of the exclusions."""
    import xml.etree.ElementTree as ET

    rows = {op: {"passed": 0, "failed": [], "xfail": [], "excluded": {}, "checks": {}} for op in INCLUDE}
    side = {"test_excluded_case_is_refused_clearly": "refused",
            "test_old_opset_cases_pass_after_version_conversion": "pass at opset 9",
            "test_nonfinite_cast_cases_pass_on_the_evaluator": "pass on evaluator"}
    for tc in ET.parse(junit_xml).getroot().iter("testcase"):
        name = tc.get("name", "")
        bad = tc.find("failure") is not None or tc.find("error") is not None
        skipped = tc.find("skipped")
        m = re.fullmatch(r"(\w+)\[(\w+)\]", name)
        if m and m.group(1) in side and primary_op(m.group(2)) in rows:
            checks = rows[primary_op(m.group(2))]["checks"]
            key = side[m.group(1)] + (" FAILED" if bad else "")
            checks[key] = checks.get(key, 0) + 1
            continue
        if not tc.get("classname", "").endswith("OnnxBackendNodeModelTest") or not name.endswith("_cpu"):
            continue
        r = rows.get(primary_op(name[:-4]))
        if r is None:
            continue
        if skipped is not None and "xfail" in skipped.get("type", ""):
            r["xfail"].append(name[:-4])
        elif skipped is not None:
            ex = _excluded(name[:-4])
            label = ex[1] if ex else skipped.get("message", "")
            r["excluded"][label] = r["excluded"].get(label, 0) + 1
        elif bad:
            r["failed"].append(name[:-4])
        else:
            r["passed"] += 1
    lines = ["| op | passed | failed | xfail (bug outside the owned files) | excluded | excluded cases checked |",
             "|---|---|---|---|---|---|"]
    tot = [0, 0, 0, 0]
    for op in sorted(rows):
        r = rows[op]
        counts = (r["passed"], len(r["failed"]), len(r["xfail"]), sum(r["excluded"].values()))
        fails = f"{counts[1]} ({', '.join(r['failed'])})" if r["failed"] else "0"
        xf = f"{counts[2]} ({', '.join(r['xfail'])})" if r["xfail"] else "0"
        ex = ", ".join(f"{n} {k}" for k, n in r["excluded"].items()) or "0"
        ch = ", ".join(f"{n} {k}" for k, n in r["checks"].items()) or ""
        lines.append(f"| {op} | {counts[0]} | {fails} | {xf} | {ex} | {ch} |")
        tot = [a + b for a, b in zip(tot, counts)]
    lines.append(f"| **total** | {tot[0]} | {tot[1]} | {tot[2]} | {tot[3]} | |")
    lines += ["", "Exclusions (label: reason; pattern):", ""]
    lines += [f"- `{label}`: {reason}; `{pattern}`" for pattern, label, reason, *_ in EXCLUDE]
    lines += ["", "xfail (strict):", ""] + [f"- `{p}`: {r}" for p, r in XFAIL]
    return "\n".join(lines)


if __name__ == "__main__":
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "conformance.xml")
        cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-rfEx", "-p", "no:cacheprovider",
               f"--junitxml={xml}", *sys.argv[1:]]
        rc = subprocess.call(cmd)
        print(_table(xml))
    sys.exit(rc)
