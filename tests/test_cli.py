"""The `tamec` command: every subcommand end to end, and user errors exit 2 with one line."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import MODELS, TFC


def tamec(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tamec", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_compile_dump_inspect_diff(tmp_path):
    """compile --dump-dir writes per-pass .tir/.onnx and stats.json; inspect and diff read them."""
    out = tmp_path / "out"
    r = tamec("compile", MODELS / "tfc_w1a1_qonnx.onnx", "--dump-dir", out, "--check", 4)
    assert r.returncode == 0, r.stderr
    for word in ("canonicalize", "binarize-weights", "fold-thresholds", "bounds", "stable", "max big-M"):
        assert word in r.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names[:2] == ["00-import.onnx", "00-import.tir"] and "04-bounds.tir" in names and "stats.json" in names
    stats = json.loads((out / "stats.json").read_text())
    assert [p["name"] for p in stats["passes"]] == ["import", "canonicalize", "binarize-weights", "fold-thresholds",
                                                     "bounds"]
    assert all(p["seconds"] >= 0 for p in stats["passes"])
    r = tamec("inspect", out)
    assert r.returncode == 0 and "fold-thresholds" in r.stdout
    r = tamec("inspect", out, "--show", "fold-thresholds")
    assert r.returncode == 0 and "tamec.Threshold" in r.stdout
    r = tamec("diff", out / "02-binarize-weights.tir", out / "03-fold-thresholds.tir")
    assert r.returncode == 0 and "BatchNormalization" in r.stdout
    import onnx

    onnx.checker.check_model(onnx.load(str(out / "03-fold-thresholds.onnx")))


def test_print_after_and_stop_after():
    """--print-after prints a banner and the IR; --stop-after ends the pipeline there."""
    r = tamec("compile", MODELS / "mlp_sign.onnx", "--print-after", "canonicalize", "--stop-after", "binarize-weights")
    assert r.returncode == 0, r.stderr
    assert "// ----- AFTER canonicalize -----" in r.stdout and "fold-thresholds" not in r.stdout


def test_run_matches_session(tmp_path):
    """tamec run writes the outputs Session computes."""
    import tamec as tm

    x = np.random.default_rng(0).uniform(0, 1, (3, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = tamec("run", MODELS / "mlp_sign.onnx", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    (ref,) = tm.Session(str(MODELS / "mlp_sign.onnx")).run(None, {"x": x})
    assert np.array_equal(np.load(tmp_path / "y.npy"), ref)


@pytest.mark.skipif(not TFC.exists(), reason="no TFC_1W1A")
def test_compile_tfc_check_clean():
    """The real pretrained TFC_1W1A compiles through the graph pipeline with --check 32 clean."""
    r = tamec("compile", TFC, "--check", 32)
    assert r.returncode == 0, r.stderr
    assert "agree with the original model" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["compile", "/nonexistent/model.onnx"], "model.onnx"),
    (["compile", "{garbage}"], "garbage"),
    (["compile", "{mlp}", "--pipeline", "canonicalize,nope"], "unknown pass"),
    (["compile", "{mlp}", "--input-bounds", "1:0"], "LO > HI"),
    (["compile", "{mlp}", "--stop-after", "tame-check"], "no such pass"),
    (["run", "{mlp}", "--input", "{bad_shape}"], "shape"),
    (["run", "{mlp}", "--input", "{nan}"], "NaN"),
    (["run", "{mlp}", "--input", "{f64}"], "dtype"),
    (["run", "{mlp}", "--input", "nope=/x.npy"], "nope"),
    (["inspect", "/nonexistent"], "stats.json"),
])
def test_user_errors_exit_2_one_line(tmp_path, args, needle):
    """Each user error: exit code 2, one line on stderr naming the problem, no traceback."""
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07not a model at all")
    np.save(tmp_path / "bad.npy", np.zeros((2, 63), np.float32))
    np.save(tmp_path / "nan.npy", np.full((2, 64), np.nan, np.float32))
    np.save(tmp_path / "f64.npy", np.zeros((2, 64)))
    subst = {"{garbage}": tmp_path / "garbage.onnx", "{mlp}": MODELS / "mlp_sign.onnx",
             "{bad_shape}": tmp_path / "bad.npy", "{nan}": tmp_path / "nan.npy", "{f64}": tmp_path / "f64.npy"}
    r = tamec(*[subst.get(a, a) for a in args])
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("cmd", ["compile", "run", "inspect", "diff"])
def test_help(cmd):
    """--help works on every command."""
    r = tamec(cmd, "--help")
    assert r.returncode == 0 and "usage: tamec " + cmd in r.stdout


def test_verify_cli(tmp_path):
    """tamec verify answers robust for eps 0, writes and confirms a counterexample for a large
    radius, and prints JSON on request."""
    x = np.random.default_rng(0).uniform(0, 1, (1, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = tamec("verify", MODELS / "mlp_sign.onnx", "--input", tmp_path / "x.npy", "--eps", 0, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["answer"] == "robust"
    cex = tmp_path / "cex.npy"
    r = tamec("verify", MODELS / "mlp_sign.onnx", "--input", tmp_path / "x.npy", "--eps", 0.5,
              "--counterexample-out", cex)
    assert r.returncode == 0 and r.stdout.startswith("counterexample"), r.stdout + r.stderr
    import tamec as tm

    sess = tm.Session(str(MODELS / "mlp_sign.onnx"))
    y0, y1 = (sess.run(None, {"x": a})[0].argmax() for a in (x, np.load(cex).reshape(1, 64)))
    assert y0 != y1 and np.all(np.abs(np.load(cex).reshape(1, 64) - x) <= 0.5 + 1e-6)
