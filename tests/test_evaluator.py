"""The reference evaluator against onnxruntime, qonnx's executor and direct numpy statements."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import tamec.evaluator as ev_mod
from tamec.errors import InputError, ModelStructureError, UnsupportedModelError
from tamec.evaluator import Evaluator, evaluate
from tamec.ir.graph import BIPOLAR, REAL, TERNARY, Domain, Graph, Op, Value
from tamec.ops import QONNX_DOMAIN, STANDARD_OPS

R = np.random.default_rng(0)
TFC = Path(__file__).resolve().parents[2] / "shared/models/TFC_1W1A.onnx"


# -- helpers ---------------------------------------------------------------------------------------
class K:
    """Marks an operand as a constant (an initializer in ONNX, a const Value in the IR)."""

    def __init__(self, a):
        self.a = np.asarray(a)


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


def pos(*shape):
    return (R.random(shape) + 0.1).astype(np.float32)


def pm1(*shape):
    return R.choice(np.array([-1.0, 1.0], np.float32), size=shape)


def i64(*vals):
    return np.array(vals, np.int64)


def _arr(x):
    return x.a if isinstance(x, K) else x


def _proto_attrs(attrs: dict) -> dict:
    return {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v for k, v in attrs.items()}


def ort_run(op_type, args, attrs, opset, n_out=1):
    """Run one standard ONNX node in onnxruntime; `args` are arrays, K(constants) or None."""
    names = [f"x{k}" if a is not None else "" for k, a in enumerate(args)]
    node = helper.make_node(op_type, names, [f"y{k}" for k in range(n_out)], **_proto_attrs(attrs))
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in zip(names, args) if isinstance(a, np.ndarray)]
    inits = [numpy_helper.from_array(a.a, n) for n, a in zip(names, args) if isinstance(a, K)]
    outs = [helper.make_value_info(f"y{k}", onnx.TypeProto()) for k in range(n_out)]
    model = helper.make_model(helper.make_graph([node], "t", inputs, outs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: a for n, a in zip(names, args) if isinstance(a, np.ndarray)})


def one_op_graph(op_type, args, attrs, opset, outs, domain="", in_domains=None, opsets=None):
    """A Graph holding one op: fed operands become inputs, K(...) operands constants.
    `outs` are example output arrays (their dtype and shape are declared)."""
    g = Graph("t", {"": opset, **(opsets or {})})
    names = []
    for k, a in enumerate(args):
        if a is None:
            names.append("")
            continue
        name = f"x{k}"
        names.append(name)
        if isinstance(a, K):
            g.add_const(name, a.a, (in_domains or {}).get(k))
        else:
            g.add_value(Value(name, a.shape, a.dtype.name, (in_domains or {}).get(k, REAL)))
            g.inputs.append(name)
    for k, o in enumerate(outs):
        g.add_value(Value(f"y{k}", tuple(np.shape(o)), np.asarray(o).dtype.name))
    g.add_op(Op("op0", op_type, names, [f"y{k}" for k in range(len(outs))], dict(attrs), domain,
                origin=("node0",)))
    g.outputs = [f"y{k}" for k in range(len(outs))]
    return g


def feeds_of(args):
    return {f"x{k}": a for k, a in enumerate(args) if isinstance(a, np.ndarray)}


def assert_same(got, want):
    """Exact for integer and bool tensors, rtol = atol = 1e-5 for floats; dtype and shape equal."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


# -- standard ops against onnxruntime ----------------------------------------------------------------
X4 = f32(2, 3, 7, 7)
HALVES = np.array([-2.5, -1.5, -0.5, 0.0, 0.5, 1.5, 2.5, 0.49, -0.51], np.float32)
WITH_ZEROS = np.array([[-1.0, 0.0, 2.0], [0.0, -0.0, 3.5]], np.float32)
BOOL_A, BOOL_B = R.random((3, 4)) > 0.5, R.random((3, 4)) > 0.5
TIED = np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)
CMP_A, CMP_B = np.array([1.0, 2.0, 3.0, -1.0], np.float32), np.array([1.0, 3.0, 2.0, -1.0], np.float32)

