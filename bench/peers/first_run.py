"""Cold start: seconds from a fresh process to the first `Session(...).run` answer on a peer model.

Measure it on a fresh install and an empty numba cache (issue 11; a warm cache hides the JIT):

    python -m venv /tmp/fresh && /tmp/fresh/bin/pip install .
    NUMBA_CACHE_DIR=$(mktemp -d) /tmp/fresh/bin/python bench/peers/first_run.py larq_mlp [--models DIR]

Prints the wall time of import + Session, of the first run, their total, and the process's CPU
time (on a shared machine the CPU time is the steadier number: the JIT is single-threaded).
"""
import argparse
import time

t0, c0 = time.perf_counter(), time.process_time()

import numpy as np  # noqa: E402

import tamec  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="larq_mlp, larq_cnn or cnv_w1a1")
    ap.add_argument("--models", default="/work/peers-models")
    a = ap.parse_args(argv)
    r = np.load(f"{a.models}/{a.model}_ref.npz")
    s = tamec.Session(f"{a.models}/{a.model}.onnx")
    t1 = time.perf_counter()
    (y,) = s.run(None, {s.get_inputs()[0].name: r["x1"]})
    t2 = time.perf_counter()
    print(f"{a.model}: import+Session {t1 - t0:.2f} s, first run {t2 - t1:.2f} s, total {t2 - t0:.2f} s"
          f" (CPU {time.process_time() - c0:.2f} s); max |diff| vs source {np.abs(y - r['y1']).max():.1e}")


if __name__ == "__main__":
    main()
