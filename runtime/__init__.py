"""tamec's CPU runtime (Numba kernels, plan executor, backward rules); reads a compiled Module.

Forward: `tamec.runtime.plan.compile_plan(graph)` builds the execution plan `tamec.Session` runs
(bits.py: packing and popcount; simd.py: the GEMM micro-kernels; kernels.py: the Numba kernels).
Importing this package does not load Numba; its modules do.

The JIT cache. The kernels are compiled with `cache=True`, and Numba's default puts the cache in a
`__pycache__` beside the source, that is inside the installed package: `pip install -e` later
leaves such a `site-packages/tamec` folder behind and it shadows the editable install. So, unless
the user set NUMBA_CACHE_DIR, this package points it (before any of its modules imports Numba) at
a per-user folder: $XDG_CACHE_HOME/tamec/numba, else ~/.cache/tamec/numba, else a folder in the
temporary directory; if none is writable, Numba's own choice stays.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def _cache_candidates() -> list[Path]:
    xdg = os.environ.get("XDG_CACHE_HOME")
    dirs = [Path(xdg) / "tamec" / "numba"] if xdg and os.path.isabs(xdg) else []
    try:
        dirs.append(Path.home() / ".cache" / "tamec" / "numba")
    except RuntimeError:  # no home directory can be determined
        pass
    user = os.environ.get("USER") or str(os.getuid() if hasattr(os, "getuid") else "user")
    dirs.append(Path(tempfile.gettempdir()) / f"tamec-numba-{user}")
    return dirs


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".probe-"):
            pass
    except OSError:
        return False
    return True


def _set_numba_cache_dir() -> str | None:
    """Choose NUMBA_CACHE_DIR when the user did not; returns the folder chosen (or None)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    for d in _cache_candidates():
        if _writable(d):
            os.environ["NUMBA_CACHE_DIR"] = str(d)
            if "numba" in sys.modules:  # imported by someone else first: its config is read already
                sys.modules["numba"].config.CACHE_DIR = str(d)
            return str(d)
    return None


_set_numba_cache_dir()
