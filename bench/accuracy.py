#!/usr/bin/env python
"""Accuracy of the backward rules on digits and MNIST-5k: same model, epochs and seeds for each.

    python bench/accuracy.py                 # pick K on validation, then the test table
    python bench/accuracy.py --no-validate --data digits --seeds 0 --rules lp-dual,ste-clip

Every rule trains the bundled model of the dataset (digits_bnn.onnx 64-256-256-10, mnist_bnn.onnx
784-256-128-10) from its bundled initial weights with `tamec train`'s loop: Adam (lr 0.01, cosine
decay to 0, latents clipped to [-1, 1]), batch 64, digits 30 epochs, mnist5k 20; the seed sets
the data order. `float` is the same MLP without binarization (real weights, BatchNorm, ReLU) in
PyTorch with the same initial weights, optimizer, schedule, batches and data order: the upper
bound. Tables show the final accuracy (last epoch, no early stopping): mean, standard deviation
over the seeds, and min-max.

Two phases (a run without --no-validate does both):
 1. validation: the depth K of bb-mid:K is chosen among --candidates (default 3, 4, 5) WITHOUT
    looking at the test set. Each candidate trains on the first 85 % of the dataset's fixed
    training split and is scored on the held-out last 15 % (floor(0.15 n) examples: digits
    1069 / 188, mnist5k 3400 / 600; the training split is the stratified, shuffled
    train_test_split of tamec.drivers.data, so its tail is a fixed random subset). K is the candidate with
    the highest validation accuracy averaged over both datasets and all seeds (ties: the smaller K).
 2. test: the chosen bb-mid:K and the comparison rules (--rules: lp-dual, bb-dual:1, ste-clip, ste,
    float) train on the full training split and are scored on the test split.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"digits": ROOT / "models" / "digits_bnn.onnx", "mnist5k": ROOT / "models" / "mnist_bnn.onnx"}
EPOCHS = {"digits": 30, "mnist5k": 20}
RULES = "lp-dual,bb-dual:1,ste-clip,ste,float"
CANDIDATES = "3,4,5"
VALIDATION = 0.15  # the last floor(15 %) of the training split


def validation_split(data: str, folder: str) -> str:
    """An .npz whose train part is the first 85 % of `data`'s training split and whose test part
    is the held-out last 15 % (floor(0.15 n) examples); the test split is not used."""
    from tamec.drivers.data import load_dataset

    ds = load_dataset(data)
    n = len(ds.x_train)
    cut = n - int(math.floor(VALIDATION * n))
    path = str(Path(folder) / f"{data}-validation.npz")
    np.savez(path, x_train=ds.x_train[:cut], y_train=ds.y_train[:cut], x_test=ds.x_train[cut:], y_test=ds.y_train[cut:])
    return path


def run_tamec(data, rule, seed, epochs, batch, lr, split=None) -> float:
    """Final accuracy of `tamec train` with `rule` on the test split (or on the held-out part of
    the training split when `split` is the validation .npz)."""
    from tamec.runtime.rules import parse_rule
    from tamec.runtime.train import TrainConfig, train

    # lp-dual / bb-dual:K have no fixed surrogate: they train only as the named sign-forward heuristic
    forward = None if parse_rule(rule).fixed_surrogate else "sign-heuristic"
    with tempfile.TemporaryDirectory() as d:
        res = train(TrainConfig(model=str(MODELS[data]), data=split or data, epochs=epochs, batch=batch, rule=rule,
                                optimizer="adam", lr=lr, seed=seed, forward=forward), out=d, progress=False,
                    stdout=io.StringIO(), full_compile=False)
    return res.test_accuracy


def run_float(data, seed, epochs, batch, lr) -> float:
    """Final test accuracy of the float MLP (real weights, BN, ReLU) trained like the BNNs."""
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper

    from tamec.drivers.data import load_dataset

    torch.set_num_threads(1)
    init = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(str(MODELS[data])).graph.initializer}
    ws, bns, k = [], [], 0
    while f"fcs.{k}.weight" in init:
        ws.append(torch.nn.Parameter(init[f"fcs.{k}.weight"].clone()))
        bn = torch.nn.BatchNorm1d(ws[-1].shape[0])
        with torch.no_grad():
            for a in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, a).copy_(init[f"bns.{k}.{a}"])
        bns.append(bn)
        k += 1
    opt = torch.optim.Adam(ws + [p for b in bns for p in b.parameters()], lr=lr)

    def net(x):
        for i, (w, bn) in enumerate(zip(ws, bns)):
            x = bn(F.linear(x, w))
            if i < len(ws) - 1:
                x = F.relu(x)
        return x

    ds = load_dataset(data)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    rng = np.random.default_rng(seed)
    steps = len(x) // batch
    total, t = epochs * steps, 0
    for _ in range(epochs):
        for b in bns:
            b.train()
        perm = torch.from_numpy(rng.permutation(len(x)))
        for s in range(steps):
            for group in opt.param_groups:  # the same cosine decay as tamec train
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * t / total))
            idx = perm[s * batch:(s + 1) * batch]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t += 1
    for b in bns:
        b.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(ds.x_test)).argmax(1).numpy()
    return float(np.mean(pred == ds.y_test))


def cell(v) -> str:
    v = np.asarray(v) * 100
    return f"{v.mean():.2f} +- {v.std():.2f} ({v.min():.2f}-{v.max():.2f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="digits,mnist5k")
    ap.add_argument("--rules", default=RULES, help="comparison rules of the test table (float: the float MLP)")
    ap.add_argument("--candidates", default=CANDIDATES, help="depths K of bb-mid:K to choose from on validation")
    ap.add_argument("--no-validate", action="store_true", help="skip phase 1: test table of --rules only")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, help="default: digits 30, mnist5k 20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    datas, rules = a.data.split(","), a.rules.split(",")
    t_all = time.perf_counter()

    def settings(data):
        epochs = a.epochs or EPOCHS[data]
        return epochs, (f"{data}: {MODELS[data].name}, {epochs} epochs, batch {a.batch}, Adam lr {a.lr} cosine, "
                        f"seeds {seeds}")

    if not a.no_validate:
        cands = [f"bb-mid:{int(k)}" for k in a.candidates.split(",")]
        val: dict[tuple[str, str], list[float]] = {}
        with tempfile.TemporaryDirectory() as folder:
            for data in datas:
                epochs, line = settings(data)
                split = validation_split(data, folder)
                print(f"validation (train on the first 85 % of the training split, score the last 15 %) {line}",
                      flush=True)
                for rule in cands:
                    t0 = time.perf_counter()
                    val[(data, rule)] = accs = [run_tamec(data, rule, s, epochs, a.batch, a.lr, split) for s in seeds]
                    print(f"  {rule:10s} {100 * np.mean(accs):6.2f} +- {100 * np.std(accs):4.2f} %  "
                          f"[{', '.join(f'{100 * v:.2f}' for v in accs)}]  ({time.perf_counter() - t0:.0f} s)",
                          flush=True)
        means = {r: float(np.mean([v for d in datas for v in val[(d, r)]])) for r in cands}
        chosen = max(cands, key=lambda r: (round(means[r], 10), -int(r.split(":")[1])))
        print("\n| rule | " + " | ".join(f"{d} validation accuracy (%)" for d in datas) + " | mean (%) |")
        print("|---|" + "---|" * (len(datas) + 1))
        for r in cands:
            mark = f"**{r}** (chosen)" if r == chosen else r
            print(f"| {mark} | " + " | ".join(cell(val[(d, r)]) for d in datas) + f" | {100 * means[r]:.2f} |")
        print(f"\nchosen on validation: {chosen}\n", flush=True)
        rules = [chosen] + [r for r in rules if r != chosen]
    results: dict[tuple[str, str], list[float]] = {}
    for data in datas:
        epochs, line = settings(data)
        print(f"test {line}", flush=True)
        for rule in rules:
            t0 = time.perf_counter()
            accs = [run_float(data, s, epochs, a.batch, a.lr) if rule == "float" else
                    run_tamec(data, rule, s, epochs, a.batch, a.lr) for s in seeds]
            results[(data, rule)] = accs
            print(f"  {rule:10s} {100 * np.mean(accs):6.2f} +- {100 * np.std(accs):4.2f} %  "
                  f"[{', '.join(f'{100 * v:.2f}' for v in accs)}]  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n| rule | " + " | ".join(f"{d} test accuracy (%)" for d in datas) + " |")
    print("|---|" + "---|" * len(datas))
    for rule in rules:
        print(f"| {rule} | " + " | ".join(cell(results[(d, rule)]) for d in datas) + " |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
