"""DESIGN.md's arrows hold: the import-linter contracts in pyproject.toml pass on the package as it
installs (passes/ and runtime/ laid out as tamec.passes and tamec.runtime, per package-dir)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _layout(tmp: Path) -> Path:
    """The installed package tree, from pyproject's package-dir, as .py files only."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    ignore = shutil.ignore_patterns("__pycache__", "*.onnx", "*.npz", "*.png")
    dst = tmp / "site"
    shutil.copytree(ROOT / conf["tamec"], dst / "tamec", ignore=ignore)
    for pkg, src in conf.items():
        if pkg != "tamec":
            target = dst / Path(*pkg.split("."))
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / src, target, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    return dst


def test_import_contracts_hold(tmp_path):
    """lint-imports passes every contract (a function-level import counts like any other)."""
    pytest.importorskip("importlinter")
    site = _layout(tmp_path)
    code = ("import sys; sys.path.insert(0, %r); from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml'))" % str(site))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
