"""Packaging: a regular install imports tamec, tamec.passes and tamec.runtime and ships the
default model; the Numba cache stays out of the package (tests/test_readme.py checks the README against CI)."""
from __future__ import annotations

import json
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


_CACHE_PROBE = """
import json, tamec.runtime
from pathlib import Path
from tamec.runtime import kernels
fns = [getattr(kernels, n) for n in dir(kernels)]
print(json.dumps({"pkg": str(Path(tamec.runtime.__file__).resolve().parent),
                  "paths": sorted({f._cache._cache_path for f in fns if getattr(f, "_cache", None)})}))
"""


def _cache_paths(tmp_path, **env) -> tuple[Path, list[Path]]:
    base = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    r = subprocess.run([sys.executable, "-c", _CACHE_PROBE], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(base, **env), timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["paths"], "no cached kernel found to ask"
    return Path(doc["pkg"]), [Path(p) for p in doc["paths"]]


def test_numba_cache_stays_out_of_the_package(tmp_path):
    """With NUMBA_CACHE_DIR unset, importing tamec.runtime sends Numba's cache to
    $XDG_CACHE_HOME/tamec/numba, not into a __pycache__ inside the installed package."""
    pkg, paths = _cache_paths(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    for p in paths:
        assert pkg not in p.parents and (tmp_path / "xdg" / "tamec" / "numba") in p.parents, p


def test_numba_cache_falls_back_when_the_user_cache_is_unwritable(tmp_path):
    """An XDG_CACHE_HOME and a HOME that cannot hold a folder (they are files) fall back to the
    temporary directory, still outside the package."""
    (tmp_path / "file").write_text("")
    pkg, paths = _cache_paths(tmp_path, XDG_CACHE_HOME=str(tmp_path / "file"), HOME=str(tmp_path / "file"),
                              TMPDIR=str(tmp_path))
    for p in paths:
        assert pkg not in p.parents and tmp_path in p.parents and (tmp_path / "file") not in p.parents, p
