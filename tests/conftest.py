"""Shared fixtures: the bundled models and the real pretrained TFC_1W1A when it is present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
TFC = ROOT.parent / "shared" / "models" / "TFC_1W1A.onnx"

os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".pytest_cache" / "numba"))


def bundled_models() -> list[Path]:
    return sorted(MODELS.glob("*.onnx"))


def all_models() -> list:
    """Every bundled model, plus TFC_1W1A (skipped where ../shared/models lacks it)."""
    tfc = pytest.param(TFC, id="TFC_1W1A", marks=pytest.mark.skipif(not TFC.exists(), reason="no TFC_1W1A"))
    return [pytest.param(p, id=p.stem) for p in bundled_models()] + [tfc]


def is_qonnx(path: Path) -> bool:
    """True for models with QONNX ops that onnxruntime cannot run."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any(n.domain not in ("", "ai.onnx") for n in m.graph.node)
