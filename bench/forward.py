"""Forward speed: tamec's numba plan against onnxruntime, in the same process, single-threaded.

Models: Sign-activated MLPs of TFC size (784-64x3-10), SFC (784-256x3-10) and LFC
(784-1024x3-10) with random +-1 weights and BatchNorm + Sign in the Brevitas layout
(bench/mip.py's builder, batch dim made symbolic), models/cnn_sign.onnx, and a CNN of the same
shape at MNIST size (28x28: real conv 1->64, BN, sign, pool, binary conv 64->128, BN, sign,
pool, real FC). Batch 1 and 256; the median over repeats after warm-up runs (JIT compile and
first-call allocations excluded). Both engines are timed through their Python `run` API
(tamec: `Session.run`, input checks included). "bgemm share" is the share of tamec's time in
the binary GEMM/conv steps, from the per-step times of the same plan built without fusing the
input layer into the GEMM chain (so that layer is timed apart).

    python bench/forward.py [--repeats-1 2000] [--repeats-256 60] [--out notes.md]
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # single-threaded BLAS / numba, set before numpy loads

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from mip import lfc_model  # noqa: E402  (bench/ is not a package)


def mlp_model(widths, seed=0) -> onnx.ModelProto:
    """bench/mip.py's Brevitas-layout BNN with a symbolic batch dim."""
    m = lfc_model(widths, seed)
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    return m


def cnn_model(c1=64, c2=128, hw=28, classes=10, seed=0) -> onnx.ModelProto:
    """cnn_sign's shape at a larger size: Conv(real) -> BN -> Sign -> MaxPool -> Conv(+-1, pad 1)
    -> BN -> Sign -> MaxPool -> Flatten -> Gemm(real)."""
    rng = np.random.default_rng(seed)
    h2, h4 = hw // 2, hw // 4

    def bn(c, fan_in, name):
        return {f"{name}.g": rng.uniform(0.5, 1.5, c).astype(np.float32),
                f"{name}.b": rng.normal(0, 0.5, c).astype(np.float32),
                f"{name}.m": rng.normal(0, np.sqrt(fan_in) / 4, c).astype(np.float32),
                f"{name}.v": np.full(c, fan_in / 4, np.float32)}

    inits = {"w1": rng.normal(0, 0.3, (c1, 1, 3, 3)).astype(np.float32),
             "b1": rng.normal(0, 0.1, c1).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], (c2, c1, 3, 3)).astype(np.float32),
             "wf": rng.normal(0, 0.05, (classes, c2 * h4 * h4)).astype(np.float32),
             "bf": rng.normal(0, 0.1, classes).astype(np.float32)}
    inits.update(bn(c1, 9, "bn1"))
    inits["bn1.m"] = rng.normal(0, 0.1, c1).astype(np.float32)
    inits["bn1.v"] = np.full(c1, 0.1, np.float32)
    inits.update(bn(c2, 9 * c1, "bn2"))
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", **conv),
        helper.make_node("BatchNormalization", ["c1", "bn1.g", "bn1.b", "bn1.m", "bn1.v"], ["z1"], name="bn1"),
        helper.make_node("Sign", ["z1"], ["s1"], name="sign1"),
        helper.make_node("MaxPool", ["s1"], ["p1"], name="pool1", **pool),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", **conv),
        helper.make_node("BatchNormalization", ["c2", "bn2.g", "bn2.b", "bn2.m", "bn2.v"], ["z2"], name="bn2"),
        helper.make_node("Sign", ["z2"], ["s2"], name="sign2"),
        helper.make_node("MaxPool", ["s2"], ["p2"], name="pool2", **pool),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    assert h2 * 2 == hw
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def median_seconds(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def gemm_share(module, feeds, repeats: int) -> float:
    """Share of the plan's time in binary GEMM/conv steps (input layer not fused, timed apart)."""
    from tamec.runtime.plan import compile_plan

    prof = compile_plan(module.graph, fuse_input=False).profile(feeds, repeats)
    total = sum(t for _, t in prof)
    gemm = sum(t for st, t in prof if st.kernel.startswith(("bgemm", "bconv")))
    return gemm / total if total else 0.0


def bench_model(name, model, batches, reps, rng):
    import onnxruntime as ort

    import tamec

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model).read_bytes()
    o_sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    t_sess = tamec.Session(data)
    inp = t_sess.get_inputs()[0]
    rows = []
    for b in batches:
        x = rng.random([b] + [int(d) for d in inp.shape[1:]], dtype=np.float32)
        feeds = {inp.name: x}
        (yo,) = o_sess.run(None, feeds)
        (yt,) = t_sess.run(None, feeds)
        err = float(np.max(np.abs(yo - yt) / np.maximum(1.0, np.abs(yo))))
        r = reps[b]
        t_ort = median_seconds(lambda: o_sess.run(None, feeds), r, max(3, r // 10))
        t_tam = median_seconds(lambda: t_sess.run(None, feeds), r, max(3, r // 10))
        share = gemm_share(t_sess.module, feeds, max(5, r // 4))
        rows.append((name, b, t_ort * 1e3, t_tam * 1e3, t_ort / t_tam, share, err))
        print(f"{name:<26} {b:>5} {t_ort * 1e3:>10.3f} {t_tam * 1e3:>10.3f} {t_ort / t_tam:>7.1f}x"
              f" {share * 100:>8.0f}% {err:>9.1e}", flush=True)
    return rows, t_sess


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats-1", type=int, default=2000, help="timed runs at batch 1")
    ap.add_argument("--repeats-256", type=int, default=60, help="timed runs at batch 256")
    ap.add_argument("--out", help="also write the table as markdown here")
    ap.add_argument("--plans", action="store_true", help="print each model's plan")
    a = ap.parse_args(argv)

    import numba
    import onnxruntime as ort

    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    models = [("TFC-size 784-64x3-10", mlp_model((784, 64, 64, 64, 10))),
              ("SFC-size 784-256x3-10", mlp_model((784, 256, 256, 256, 10))),
              ("LFC-size 784-1024x3-10", mlp_model((784, 1024, 1024, 1024, 10))),
              ("cnn_sign.onnx (8x8)", ROOT / "models" / "cnn_sign.onnx"),
              ("CNN 28x28 64-128 (same shape)", cnn_model())]
    reps = {1: a.repeats_1, 256: a.repeats_256}
    head = f"{'model':<26} {'batch':>5} {'ort ms':>10} {'tamec ms':>10} {'ratio':>8} {'bgemm':>9} {'max rel err':>9}"
    print(head)
    rows = []
    for name, model in models:
        r, sess = bench_model(name, model, (1, 256), reps, rng)
        rows += r
        if a.plans:
            print(sess.plan)
    if a.out:
        cmd = "python bench/forward.py " + " ".join(sys.argv[1:] if argv is None else argv)
        lines = [f"Command: `{cmd.strip()}` (from the repo root)", "",
                 f"Machine: {_cpu_name()}, {os.cpu_count()} cores, "
                 f"onnxruntime {ort.__version__}, numba {numba.__version__}, numpy {np.__version__}; "
                 "both engines single-threaded.", "",
                 "| model | batch | ort ms | tamec ms | ratio (ort/tamec) | bgemm share | max rel err |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {n} | {b} | {o:.3f} | {t:.3f} | {q:.1f}x | {s * 100:.0f}% | {e:.1e} |"
                  for n, b, o, t, q, s, e in rows]
        Path(a.out).write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
