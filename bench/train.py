#!/usr/bin/env python
"""Epoch time of `tamec train` against PyTorch on the same BNN, both on one thread.

    python bench/train.py                       # digits and mnist5k, 3 repeats of 4 epochs
    python bench/train.py --data digits --repeats 5 --epochs 6

Both sides train the same architecture (the bundled digits_bnn.onnx 64-256-256-10 or
mnist_bnn.onnx 784-256-128-10: sign(latent) weights, BatchNorm, sign activations), from the same
initial weights, with the ste-clip rule (hardtanh window |s| <= 1), Adam (lr 0.01, latents clipped
to [-1, 1]), the same batch size, a fresh permutation per epoch, the last incomplete batch dropped,
and the running loss and accuracy that the progress bar shows. The time of an epoch is the
training steps only (no evaluation); the table shows the median over all epochs but the first of
every repeat (the first pays for Numba's cache load and torch's warm-up). One thread everywhere:
OMP/OPENBLAS/MKL_NUM_THREADS=1 before any import, torch.set_num_threads(1), numba.set_num_threads(1);
repeats alternate between the two so that a busy machine slows both alike.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"digits": ROOT / "models" / "digits_bnn.onnx", "mnist5k": ROOT / "models" / "mnist_bnn.onnx"}


def tamec_epochs(data: str, epochs: int, batch: int, seed: int) -> list[float]:
    """Training seconds of each epoch of `tamec train` (the real loop: GradProgram.loss_and_grads,
    the optimizer, the running loss and accuracy)."""
    from tamec.runtime.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as d:
        res = train(TrainConfig(model=str(MODELS[data]), data=data, epochs=epochs, batch=batch, rule="ste-clip",
                                optimizer="adam", lr=0.01, seed=seed, schedule="constant"),
                    out=d, progress=False, stdout=io.StringIO(), full_compile=False)
    return [h["seconds"] for h in res.history]


def torch_epochs(data: str, epochs: int, batch: int, seed: int) -> list[float]:
    """Training seconds of each epoch of the same network in PyTorch (eager, autograd)."""
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper

    from tamec.drivers.data import load_dataset

    class SignClip(torch.autograd.Function):  # ste-clip: sign forward, g * [|s| <= 1] backward
        @staticmethod
        def forward(ctx, s):
            ctx.save_for_backward(s)
            return torch.sign(s)

        @staticmethod
        def backward(ctx, g):
            (s,) = ctx.saved_tensors
            return g * (s.abs() <= 1).to(g.dtype)

    class SignWeight(torch.autograd.Function):  # BinaryConnect: identity backward on the latent
        @staticmethod
        def forward(ctx, w):
            return torch.sign(w)

        @staticmethod
        def backward(ctx, g):
            return g

    init = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(str(MODELS[data])).graph.initializer}
    k = 0
    fcs, bns = [], []
    while f"fcs.{k}.weight" in init:
        w = torch.nn.Parameter(init[f"fcs.{k}.weight"].clone())
        bn = torch.nn.BatchNorm1d(w.shape[0], momentum=0.1)
        with torch.no_grad():
            bn.weight.copy_(init[f"bns.{k}.weight"])
            bn.bias.copy_(init[f"bns.{k}.bias"])
            bn.running_mean.copy_(init[f"bns.{k}.running_mean"])
            bn.running_var.copy_(init[f"bns.{k}.running_var"])
        fcs.append(w)
        bns.append(bn)
        k += 1
    params = fcs + [p for bn in bns for p in bn.parameters()]
    opt = torch.optim.Adam(params, lr=0.01)

    def net(x):
        for i, (w, bn) in enumerate(zip(fcs, bns)):
            x = bn(F.linear(x, SignWeight.apply(w)))
            if i < len(fcs) - 1:
                x = SignClip.apply(x)
        return x

    ds = load_dataset(data)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    rng = np.random.default_rng(seed)
    steps = len(x) // batch
    out = []
    for bn in bns:
        bn.train()
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.from_numpy(rng.permutation(len(x)))
        loss_sum, correct = 0.0, 0
        for s in range(steps):
            idx = perm[s * batch:(s + 1) * batch]
            logits = net(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for w in fcs:
                    w.clamp_(-1, 1)
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="digits,mnist5k")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args(argv)
    import numba
    import torch

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    print(f"torch {torch.__version__} (threads {torch.get_num_threads()}), numpy {np.__version__}, "
          f"numba {numba.__version__}; batch {a.batch}, ste-clip, Adam; {a.repeats} repeats x {a.epochs} epochs")
    rows = []
    for data in a.data.split(","):
        tm, tt = [], []
        for r in range(a.repeats):
            tm += tamec_epochs(data, a.epochs, a.batch, r)[1:]
            tt += torch_epochs(data, a.epochs, a.batch, r)[1:]
        m, t = float(np.median(tm)), float(np.median(tt))
        rows.append((data, MODELS[data].name, m, t))
        print(f"{data:8s} {MODELS[data].name:16s} tamec {1000 * m:8.1f} ms/epoch  torch {1000 * t:8.1f} ms/epoch  "
              f"speedup {t / m:5.2f}x", flush=True)
    print("\n| data | model | tamec ms/epoch | torch ms/epoch | torch / tamec |")
    print("|---|---|---|---|---|")
    for data, name, m, t in rows:
        print(f"| {data} | {name} | {1000 * m:.1f} | {1000 * t:.1f} | {t / m:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