CASES = [
    # (id, op, args, attrs, opset, n_out)
    ("Add-bcast", "Add", [f32(2, 3, 4), f32(4)], {}, 13, 1),
    ("Add-op9-const", "Add", [f32(2, 3), K(f32(3))], {}, 9, 1),
    ("Sub", "Sub", [f32(3, 4), f32(1, 4)], {}, 13, 1),
    ("Mul", "Mul", [f32(3, 4), K(f32(3, 1))], {}, 13, 1),
    ("Div", "Div", [f32(3, 4), pos(3, 4)], {}, 13, 1),
    ("Div-int", "Div", [i64(7, -7, 9, -9), i64(2, 2, -4, 4)], {}, 13, 1),
    ("Pow", "Pow", [pos(3, 4), f32(3, 4)], {}, 13, 1),
    ("Pow-op9", "Pow", [pos(3, 4), K(np.array(2.0, np.float32))], {}, 9, 1),
    ("Pow-intexp", "Pow", [f32(3, 4), K(np.array(3, np.int64))], {}, 13, 1),
    ("Relu", "Relu", [f32(3, 4)], {}, 13, 1),
    ("Relu-op9", "Relu", [f32(3, 4)], {}, 9, 1),
    ("Neg", "Neg", [f32(3, 4)], {}, 13, 1),
    ("Abs", "Abs", [f32(3, 4)], {}, 13, 1),
    ("Tanh", "Tanh", [f32(3, 4)], {}, 13, 1),
    ("Sigmoid", "Sigmoid", [f32(3, 4)], {}, 13, 1),
    ("Exp", "Exp", [f32(3, 4)], {}, 13, 1),
    ("Log", "Log", [pos(3, 4)], {}, 13, 1),
    ("Sqrt", "Sqrt", [pos(3, 4)], {}, 13, 1),
    ("Reciprocal", "Reciprocal", [pos(3, 4)], {}, 13, 1),
    ("Erf", "Erf", [f32(3, 4)], {}, 13, 1),
    ("Softsign", "Softsign", [f32(3, 4)], {}, 13, 1),
    ("Softplus", "Softplus", [f32(3, 4)], {}, 13, 1),
    ("Floor", "Floor", [HALVES], {}, 13, 1),
    ("Ceil", "Ceil", [HALVES], {}, 13, 1),
    ("Round-half-even", "Round", [HALVES], {}, 11, 1),
    ("Sign-zeros", "Sign", [WITH_ZEROS], {}, 13, 1),
    ("Sign-op9", "Sign", [WITH_ZEROS], {}, 9, 1),
    ("Clip-op9-attrs", "Clip", [f32(3, 4)], {"min": -0.5, "max": 0.5}, 9, 1),
    ("Clip-op9-default", "Clip", [f32(3, 4)], {}, 9, 1),
    ("Clip-op13-inputs", "Clip", [f32(3, 4), K(np.float32(-0.2)), K(np.float32(0.3))], {}, 13, 1),
    ("Clip-op13-max-only", "Clip", [f32(3, 4), None, K(np.float32(0.3))], {}, 13, 1),
    ("HardSigmoid", "HardSigmoid", [f32(3, 4)], {"alpha": 0.3, "beta": 0.4}, 13, 1),
    ("LeakyRelu", "LeakyRelu", [f32(3, 4)], {"alpha": 0.2}, 13, 1),
    ("Elu", "Elu", [f32(3, 4)], {"alpha": 0.7}, 13, 1),
    ("Reshape", "Reshape", [f32(2, 3, 4), K(i64(0, -1))], {}, 13, 1),
    ("Reshape-op9", "Reshape", [f32(2, 3, 4), K(i64(4, 6))], {}, 9, 1),
    ("Flatten-op9", "Flatten", [f32(2, 3, 4)], {}, 9, 1),
    ("Flatten-axis2", "Flatten", [f32(2, 3, 4, 5)], {"axis": 2}, 13, 1),
    ("Transpose", "Transpose", [f32(2, 3, 4)], {"perm": [2, 0, 1]}, 13, 1),
    ("Transpose-default", "Transpose", [f32(2, 3, 4)], {}, 9, 1),
    ("MaxPool-op9", "MaxPool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2]}, 9, 1),
    ("MaxPool-pads", "MaxPool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 11, 1),
    ("MaxPool-ceil", "MaxPool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, 10, 1),
    ("MaxPool-ceil-edge", "MaxPool", [f32(1, 2, 4, 4)],
     {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 1, 1], "ceil_mode": 1}, 11, 1),
    ("MaxPool-dilated", "MaxPool", [X4], {"kernel_shape": [2, 2], "dilations": [2, 2]}, 12, 1),
    ("MaxPool-same-upper", "MaxPool", [X4],
     {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, 11, 1),
    ("MaxPool-same-lower", "MaxPool", [X4], {"kernel_shape": [2, 2], "auto_pad": "SAME_LOWER"}, 11, 1),
    ("MaxPool-1d", "MaxPool", [f32(2, 3, 9)], {"kernel_shape": [3], "strides": [2]}, 11, 1),
    ("MaxPool-int8", "MaxPool", [R.integers(-128, 127, (1, 2, 5, 5), dtype=np.int8)],
     {"kernel_shape": [2, 2], "pads": [1, 1, 0, 0]}, 12, 1),
    ("AveragePool", "AveragePool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2]}, 9, 1),
    ("AveragePool-pads-excl", "AveragePool", [X4],
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 11, 1),
    ("AveragePool-pads-incl", "AveragePool", [X4],
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}, 11, 1),
    ("AveragePool-ceil-incl", "AveragePool", [f32(1, 2, 6, 6)],
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1, "ceil_mode": 1}, 11, 1),
    ("AveragePool-ceil-excl", "AveragePool", [f32(1, 2, 6, 6)],
     {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, 11, 1),
    ("AveragePool-same-upper", "AveragePool", [X4],
     {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, 11, 1),
    ("GlobalAveragePool", "GlobalAveragePool", [X4], {}, 9, 1),
    ("Softmax-op9-coerced", "Softmax", [f32(2, 3, 4)], {}, 9, 1),
    ("Softmax-op9-axis2", "Softmax", [f32(2, 3, 4)], {"axis": 2}, 9, 1),
    ("Softmax-op11-axis0", "Softmax", [f32(2, 3, 4)], {"axis": 0}, 11, 1),
    ("Softmax-op13", "Softmax", [f32(2, 3, 4)], {}, 13, 1),
    ("Softmax-op13-axis1", "Softmax", [f32(2, 3, 4)], {"axis": 1}, 13, 1),
    ("LogSoftmax-op9-coerced", "LogSoftmax", [f32(2, 3, 4)], {}, 9, 1),
    ("LogSoftmax-op13-axis1", "LogSoftmax", [f32(2, 3, 4)], {"axis": 1}, 13, 1),
    ("Identity", "Identity", [f32(3, 4)], {}, 13, 1),
    ("Dropout-op9", "Dropout", [f32(3, 4)], {"ratio": 0.3}, 9, 1),
    ("Dropout-op13-mask", "Dropout", [f32(3, 4), K(np.float32(0.3))], {}, 13, 2),
    ("Constant-tensor", "Constant", [], {"value": f32(2, 3)}, 9, 1),
    ("Constant-float", "Constant", [], {"value_float": 2.5}, 13, 1),
    ("Where", "Where", [BOOL_A, f32(3, 4), f32(1, 4)], {}, 9, 1),
    ("Greater", "Greater", [CMP_A, CMP_B], {}, 13, 1),
    ("Greater-op9", "Greater", [CMP_A, CMP_B], {}, 9, 1),
    ("Less", "Less", [CMP_A, CMP_B], {}, 13, 1),
    ("GreaterOrEqual", "GreaterOrEqual", [CMP_A, CMP_B], {}, 12, 1),
    ("LessOrEqual", "LessOrEqual", [CMP_A, CMP_B], {}, 16, 1),
    ("Equal", "Equal", [CMP_A, CMP_B], {}, 13, 1),
    ("Equal-int", "Equal", [i64(1, 2, 3), i64(1, 0, 3)], {}, 11, 1),
    ("Not", "Not", [BOOL_A], {}, 9, 1),
    ("And", "And", [BOOL_A, BOOL_B], {}, 9, 1),
    ("Or", "Or", [BOOL_A, BOOL_B], {}, 13, 1),
    ("Concat", "Concat", [f32(2, 3), f32(2, 1), K(f32(2, 2))], {"axis": 1}, 9, 1),
    ("Concat-neg", "Concat", [f32(2, 3), f32(1, 3)], {"axis": -2}, 13, 1),
    ("Squeeze-op9-unsorted", "Squeeze", [f32(1, 3, 1, 4)], {"axes": [2, 0]}, 9, 1),
    ("Squeeze-op11-neg", "Squeeze", [f32(1, 3, 4, 1)], {"axes": [-1]}, 11, 1),
    ("Squeeze-op13-input", "Squeeze", [f32(1, 3, 1, 4), K(i64(0, 2))], {}, 13, 1),
    ("Squeeze-op13-all", "Squeeze", [f32(1, 3, 1, 4)], {}, 13, 1),
    ("Unsqueeze-op9", "Unsqueeze", [f32(3, 4)], {"axes": [0]}, 9, 1),
    ("Unsqueeze-op9-unsorted", "Unsqueeze", [f32(3, 4)], {"axes": [2, 0]}, 9, 1),
    ("Unsqueeze-op11-neg", "Unsqueeze", [f32(3, 4)], {"axes": [-1, 0]}, 11, 1),
    ("Unsqueeze-op13-input", "Unsqueeze", [f32(3, 4), K(i64(3, 1))], {}, 13, 1),
    ("Shape", "Shape", [f32(2, 3, 4)], {}, 9, 1),
    ("Shape-op15-slice", "Shape", [f32(2, 3, 4, 5)], {"start": 1, "end": -1}, 15, 1),
    ("Size", "Size", [f32(2, 3, 4)], {}, 13, 1),
    ("Gather-axis0", "Gather", [f32(4, 3), K(i64(2, 0, -1))], {"axis": 0}, 9, 1),
    ("Gather-axis1-2d", "Gather", [f32(2, 5, 3), K(np.array([[0, 4], [1, -2]], np.int64))], {"axis": 1}, 13, 1),
    ("Gather-scalar", "Gather", [i64(5, 6, 7), K(np.array(1, np.int64))], {"axis": 0}, 9, 1),
    ("Cast-to-int64", "Cast", [HALVES * 3], {"to": onnx.TensorProto.INT64}, 9, 1),
    ("Cast-to-bool", "Cast", [WITH_ZEROS], {"to": onnx.TensorProto.BOOL}, 13, 1),
    ("Cast-to-float", "Cast", [i64(-3, 0, 5)], {"to": onnx.TensorProto.FLOAT}, 13, 1),
    ("CastLike-to-int64", "CastLike", [HALVES * 3, K(i64(1))], {}, 15, 1),
    ("CastLike-to-float", "CastLike", [i64(-3, 0, 5), K(np.zeros(1, np.float32))], {}, 15, 1),
    ("Max", "Max", [f32(3, 4), f32(4), f32(3, 1)], {}, 13, 1),
    ("Min", "Min", [f32(3, 4), f32(4)], {}, 9, 1),
    ("Sum", "Sum", [f32(3, 4), f32(4), f32(3, 1)], {}, 13, 1),
    ("Mean", "Mean", [f32(3, 4), f32(3, 4)], {}, 9, 1),
    ("ConstantOfShape", "ConstantOfShape", [K(i64(2, 3))], {"value": np.array([1.5], np.float32)}, 9, 1),
    ("ConstantOfShape-default", "ConstantOfShape", [K(i64(2, 3))], {}, 13, 1),
    ("Expand", "Expand", [f32(3, 1), K(i64(2, 3, 4))], {}, 13, 1),
    ("Slice-op9-attrs", "Slice", [f32(4, 5, 6)], {"starts": [1, 0], "ends": [3, 100], "axes": [0, 2]}, 9, 1),
    ("Slice-op13-neg-step", "Slice", [f32(4, 5, 6), K(i64(-1, 4)), K(i64(-(2**63), 0)), K(i64(0, 1)), K(i64(-1, -2))],
     {}, 13, 1),
    ("Slice-op10-no-axes", "Slice", [f32(4, 5), K(i64(1)), K(i64(3))], {}, 10, 1),
    ("ReduceMean-op13", "ReduceMean", [f32(2, 3, 4)], {"axes": [1], "keepdims": 0}, 13, 1),
    ("ReduceMean-op18-input", "ReduceMean", [f32(2, 3, 4), K(i64(-1))], {}, 18, 1),
    ("ReduceSum-op11-attr", "ReduceSum", [f32(2, 3, 4)], {"axes": [0, 2]}, 11, 1),
    ("ReduceSum-op13-input", "ReduceSum", [f32(2, 3, 4), K(i64(1))], {"keepdims": 0}, 13, 1),
    ("ReduceSum-op13-all", "ReduceSum", [f32(2, 3, 4)], {}, 13, 1),
    ("ReduceMax-op13", "ReduceMax", [f32(2, 3, 4)], {"axes": [2]}, 13, 1),
    ("ReduceMax-op18-input", "ReduceMax", [f32(2, 3, 4), K(i64(0))], {"keepdims": 0}, 18, 1),
    ("Pad-op9-constant", "Pad", [f32(2, 3)], {"pads": [1, 0, 0, 2], "value": 1.5}, 9, 1),
    ("Pad-op9-reflect", "Pad", [f32(3, 4)], {"pads": [1, 2, 1, 2], "mode": "reflect"}, 9, 1),
    ("Pad-op9-edge", "Pad", [f32(3, 4)], {"pads": [0, 1, 2, 0], "mode": "edge"}, 9, 1),
    ("Pad-op13-inputs", "Pad", [f32(2, 3), K(i64(1, 1, 0, 2)), K(np.float32(-2.0))], {}, 13, 1),
    ("ArgMax-op9", "ArgMax", [f32(3, 5)], {"axis": 1, "keepdims": 0}, 9, 1),
    ("ArgMax-op12-last", "ArgMax", [TIED], {"axis": 1, "select_last_index": 1}, 12, 1),
    ("ArgMax-op12-first", "ArgMax", [TIED], {"axis": 1}, 13, 1),
    ("Range-float", "Range", [K(np.float32(0.5)), K(np.float32(3.0)), K(np.float32(0.75))], {}, 11, 1),
    ("Range-int", "Range", [K(np.int64(10)), K(np.int64(2)), K(np.int64(-3))], {}, 11, 1),
    ("Conv", "Conv", [X4, K(f32(4, 3, 3, 3))], {}, 11, 1),
    ("Conv-op9-bias-pads-strides", "Conv", [X4, K(f32(4, 3, 3, 3)), K(f32(4))],
     {"pads": [1, 0, 2, 1], "strides": [2, 1]}, 9, 1),
    ("Conv-dilated", "Conv", [X4, K(f32(2, 3, 2, 2))], {"dilations": [2, 3]}, 11, 1),
    ("Conv-group", "Conv", [f32(2, 4, 6, 6), K(f32(6, 2, 3, 3)), K(f32(6))], {"group": 2, "pads": [1, 1, 1, 1]}, 11, 1),
    ("Conv-depthwise", "Conv", [f32(2, 4, 6, 6), K(f32(4, 1, 3, 3))], {"group": 4, "strides": [2, 2]}, 11, 1),
    ("Conv-same-upper", "Conv", [X4, K(f32(4, 3, 2, 2))], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 11, 1),
    ("Conv-same-lower", "Conv", [X4, K(f32(4, 3, 2, 2))], {"auto_pad": "SAME_LOWER"}, 11, 1),
    ("Conv-1d", "Conv", [f32(2, 3, 9), K(f32(5, 3, 3))], {"pads": [1, 1]}, 11, 1),
    ("Conv-3d", "Conv", [f32(1, 2, 4, 5, 5), K(f32(3, 2, 2, 3, 2))], {"strides": [1, 2, 1]}, 11, 1),
    ("Conv-runtime-weight", "Conv", [X4, f32(4, 3, 3, 3)], {"kernel_shape": [3, 3]}, 11, 1),
    ("MatMul", "MatMul", [f32(5, 4), K(f32(4, 3))], {}, 13, 1),
    ("MatMul-batched", "MatMul", [f32(2, 1, 3, 4), f32(5, 4, 2)], {}, 13, 1),
    ("MatMul-1d-left", "MatMul", [f32(4), f32(4, 3)], {}, 9, 1),
    ("MatMul-1d-right", "MatMul", [f32(2, 4), f32(4)], {}, 9, 1),
    ("MatMul-int32", "MatMul", [R.integers(-9, 9, (3, 4)).astype(np.int32), R.integers(-9, 9, (4, 2)).astype(np.int32)],
     {}, 13, 1),
    ("Gemm-op9", "Gemm", [f32(5, 4), K(f32(3, 4)), K(f32(3))], {"transB": 1, "alpha": 0.5, "beta": 2.0}, 9, 1),
    ("Gemm-transA-noC", "Gemm", [f32(4, 5), f32(4, 3)], {"transA": 1}, 13, 1),
    ("Gemm-C-matrix", "Gemm", [f32(2, 4), K(f32(4, 3)), K(f32(2, 3))], {}, 11, 1),
    ("BatchNorm-op9-momentum", "BatchNormalization",
     [f32(4, 3, 5, 5), K(f32(3)), K(f32(3)), K(f32(3)), K(pos(3))], {"epsilon": 1e-3, "momentum": 0.9}, 9, 1),
    ("BatchNorm-op9-2d", "BatchNormalization",
     [f32(8, 6), K(f32(6)), K(f32(6)), K(f32(6)), K(pos(6))], {"momentum": 0.9}, 9, 1),
    ("BatchNorm-op7-spatial", "BatchNormalization",
     [f32(4, 3, 5), K(f32(3)), K(f32(3)), K(f32(3)), K(pos(3))], {"spatial": 1, "momentum": 0.9}, 7, 1),
    ("BatchNorm-op14", "BatchNormalization",
     [f32(4, 3, 5), K(f32(3)), K(f32(3)), K(f32(3)), K(pos(3))], {"training_mode": 0}, 14, 1),
    ("BatchNorm-op15", "BatchNormalization", [f32(4, 3), K(f32(3)), K(f32(3)), K(f32(3)), K(pos(3))], {}, 15, 1),
    # the ops of tamec's gradient graphs (tamec/export/grad.py), as it writes them
    ("OneHot", "OneHot", [i64(3, 0, 9, 4), K(np.int64(10)), K(np.array([0.0, 1.0], np.float32))], {"axis": -1}, 17, 1),
    ("ScatterElements-add", "ScatterElements",
     [np.zeros((2, 9), np.float32), K(np.array([[0, 4, 4], [8, 1, 0]], np.int64)), f32(2, 3)],
     {"axis": 1, "reduction": "add"}, 17, 1),
    ("ConvTranspose-stride-outpad", "ConvTranspose", [f32(2, 4, 3, 3), K(f32(4, 3, 3, 3))],
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, 17, 1),
]


@pytest.mark.parametrize("op_type,args,attrs,opset,n_out", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_standard_op_matches_onnxruntime(op_type, args, attrs, opset, n_out):
    """Each standard op, at the opset it is declared in, gives onnxruntime's values and dtypes."""
    want = ort_run(op_type, args, attrs, opset, n_out)
    got = evaluate(one_op_graph(op_type, args, attrs, opset, want), feeds_of(args))
    for k, w in enumerate(want):
        assert_same(got[f"y{k}"], w)


def test_cases_cover_standard_ops():
    """Every op in STANDARD_OPS is exercised against onnxruntime above."""
    assert STANDARD_OPS - {c[1] for c in CASES} == set()


# -- integer-exact products -------------------------------------------------------------------------
def _linear_graph(x, w, b=None, x_domain=BIPOLAR, w_domain=None, out_dtype="float32"):
    g = Graph("lin", {"": 13, "tamec": 1})
    g.add_value(Value("x", x.shape, x.dtype.name, x_domain))
    g.add_const("W", w, w_domain)
    ins = ["x", "W"]
    if b is not None:
        g.add_const("B", b)
        ins.append("B")
    g.add_value(Value("y", x.shape[:-1] + w.shape[:1], out_dtype))
    g.add_op(Op("lin", "Linear", ins, ["y"], {}, "tamec", origin=("MatMul_0",)))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


@pytest.fixture
def exact_calls(monkeypatch):
    """Records the (K, max|a|, max|b|) of every exact-path product, proving that path ran."""
    calls = []
    real = ev_mod._exact_dtype
    monkeypatch.setattr(ev_mod, "_exact_dtype", lambda *a: calls.append(a) or real(*a))
    return calls


def test_linear_bipolar_1025_int_path_equals_float_path(exact_calls):
    """A 1025-wide bipolar dot product: the integer path, the float32 path and numpy int64 agree."""
    x, w = pm1(16, 1025), pm1(9, 1025)
    b = R.integers(-5, 5, 9).astype(np.float32)
    exact = x.astype(np.int64) @ w.astype(np.int64).T + b.astype(np.int64)
    y_int = evaluate(_linear_graph(x, w, b), {"x": x})["y"]
    assert exact_calls == [(1025, 1.0, 1.0)]
    y_flt = evaluate(_linear_graph(x, w, b, x_domain=REAL), {"x": x})["y"]
    assert len(exact_calls) == 1  # the real-declared graph took the float path
    assert y_int.dtype == np.float32
    np.testing.assert_array_equal(y_int, exact.astype(np.float32))
    np.testing.assert_array_equal(y_int, y_flt)  # |sum| <= 1030 < 2**24: float32 is exact too


@pytest.mark.parametrize("mag", [2 ** 20, 2 ** 25], ids=["float64-blas", "int64-fallback"])
def test_linear_int_path_is_exact_beyond_float32(mag, exact_calls):
    """With sums past 2**24 (float32 inexact) and past 2**53 / K (int64 fallback), the result is
    the exact integer product, rounded once to float32."""
    k = 1025
    x = (R.integers(-mag // 2, mag // 2, (4, k)) * 2).astype(np.float32)  # even: float32 holds them
    w = (R.integers(-mag // 2, mag // 2, (3, k)) * 2).astype(np.float32)
    dom = Domain.integer(-mag, mag, 2)
    exact = np.array(x.astype(np.int64).astype(object) @ w.astype(np.int64).astype(object).T, dtype=np.int64)
    got = evaluate(_linear_graph(x, w, x_domain=dom, w_domain=dom), {"x": x})["y"]
    np.testing.assert_array_equal(got, exact.astype(np.float32))
    assert np.abs(exact).max() > 2 ** 24  # the float32 product could not have been exact
    assert ev_mod._exact_dtype(*exact_calls[0]) == (np.float64 if mag == 2 ** 20 else np.int64)


def test_linear_real_path_matches_onnxruntime_gemm():
    """On real inputs tamec.Linear is Gemm(transB=1): onnxruntime agrees within 1e-5."""
    x, w, b = f32(8, 50), f32(7, 50), f32(7)
    want = ort_run("Gemm", [x, K(w), K(b)], {"transB": 1}, 13)[0]
    assert_same(evaluate(_linear_graph(x, w, b, x_domain=REAL), {"x": x})["y"], want)


def test_linear_wrong_domain_is_reported():
    """A value declared bipolar that holds 0.5 is a domain error, not a silent truncation."""
    x, w = pm1(2, 8), pm1(3, 8)
    x[0, 0] = 0.5
    with pytest.raises(ModelStructureError, match="declared bipolar"):
        evaluate(_linear_graph(x, w), {"x": x})


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 0, 2, 1], "strides": [2, 1], "group": 2},
    {"pads": [1, 1, 1, 1], "group": 4},
    {"strides": [2, 2], "dilations": [1, 2]},
], ids=["pads-strides-group2", "depthwise", "dilated"])
def test_conv_integer_path_matches_onnxruntime(attrs, exact_calls):
    """Conv on +-1 data through the exact integer path equals onnxruntime's float Conv bit for bit."""
    x = pm1(3, 4, 9, 8)
    g = attrs.get("group", 1)
    w = pm1(8, 4 // g, 3, 3)
    b = R.integers(-3, 3, 8).astype(np.float32)
    args = [x, K(w), K(b)]
    want = ort_run("Conv", args, attrs, 11)[0]
    graph = one_op_graph("Conv", args, attrs, 11, [want], in_domains={0: BIPOLAR})
    got = evaluate(graph, {"x0": x})["y0"]
    assert exact_calls and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_matmul_gemm_ternary_integer_path_matches_onnxruntime(exact_calls):
    """MatMul and Gemm with ternary activations and bipolar weights equal onnxruntime exactly."""
    x = R.choice(np.array([-1, 0, 1], np.float32), (6, 300))
    w = pm1(300, 5)
    for op, args, attrs in [("MatMul", [x, K(w)], {}),
                            ("Gemm", [x, K(w.T.copy()), K(np.arange(5, dtype=np.float32))], {"transB": 1})]:
        want = ort_run(op, args, attrs, 13)[0]
        graph = one_op_graph(op, args, attrs, 13, [want], in_domains={0: TERNARY})
        np.testing.assert_array_equal(evaluate(graph, {"x0": x})["y0"], want)
    assert len(exact_calls) == 2


# -- tamec.Threshold ----------------------------------------------------------------------------------
def threshold_rule(x, tau, flip, axis, lo, hi, tie):
    """The rule in tamec/ops.py, element by element: hi if x > tau, lo if x < tau, else tie
    (hi and lo swapped where flip); tau and flip are scalars or one per channel along axis."""
    y = np.empty(x.shape, np.float64)
    tau, flip = np.atleast_1d(tau), np.atleast_1d(flip)
    for idx in np.ndindex(*x.shape):
        c = idx[axis] if tau.size > 1 else 0
        up, down = (lo, hi) if flip[c % flip.size] else (hi, lo)
        v, t = float(x[idx]), float(tau[c])
        y[idx] = up if v > t else down if v < t else tie
    return y.astype(np.float32)


def _threshold_graph(x, attrs):
    g = Graph("thr", {"": 13, "tamec": 1})
    g.add_value(Value("x", x.shape, "float32"))
    g.add_value(Value("y", x.shape, "float32", BIPOLAR))
    g.add_op(Op("t", "Threshold", ["x"], ["y"], attrs, "tamec", origin=("BipolarQuant_19",)))
    g.inputs, g.outputs = ["x"], ["y"]
    return g


TAUS = np.array([0.0, 1.5, np.nan, np.inf, -np.inf, -2.0])
FLIPS = np.array([False, True, False, True, True, False])


@pytest.mark.parametrize("shape", [(5, 6), (2, 6, 3, 3)], ids=["2d", "4d"])
@pytest.mark.parametrize("tie", [0.0, 1.0, -1.0])
def test_threshold_per_channel_rule(shape, tie):
    """Per-channel tau on axis 1 (with flips, exact ties, NaN and +-inf taus) follows the rule."""
    x = np.round(R.standard_normal(shape) * 2).astype(np.float32)  # many exact ties with 0 and -2
    x.reshape(shape[0], 6, -1)[:, 1, 0] = 1.5  # a tie with a non-integer tau
    attrs = {"tau": TAUS, "flip": FLIPS, "axis": 1, "lo": -1.0, "hi": 1.0, "tie": tie}
    got = evaluate(_threshold_graph(x, attrs), {"x": x})["y"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, threshold_rule(x, TAUS, FLIPS, 1, -1.0, 1.0, tie))
    # NaN tau: constant tie; +inf tau: constant lo (flipped: hi); -inf with flip: constant lo
    assert np.all(got.reshape(shape[0], 6, -1)[:, 2] == tie)
    assert np.all(got.reshape(shape[0], 6, -1)[:, 3] == 1.0)
    assert np.all(got.reshape(shape[0], 6, -1)[:, 4] == -1.0)


def test_threshold_scalar_matches_sign_and_bipolar_quant():
    """tau=0 with tie 0 is ONNX Sign (checked in onnxruntime); with tie 1 and lo/hi 0/1 the rule holds."""
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0]], np.float32)
    sign = evaluate(_threshold_graph(x, {"tau": np.array(0.0), "lo": -1.0, "hi": 1.0, "tie": 0.0}), {"x": x})["y"]
    np.testing.assert_array_equal(sign, ort_run("Sign", [x], {}, 13)[0])
    attrs = {"tau": np.array(0.0), "flip": np.array(True), "axis": 1, "lo": 0.0, "hi": 1.0, "tie": 1.0}
    got = evaluate(_threshold_graph(x, attrs), {"x": x})["y"]
    np.testing.assert_array_equal(got, threshold_rule(x, 0.0, True, 1, 0.0, 1.0, 1.0))


def test_threshold_without_tie_is_rejected():
    """The tie rule is never defaulted: a Threshold without `tie` is a structure error."""
    x = f32(2, 3)
    with pytest.raises(ModelStructureError, match="tie"):
        Evaluator(_threshold_graph(x, {"tau": np.array(0.0)}))


# -- QONNX ops against qonnx's executor -----------------------------------------------------------
def qonnx_run(op_type, x, consts, attrs, qonnx_opset=1):
    """Run one node in domain qonnx.custom_op.general with qonnx's own executor."""
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    names = ["x"] + [f"c{k}" for k in range(len(consts))]
    node = helper.make_node(op_type, names, ["y"], domain=QONNX_DOMAIN, **attrs)
    vi = lambda n, a: helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)  # noqa: E731
    graph = helper.make_graph([node], "q", [vi("x", x)], [vi("y", x)],
                              [numpy_helper.from_array(c, f"c{k}") for k, c in enumerate(consts)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11),
                                                    helper.make_opsetid(QONNX_DOMAIN, qonnx_opset)])
    return execute_onnx(ModelWrapper(model), {"x": x})["y"]


def check_qonnx(op_type, x, consts, attrs, qonnx_opset=1):
    want = np.asarray(qonnx_run(op_type, x, consts, attrs, qonnx_opset))
    graph = one_op_graph(op_type, [x] + [K(c) for c in consts], attrs, 11, [want.astype(np.float32)],
                         domain=QONNX_DOMAIN, opsets={QONNX_DOMAIN: qonnx_opset})
    got = evaluate(graph, {"x0": x})["y0"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype(np.float32))
    return got


ZERO_HEAVY = np.array([[-1.5, -0.0, 0.0, 0.25, -0.25, 2.0, 0.5, -0.5]], np.float32)


@pytest.mark.parametrize("scale", [np.float32(1.0), np.float32(0.5)])
def test_bipolar_quant_matches_qonnx(scale):
    """BipolarQuant: x >= 0 (so x == 0 and x == -0) gives +scale, else -scale, as qonnx executes it."""
    got = check_qonnx("BipolarQuant", ZERO_HEAVY, [np.asarray(scale)], {})
    assert got[0, 1] == got[0, 2] == scale


@pytest.mark.parametrize("signed,narrow", [(1, 0), (1, 1), (0, 0), (0, 1)])
def test_quant_1bit_variants_match_qonnx(signed, narrow):
    """1-bit Quant in all four signed/narrow variants, including x at exactly 0, equals qonnx."""
    consts = [np.asarray(np.float32(1.0)), np.asarray(np.float32(0.0)), np.asarray(np.float32(1.0))]
    got = check_qonnx("Quant", ZERO_HEAVY, consts, {"signed": signed, "narrow": narrow, "rounding_mode": "ROUND"})
    if signed:
        np.testing.assert_array_equal(np.abs(got), 1.0)  # qonnx: bipolar, narrow ignored
    elif narrow:
        np.testing.assert_array_equal(got, 0.0)  # unsigned narrow 1-bit is the degenerate one


@pytest.mark.parametrize("mode", ["ROUND", "HALF_EVEN", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN"])
@pytest.mark.parametrize("signed,narrow", [(1, 1), (0, 0)])
def test_quant_rounding_modes_match_qonnx(mode, signed, narrow):
    """4-bit Quant with per-channel scale, a zero point and values on .5 boundaries equals qonnx."""
    x = (np.arange(-20, 20, dtype=np.float32) / 4).reshape(2, 20)
    consts = [np.array([[0.5], [1.0]], np.float32), np.asarray(np.float32(1.0)), np.asarray(np.float32(4.0))]
    check_qonnx("Quant", x, consts, {"signed": signed, "narrow": narrow, "rounding_mode": mode})


@pytest.mark.parametrize("shape,layout", [((2, 3, 4, 4), None), ((2, 4, 4, 3), "NHWC"), ((5, 3), None)],
                         ids=["nchw", "nhwc", "nc"])
def test_multithreshold_matches_qonnx(shape, layout):
    """MultiThreshold with out_scale=2, out_bias=-1 (bipolar output) and ties on thresholds equals qonnx."""
    x = np.round(R.standard_normal(shape) * 2).astype(np.float32) / 2
    thr = np.sort(np.round(R.standard_normal((3, 2)) * 2) / 2, axis=1).astype(np.float32)
    attrs = {"out_dtype": "BIPOLAR", "out_scale": 2.0, "out_bias": -1.0}
    if layout:
        attrs["data_layout"] = layout
    got = check_qonnx("MultiThreshold", x, [thr], attrs)
    assert set(np.unique(got)) <= {-1.0, 1.0, 3.0}


def test_multithreshold_global_threshold_matches_qonnx():
    """A single threshold row shared by all channels."""
    x = f32(2, 4, 3, 3)
    check_qonnx("MultiThreshold", x, [np.array([[-0.5, 0.0, 0.5]], np.float32)], {"out_dtype": "UINT2"})


@pytest.mark.parametrize("mode", ["FLOOR", "ROUND", "CEIL"])
def test_trunc_v1_and_v2_match_qonnx(mode):
    """Trunc v1 (QONNX opset 1, five inputs) and v2 (opset 2, six inputs: output scale and
    clamping) equal qonnx, which picks the version by the domain's opset."""
    x = (R.integers(-128, 128, (3, 7)) * 0.25).astype(np.float32)
    s, z = np.asarray(np.float32(0.25)), np.asarray(np.float32(0.0))
    check_qonnx("Trunc", x, [s, z, np.asarray(np.float32(8)), np.asarray(np.float32(4))], {"rounding_mode": mode})
    check_qonnx("Trunc", x, [s, z, np.asarray(np.float32(8)), np.asarray(np.float32(2.0)),
                             np.asarray(np.float32(4))],
                {"rounding_mode": mode, "signed": 1, "narrow": 0}, qonnx_opset=2)


# -- errors and bookkeeping ---------------------------------------------------------------------------
def test_unknown_op_is_unsupported():
    """An op no kernel knows is UnsupportedModelError naming its id, type and domain."""
    x = f32(2, 3)
    g = one_op_graph("Frobnicate", [x], {}, 13, [x], domain="acme")
    with pytest.raises(UnsupportedModelError) as err:
        Evaluator(g)
    assert "op0" in str(err.value) and "Frobnicate" in str(err.value) and "acme" in str(err.value)


def test_missing_feed_names_the_input():
    """A graph input left out of the feeds is an InputError naming it."""
    g = one_op_graph("Add", [f32(2), f32(2)], {}, 13, [f32(2)])
    with pytest.raises(InputError, match="'x1'"):
        evaluate(g, {"x0": f32(2)})


def test_bad_feed_dtype_and_shape_are_input_errors():
    """Feeds of the wrong dtype or shape are refused before any op runs."""
    g = one_op_graph("Relu", [f32(2, 3)], {}, 13, [f32(2, 3)])
    with pytest.raises(InputError, match="dtype"):
        evaluate(g, {"x0": np.zeros((2, 3))})
    with pytest.raises(InputError, match="shape"):
        evaluate(g, {"x0": f32(3, 2)})


@pytest.mark.parametrize("op_type,args", [
    ("Reshape", [f32(2, 3), K(i64(4, 2))]),
    ("MatMul", [f32(2, 3), K(f32(4, 2))]),
    ("Conv", [f32(1, 3, 5, 5), K(f32(2, 4, 3, 3))]),
], ids=["reshape-reference", "matmul-own", "conv-own"])
def test_failing_op_is_wrapped(op_type, args):
    """numpy/onnx failures inside an op become ModelStructureError naming op id, origin and type."""
    g = one_op_graph(op_type, args, {}, 13, [f32(1)])
    with pytest.raises(ModelStructureError) as err:
        evaluate(g, feeds_of(args))
    msg = str(err.value)
    assert "op0" in msg and "node0" in msg and op_type in msg


def test_keep_all_returns_intermediates_and_frees_otherwise():
    """keep_all exposes every computed value (for divergence search); the default returns outputs only."""
    g = Graph("two", {"": 13})
    for n in ("x", "h", "y"):
        g.add_value(Value(n, (2, 3), "float32"))
    g.add_op(Op("neg", "Neg", ["x"], ["h"]))
    g.add_op(Op("relu", "Relu", ["h"], ["y"]))
    g.inputs, g.outputs = ["x"], ["y"]
    x = f32(2, 3)
    ev = Evaluator(g)
    full = ev.run({"x": x}, keep_all=True)
    np.testing.assert_array_equal(full["h"], -x)
    np.testing.assert_array_equal(full["y"], np.maximum(-x, 0))
    assert set(ev.run({"x": x})) == {"y"}


def test_initializer_listed_as_input_defaults_to_its_value():
    """A constant that is also a graph input (old exporters) need not be fed; a feed overrides it."""
    g = one_op_graph("Add", [f32(3), K(np.ones(3, np.float32))], {}, 13, [f32(3)])
    g.inputs.append("x1")
    x = f32(3)
    np.testing.assert_array_equal(evaluate(g, {"x0": x})["y0"], x + 1)
    np.testing.assert_array_equal(evaluate(g, {"x0": x, "x1": x})["y0"], x + x)


def test_mlp_784_64_64_64_10_batch_256_is_fast():
    """A 784-64-64-64-10 BNN-style MLP (MatMul, BatchNorm, Sign) on 256 samples runs well under a second."""
    g = Graph("mlp", {"": 13})
    g.add_value(Value("x", ("N", 784), "float32"))
    g.inputs, prev = ["x"], "x"
    sizes = [784, 64, 64, 64, 10]
    for i, (k, n) in enumerate(zip(sizes, sizes[1:])):
        g.add_const(f"W{i}", pm1(k, n))
        g.add_value(Value(f"m{i}", ("N", n), "float32"))
        g.add_op(Op(f"mm{i}", "MatMul", [prev, f"W{i}"], [f"m{i}"]))
        prev = f"m{i}"
        if i < 3:
            for p, arr in zip("sbmv", (f32(n), f32(n), f32(n), pos(n))):
                g.add_const(f"bn{i}.{p}", arr)
            g.add_value(Value(f"z{i}", ("N", n), "float32"))
            g.add_value(Value(f"a{i}", ("N", n), "float32"))
            g.add_op(Op(f"bn{i}", "BatchNormalization", [prev] + [f"bn{i}.{p}" for p in "sbmv"], [f"z{i}"]))
            g.add_op(Op(f"sign{i}", "Sign", [f"z{i}"], [f"a{i}"]))
            prev = f"a{i}"
    g.outputs = [prev]
    x = f32(256, 784)
    ev = Evaluator(g)
    ev.run({"x": x})  # warm-up
    t0 = time.perf_counter()
    y = ev.run({"x": x})[prev]
    assert y.shape == (256, 10)
    assert time.perf_counter() - t0 < 0.5


# -- a real exporter's model -------------------------------------------------------------------------
def _graph_from_onnx(path: Path):
    """A minimal ONNX -> Graph conversion for this test (the real one is tamec.frontend)."""
    qonnx = pytest.importorskip("qonnx")  # noqa: F841
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    mw = ModelWrapper(str(path)).transform(InferShapes())
    m = mw.model
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    g = Graph("tfc", {o.domain: o.version for o in m.opset_import})
    infos = list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output)
    types = {vi.name: vi.type.tensor_type for vi in infos}
    for name, a in inits.items():
        g.add_const(name, a)
    for vi in m.graph.input:
        if vi.name not in inits:
            shape = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
            g.add_value(Value(vi.name, shape, "float32"))
            g.inputs.append(vi.name)
    for k, node in enumerate(m.graph.node):
        for o in node.output:
            tt = types.get(o)
            dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt is not None and tt.elem_type else "float32"
            g.add_value(Value(o, None, dtype))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {n: numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for n, v in attrs.items()}
        dom = QONNX_DOMAIN if node.domain == "onnx.brevitas" else node.domain
        g.add_op(Op(f"n{k}", node.op_type, list(node.input), list(node.output), attrs, dom, origin=(node.name,)))
    g.outputs = [o.name for o in m.graph.output]
    return g, mw


@pytest.mark.skipif(not TFC.exists(), reason="shared TFC_1W1A.onnx model not present")
@pytest.mark.filterwarnings("ignore:Output shapes disagree")  # qonnx's own exec-context shapes
def test_tfc_1w1a_matches_qonnx_execution():
    """The Brevitas TFC_1W1A model (opset 9, BatchNorm with momentum, onnx.brevitas BipolarQuant)
    evaluates to qonnx's executor's logits, and the same class for every sample."""
    from qonnx.core.onnx_exec import execute_onnx

    g, mw = _graph_from_onnx(TFC)
    inp = g.inputs[0]
    ev = Evaluator(g)
    for _ in range(3):
        x = R.random((1, 1, 28, 28)).astype(np.float32)
        want = execute_onnx(mw, {inp: x})[g.outputs[0]]
        got = ev.run({inp: x})[g.outputs[0]]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert got.argmax() == want.argmax()
