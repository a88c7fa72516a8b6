"""`--dump-dir`: each MIP is written once, by the pass that made it; a folder holding another
model's dump is refused (or, with --force, cleared of tamec's own files only)."""
from __future__ import annotations

import json

from tamec.cli import main
from tests.conftest import MODELS

MIP_PIPELINE = "canonicalize,binarize-weights,fold-thresholds,bounds,partition,lower-mip,dualize,tame-check"


def test_each_mip_written_once(tmp_path, capsys):
    """lower-mip makes the MIP and dualize and tame-check keep it: one .mps and one .mip.tir, and
    stats.json points the three passes at lower-mip's files."""
    model = str(MODELS / "mlp_sign.onnx")
    assert main(["compile", model, "--pipeline", MIP_PIPELINE, "--dump-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.mps")) == ["06-lower-mip.mps"]
    assert sorted(p.name for p in tmp_path.glob("*.mip.tir")) == ["06-lower-mip.mip.tir"]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["mip_files"] == {"lower-mip": "06-lower-mip", "dualize": "06-lower-mip", "tame-check": "06-lower-mip"}
    assert (tmp_path / "08-tame-check.tir").is_file()  # the graph dumps are still per pass


def test_other_models_dump_refused_or_forced(tmp_path, capsys):
    """A folder with cnn_sign's dump refuses mlp_sign's (exit 2, naming the folder and --force);
    --force replaces tamec's files, leaving none of cnn_sign's and keeping the user's own file."""
    d = str(tmp_path)
    assert main(["compile", str(MODELS / "cnn_sign.onnx"), "--pipeline", MIP_PIPELINE, "--dump-dir", d]) == 0
    (tmp_path / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["compile", str(MODELS / "mlp_sign.onnx"), "--dump-dir", d]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and d in err and "cnn_sign" in err and "--force" in err
    assert (tmp_path / "06-lower-mip.mps").is_file()  # refused: nothing touched
    assert main(["compile", str(MODELS / "mlp_sign.onnx"), "--dump-dir", d, "--force"]) == 0
    assert json.loads((tmp_path / "stats.json").read_text())["source"].endswith("mlp_sign.onnx")
    assert not list(tmp_path.glob("0[5-8]-*")) and (tmp_path / "notes.txt").read_text() == "mine"


def test_same_model_redump_drops_stale_files(tmp_path, capsys):
    """Dumping the same model again with a shorter pipeline leaves no file of the longer run."""
    d, m = str(tmp_path), str(MODELS / "mlp_sign.onnx")
    assert main(["compile", m, "--pipeline", MIP_PIPELINE, "--dump-dir", d]) == 0
    assert main(["compile", m, "--pipeline", "canonicalize", "--dump-dir", d]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00-import.onnx", "00-import.tir", "01-canonicalize.onnx",
                                                         "01-canonicalize.tir", "stats.json"]
