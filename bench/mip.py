"""MIP-stage numbers for the issue notes: per-layer lowering time, interval vs LP-tightened
stable neurons and big-M, for TFC_1W1A (when present) and an LFC-size BNN (784-1024x3-10).

    python bench/mip.py [--tighten-seconds 120]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import tamec
from tamec.cli import bounds_table

ROOT = Path(__file__).resolve().parents[1]


def lfc_model(widths=(784, 1024, 1024, 1024, 10), seed=0):
    """An LFC-size BNN with the Brevitas layout: 2x-1 -> sign -> [+-1 MatMul -> BN -> sign] x3 -> MatMul."""
    rng = np.random.default_rng(seed)
    inits = {"two": np.array(2, np.float32), "one": np.array(1, np.float32)}
    nodes = [helper.make_node("Mul", ["x", "two"], ["x2"], name="in_mul"),
             helper.make_node("Sub", ["x2", "one"], ["x1"], name="in_sub"),
             helper.make_node("Sign", ["x1"], ["h0"], name="in_sign")]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        inits[f"w{i}"] = rng.choice([-1.0, 1.0], (a, b)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"s{i}"], name=f"mm{i}"))
        if i == len(widths) - 2:
            nodes[-1].output[0] = "y"
            break
        inits.update({f"g{i}": rng.uniform(0.5, 1.5, b).astype(np.float32), f"b{i}": rng.normal(0, 1, b).astype(np.float32),
                      f"m{i}": rng.normal(0, np.sqrt(a) / 4, b).astype(np.float32),
                      f"v{i}": np.full(b, a, np.float32)})
        nodes += [helper.make_node("BatchNormalization", [f"s{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"z{i}"],
                                   name=f"bn{i}"),
                  helper.make_node("Sign", [f"z{i}"], [f"h{i + 1}"], name=f"sign{i}")]
    g = helper.make_graph(nodes, "lfc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, widths[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, widths[-1]])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def report(name, model, tighten_seconds):
    pipeline = "canonicalize,binarize-weights,fold-thresholds,bounds,partition,lower-mip"
    t0 = time.perf_counter()
    m = tamec.compile(model, pipeline, tighten="lp", tighten_seconds=tighten_seconds)
    print(f"== {name} (compiled in {time.perf_counter() - t0:.1f} s)")
    low = m.history[-1].stats
    for b, st in low.get("per_block", {}).items():
        print(f"  lower-mip {b}: {st}")
    print("  lower-mip:", {k: v for k, v in low.items() if k != "per_block"})
    print(bounds_table(m.reports["bounds"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tighten-seconds", type=float, default=120.0)
    a = ap.parse_args()
    tfc = ROOT.parent / "shared" / "models" / "TFC_1W1A.onnx"
    if tfc.exists():
        report("TFC_1W1A", str(tfc), a.tighten_seconds)
    report("LFC-size 784-1024x3-10", lfc_model(), a.tighten_seconds)


if __name__ == "__main__":
    main()
