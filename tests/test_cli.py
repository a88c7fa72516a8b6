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
    assert r.returncode == 1 and "BatchNormalization" in r.stdout  # 1: they differ, as diff(1)
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
    (["run", "{mlp}", "--input", "{i32}"], "dtype"),
    (["run", "{mlp}", "--input", "nope=/x.npy"], "nope"),
    (["inspect", "/nonexistent"], "stats.json"),
])
def test_user_errors_exit_2_one_line(tmp_path, args, needle):
    """Each user error: exit code 2, one line on stderr naming the problem, no traceback."""
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07not a model at all")
    np.save(tmp_path / "bad.npy", np.zeros((2, 63), np.float32))
    np.save(tmp_path / "nan.npy", np.full((2, 64), np.nan, np.float32))
    np.save(tmp_path / "i32.npy", np.zeros((2, 64), np.int32))
    subst = {"{garbage}": tmp_path / "garbage.onnx", "{mlp}": MODELS / "mlp_sign.onnx",
             "{bad_shape}": tmp_path / "bad.npy", "{nan}": tmp_path / "nan.npy", "{i32}": tmp_path / "i32.npy"}
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


# -- exit codes and inputs of issue 16 item 6 -----------------------------------------------------------

def _main(capsys, *args) -> tuple[int, str, str]:
    from tamec.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_refuses_a_npy_as_dataset(tmp_path, capsys):
    """`train --data X.npy` (one array, not a train/test split) is one error line, exit 2."""
    np.save(tmp_path / "x.npy", np.zeros((10, 64), np.float32))
    code, _, err = _main(capsys, "train", "--data", tmp_path / "x.npy", "--out", tmp_path / "o", "--no-progress",
                         "--skip-certify", "--epochs", 1)
    assert code == 2 and "x.npy" in err and "not a dataset" in err and len(err.strip().splitlines()) == 1, err


def test_verify_refuses_a_label_the_model_does_not_have(tmp_path, capsys):
    """`verify --label 12` on a 10-class model exits 2 naming the classes (it used to answer)."""
    np.save(tmp_path / "x.npy", np.full((1, 64), 0.5, np.float32))
    code, out, err = _main(capsys, "verify", MODELS / "mlp_sign.onnx", "--input", tmp_path / "x.npy", "--eps", 0,
                           "--label", 12)
    assert code == 2 and "--label 12" in err and "0..9" in err and not out, err


def test_unknown_input_bounds_name_is_refused(capsys):
    """`--input-bounds nope=0:1` names an input the model lacks: exit 2, listing the real inputs."""
    code, _, err = _main(capsys, "compile", MODELS / "mlp_sign.onnx", "--input-bounds", "nope=0:1")
    assert code == 2 and "'nope'" in err and "its inputs: x" in err, err
    code, _, err = _main(capsys, "compile", MODELS / "mlp_sign.onnx", "--input-bounds", "x=0:1", "--stop-after",
                         "bounds")
    assert code == 0, err


def test_diff_exits_1_on_different_files_and_0_on_equal_ones(tmp_path, capsys):
    """`tamec diff` exits as diff(1) does: 0 for the same IR, 1 when ops differ."""
    import tamec as tm
    from tamec.ir.text import print_graph

    a, b = tmp_path / "a.tir", tmp_path / "b.tir"
    a.write_text(print_graph(tm.compile(str(MODELS / "mlp_sign.onnx"), ["canonicalize"]).graph))
    b.write_text(print_graph(tm.compile(str(MODELS / "mlp_sign.onnx")).graph))
    assert _main(capsys, "diff", a, a)[:2] == (0, "no differences\n")
    code, out, _ = _main(capsys, "diff", a, b)
    assert code == 1 and out.strip() and out != "no differences\n"


def test_version():
    """`tamec --version` prints the package version and exits 0."""
    import tamec as tm

    r = tamec("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"tamec {tm.__version__}", r.stdout + r.stderr


def test_run_and_grad_cast_float64_inputs_with_a_note(tmp_path):
    """A float64 .npy (which verify accepts) runs in `run` and `grad` as its float32 cast, with a note
    on stderr: the same outputs and gradients as the float32 file."""
    x = np.random.default_rng(1).uniform(0, 1, (3, 64))
    np.save(tmp_path / "x64.npy", x)
    np.save(tmp_path / "x32.npy", x.astype(np.float32))
    np.save(tmp_path / "y.npy", np.array([1, 2, 3]))
    for w in ("64", "32"):
        r = tamec("run", MODELS / "mlp_sign.onnx", "--input", tmp_path / f"x{w}.npy", "--output", tmp_path / f"o{w}.npy")
        assert r.returncode == 0 and ("cast from float64 to the model's float32" in r.stderr) == (w == "64"), r.stderr
        r = tamec("grad", MODELS / "mlp_sign.onnx", "--input", tmp_path / f"x{w}.npy", "--labels", tmp_path / "y.npy",
                  "-o", tmp_path / f"g{w}.npz")
        assert r.returncode == 0 and ("cast from float64" in r.stderr) == (w == "64"), r.stderr
    assert np.array_equal(np.load(tmp_path / "o64.npy"), np.load(tmp_path / "o32.npy"))
    g64, g32 = np.load(tmp_path / "g64.npz"), np.load(tmp_path / "g32.npz")
    assert sorted(g64.files) == sorted(g32.files) and all(np.array_equal(g64[k], g32[k]) for k in g64.files)


def test_run_input_fifo_is_refused_not_read(tmp_path):
    """`run --input` given a FIFO exits 2 at once (np.load on it would block forever)."""
    import os

    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    try:
        r = tamec_timeout(60, "run", MODELS / "mlp_sign.onnx", "--input", fifo)
    except subprocess.TimeoutExpired:
        pytest.fail("tamec run blocked reading a FIFO")
    assert r.returncode == 2 and "not a regular file" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def tamec_timeout(seconds, *args):
    return subprocess.run([sys.executable, "-m", "tamec", *map(str, args)], capture_output=True, text=True,
                          timeout=seconds, stdin=subprocess.DEVNULL)


def test_unwritable_dump_dir_is_one_error_line(capsys):
    """A --dump-dir where no file can be created (/proc/self, even for root) exits 2 in one line
    before any pass runs."""
    code, out, err = _main(capsys, "compile", MODELS / "mlp_sign.onnx", "--dump-dir", "/proc/self")
    assert code == 2 and "/proc/self" in err and "--dump-dir" in err and not out, err
    assert len(err.strip().splitlines()) == 1


def test_full_disk_while_dumping_is_one_error_line(tmp_path, capsys, monkeypatch):
    """A disk that fills up while a dump is written (the writer raises ENOSPC) exits 2 with one line
    naming the file, not a traceback."""
    import errno
    from pathlib import Path

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    code, _, err = _main(capsys, "compile", MODELS / "mlp_sign.onnx", "--dump-dir", tmp_path / "d")
    assert code == 2 and "No space left on device" in err and str(tmp_path / "d") in err, err
    assert len(err.strip().splitlines()) == 1
