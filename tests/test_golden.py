"""Golden text per pass: the IR after each pass of the default pipeline, for a Brevitas model.

A pass that changes what it emits shows up here as a readable diff. Regenerate after an intended
change with `TAMEC_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py` and review the diff.
"""
from __future__ import annotations

import os

import pytest

import tamec
from tamec.ir.text import print_graph
from tamec.passmanager import DEFAULT_PIPELINE
from tests.conftest import MODELS, ROOT

GOLDEN = ROOT / "tests" / "golden"
MODEL = MODELS / "tfc_w1a1_qonnx.onnx"


@pytest.mark.parametrize("stop", ("import",) + DEFAULT_PIPELINE)
def test_golden_after_pass(stop):
    """The text after each pass equals the reviewed golden file, and printing is deterministic."""
    m = tamec.compile(str(MODEL), stop_after=stop)
    text = print_graph(m.graph)
    assert text == print_graph(tamec.compile(str(MODEL), stop_after=stop).graph)
    path = GOLDEN / f"tfc_w1a1_qonnx.{stop}.tir"
    if os.environ.get("TAMEC_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
