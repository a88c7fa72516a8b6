"""tamec against Larq Compute Engine and onnxruntime on the models real exporters write (issue 11).

Models (built by bench/peers/larq_models.py and bench/peers/cnv_model.py, see bench/peers/README.md):
the Larq MLP 784 (real) -> 256 -> 256 -> 10 and the Larq CNN 28x28 (tf2onnx 1.17 exports, LCE 0.16
conversions), and the Brevitas CNV W1A1 (QONNX). Engines: LCE in its default, indirect-bgemm and
XNNPACK modes (in a worker process of the peers venv: bench/peers/lce_worker.py), onnxruntime on
the tf2onnx export (on CNV: on tamec's standard-ops export of the same model, since onnxruntime
cannot run QONNX), and tamec's Session. Everything single-threaded, the same inputs (those of the
*_ref.npz files), engines interleaved in rounds of short blocks, medians of the per-call times,
batch 1 and 64.

Agreement: tamec's output against the source framework's (Keras / torch) and onnxruntime's, max
|diff| (the goal is <= 1e-5), and every binary tensor both engines materialize (the Sign /
BipolarQuant outputs) compared bit for bit against onnxruntime.

Popcount limit: the measured throughput of a tight xnor-popcount loop over L1-resident uint64
words on this CPU (numba; LLVM vectorizes it, the instructions it used are printed), in bit
operations per second: one xnor-popcount bit = one binary multiply-accumulate. Each binary layer
of tamec's plan (built with the input layer apart, timed per step at batch 64) is given as its
bit-MACs / step time / limit.

    python bench/peers.py [--models /work/peers-models] [--peers-python /work/venvs/peers/bin/python]
                          [--rounds 15] [--out notes.md]
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # single-threaded BLAS / numba, set before numpy loads

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
LCE_MODES = ("default", "indirect_bgemm", "xnnpack")
BATCHES = (1, 64)


# --------------------------------------------------------------------------- popcount limit
def popcount_limit(seconds: float = 0.5) -> tuple[float, str]:
    """Bit operations per second of a tight xnor-popcount loop (words in L1), and the vector
    instructions LLVM chose for it."""
    from numba import njit, uint64

    from tamec.runtime.bits import popcount

    @njit(cache=False, nogil=True)
    def loop(a, b, reps):
        s = uint64(0)
        for r in range(reps):
            k = uint64(r)  # changes every pass: LLVM may not hoist the sum out of the rep loop
            for i in range(a.size):
                s += popcount(~(a[i] ^ b[i] ^ k))
        return s

    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, 512, dtype=np.uint64)  # 4 KiB each: both arrays stay in L1
    b = rng.integers(0, 2**63, 512, dtype=np.uint64)
    loop(a, b, 1)
    reps, best = 1000, 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        loop(a, b, reps)
        dt = time.perf_counter() - t0
        best = max(best, reps * a.size * 64 / dt)
    asm = loop.inspect_asm(loop.signatures[0])
    used = [i for i in ("vpshufb", "vpopcntq", "popcnt", "vpsadbw") if i in asm]
    return best, ", ".join(used)


# --------------------------------------------------------------------------- engines
def median_us(ts) -> float:
    return float(np.median(ts)) * 1e6


def timed_block(fn, n: int) -> list[float]:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


class LCE:
    """The LCE worker process (peers venv)."""

    def __init__(self, python: str):
        self.p = subprocess.Popen([python, str(ROOT / "bench" / "peers" / "lce_worker.py")], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def ask(self, **req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("the LCE worker died (see its stderr above)")
        return json.loads(line)

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.write(json.dumps({"quit": True}) + "\n")
            self.p.stdin.close()
            self.p.wait(10)


def ort_session(data: bytes, extra_outputs=()):
    import onnxruntime as ort

    if extra_outputs:
        m = onnx.load_from_string(data)
        made = {o for node in m.graph.node for o in node.output}  # not initializers, not tamec's own names
        have = {o.name for o in m.graph.output}
        m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra_outputs if n in made and n not in have)
        data = m.SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def binary_agreement(t_sess, ort_data: bytes, feeds) -> tuple[int, int, int]:
    """Tensors both engines materialize whose onnxruntime values are all in {-1, 0, +1}:
    (tensors compared, elements compared, elements that differ)."""
    mine = t_sess.plan.run(t_sess.check_feeds(feeds), keep_all=True)
    names = [n for n in mine if n not in feeds]
    sess = ort_session(ort_data, names)
    known = {o.name for o in sess.get_outputs()}
    names = [n for n in names if n in known]
    ref = dict(zip(names, sess.run(names, feeds)))
    tensors = elems = bad = 0
    for n in names:
        r, t = np.asarray(ref[n]), np.asarray(mine[n])
        if r.size == 0 or r.shape != t.shape or not np.isin(r, (-1.0, 0.0, 1.0)).all():
            continue
        tensors += 1
        elems += r.size
        bad += int(np.count_nonzero(r != t))
    return tensors, elems, bad


def binary_layers(t_sess, feeds, limit: float, repeats: int):
    """(layer ops, bit-MACs, step seconds, fraction of the limit) of every binary step of the plan
    built with the input layer apart; a bgemm chain is one step, its layers' MACs summed."""
    from tamec.runtime.plan import compile_plan

    g = t_sess.graph
    n = next(iter(feeds.values())).shape[0]
    prof = compile_plan(g, fuse_input=False).profile(t_sess.check_feeds(feeds), repeats)
    rows = []
    for st, t in prof:
        if not st.kernel.startswith(("bgemm", "bconv")):
            continue
        parts = st.parts if len(st.parts) > 1 else [(st.kernel, st.ops, st.reads, st.writes, st.detail)]
        macs, names = 0, []
        for kernel, ops, *_ in parts:
            if not kernel.startswith(("bgemm", "bconv")):
                continue
            for oid in ops:
                op = g.op(oid)
                w = [g.values[i].const for i in op.inputs if g.values[i].const is not None
                     and g.values[i].const.ndim >= 2]
                out = g.values[op.outputs[0]].shape
                if not w or out is None:
                    continue
                out = [n if isinstance(d, str) else int(d) for d in out]
                cout = out[1] if len(out) == 4 else out[-1]
                macs += w[0].size * int(np.prod(out)) // cout
                names.append(oid)
                break
        if macs:
            rows.append((",".join(names), macs, t, macs / t / limit))
    return rows


