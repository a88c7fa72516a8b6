"""HTML report sizes and load times for TFC_1W1A (when present), a CNV-size and an LFC-size BNN.

    python bench/report.py [--mip] [--check N]

Each model is compiled with dumps (default graph pipeline; --mip adds partition, lower-mip and
tame-check), `tamec inspect DIR --html` writes the report, and headless Chromium (system
chromium + chromedriver, as tests/test_report.py) opens it from disk: the load time is the page's
own `loadEventEnd - navigationStart`, then the time to open and draw every pass section.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import tamec
from tamec.drivers.report import write_report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from mip import lfc_model  # noqa: E402  (bench/ is not a package)


def cnv_model(seed=0):
    """The CNV shape of BNN-PYNQ: 3x32x32 -> [conv 3x3 (+-1 weights, no pad) -> BN -> Sign] with
    channels 64, 64, pool, 128, 128, pool, 256, 256 -> FC 512, 512 (+-1, BN, Sign) -> FC 10."""
    rng = np.random.default_rng(seed)
    inits, nodes, x, c = {}, [], "x", 3
    plan = [64, 64, "pool", 128, 128, "pool", 256, 256]
    for k, step in enumerate(plan):
        if step == "pool":
            nodes.append(helper.make_node("MaxPool", [x], [f"p{k}"], name=f"pool{k}", kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"p{k}"
            continue
        inits[f"w{k}"] = rng.choice([-1.0, 1.0], (step, c, 3, 3)).astype(np.float32)
        nodes.append(helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], name=f"conv{k}", kernel_shape=[3, 3]))
        x = _bn_sign(rng, inits, nodes, f"c{k}", step, 9 * c, f"l{k}")
        c = step
    nodes.append(helper.make_node("Flatten", [x], ["f"], name="flatten"))
    x, fan = "f", c
    for k, n in enumerate([512, 512, 10]):
        inits[f"fw{k}"] = rng.choice([-1.0, 1.0], (fan, n)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", [x, f"fw{k}"], [f"fc{k}" if n != 10 else "y"], name=f"fc{k}"))
        if n != 10:
            x = _bn_sign(rng, inits, nodes, f"fc{k}", n, fan, f"f{k}")
        fan = n
    g = helper.make_graph(nodes, "cnv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _bn_sign(rng, inits, nodes, x, c, fan_in, name):
    inits.update({f"{name}.g": rng.uniform(0.5, 1.5, c).astype(np.float32),
                  f"{name}.b": rng.normal(0, 0.5, c).astype(np.float32),
                  f"{name}.m": rng.normal(0, np.sqrt(fan_in) / 4, c).astype(np.float32),
                  f"{name}.v": np.full(c, fan_in / 4, np.float32)})
    nodes.append(helper.make_node("BatchNormalization", [x] + [f"{name}.{s}" for s in "gbmv"], [f"{name}.z"],
                                  name=f"{name}.bn"))
    nodes.append(helper.make_node("Sign", [f"{name}.z"], [f"{name}.s"], name=f"{name}.sign"))
    return f"{name}.s"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mip", action="store_true", help="add partition, lower-mip, tame-check to the pipeline")
    ap.add_argument("--check", type=int, default=0)
    a = ap.parse_args()
    pipeline = "canonicalize,binarize-weights,fold-thresholds,bounds" + (",partition,lower-mip,tame-check" if a.mip else "")
    models = [("LFC-size 784-1024x3-10", lfc_model()), ("CNV-size", cnv_model())]
    tfc = ROOT.parent / "shared" / "models" / "TFC_1W1A.onnx"
    if tfc.exists():
        models.insert(0, ("TFC_1W1A", str(tfc)))
    d = browser()
    try:
        for name, model in models:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                tamec.compile(model, pipeline, dump_dir=tmp + "/dump", check=a.check)
                t1 = time.perf_counter()
                res = write_report(tmp + "/dump", tmp + "/r.html")
                t2 = time.perf_counter()
                d.get(Path(tmp, "r.html").as_uri())
                load = d.execute_script("return performance.timing.loadEventEnd - performance.timing.navigationStart")
                t3 = time.perf_counter()
                d.execute_script("document.querySelectorAll('details').forEach(s => { s.open = true; })")
                d.execute_script("return document.querySelectorAll('svg.g .node').length")
                draw = time.perf_counter() - t3
                print(f"{name}: report {res['bytes'] / 1e6:.2f} MB, {res['passes']} passes; compile {t1 - t0:.1f} s, "
                      f"report {t2 - t1:.1f} s; Chromium load {load} ms, opening every section {draw * 1000:.0f} ms")
    finally:
        d.quit()


if __name__ == "__main__":
    main()
