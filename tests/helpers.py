"""Small ONNX models built with onnx.helper for pass tests, and a runner for onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def model(nodes, inputs, outputs, inits=(), opset=13, extra_opsets=()) -> onnx.ModelProto:
    """A checked ModelProto from nodes, (name, shape) inputs/outputs and {name: array} inits."""
    g = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in dict(inits).items()])
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    m = helper.make_model(g, opset_imports=ops)
    m.ir_version = 8
    return m


def ort_run(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def bipolar_dense_bn_sign(k=5, n=6, gamma=None, beta=None, mean=None, var=None, sign="Sign", seed=0):
    """x (bipolar, width k) -> MatMul(+-1 W) -> BatchNorm -> Sign: every pre-activation reachable."""
    rng = np.random.default_rng(seed)
    w = rng.choice([-1.0, 1.0], (k, n)).astype(np.float32)
    gamma = np.asarray(gamma if gamma is not None else rng.uniform(0.5, 1.5, n), np.float32)
    beta = np.asarray(beta if beta is not None else rng.normal(0, 0.5, n), np.float32)
    mean = np.asarray(mean if mean is not None else rng.normal(0, 1.5, n), np.float32)
    var = np.asarray(var if var is not None else rng.uniform(0.5, 2, n), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"], name="mm"),
             helper.make_node("BatchNormalization", ["s", "g", "b", "m", "v"], ["z"], name="bn"),
             helper.make_node("Sign", ["z"], ["y"], name="sign")]
    return model(nodes, [("x", ["N", k])], [("y", ["N", n])],
                 {"w": w, "g": gamma, "b": beta, "m": mean, "v": var})


def all_bipolar(k: int) -> np.ndarray:
    """Every vector in {-1,+1}^k, as float32 rows."""
    idx = np.arange(2 ** k)[:, None]
    return np.where((idx >> np.arange(k)) & 1, 1.0, -1.0).astype(np.float32)
