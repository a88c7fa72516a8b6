"""`tamec inspect DIR --block K --plot OUT.png`: the PNG is written (a real PNG of non-trivial
size), and the curves it draws satisfy dual <= value function at every plotted point (lp, bb,
chvatal; threshold and MaxPool keys), with bb (and chvatal) touching the value at the reference
point and the lp gap visible there; a dual shifted up by 1 breaks the check; bad uses exit 2."""
from __future__ import annotations

import copy
import json
import struct

import numpy as np
import pytest

import tamec
from tamec.cli import main
from tamec.dual.blocks import key_duals
from tamec.drivers.plot import block_data, plot_block
from tests.conftest import MODELS

PIPELINE = "canonicalize,binarize-weights,fold-thresholds,bounds,partition,lower-mip,dualize,tame-check"


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    """mlp_sign compiled through dualize with --dump-dir (in-process CLI)."""
    d = tmp_path_factory.mktemp("dump")
    assert main(["compile", str(MODELS / "mlp_sign.onnx"), "--pipeline", PIPELINE, "--dump-dir", str(d)]) == 0
    return d


def _entry(dump, k: int) -> dict:
    return json.loads((dump / "certificates.json").read_text())[k]


def _below(p: dict, tol: float = 1e-7) -> dict[str, bool]:
    """Per dual of a panel: F <= z at every plotted point where z is finite (+inf: nothing to check)."""
    z = p["value"]
    fin = np.isfinite(z)
    return {m: bool(np.all(f[fin] <= z[fin] + tol * (1 + np.abs(z[fin])))) for m, f in p["duals"].items()}


def _at(p: dict, x: float) -> int:
    i = int(np.argmin(np.abs(p["x"] - x)))
    assert p["x"][i] == x  # the reference point is one of the plotted points
    return i


def test_plot_png_and_minorants(dump, tmp_path, capsys):
    """The CLI writes a valid PNG; every plotted lp/bb curve is below the exact value function,
    bb equals it at s_ref (strong) while lp leaves the worked example's gap there."""
    out = tmp_path / "b1.png"
    assert main(["inspect", str(dump), "--block", "1", "--plot", str(out)]) == 0
    assert f"plot: {out}" in capsys.readouterr().out
    raw = out.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    w, h = struct.unpack(">II", raw[16:24])
    assert w >= 600 and h >= 600 and len(raw) > 20_000
    panels = block_data(_entry(dump, 1))  # the arrays plot_block draws
    assert len(panels) == 6 and {p["g"] for p in panels} == {"+1", "-1"}
    for p in panels:
        assert set(p["duals"]) == {"lp", "bb"} and np.isfinite(p["value"]).sum() > 50
        assert _below(p) == {"lp": True, "bb": True}, (p["key"], p["g"])
        i = _at(p, p["ref"])
        assert p["duals"]["bb"][i] == pytest.approx(p["value"][i], abs=1e-7)
        assert p["value"][i] - p["duals"]["lp"][i] > 0.5


def test_minorant_check_can_fail(dump):
    """The same check on an lp dual shifted up by 1 finds points where it exceeds the value."""
    entry = copy.deepcopy(_entry(dump, 1))
    for key in entry["dualize"]["keys"]:
        for e in key["lp"].values():
            for piece in e["pieces"]:
                piece["kappa"] += 1.0
    panels = block_data(entry)
    assert not any(_below(p)["lp"] for p in panels)
    assert all(_below(p)["bb"] for p in panels)


def test_plot_maxpool_and_chvatal(tmp_path):
    """MaxPool keys: z is finite only at window states (t = 0, 1) and both duals are below it and
    equal at x_ref (t = 0). A Chvatal dual (integer worked example) is drawn exactly and is below
    the value function everywhere, equal at its reference point."""
    from tests.test_dualize import _pool_model

    m = tamec.compile(_pool_model(-1.0), PIPELINE)
    entry = {"block": "head", "dualize": m.reports["dualize"][-1]}
    res = plot_block(entry, tmp_path / "pool.png")
    assert (tmp_path / "pool.png").stat().st_size > 10_000
    for p in res["panels"]:
        assert p["kind"] == "maxpool" and _below(p) == {"lp": True, "bb": True}
        fin = p["x"][np.isfinite(p["value"])]
        assert 0.0 in fin and 1.0 in fin and np.all(np.isin(fin, [0.0, 1.0]))
        i = _at(p, 0.0)
        assert p["duals"]["lp"][i] == pytest.approx(p["value"][i])
    L, U = -4.0, 8.0  # DESIGN's worked example with integer data: rows L u >= L - s, U u >= s
    spec = {"key": {"L_minus_tau": L, "U_minus_tau": U, "a_minus_tau": 1.0, "b_minus_tau": -1.0, "lattice": None,
                    "tie": 1.0, "ternary": False, "flip": False, "jump": 2.0},
            "example": {}, "neurons": 1, "A": [[L - 1.0], [U + 1.0]], "d0": [L, 1.0], "e": [-1.0, 1.0],
            "lb": [0.0], "ub": [1.0], "cost": [2.0]}
    key = {"kind": "threshold", **key_duals(spec, chvatal=True)}
    assert all(e["certificate"]["strong"] for e in key["chvatal"].values())
    panels = block_data({"block": "t", "dualize": {"keys": [key]}})
    for p in panels:
        assert _below(p) == {"lp": True, "bb": True, "chvatal": True}
        i = _at(p, key["chvatal"][p["g"]]["s_ref"])
        assert p["duals"]["chvatal"][i] == pytest.approx(p["value"][i], abs=1e-12)


def test_plot_errors(dump, tmp_path, capsys):
    """--plot without --block, a block with nothing to plot (the exact head) and an unwritable
    path each exit 2 with one line naming the problem."""
    assert main(["inspect", str(dump), "--plot", str(tmp_path / "x.png")]) == 2
    assert "--block" in capsys.readouterr().err
    assert main(["inspect", str(dump), "--block", "head", "--plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no dual functions to plot" in err and "exact" in err and len(err.strip().splitlines()) == 1
    assert main(["inspect", str(dump), "--block", "1", "--plot", str(tmp_path / "missing" / "x.png")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
