"""tamec.Session equals onnxruntime (standard-op models) or the QONNX executor (QONNX models) on
every bundled model and TFC_1W1A: bit for bit on every binary tensor, within 1e-5 on outputs,
on 100+ inputs that include exact 0/1 images and inputs that hit ties."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import tamec
from tests.conftest import all_models, is_qonnx

N = 104


def probe_inputs(shape, rng) -> np.ndarray:
    """N inputs: exact {0,1} images, +-1 images, {0, 1/2, 1} images (2x-1 then hits 0 exactly,
    the tie of the input quantizer), zeros, and uniform noise."""
    shape = [d if isinstance(d, int) else 1 for d in shape]
    shape[0] = 1
    xs = []
    for k in range(N):
        kind = k % 5
        if kind == 0:
            x = rng.integers(0, 2, shape)
        elif kind == 1:
            x = rng.choice([-1.0, 1.0], shape)
        elif kind == 2:
            x = rng.choice([0.0, 0.5, 1.0], shape)
        elif kind == 3:
            x = np.zeros(shape) if k % 10 == 3 else np.full(shape, 0.5)
        else:
            x = rng.uniform(-1, 1, shape)
        xs.append(x.astype(np.float32))
    return np.concatenate(xs)


def binary_names(sess: tamec.Session, original: onnx.ModelProto) -> list[str]:
    """Binary tensors of the compiled graph that the original model also computes."""
    produced = {o for n in original.graph.node for o in n.output}
    g = sess.graph
    return [n for n, v in g.values.items() if v.const is None and v.domain.kind in ("bipolar", "ternary", "bin01")
            and n in produced and n not in g.outputs]


def reference_ort(model: onnx.ModelProto, x: np.ndarray, names: list[str], inp: str) -> list[dict]:
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = [o.name for o in m.graph.output]
    fixed = isinstance(model.graph.input[0].type.tensor_type.shape.dim[0].dim_value, int) and \
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    batches = [x[i:i + 1] for i in range(len(x))] if fixed else [x]
    res = [dict(zip(outs, sess.run(outs, {inp: b}))) for b in batches]
    return [{k: np.concatenate([r[k] for r in res]) for k in outs}]


def reference_qonnx(model: onnx.ModelProto, x: np.ndarray, names: list[str], inp: str) -> list[dict]:
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in m.graph.node:  # the legacy Brevitas domain is the same op set under an older name
        if n.domain == "onnx.brevitas":
            n.domain = "qonnx.custom_op.general"
    from qonnx.transformation.infer_shapes import InferShapes

    w = ModelWrapper(m).transform(InferShapes())  # the raw TorchScript export leaves shapes out
    outs = [o.name for o in m.graph.output] + names
    res = []
    for i in range(len(x)):
        ctx = execute_onnx(w, {inp: x[i:i + 1]}, return_full_exec_context=True)
        res.append({k: ctx[k] for k in outs})
    return [{k: np.concatenate([r[k] for r in res]) for k in outs}]


@pytest.mark.parametrize("path", all_models())
def test_session_equals_reference(path):
    """Compiled model == reference on 104 inputs: binary tensors exact, outputs within 1e-5."""
    rng = np.random.default_rng(7)
    original = onnx.load(str(path))
    sess = tamec.Session(str(path))
    (inp,) = [i.name for i in sess.get_inputs()]
    x = probe_inputs(sess.get_inputs()[0].shape, rng)
    names = binary_names(sess, original)
    assert names, "no binary tensor to compare"
    ref = (reference_qonnx if is_qonnx(path) else reference_ort)(original, x, names, inp)[0]
    fixed = sess.get_inputs()[0].shape[0] == 1
    from tamec.evaluator import Evaluator

    ev = Evaluator(sess.graph)
    batches = [x[i:i + 1] for i in range(len(x))] if fixed else [x]
    got = [ev.run(sess.check_feeds({inp: b}), keep_all=True) for b in batches]
    got = {k: np.concatenate([r[k] for r in got]) for k in names + list(sess.graph.outputs)}
    for n in names:
        assert np.array_equal(got[n], ref[n]), f"binary tensor {n} differs in {int((got[n] != ref[n]).sum())} places"
    for o in sess.graph.outputs:
        np.testing.assert_allclose(got[o], ref[o], rtol=1e-5, atol=1e-5)
    # the public run() returns the same outputs
    y = np.concatenate([sess.run(None, {inp: b})[0] for b in batches])
    np.testing.assert_array_equal(y, got[sess.graph.outputs[0]])


def test_ties_are_hit():
    """The probe set really reaches thresholds exactly at tau (else the tie tests prove nothing)."""
    from tests.conftest import MODELS
    from tamec.evaluator import Evaluator

    sess = tamec.Session(str(MODELS / "sign_ties.onnx"))
    x = probe_inputs(sess.get_inputs()[0].shape, np.random.default_rng(7))
    vals = Evaluator(sess.graph).run({"x": x}, keep_all=True)
    hits = 0
    for op in sess.graph.ops():
        if op.qualname == "tamec.Threshold" and op.attrs["tau"].ndim:
            s = vals[op.inputs[0]]
            hits += int((s == op.attrs["tau"].reshape(1, -1)).sum())
    assert hits > 0
