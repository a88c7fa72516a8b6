"""Build the Larq peer models, export them with tf2onnx and convert them with LCE (peers venv only).

Runs in the `peers` venv (bench/peers/README.md), never in tamec's own: TensorFlow, larq, LCE and
tf2onnx are not tamec dependencies.

    /work/venvs/peers/bin/python bench/peers/larq_models.py [--out /work/peers-models]

Writes, for each model NAME in (larq_mlp, larq_cnn):
    NAME.onnx        tf2onnx 1.17 export (opset 13, symbolic batch dim)
    NAME_b1.tflite   LCE 0.16 conversion at batch 1 (LCE's interpreter runs fixed shapes)
    NAME_b64.tflite  the same weights at batch 64
    NAME_ref.npz     inputs x1 (batch 1), x64 (batch 64) and Keras' outputs y1, y64
The models are the issue 11 topologies, in Larq's usual style: the first layer keeps a real
input (binary kernel only), every later layer quantizes its input and kernel with ste_sign,
and BatchNormalization follows each layer. Weights and BN statistics are random but not
trivial (means and variances on the scale of each layer's pre-activation range), with fixed
seeds, so the files come out the same each run.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # larq 0.14 needs tf_keras (Keras 2) on TF 2.16
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import argparse
from pathlib import Path

import numpy as np
import tensorflow as tf
import larq as lq
import larq_compute_engine as lce
import tf2onnx
from larq_compute_engine.tflite.python.interpreter import Interpreter

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

BIN = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
           use_bias=False)
FIRST = dict(kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False)


def mlp(batch):
    """Larq MLP: 784 (real input) -> 256 -> 256 -> 10, BN after each QuantDense."""
    k = tf.keras
    x = k.Input((784,), batch_size=batch, name="x")
    h = lq.layers.QuantDense(256, name="fc1", **FIRST)(x)
    h = k.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name="bn1")(h)
    h = lq.layers.QuantDense(256, name="fc2", **BIN)(h)
    h = k.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name="bn2")(h)
    h = lq.layers.QuantDense(10, name="fc3", **BIN)(h)
    y = k.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name="bn3")(h)
    return k.Model(x, y, name="larq_mlp")


def cnn(batch):
    """Larq CNN 28x28: QuantConv 32 (real input) -> QuantConv 64 same -> MaxPool -> Dense 10, BN."""
    k = tf.keras
    x = k.Input((28, 28, 1), batch_size=batch, name="x")
    h = lq.layers.QuantConv2D(32, (3, 3), name="conv1", **FIRST)(x)
    h = k.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, scale=False, name="bn1")(h)
    h = lq.layers.QuantConv2D(64, (3, 3), padding="same", name="conv2", **BIN)(h)
    h = k.layers.MaxPool2D((2, 2), name="pool2")(h)
    h = k.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, scale=False, name="bn2")(h)
    h = k.layers.Flatten(name="flatten")(h)
    h = lq.layers.QuantDense(10, name="fc3", **BIN)(h)
    y = k.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, scale=False, name="bn3")(h)
    return k.Model(x, y, name="larq_cnn")


def randomize(model, rng):
    """Random latent weights and BN statistics on each layer's pre-activation scale.

    A binary layer's output is an integer sum of fan_in terms of +-1 (spread ~ sqrt(fan_in));
    the first layer's is a sum of fan_in real inputs in [0, 1] times +-1. BN means spread over
    that range and variances near its square keep every channel's threshold inside the range,
    so the signs (and so every later layer) depend on the input."""
    fan_in = None
    for layer in model.layers:
        if isinstance(layer, (lq.layers.QuantDense, lq.layers.QuantConv2D)):
            w = layer.kernel
            fan_in = int(np.prod(w.shape[:-1]))
            w.assign(rng.uniform(-1, 1, w.shape).astype(np.float32))
        elif isinstance(layer, tf.keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            s = np.sqrt(fan_in)
            layer.moving_mean.assign(rng.normal(0, 0.3 * s, c).astype(np.float32))
            layer.moving_variance.assign(((s * rng.uniform(0.5, 1.5, c)) ** 2).astype(np.float32))
            if layer.gamma is not None:
                g = rng.uniform(0.5, 1.5, c)
                g[rng.random(c) < 0.25] *= -1  # some negative gammas: flipped thresholds
                layer.gamma.assign(g.astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.3, c).astype(np.float32))


def export(name, build, in_shape, out: Path, seed):
    rng = np.random.default_rng(seed)
    model = build(None)
    randomize(model, rng)
    x1 = rng.random((1, *in_shape), dtype=np.float32)
    x64 = rng.random((64, *in_shape), dtype=np.float32)
    y1 = model(x1, training=False).numpy()
    y64 = model(x64, training=False).numpy()
    np.savez(out / f"{name}_ref.npz", x1=x1, x64=x64, y1=y1, y64=y64)

    spec = (tf.TensorSpec((None, *in_shape), tf.float32, name="x"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=str(out / f"{name}.onnx"))

    for b in (1, 64):
        fixed = build(b)
        fixed.set_weights(model.get_weights())
        fb = lce.convert_keras_model(fixed)
        (out / f"{name}_b{b}.tflite").write_bytes(fb)
        got = Interpreter(fb, num_threads=1).interpreter.predict([x1 if b == 1 else x64])[0]
        ref = y1 if b == 1 else y64
        err = float(np.max(np.abs(got - ref)))
        print(f"{name}_b{b}.tflite: LCE vs Keras max |diff| = {err:.2e}")
    print(f"{name}: written to {out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/work/peers-models")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    export("larq_mlp", mlp, (784,), out, seed=11)
    export("larq_cnn", cnn, (28, 28, 1), out, seed=12)


if __name__ == "__main__":
    main()
