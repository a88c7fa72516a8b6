#!/usr/bin/env python
"""Regenerate the small ONNX test models committed in models/.

Run from the repository root:

    python models/make_models.py                      # every model
    python models/make_models.py digits_bnn.onnx      # only the named ones

Every model comes from a real exporter (Brevitas ``export_qonnx``, PyTorch
``torch.onnx.export``) except ``larq_sign.onnx``, which is written with
``onnx.helper`` in the shape tf2onnx gives a Larq network (neither TensorFlow
nor Larq is installed here).  Seeds are fixed, so the models come out the same
each time with the same package versions.  Each model is checked against its
source (torch model, or a NumPy reference for the Larq-style graph) and the
script stops with an error if a check fails.  See models/README.md.

Tested with: torch 2.13.0+cpu, brevitas 0.13.4, qonnx 1.0.0, onnx 1.23.2,
onnxruntime 1.32.0, scikit-learn 1.9.1.
"""

import os
import sys
import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ATOL = 1e-4

warnings.filterwarnings("ignore")  # the TorchScript exporter is noisy (deprecation etc.)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


# --------------------------------------------------------------------------- helpers
def out_path(name):
    return os.path.join(HERE, name)


def digits_data():
    """sklearn's bundled 8x8 digits (no download), as float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)  # (1797, 64)
    return x, d.target.astype(np.int64)


def shape_str(vi):
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_param if d.dim_param else str(d.dim_value) if d.HasField("dim_value") else "?")
    return "[" + ",".join(dims) + "]"


def describe(name):
    """Print file size, opsets, op types (with domain), graph I/O for one model."""
    path = out_path(name)
    m = onnx.load(path)
    size = os.path.getsize(path)
    init_names = {i.name for i in m.graph.initializer}
    ops = Counter()
    for n in m.graph.node:
        ops[(n.domain if n.domain else "ai.onnx") + "::" + n.op_type] += 1
    inputs = [i for i in m.graph.input if i.name not in init_names]
    n_init_inputs = sum(1 for i in m.graph.input if i.name in init_names)
    print(f"  file        : models/{name}  ({size} bytes)")
    print(f"  producer    : {m.producer_name} {m.producer_version}, ir_version {m.ir_version}")
    print("  opsets      : " + ", ".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in m.opset_import))
    print("  op types    : " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())))
    print("  inputs      : " + ", ".join(f"{i.name}{shape_str(i)}" for i in inputs))
    print("  outputs     : " + ", ".join(f"{o.name}{shape_str(o)}" for o in m.graph.output))
    print(f"  initializers: {len(m.graph.initializer)} (also listed as graph inputs: {n_init_inputs})")
    assert size < 1_000_000, f"{name} is {size} bytes (limit 1 MB)"


def check_close(label, got, ref, atol=ATOL):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{label}: shape {got.shape} != {ref.shape}"
    diff = float(np.max(np.abs(got - ref))) if got.size else 0.0
    ok = diff <= atol
    print(f"  check       : {label}: max|diff| = {diff:.3g} (atol {atol}) -> {'OK' if ok else 'FAIL'}")
    if not ok:
        raise SystemExit(f"check failed: {label}")


def check_onnx(name, full=True):
    m = onnx.load(out_path(name))
    onnx.checker.check_model(m, full_check=full)
    print(f"  check       : onnx.checker.check_model(full_check={full}) -> OK")


def ort_session(path_or_bytes, optimize=True):
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def ort_run(name, x, extra_outputs=(), optimize=True):
    """Run a model with onnxruntime; extra_outputs exposes intermediate tensors.

    optimize=True uses onnxruntime's default graph optimizations (ORT_ENABLE_ALL),
    optimize=False runs the graph as written (ORT_DISABLE_ALL).
    """
    m = onnx.load(out_path(name))
    for t in extra_outputs:
        m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    sess = ort_session(m.SerializeToString(), optimize)
    feed = {sess.get_inputs()[0].name: x}
    outs = sess.run(None, feed)
    return outs


def set_bn_affine(bn, gen, neg_frac=0.25):
    """Non-trivial gamma/beta: |gamma| in [0.5, 1.5], ~neg_frac of them negative, beta ~ N(0, 0.3)."""
    n = bn.num_features
    with torch.no_grad():
        g = torch.empty(n).uniform_(0.5, 1.5, generator=gen)
        flip = torch.rand(n, generator=gen) < neg_frac
        g[flip] = -g[flip]
        bn.weight.copy_(g)
        bn.bias.copy_(0.3 * torch.randn(n, generator=gen))


def calibrate_bn(model, batches):
    """Collect BatchNorm running statistics: forward passes in train mode, no grad."""
    model.train()
    with torch.no_grad():
        for xb in batches:
            model(xb)
    model.eval()


def binarize_(param):
    """Overwrite a parameter in place with +-1 (sign, with 0 -> +1)."""
    with torch.no_grad():
        param.copy_(torch.where(param >= 0, 1.0, -1.0))


# --------------------------------------------------------------------------- 1. Brevitas TFC W1A1 -> QONNX
def make_tfc_model():
    # The real TFC definition from Brevitas' BNN-PYNQ example (cfg tfc_1w1a):
    # QuantIdentity(1 bit) -> [QuantLinear(1 bit, no bias) -> BatchNorm1d -> QuantIdentity(1 bit)] x3
    # -> QuantLinear(1 bit) -> TensorNorm.  forward() does view(N, -1) and 2x-1 first.
    from brevitas_examples.bnn_pynq.models.FC import FC
    from brevitas_examples.bnn_pynq.models.tensor_norm import TensorNorm

    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(101)
    model = FC(num_classes=10, weight_bit_width=1, act_bit_width=1, in_bit_width=1,
               in_channels=1, out_features=[64, 64, 64])
    # BN / TensorNorm running stats from random "images" in [0,1] (train mode, dropout active)
    calibrate_bn(model, [torch.rand(64, 1, 28, 28, generator=gen) for _ in range(20)])
    for mod in model.features:
        if isinstance(mod, nn.BatchNorm1d):
            set_bn_affine(mod, gen)
        if isinstance(mod, TensorNorm):
            with torch.no_grad():
                mod.weight.fill_(0.75)
                mod.bias.fill_(0.125)
    model.eval()
    return model, gen


def qonnx_exec(name, x):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    from qonnx.transformation.infer_shapes import InferShapes

    mw = ModelWrapper(out_path(name))
    # execute_onnx refuses graphs with tensors of unknown shape.  The TorchScript
    # export only records value_info for the custom-op (BipolarQuant) outputs, so
    # run qonnx's InferShapes on the in-memory copy; the file stays the raw export.
    mw = mw.transform(InferShapes())
    iname = mw.graph.input[0].name
    oname = mw.graph.output[0].name
    return execute_onnx(mw, {iname: x})[oname]


def check_tfc(name, model, gen, n=8):
    # The export has a fixed batch of 1 (the Reshape target is a constant [1,-1]),
    # so run n single images through the qonnx executor.
    xs = torch.rand(n, 1, 28, 28, generator=gen)
    xs[0] = 0.5  # 2*0.5-1 == 0 exactly: BipolarQuant's tie (binary_sign(0) = +1)
    with torch.no_grad():
        ref = model(xs).numpy()
    got = np.concatenate([qonnx_exec(name, xs[i:i + 1].numpy()) for i in range(n)], axis=0)
    check_close(f"qonnx execute_onnx vs brevitas torch model, {n} inputs", got, ref)


def export_tfc():
    from brevitas.export import export_qonnx

    name = "tfc_w1a1_qonnx.onnx"
    model, gen = make_tfc_model()
    x = torch.rand(1, 1, 28, 28, generator=gen)
    export_qonnx(model, args=x, export_path=out_path(name), dynamo=False, opset_version=13,
                 input_names=["x"], output_names=["y"])
    print(f"\n== {name}: brevitas.export.export_qonnx(dynamo=False) [TorchScript]")
    check_onnx(name)  # raw export is valid ONNX -> keep it as is, no qonnx cleanup
    check_tfc(name, model, gen)
    describe(name)

    name = "tfc_w1a1_qonnx_dynamo.onnx"
    model, gen = make_tfc_model()  # same seeds -> same network
    x = torch.rand(1, 1, 28, 28, generator=gen)
    export_qonnx(model, args=x, export_path=out_path(name), dynamo=True, optimize=True, verbose=False,
                 opset_version=20, input_names=["x"], output_names=["y"])
    print(f"\n== {name}: brevitas.export.export_qonnx(dynamo=True, optimize=True) [torch.export]")
    # The dynamo exporter writes the weights to a side file <name>.data; Brevitas then
    # onnx.load()s the model (pulling the data in) and onnx.save()s it self-contained,
    # leaving the .data file behind unused.  Check that nothing refers to it and drop it.
    side = out_path(name) + ".data"
    if os.path.exists(side):
        m = onnx.load(out_path(name), load_external_data=False)
        assert not any(i.data_location == TensorProto.EXTERNAL for i in m.graph.initializer)
        os.remove(side)
        print(f"  note        : removed unused exporter side file models/{name}.data")
    check_onnx(name)
    check_tfc(name, model, gen)
    describe(name)


# --------------------------------------------------------------------------- 2. mlp_sign
class SignWeightLinear(nn.Linear):
    """Linear layer that binarizes its latent weight in forward: W_b = sign(W)."""

    def forward(self, x):
        return F.linear(x, torch.sign(self.weight), self.bias)


class MLPSign(nn.Module):
    def __init__(self, n_in=64, n_hidden=64, n_out=10):
        super().__init__()
        self.fc1 = SignWeightLinear(n_in, n_hidden, bias=False)
        self.bn1 = nn.BatchNorm1d(n_hidden)
        self.fc2 = SignWeightLinear(n_hidden, n_hidden, bias=False)
        self.bn2 = nn.BatchNorm1d(n_hidden)
        self.fc3 = SignWeightLinear(n_hidden, n_out, bias=False)
        self.bn3 = nn.BatchNorm1d(n_out)
        for fc in (self.fc1, self.fc2, self.fc3):  # no exact-zero latent weight (sign(0) = 0)
            with torch.no_grad():
                fc.weight[fc.weight == 0] = 1e-3

    def forward(self, x):
        x = torch.sign(self.bn1(self.fc1(x)))  # real-valued input x into the first layer
        x = torch.sign(self.bn2(self.fc2(x)))
        return self.bn3(self.fc3(x))


def export_mlp_sign():
    name = "mlp_sign.onnx"
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(202)
    xd, _ = digits_data()
    xd = torch.from_numpy(xd)
    model = MLPSign()
    perm = torch.randperm(len(xd), generator=gen)
    calibrate_bn(model, [xd[perm[i:i + 128]] for i in range(0, 1280, 128)])
    for bn in (model.bn1, model.bn2, model.bn3):
        set_bn_affine(bn, gen)
    model.eval()
    torch.onnx.export(model, (xd[:2],), out_path(name), dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    print(f"\n== {name}: torch.onnx.export(dynamo=False, opset_version=13) [TorchScript]")
    check_onnx(name)
    xt = xd[:300]
    with torch.no_grad():
        ref = model(xt).numpy()
    for optimize in (True, False):
        mode = "default optimizations" if optimize else "ORT_DISABLE_ALL"
        check_close(f"onnxruntime ({mode}) vs torch, 300 digits (batch 300)",
                    ort_run(name, xt.numpy(), optimize=optimize)[0], ref)
    describe(name)


# --------------------------------------------------------------------------- 3. cnn_sign
class CNNSign(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)  # real weights + bias, real input
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)  # +-1 weights, zero padding
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16 * 2 * 2, 10)
        binarize_(self.conv2.weight)

    def forward(self, x):  # x: (N, 1, 8, 8)
        x = self.pool(torch.sign(self.bn1(self.conv1(x))))  # -> (N, 8, 4, 4)
        x = self.pool(torch.sign(self.bn2(self.conv2(x))))  # -> (N, 16, 2, 2)
        return self.fc(self.flatten(x))


def export_cnn_sign():
    name = "cnn_sign.onnx"
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(303)
    xd, _ = digits_data()
    xd = torch.from_numpy(xd).reshape(-1, 1, 8, 8)
    model = CNNSign()
    perm = torch.randperm(len(xd), generator=gen)
    calibrate_bn(model, [xd[perm[i:i + 128]] for i in range(0, 1280, 128)])
    for bn in (model.bn1, model.bn2):
        set_bn_affine(bn, gen)
    model.eval()
    # training=PRESERVE (model is in eval mode, so BN is exported in inference form):
    # with the default TrainingMode.EVAL the TorchScript exporter folds every
    # BatchNorm2d into the preceding Conv, which would turn conv2's +-1 weights
    # into arbitrary reals and drop the BatchNormalization nodes.
    torch.onnx.export(model, (xd[:2],), out_path(name), dynamo=False, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    print(f"\n== {name}: torch.onnx.export(dynamo=False, opset_version=17, training=PRESERVE) [TorchScript]")
    check_onnx(name)
    w2 = [numpy_helper.to_array(i) for i in onnx.load(out_path(name)).graph.initializer
          if i.name == "conv2.weight"][0]
    assert set(np.unique(w2).tolist()) == {-1.0, 1.0}
    print("  check       : conv2.weight initializer holds only +-1 -> OK")
    xt = xd[:300]
    with torch.no_grad():
        ref = model(xt).numpy()
    for optimize in (True, False):
        mode = "default optimizations" if optimize else "ORT_DISABLE_ALL"
        check_close(f"onnxruntime ({mode}) vs torch, 300 digits (batch 300)",
                    ort_run(name, xt.numpy(), optimize=optimize)[0], ref)
    describe(name)


# --------------------------------------------------------------------------- 4. larq_sign (onnx.helper)
LARQ_C = 0.1  # larq.math.sign(x) = tf.sign(tf.sign(x) + 0.1): +1 at x == 0


def larq_reference(x, p):
    def lsign(v):
        return np.sign(np.sign(v) + np.float32(LARQ_C)).astype(np.float32)

    h = x @ p["W1"] + p["b1"]
    h = (h - p["mean1"]) / np.sqrt(p["var1"] + p["eps"]) * p["gamma1"] + p["beta1"]
    h = lsign(h) @ p["W2"] + p["b2"]
    h = h * p["mul2"] + p["add2"]
    return lsign(h) @ p["W3"] + p["b3"]


def export_larq_sign():
    """A Larq BNN 64 -> 32 -> 32 -> 10 written the way tf2onnx converts it.

    Keras/Larq model (not executed here):
        QuantDense(32, kernel_quantizer="ste_sign")              # real input
        BatchNormalization()                                     # -> ONNX BatchNormalization
        QuantDense(32, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
        BatchNormalization()                                     # folded by grappler -> Mul, Add
        QuantDense(10, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    tf2onnx constant-folds the kernel quantizers (MatMul gets +-1 constants), writes
    Dense as MatMul + Add, and ste_sign as Sign -> Add(0.1) -> Sign.
    """
    name = "larq_sign.onnx"
    rng = np.random.RandomState(4)
    f32 = np.float32

    def pm1(*shape):
        return np.where(rng.rand(*shape) < 0.5, -1.0, 1.0).astype(f32)

    def gammas(n):
        g = rng.uniform(0.5, 1.5, n).astype(f32)
        g[rng.rand(n) < 0.25] *= -1
        return g

    p = {
        "W1": pm1(64, 32), "b1": (0.1 * rng.randn(32)).astype(f32),
        "gamma1": gammas(32), "beta1": (0.3 * rng.randn(32)).astype(f32),
        "mean1": rng.uniform(-4, 4, 32).astype(f32), "var1": rng.uniform(2, 20, 32).astype(f32),
        "eps": f32(1e-3),  # Keras BatchNormalization default epsilon
        "W2": pm1(32, 32), "b2": (0.1 * rng.randn(32)).astype(f32),
        "mul2": (gammas(32) / np.sqrt(rng.uniform(5, 30, 32))).astype(f32),
        "add2": (0.5 * rng.randn(32)).astype(f32),
        "W3": pm1(32, 10), "b3": (0.1 * rng.randn(10)).astype(f32),
    }
    pre = "StatefulPartitionedCall/sequential/"
    inits = [
        numpy_helper.from_array(p["W1"], pre + "quant_dense/MatMul/ReadVariableOp:0"),
        numpy_helper.from_array(p["b1"], pre + "quant_dense/BiasAdd/ReadVariableOp:0"),
        numpy_helper.from_array(p["gamma1"], pre + "batch_normalization/ReadVariableOp:0"),
        numpy_helper.from_array(p["beta1"], pre + "batch_normalization/ReadVariableOp_1:0"),
        numpy_helper.from_array(p["mean1"], pre + "batch_normalization/FusedBatchNormV3/ReadVariableOp:0"),
        numpy_helper.from_array(p["var1"], pre + "batch_normalization/FusedBatchNormV3/ReadVariableOp_1:0"),
        numpy_helper.from_array(np.array(LARQ_C, dtype=f32), "const_fold_opt__7"),
        numpy_helper.from_array(p["W2"], pre + "quant_dense_1/MatMul/ReadVariableOp:0"),
        numpy_helper.from_array(p["b2"], pre + "quant_dense_1/BiasAdd/ReadVariableOp:0"),
        numpy_helper.from_array(p["mul2"], pre + "batch_normalization_1/batchnorm/mul:0"),
        numpy_helper.from_array(p["add2"], pre + "batch_normalization_1/batchnorm/sub:0"),
        numpy_helper.from_array(p["W3"], pre + "quant_dense_2/MatMul/ReadVariableOp:0"),
        numpy_helper.from_array(p["b3"], pre + "quant_dense_2/BiasAdd/ReadVariableOp:0"),
    ]

    def t(s):
        return pre + s

    nodes = [
        helper.make_node("MatMul", ["input_1", t("quant_dense/MatMul/ReadVariableOp:0")],
                         [t("quant_dense/MatMul:0")], name=t("quant_dense/MatMul")),
        helper.make_node("Add", [t("quant_dense/MatMul:0"), t("quant_dense/BiasAdd/ReadVariableOp:0")],
                         [t("quant_dense/BiasAdd:0")], name=t("quant_dense/BiasAdd")),
        helper.make_node("BatchNormalization",
                         [t("quant_dense/BiasAdd:0"), t("batch_normalization/ReadVariableOp:0"),
                          t("batch_normalization/ReadVariableOp_1:0"),
                          t("batch_normalization/FusedBatchNormV3/ReadVariableOp:0"),
                          t("batch_normalization/FusedBatchNormV3/ReadVariableOp_1:0")],
                         [t("batch_normalization/FusedBatchNormV3:0")],
                         name=t("batch_normalization/FusedBatchNormV3"), epsilon=float(p["eps"])),
        # ste_sign input quantizer of quant_dense_1
        helper.make_node("Sign", [t("batch_normalization/FusedBatchNormV3:0")],
                         [t("quant_dense_1/ste_sign/Sign:0")], name=t("quant_dense_1/ste_sign/Sign")),
        helper.make_node("Add", [t("quant_dense_1/ste_sign/Sign:0"), "const_fold_opt__7"],
                         [t("quant_dense_1/ste_sign/add:0")], name=t("quant_dense_1/ste_sign/add")),
        helper.make_node("Sign", [t("quant_dense_1/ste_sign/add:0")],
                         [t("quant_dense_1/ste_sign/Sign_1:0")], name=t("quant_dense_1/ste_sign/Sign_1")),
        helper.make_node("MatMul", [t("quant_dense_1/ste_sign/Sign_1:0"), t("quant_dense_1/MatMul/ReadVariableOp:0")],
                         [t("quant_dense_1/MatMul:0")], name=t("quant_dense_1/MatMul")),
        helper.make_node("Add", [t("quant_dense_1/MatMul:0"), t("quant_dense_1/BiasAdd/ReadVariableOp:0")],
                         [t("quant_dense_1/BiasAdd:0")], name=t("quant_dense_1/BiasAdd")),
        helper.make_node("Mul", [t("quant_dense_1/BiasAdd:0"), t("batch_normalization_1/batchnorm/mul:0")],
                         [t("batch_normalization_1/batchnorm/mul_1:0")], name=t("batch_normalization_1/batchnorm/mul_1")),
        helper.make_node("Add", [t("batch_normalization_1/batchnorm/mul_1:0"), t("batch_normalization_1/batchnorm/sub:0")],
                         [t("batch_normalization_1/batchnorm/add_1:0")], name=t("batch_normalization_1/batchnorm/add_1")),
        # ste_sign input quantizer of quant_dense_2
        helper.make_node("Sign", [t("batch_normalization_1/batchnorm/add_1:0")],
                         [t("quant_dense_2/ste_sign/Sign:0")], name=t("quant_dense_2/ste_sign/Sign")),
        helper.make_node("Add", [t("quant_dense_2/ste_sign/Sign:0"), "const_fold_opt__7"],
                         [t("quant_dense_2/ste_sign/add:0")], name=t("quant_dense_2/ste_sign/add")),
        helper.make_node("Sign", [t("quant_dense_2/ste_sign/add:0")],
                         [t("quant_dense_2/ste_sign/Sign_1:0")], name=t("quant_dense_2/ste_sign/Sign_1")),
        helper.make_node("MatMul", [t("quant_dense_2/ste_sign/Sign_1:0"), t("quant_dense_2/MatMul/ReadVariableOp:0")],
                         [t("quant_dense_2/MatMul:0")], name=t("quant_dense_2/MatMul")),
        helper.make_node("Add", [t("quant_dense_2/MatMul:0"), t("quant_dense_2/BiasAdd/ReadVariableOp:0")],
                         ["quant_dense_2"], name=t("quant_dense_2/BiasAdd")),
    ]
    graph = helper.make_graph(
        nodes, "tf2onnx",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__12", 64])],
        [helper.make_tensor_value_info("quant_dense_2", TensorProto.FLOAT, ["unk__13", 10])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="tamec models/make_models.py (onnx.helper, tf2onnx-style)",
                              producer_version="1")
    model.ir_version = 7  # what onnx/tf2onnx write for opset 13
    onnx.save(model, out_path(name))
    print(f"\n== {name}: onnx.helper, tf2onnx-style Larq ste_sign graph")
    check_onnx(name)
    xd, _ = digits_data()
    xt = np.concatenate([xd[:200], np.zeros((1, 64), np.float32)], axis=0)
    for optimize in (True, False):
        mode = "default optimizations" if optimize else "ORT_DISABLE_ALL"
        check_close(f"onnxruntime ({mode}) vs NumPy reference, 200 digits + zero input",
                    ort_run(name, xt, optimize=optimize)[0], larq_reference(xt, p))
    # Larq's sign is +1 at 0: Sign(Add(Sign(0), 0.1)) == 1 (plain ONNX Sign(0) would be 0)
    probe = helper.make_graph(
        [helper.make_node("Sign", ["z"], ["s0"]), helper.make_node("Add", ["s0", "c"], ["s1"]),
         helper.make_node("Sign", ["s1"], ["s"])], "probe",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [3])],
        initializer=[numpy_helper.from_array(np.array(LARQ_C, dtype=f32), "c")])
    pm = helper.make_model(probe, opset_imports=[helper.make_opsetid("", 13)])
    pm.ir_version = 7
    s = ort_session(pm.SerializeToString()).run(None, {"z": np.array([-0.5, 0.0, 0.5], f32)})[0]
    assert s.tolist() == [-1.0, 1.0, 1.0], s
    print(f"  check       : onnxruntime Sign(Add(Sign(z), 0.1)) at z=[-0.5, 0, 0.5] -> {s.tolist()} -> OK")
    describe(name)


# --------------------------------------------------------------------------- 5. sign_ties
class TiesMLP(nn.Module):
    """Bipolar input (+-1 reals) -> Linear(+-1 weights, no bias) -> BN -> sign -> ... -> BN -> y."""

    def __init__(self, n_in=16, n_hidden=24, n_out=10):
        super().__init__()
        self.fc1 = nn.Linear(n_in, n_hidden, bias=False)
        self.bn1 = nn.BatchNorm1d(n_hidden)
        self.fc2 = nn.Linear(n_hidden, n_hidden, bias=False)
        self.bn2 = nn.BatchNorm1d(n_hidden)
        self.fc3 = nn.Linear(n_hidden, n_out, bias=False)
        self.bn3 = nn.BatchNorm1d(n_out)
        for fc in (self.fc1, self.fc2, self.fc3):
            binarize_(fc.weight)

    def forward_all(self, x):
        h1 = torch.sign(self.bn1(self.fc1(x)))
        h2 = torch.sign(self.bn2(self.fc2(h1)))
        return self.bn3(self.fc3(h2)), h1, h2

    def forward(self, x):
        return self.forward_all(x)[0]


def set_tie_bn(bn, gen, parity):
    """Per-neuron BN parameters so that thresholds land exactly on reachable integers.

    With beta == 0 and gamma != 0 the BN output is exactly 0 when the integer
    pre-activation equals running_mean, so Sign gives 0 there (ONNX/torch Sign(0) = 0).
    var = 1 - eps makes var + eps == 1.0 exactly in float32, so the BN is exact:
    y = gamma * (x - mean) + beta.  Tie neurons only use scales gamma/sqrt(var+eps)
    that are exact in float32 (+-1, 1/2, -3): with an inexact scale (tried: gamma 1.7
    or -0.6, var 2.5) onnxruntime does NOT always return exactly 0 at x == mean, so Sign
    gives +-1 where torch gives 0.  With default optimizations (MatMul+BatchNormalization
    fused into Gemm with scaled weights) 130 + 337 hidden signs differed on 512 inputs;
    with ORT_DISABLE_ALL 9 differed (its BN kernel does not compute x - mean first).  `parity` is the parity of reachable
    pre-activations (0 = even, 1 = odd, None = any integer).
    """
    n = bn.num_features
    eps = bn.eps
    mean = torch.empty(n)
    var = torch.empty(n)
    gamma = torch.empty(n)
    beta = torch.empty(n)

    def reachable(k):  # an integer of the right parity near the middle of the range
        v = int(torch.randint(-3, 4, (1,), generator=gen))
        if parity is not None and (v - parity) % 2 != 0:
            v += 1
        return float(v)

    for j in range(n):
        if j < 6:  # tie, gamma = +1
            mean[j], var[j], gamma[j], beta[j] = reachable(j), 1 - eps, 1.0, 0.0
        elif j < 10:  # tie + flip, gamma = -1
            mean[j], var[j], gamma[j], beta[j] = reachable(j), 1 - eps, -1.0, 0.0
        elif j == 10:  # gamma exactly 0: constant neuron, output = sign(beta) = -1
            mean[j], var[j], gamma[j], beta[j] = 2.0, 3.0, 0.0, -0.5
        elif j < 13:  # tie with beta != 0: y = (x - mean) + 1, threshold at mean - 1
            mean[j], var[j], gamma[j], beta[j] = reachable(j) + 1.0, 1 - eps, 1.0, 1.0
        elif j == 13:  # tie, scale gamma/sqrt(var+eps) = 1/2 (power of two: still exact)
            mean[j], var[j], gamma[j], beta[j] = reachable(j), 4 - eps, 1.0, 0.0
        elif j == 14:  # tie + flip, scale -3 (small integer: still exact)
            mean[j], var[j], gamma[j], beta[j] = reachable(j), 1 - eps, -3.0, 0.0
        elif j < 17 and parity is not None:  # unreachable threshold (wrong parity): never a tie
            mean[j], var[j], gamma[j], beta[j] = reachable(j) + 1.0, 1 - eps, (1.0 if j == 15 else -1.0), 0.0
        else:  # generic, non-integer threshold
            mean[j] = float(torch.empty(1).uniform_(-3, 3, generator=gen))
            var[j] = float(torch.empty(1).uniform_(2, 12, generator=gen))
            g = float(torch.empty(1).uniform_(0.5, 1.5, generator=gen))
            gamma[j] = -g if j % 3 == 0 else g
            beta[j] = float(0.3 * torch.randn(1, generator=gen))
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)


def export_sign_ties():
    name = "sign_ties.onnx"
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(505)
    n_in = 16
    model = TiesMLP(n_in=n_in)
    set_tie_bn(model.bn1, gen, parity=n_in % 2)  # 16 terms of +-1: even pre-activations
    set_tie_bn(model.bn2, gen, parity=None)      # inputs in {-1, 0, +1} (ties give 0): any integer
    # output BN: ordinary non-trivial statistics from bipolar data; only bn3 in train
    # mode so the hand-set bn1/bn2 statistics are left untouched
    model.eval()
    model.bn3.train()
    with torch.no_grad():
        for _ in range(10):
            model(torch.where(torch.rand(128, n_in, generator=gen) < 0.5, -1.0, 1.0))
    set_bn_affine(model.bn3, gen)
    model.eval()
    assert float((model.bn1.running_var + model.bn1.eps)[0]) == 1.0
    x = torch.where(torch.rand(512, n_in, generator=gen) < 0.5, -1.0, 1.0)
    torch.onnx.export(model, (x[:2],), out_path(name), dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    print(f"\n== {name}: torch.onnx.export(dynamo=False, opset_version=13) [TorchScript]")
    check_onnx(name)
    m = onnx.load(out_path(name))
    signs = [n.output[0] for n in m.graph.node if n.op_type == "Sign"]
    assert len(signs) == 2, signs
    with torch.no_grad():
        y, h1, h2 = (t.numpy() for t in model.forward_all(x))
    for optimize in (True, False):
        mode = "default optimizations" if optimize else "ORT_DISABLE_ALL"
        got_y, got_h1, got_h2 = ort_run(name, x.numpy(), extra_outputs=signs, optimize=optimize)
        for lbl, a, b in (("hidden Sign 1", got_h1, h1), ("hidden Sign 2", got_h2, h2)):
            same = np.array_equal(a, b)
            print(f"  check       : onnxruntime ({mode}) vs torch, {lbl} bit-exact on 512 bipolar "
                  f"inputs -> {'OK' if same else 'FAIL'} (zeros = ties: {int((b == 0).sum())}, "
                  f"neurons with a tie: {int((b == 0).any(0).sum())}/{b.shape[1]})")
            if not same:
                raise SystemExit(f"check failed: {lbl}")
            assert (b == 0).any(), "no tie reached"
        assert np.all(h1[:, 10] == -1) and np.all(got_h1[:, 10] == -1)
        check_close(f"onnxruntime ({mode}) vs torch, y on 512 bipolar inputs", got_y, y)
    print("  check       : constant neuron bn1[10] (gamma=0, beta=-0.5) is -1 for all inputs -> OK")
    describe(name)


# --------------------------------------------------------------------------- 6. training models
class TrainBNN(nn.Module):
    """The training models: real input -> [SignWeightLinear -> BatchNorm1d -> sign] per hidden
    width -> SignWeightLinear -> BatchNorm1d -> logits.  Every weight is sign(latent)."""

    def __init__(self, widths):
        super().__init__()
        self.fcs = nn.ModuleList(SignWeightLinear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm1d(b) for b in widths[1:])
        for fc in self.fcs:  # no exact-zero latent weight (sign(0) = 0)
            with torch.no_grad():
                fc.weight[fc.weight == 0] = 1e-3

    def forward(self, x):
        for k, (fc, bn) in enumerate(zip(self.fcs, self.bns)):
            x = bn(fc(x))
            if k < len(self.fcs) - 1:
                x = torch.sign(x)
        return x


TRAIN_MODELS = {  # name -> (widths, seed); freshly initialized: `tamec train` starts from them
    "digits_bnn.onnx": ([64, 256, 256, 10], 6),
    "mnist_bnn.onnx": ([784, 256, 128, 10], 7),  # 256-256 would pass the 1 MB file limit
}


def export_train_bnn(name):
    widths, seed = TRAIN_MODELS[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TrainBNN(widths)  # torch's default init; BN gamma 1, beta 0
    # BN running statistics from 10 train-mode batches (digits for the 64-input model, uniform
    # noise for the other): with the fresh mean 0 the integer pre-activations of the hidden layers
    # sit exactly on the threshold and onnxruntime's fused Gemm breaks Sign(0) = 0 ties.
    xd = torch.from_numpy(digits_data()[0]) if widths[0] == 64 else torch.rand(1280, widths[0], generator=gen)
    perm = torch.randperm(len(xd), generator=gen)
    calibrate_bn(model, [xd[perm[i:i + 128]] for i in range(0, 1280, 128)])
    x = torch.rand(300, widths[0], generator=gen)
    # keep_initializers_as_inputs: otherwise the exporter merges equal initializers (the fresh
    # gamma = 1 and beta = 0 of two BNs of one width) into one plus Identity nodes, which would
    # tie those parameters in training.  Then the initializers are taken out of graph.input again
    # (what onnxruntime's remove_initializer_from_input.py does), so each stays a constant.
    torch.onnx.export(model, (x[:2],), out_path(name), dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"], keep_initializers_as_inputs=True,
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    m = onnx.load(out_path(name))
    inits = {i.name for i in m.graph.initializer}
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    onnx.save(m, out_path(name))
    print(f"\n== {name}: torch.onnx.export(dynamo=False, opset_version=13) [TorchScript], "
          f"{'-'.join(map(str, widths))}, fresh init, BN calibrated (seed {seed})")
    check_onnx(name)
    with torch.no_grad():
        ref = model(x).numpy()
    check_close("onnxruntime (ORT_DISABLE_ALL) vs torch, 300 uniform [0,1] inputs",
                ort_run(name, x.numpy(), optimize=False)[0], ref)
    # With default optimizations onnxruntime folds BatchNormalization into the MatMul weights;
    # a real pre-activation within rounding of its threshold can then take the other sign (seen
    # on 784-wide noise inputs), so only the predicted classes are compared, on 99 % of inputs.
    got = ort_run(name, x.numpy(), optimize=True)[0]
    agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
    print(f"  check       : onnxruntime (default optimizations) vs torch, argmax on 300 inputs agree "
          f"{agree:.1%} (max|diff| {np.abs(got - ref).max():.3g}) -> {'OK' if agree >= 0.99 else 'FAIL'}")
    if agree < 0.99:
        raise SystemExit(f"check failed: {name} default optimizations")
    describe(name)


def export_mnist1d_bnn(name="mnist1d_bnn.onnx", widths=(40, 256, 256, 10), seed=8):
    """The training model for `tamec train --data mnist1d`, written with onnx.helper in exactly
    the graph torch.onnx.export gives TrainBNN above (Sign(latent) -> Transpose -> MatMul ->
    BatchNormalization -> Sign, same node and tensor names, opset 13, IR 7), so it needs no torch.
    Latents are torch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from
    np.random.RandomState(seed); BN gamma 1, beta 0 and running statistics from 10 batches of 128
    mnist1d training signals (make_dataset, generated locally), as calibrate_bn gives them:
    running = 0.9 running + 0.1 batch, with the unbiased batch variance."""
    from tamec.drivers.data import load_dataset

    rs = np.random.RandomState(seed)
    ds = load_dataset("mnist1d")
    assert ds.input_shape == (widths[0],)
    W = [rs.uniform(-1, 1, (b, a)).astype(np.float32) / np.float32(np.sqrt(a))
         for a, b in zip(widths[:-1], widths[1:])]
    for w in W:
        w[w == 0] = 1e-3  # no exact-zero latent weight (sign(0) = 0)
    mean = [np.zeros(b, np.float32) for b in widths[1:]]
    var = [np.ones(b, np.float32) for b in widths[1:]]
    eps = np.float32(1e-5)
    perm = rs.permutation(len(ds.x_train))
    for i in range(0, 1280, 128):  # train-mode passes: normalize with the batch's own statistics
        h = ds.x_train[perm[i:i + 128]]
        for k, w in enumerate(W):
            z = h @ np.sign(w).T
            mu, v = z.mean(0), z.var(0, ddof=1)
            mean[k] = (np.float32(0.9) * mean[k] + np.float32(0.1) * mu).astype(np.float32)
            var[k] = (np.float32(0.9) * var[k] + np.float32(0.1) * v).astype(np.float32)
            h = np.sign((z - mu) / np.sqrt(z.var(0) + eps))
    nodes, inits, src = [], [], "x"
    for k, w in enumerate(W):
        fc, bn = f"fcs.{k}", f"bns.{k}"
        inits.append(numpy_helper.from_array(w, f"{fc}.weight"))
        nodes += [helper.make_node("Sign", [f"{fc}.weight"], [f"/{fc}/Sign_output_0"], name=f"/{fc}/Sign"),
                  helper.make_node("Transpose", [f"/{fc}/Sign_output_0"], [f"/{fc}/Transpose_output_0"],
                                   name=f"/{fc}/Transpose", perm=[1, 0]),
                  helper.make_node("MatMul", [src, f"/{fc}/Transpose_output_0"], [f"/{fc}/MatMul_output_0"],
                                   name=f"/{fc}/MatMul")]
        last = k == len(W) - 1
        out = "y" if last else f"/{bn}/BatchNormalization_output_0"
        nodes.append(helper.make_node("BatchNormalization", [f"/{fc}/MatMul_output_0", f"{bn}.weight", f"{bn}.bias",
                                      f"{bn}.running_mean", f"{bn}.running_var"], [out],
                                      name=f"/{bn}/BatchNormalization", epsilon=1e-5, momentum=0.9))
        if not last:
            src = "/Sign_output_0" if k == 0 else f"/Sign_{k}_output_0"
            nodes.append(helper.make_node("Sign", [out], [src], name=src[:-len("_output_0")]))
    for k, b in enumerate(widths[1:]):
        bn = f"bns.{k}"
        inits += [numpy_helper.from_array(np.ones(b, np.float32), f"{bn}.weight"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"{bn}.bias"),
                  numpy_helper.from_array(mean[k], f"{bn}.running_mean"),
                  numpy_helper.from_array(var[k], f"{bn}.running_var")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", w]) for n, w in (("x", widths[0]), ("y", widths[-1]))]
    g = helper.make_graph(nodes, "main_graph", io[:1], io[1:], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="tamec make_models.py")
    m.ir_version = 7
    onnx.save(m, out_path(name))
    print(f"\n== {name}: onnx.helper in torch.onnx.export's shape of TrainBNN, {'-'.join(map(str, widths))}, "
          f"fresh init, BN calibrated on mnist1d (seed {seed})")
    check_onnx(name)
    x = ds.x_test[:300]
    h = x
    for k, w in enumerate(W):
        z = (h @ np.sign(w).T - mean[k]) / np.sqrt(var[k] + eps)
        h = z if k == len(W) - 1 else np.sign(z)
    check_close("onnxruntime (ORT_DISABLE_ALL) vs NumPy, 300 mnist1d test signals",
                ort_run(name, x, optimize=False)[0], h)
    describe(name)


def main(argv=None):
    """`python models/make_models.py [NAME.onnx ...]`: all models, or only the named ones."""
    names = list(sys.argv[1:] if argv is None else argv)
    makers = {"tfc_w1a1_qonnx.onnx": export_tfc, "mlp_sign.onnx": export_mlp_sign,
              "cnn_sign.onnx": export_cnn_sign, "larq_sign.onnx": export_larq_sign,
              "sign_ties.onnx": export_sign_ties, "mnist1d_bnn.onnx": export_mnist1d_bnn}
    makers["tfc_w1a1_qonnx_dynamo.onnx"] = export_tfc  # one function writes both TFC files
    for name in TRAIN_MODELS:
        makers[name] = lambda name=name: export_train_bnn(name)
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(makers)}")
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    done = set()
    for name in names or list(makers):
        if makers[name] not in done:
            makers[name]()
            done.add(makers[name])
    print("\nall models written and checked")


if __name__ == "__main__":
    sys.exit(main())
