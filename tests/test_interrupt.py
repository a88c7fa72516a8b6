"""Long solves stop on Ctrl-C with their partial result (exit 130), and `--time-limit` is the
total budget of a command, not a per-class one.

A process started in the background by a non-interactive shell (`pytest ... &`, as CI runners
and scripts do) inherits SIGINT *ignored*; Python then installs no KeyboardInterrupt handler,
`_thread.interrupt_main` does nothing and its children ignore SIGINT too. That made these tests
hang in background suite runs while passing in a terminal. So the subprocess gets SIGINT's
default disposition back, and the in-process tests run with Python's handler installed
(`test_inherited_sigint_ignore_is_what_hangs` shows the cause)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import MODELS

pytest.importorskip("sklearn")

# mlp_sign (10 classes) on digit 0 at eps 0.1: each class's MIP runs 3-16 s before a 3 s limit
# stops it, so the nine classes take 60-90 s without a total budget
SLOW = [str(MODELS / "mlp_sign.onnx"), "--eps", "0.1", "--no-sample"]


def _digit(tmp_path) -> str:
    from sklearn.datasets import load_digits

    path = tmp_path / "x.npy"
    np.save(path, (load_digits().data[:1] / 16).astype(np.float32))
    return str(path)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a terminal gives it, whatever pytest inherited


def _tamec(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tamec", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint, **kw)


@pytest.fixture
def ctrl_c():
    """Python's own SIGINT handler for the test (see the module doc), the old one restored after."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_inherited_sigint_ignore_is_what_hangs():
    """The cause of the old hang: a child started with SIGINT ignored gets no KeyboardInterrupt
    handler (so Ctrl-C cannot reach tamec); `_default_sigint` gives it back."""
    code = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    run = lambda pre: subprocess.run([sys.executable, "-c", code], preexec_fn=pre,  # noqa: E731
                                     capture_output=True, text=True).stdout.strip()
    assert run(ignore) == "False"
    assert run(lambda: (ignore(), _default_sigint())) == "True"


def test_verify_ctrl_c_exits_130_with_partial_result(tmp_path):
    """SIGINT 2 s into the solves ends `tamec verify` promptly (seconds, not the minute the solves
    take), exit 130, printing the answer so far with the class being solved marked interrupted."""
    proc = _tamec(["verify", SLOW[0], "--input", _digit(tmp_path), *SLOW[1:]])
    line = proc.stderr.readline()  # printed when the per-class solves start
    assert line.startswith("verify: maximizing"), line
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    t0 = time.perf_counter()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never leave a solver running behind a failed test
    assert time.perf_counter() - t0 < 15  # generous for a loaded machine; uninterrupted: 60-90 s
    assert proc.returncode == 130, (out, err)
    assert out.splitlines()[0].split(":")[0] in ("unknown (interrupted)", "counterexample (interrupted)"), out
    rows = [r.split() for r in out.splitlines()[3:] if r.split()[:1] and r.split()[0].isdigit()]
    assert any(r[1] == "interrupted" for r in rows), out  # the class being solved when Ctrl-C came
    assert "decided" in out
    assert err.strip().endswith("tamec: interrupted")


def test_verify_time_limit_is_the_total(tmp_path):
    """`--time-limit 3` over a 10-class model: the whole verification takes about 3 s (plus
    HiGHS's grace of 1 s), the classes reached with no time left are `limit`, the answer unknown."""
    t0 = time.perf_counter()
    proc = _tamec(["verify", SLOW[0], "--input", _digit(tmp_path), *SLOW[1:], "--time-limit", "3", "--json"])
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, err
    res = json.loads(out)
    assert res["answer"] == "unknown" and len(res["per_class"]) == 9
    assert all(e["status"] == "limit" for e in res["per_class"])
    assert res["seconds"] < 9, res["seconds"]  # a total budget: 3 s (+ HiGHS's grace), not 9 x 3 s
    assert wall < 30, wall  # the rest is Python start-up and the compile, slow on a loaded machine


def _interrupt_into_solve(monkeypatch, after: float) -> list:
    """Make tamec.solve.solve send Ctrl-C to the main thread `after` s into its first call, so
    the interrupt lands in HiGHS however long the compile before it took. Returns [timer]."""
    import _thread
    import threading

    import tamec.solve

    real, timers = tamec.solve.solve, []

    def solve(*args, **kw):
        if not timers:
            timers.append(threading.Timer(after, _thread.interrupt_main))
            timers[0].start()
        return real(*args, **kw)

    monkeypatch.setattr(tamec.solve, "solve", solve)
    return timers


def test_verify_api_interrupt_keeps_partial(monkeypatch, ctrl_c):
    """In Python, Ctrl-C during verify's solves raises tamec.errors.Interrupted (a
    KeyboardInterrupt) whose `partial` holds the class being solved, marked interrupted."""
    from sklearn.datasets import load_digits

    from tamec.errors import Interrupted
    from tamec.drivers.verify import verify

    x = (load_digits().data[:1] / 16).astype(np.float32)
    _interrupt_into_solve(monkeypatch, 1.5)
    with pytest.raises(Interrupted) as info:
        verify(SLOW[0], x, 0.1, sample=False, progress=False, time_limit=120)
    part = info.value.partial
    assert part.interrupted and part.answer == "unknown"
    assert part.per_class and part.per_class[-1]["status"] == "interrupted"
    assert isinstance(info.value, KeyboardInterrupt)


def test_fit_mip_interrupt_keeps_incumbent(monkeypatch, tmp_path, ctrl_c):
    """Ctrl-C 2 s into fit-mip's MIP (no warm start: HiGHS would run its 60 s) stops it within
    5 s; the report (also in report.json) says interrupted, with the solver's bound."""
    from tamec.errors import Interrupted
    from tamec.drivers.fit import fit_mip

    _interrupt_into_solve(monkeypatch, 2.0)
    with pytest.raises(Interrupted) as info:
        fit_mip([64, 16, 10], per_class=5, time_limit=60, out_dir=tmp_path, warm_start="none", progress=False)
    rep = info.value.partial
    assert rep.mip["status"] == "interrupted" and rep.mip["seconds"] < 7
    assert any(n.startswith("interrupted (Ctrl-C)") for n in rep.notes)
    assert json.loads((tmp_path / "report.json").read_text())["mip"]["status"] == "interrupted"
