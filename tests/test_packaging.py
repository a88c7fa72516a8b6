"""Packaging: a regular install imports tamec, tamec.passes and tamec.runtime and ships the
default model; the README's two commands are the ones CI runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_editable_layout():
    """In this (editable) environment tamec.passes and tamec.runtime come from passes/ and runtime/."""
    import tamec.passes
    import tamec.runtime

    assert Path(tamec.passes.__file__).resolve().parent == ROOT / "passes"
    assert Path(tamec.runtime.__file__).resolve().parent == ROOT / "runtime"


@pytest.mark.slow
def test_regular_install_imports(tmp_path):
    """`pip install .` (no editable magic) gives importable subpackages and the bundled model."""
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                        "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    code = ("import tamec, tamec.passes.canonicalize, tamec.runtime, os; "
            "assert 'site' in tamec.__file__; assert os.path.exists(tamec.default_model()); print('ok')")
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_readme_commands_are_ci_commands():
    """The README opens with the two commands .ci/run executes, in the same order."""
    readme = (ROOT / "README.md").read_text().splitlines()
    block = readme[readme.index("```bash") + 1:readme.index("```")]
    cmds = [line for line in block if line and not line.startswith("#")]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert len(cmds) == 2 and all(c in ci for c in cmds)
    assert ci.index(cmds[0]) < ci.index(cmds[1])
