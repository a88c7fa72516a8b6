"""Interval bounds of monotone ops with a negative scale or slope (issue 10, failure 5): the bounds
pass takes both ends, so lo <= hi, and every sampled tensor lies inside its bounds; the compiled
graph's outputs equal the qonnx executor (onnxruntime for the standard ops)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import tamec
from tamec.evaluator import Evaluator
from tests.helpers import model

Q = "qonnx.custom_op.general"
T2 = np.array([[-0.5, 0.25], [0.0, 0.75], [-1.0, 0.5]], np.float32)  # two thresholds per channel


def _one(op_type, inits=(), domain="", **attrs):
    """x (N, 3) in [-1, 1] -> op -> Mul by 1 (a consumer, so the op's bounds are used) -> y."""
    names = ["x"] + [n for n, _ in inits]
    nodes = [helper.make_node(op_type, names, ["z"], domain=domain, **attrs),
             helper.make_node("Mul", ["z", "one"], ["y"])]
    return model(nodes, [("x", ["N", 3])], [("y", ["N", 3])], dict(inits, one=np.array(1.0, np.float32)),
                 extra_opsets=[(Q, 1)] if domain else ())


CASES = {
    "multithreshold-neg-scale": _one("MultiThreshold", [("t", T2)], Q, out_scale=-2.0, out_bias=1.0),
    "multithreshold-neg-frac-scale": _one("MultiThreshold", [("t", T2)], Q, out_scale=-0.5, out_bias=-0.25),
    "multithreshold-pos-scale": _one("MultiThreshold", [("t", T2)], Q, out_scale=1.5, out_bias=0.0),
    "multithreshold-1-neg-scale": _one("MultiThreshold", [("t", T2[:, :1])], Q, out_scale=-2.0, out_bias=1.0),
    "bipolarquant-neg-scale": _one("BipolarQuant", [("s", np.array(-0.5, np.float32))], Q),
    "quant-neg-scale": _one("Quant", [("s", np.array(-0.25, np.float32)), ("zp", np.array(0.0, np.float32)),
                                      ("bw", np.array(3.0, np.float32))], Q, signed=1, narrow=0,
                            rounding_mode="ROUND"),
    "hardsigmoid-neg-alpha": _one("HardSigmoid", alpha=-0.7, beta=0.4),
    "leakyrelu-neg-alpha": _one("LeakyRelu", alpha=-0.5),
    "elu-neg-alpha": _one("Elu", alpha=-0.5),
    "mul-neg-const": _one("Mul", [("c", np.array([-2.0, 0.5, -0.25], np.float32))]),
    "div-neg-const": _one("Div", [("c", np.array([-2.0, 4.0, -0.5], np.float32))]),
}


def _qonnx_run(m, x):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    m = onnx.ModelProto.FromString(m.SerializeToString())
    for v in (m.graph.input[0], m.graph.output[0]):  # the qonnx executor wants a static batch
        v.type.tensor_type.shape.dim[0].dim_value = len(x)
    return execute_onnx(ModelWrapper(m).transform(InferShapes()), {"x": x})["y"]


def _samples(rng):
    """The box's ends, every threshold exactly, its float neighbours, and uniform noise."""
    pts = np.concatenate([[-1.0, 1.0, 0.0], T2.reshape(-1)]).astype(np.float32)
    pts = np.concatenate([pts, np.nextafter(pts, np.float32(2)), np.nextafter(pts, np.float32(-2))])
    pts = np.clip(pts, -1, 1)
    grid = np.repeat(pts[:, None], 3, axis=1)
    return np.concatenate([grid, rng.uniform(-1, 1, (200, 3))]).astype(np.float32)


@pytest.mark.parametrize("name", list(CASES))
def test_bounds_of_decreasing_ops_are_sound(name):
    """Compiled with the input box [-1, 1] (the verifier runs after every pass): the op's output
    gets bounds with lo <= hi that contain its value on every sample, and the compiled graph
    equals the qonnx executor on those samples."""
    pytest.importorskip("qonnx")
    m = CASES[name]
    mod = tamec.compile(m, input_bounds=(-1.0, 1.0))
    g = mod.graph
    x = _samples(np.random.default_rng(0))
    vals = Evaluator(g).run({"x": x}, keep_all=True)
    np.testing.assert_allclose(vals["y"], _qonnx_run(m, x), rtol=1e-6, atol=1e-6)
    y = g.values["y"]
    if name.startswith(("leakyrelu", "elu")):
        assert y.bounds is None or np.all(y.bounds[0] <= y.bounds[1])  # not monotone: any sound box
    else:
        assert y.bounds is not None and np.all(np.isfinite(y.bounds[0])) and np.all(np.isfinite(y.bounds[1]))
    for v in g.values.values():
        if v.bounds is not None and v.const is None and v.name in vals:
            lo, hi = v.bounds
            assert np.all(lo <= hi), v.name
            assert np.all(vals[v.name] >= lo) and np.all(vals[v.name] <= hi), v.name
