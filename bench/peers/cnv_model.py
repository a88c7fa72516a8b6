"""Export the Brevitas CNV W1A1 topology to QONNX with random BN statistics (export venv only).

Runs in the `export` venv (bench/peers/README.md: torch, brevitas, qonnx), never in tamec's own.

    /work/venvs/export/bin/python bench/peers/cnv_model.py [--out /work/peers-models]

Writes:
    cnv_w1a1.onnx     brevitas.export.export_qonnx (TorchScript exporter, opset 13) of
                      brevitas_examples' CNV(weight 1 bit, act 1 bit, input 8 bit, 3x32x32, 10
                      classes), batch dim symbolic
    cnv_w1a1_ref.npz  inputs x1 (1 image), x64 (64 images) in [0, 1] and the torch model's outputs
BN running statistics come from train-mode passes over random images, then gamma/beta are
drawn at random (some gammas negative), as models/make_models.py does for TFC; the seeds are
fixed. The export is checked against the torch model with qonnx's executor.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from models.make_models import calibrate_bn, set_bn_affine  # noqa: E402

warnings.filterwarnings("ignore")  # the TorchScript exporter is noisy
torch.set_num_threads(1)


def make_cnv():
    from brevitas_examples.bnn_pynq.models.CNV import CNV
    from brevitas_examples.bnn_pynq.models.tensor_norm import TensorNorm

    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(303)
    model = CNV(num_classes=10, weight_bit_width=1, act_bit_width=1, in_bit_width=8, in_ch=3)
    calibrate_bn(model, [torch.rand(32, 3, 32, 32, generator=gen) for _ in range(8)])
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            set_bn_affine(mod, gen)
        if isinstance(mod, TensorNorm):
            with torch.no_grad():
                mod.weight.fill_(0.75)
                mod.bias.fill_(0.125)
    model.eval()
    return model, gen


def qonnx_run(path, x):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    mw = ModelWrapper(str(path))
    shape = list(x.shape)
    mw.set_tensor_shape(mw.graph.input[0].name, shape)  # qonnx executes concrete shapes only
    mw = mw.transform(InferShapes())
    return execute_onnx(mw, {mw.graph.input[0].name: x})[mw.graph.output[0].name]


def main(argv=None):
    from brevitas.export import export_qonnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/work/peers-models")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model, gen = make_cnv()
    x1 = torch.rand(1, 3, 32, 32, generator=gen)
    x64 = torch.rand(64, 3, 32, 32, generator=gen)
    path = out / "cnv_w1a1.onnx"
    export_qonnx(model, args=x1, export_path=str(path), dynamo=False, opset_version=13,
                 input_names=["x"], output_names=["y"],
                 dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    with torch.no_grad():
        y1, y64 = model(x1).numpy(), model(x64).numpy()
    np.savez(out / "cnv_w1a1_ref.npz", x1=x1.numpy(), x64=x64.numpy(), y1=y1, y64=y64)
    got = qonnx_run(path, x64[:4].numpy())
    err = float(np.max(np.abs(got - y64[:4])))
    print(f"cnv_w1a1.onnx: qonnx execute_onnx vs torch, 4 images, max |diff| = {err:.2e}")
    if err > 1e-4:
        sys.exit("cnv_w1a1.onnx: the export does not match the torch model")
    print(f"cnv_w1a1: written to {out}")


if __name__ == "__main__":
    main()