# --------------------------------------------------------------------------- one model
def bench(name, onnx_path, ort_data, ref, lce, tflite, rounds, blocks, limit, out_rows, frac_rows):
    import tamec

    t_sess = tamec.Session(str(onnx_path))
    o_sess = ort_session(ort_data)
    iname = t_sess.get_inputs()[0].name
    for b in BATCHES:
        x = np.ascontiguousarray(ref[f"x{b}"])
        y_src = ref[f"y{b}"]
        feeds = {iname: x}
        (y_t,) = t_sess.run(None, feeds)
        (y_o,) = o_sess.run(None, {o_sess.get_inputs()[0].name: x})
        engines = {"onnxruntime": lambda: o_sess.run(None, {o_sess.get_inputs()[0].name: x}),
                   "tamec": lambda: t_sess.run(None, feeds)}
        errs = {"tamec-src": float(np.max(np.abs(y_t - y_src))), "tamec-ort": float(np.max(np.abs(y_t - y_o)))}
        lce_keys = []
        if lce is not None and tflite is not None:
            with tempfile.TemporaryDirectory() as d:
                np.save(f"{d}/x.npy", x)
                for mode in LCE_MODES:
                    key = f"{name}/{b}/{mode}"
                    lce.ask(load=key, tflite=str(tflite(b)), mode=mode, x=f"{d}/x.npy", y=f"{d}/y.npy")
                    errs[f"lce {mode}-src"] = float(np.max(np.abs(np.load(f"{d}/y.npy") - y_src)))
                    lce_keys.append((f"LCE {mode}", key))
        tens, elems, bad = binary_agreement(t_sess, ort_data, feeds)
        n = blocks[b]
        times = {k: [] for k in [k for k, _ in lce_keys] + list(engines)}
        for k, fn in engines.items():  # warm-up
            timed_block(fn, max(3, n // 2))
        for label, key in lce_keys:
            lce.ask(time=key, n=max(3, n // 2))
        for _ in range(rounds):
            for label, key in lce_keys:
                times[label] += lce.ask(time=key, n=n)["times"]
            for k, fn in engines.items():
                times[k] += timed_block(fn, n)
        med = {k: median_us(v) for k, v in times.items()}
        out_rows.append((name, b, med, errs, (tens, elems, bad)))
        lce_s = " ".join(f"{k.split()[1]}={med[k]:.0f}" for k, _ in lce_keys) or "-"
        best_lce = min((med[k] for k, _ in lce_keys), default=float("nan"))
        print(f"{name:<10} b={b:<3} LCE[{lce_s}] ort={med['onnxruntime']:.0f} tamec={med['tamec']:.0f} us"
              f" | tamec vs best LCE {best_lce / med['tamec']:.2f}x, vs ort {med['onnxruntime'] / med['tamec']:.2f}x"
              f" | max|diff| " + " ".join(f"{k}={v:.1e}" for k, v in errs.items())
              + f" | binary tensors {tens} ({elems} values): {bad} differ", flush=True)
        if b == 64:
            for ops, macs, t, frac in binary_layers(t_sess, feeds, limit, 10):
                frac_rows.append((name, ops, macs, t, frac))
                print(f"    binary step {ops}: {macs / 1e6:.1f} M bit-MACs in {t * 1e6:.0f} us ="
                      f" {macs / t / 1e9:.1f} G/s = {frac * 100:.0f}% of the popcount limit", flush=True)
    return t_sess


def cnv_standard_export(path: Path) -> bytes:
    """tamec's standard-ops ONNX export of the compiled CNV, for onnxruntime."""
    import tamec
    from tamec.export.onnx import to_onnx

    return to_onnx(tamec.compile(str(path)).graph, standard=True).SerializeToString()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="/work/peers-models", help="folder of bench/peers/*.py's files")
    ap.add_argument("--peers-python", default="/work/venvs/peers/bin/python",
                    help="python of the peers venv (LCE); LCE is skipped if it is missing")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per engine")
    ap.add_argument("--block-1", type=int, default=40, help="calls per block at batch 1")
    ap.add_argument("--block-64", type=int, default=4, help="calls per block at batch 64")
    ap.add_argument("--out", help="also write the tables as markdown here")
    a = ap.parse_args(argv)

    import numba
    import onnxruntime as ort

    numba.set_num_threads(1)
    d = Path(a.models)
    limit, instr = popcount_limit()
    print(f"popcount limit: {limit / 1e9:.1f} G bit-ops/s (tight xnor-popcount loop over L1 words, one core;"
          f" LLVM used: {instr or 'scalar code'})", flush=True)
    lce = LCE(a.peers_python) if Path(a.peers_python).exists() else None
    if lce is None:
        print(f"note: {a.peers_python} not found, LCE skipped (bench/peers/README.md sets it up)")
    blocks = {1: a.block_1, 64: a.block_64}
    rows, fracs = [], []
    try:
        for name in ("larq_mlp", "larq_cnn"):
            p = d / f"{name}.onnx"
            bench(name, p, p.read_bytes(), np.load(d / f"{name}_ref.npz"), lce,
                  lambda b, name=name: d / f"{name}_b{b}.tflite", a.rounds, blocks, limit, rows, fracs)
        p = d / "cnv_w1a1.onnx"
        bench("cnv_w1a1", p, cnv_standard_export(p), np.load(d / "cnv_w1a1_ref.npz"), None, None,
              a.rounds, blocks, limit, rows, fracs)
    finally:
        if lce is not None:
            lce.close()
    if a.out:
        cmd = "python bench/peers.py " + " ".join(sys.argv[1:] if argv is None else argv)
        lines = [f"Command: `{cmd.strip()}` (from the repo root)", "",
                 f"onnxruntime {ort.__version__}, numba {numba.__version__}, numpy {np.__version__}; every engine "
                 f"single-threaded. Popcount limit {limit / 1e9:.1f} G bit-ops/s ({instr}).", "",
                 "| model | batch | LCE default | LCE indirect | LCE xnnpack | onnxruntime | tamec | vs best LCE | vs ort |"
                 " max diff tamec-src | binary differ |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, b, med, errs, (tens, elems, bad) in rows:
            lv = [med.get(f"LCE {m}") for m in LCE_MODES]
            best = min((v for v in lv if v), default=None)
            lines.append(f"| {name} | {b} | " + " | ".join(f"{v:.0f}" if v else "-" for v in lv)
                         + f" | {med['onnxruntime']:.0f} | {med['tamec']:.0f} | "
                         + (f"{best / med['tamec']:.2f}x" if best else "-")
                         + f" | {med['onnxruntime'] / med['tamec']:.2f}x | {errs['tamec-src']:.1e} | {bad}/{elems} |")
        lines += ["", "| model | binary step (batch 64) | M bit-MACs | us | share of limit |", "|---|---|---:|---:|---:|"]
        lines += [f"| {n} | {o} | {m / 1e6:.1f} | {t * 1e6:.0f} | {f * 100:.0f}% |" for n, o, m, t, f in fracs]
        Path(a.out).write_text("\n".join(lines) + "\n")
    return rows, fracs


if __name__ == "__main__":
    main()
