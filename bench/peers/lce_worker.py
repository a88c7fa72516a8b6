"""LCE timing worker for bench/peers.py: runs in the peers venv, talks JSON lines on stdin/stdout.

    /work/venvs/peers/bin/python bench/peers/lce_worker.py

Requests (one JSON object a line), answers one JSON line each:
    {"load": KEY, "tflite": PATH, "mode": "default"|"indirect_bgemm"|"xnnpack", "x": NPY, "y": NPY}
        builds a single-threaded LCE interpreter, runs the input once, saves the output to y
    {"time": KEY, "n": N}    runs the interpreter N times on its input: {"times": [seconds, ...]}
    {"quit": true}
"""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from larq_compute_engine.tflite.python.interpreter import Interpreter

MODES = {"default": {}, "indirect_bgemm": {"use_indirect_bgemm": True}, "xnnpack": {"use_xnnpack": True}}


def main():
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    runs = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        if "load" in req:
            it = Interpreter(open(req["tflite"], "rb").read(), num_threads=1, **MODES[req["mode"]])
            x = [np.load(req["x"])]
            predict = it.interpreter.predict  # the raw call: no per-sample loop of Interpreter.predict
            np.save(req["y"], predict(x)[0])
            runs[req["load"]] = (predict, x)
            ans = {"ok": True}
        else:
            predict, x = runs[req["time"]]
            ts = []
            for _ in range(req["n"]):
                t0 = time.perf_counter()
                predict(x)
                ts.append(time.perf_counter() - t0)
            ans = {"times": ts}
        out.write(json.dumps(ans) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
