"""dualize: every block of every bundled model (and TFC_1W1A) gets certified per-neuron dual
functions that are minorants and dual feasible; bb is strong at the neuron's right-hand side; the
lp field is the worked example's 2g/(U - b), 2g/(a - L) (2g/U, 2g/|L| without a lattice gap);
1 and 2 worker processes give the same report; certificates.json and `inspect --block` show it."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import tamec
from tamec.dual.blocks import EnumProblem, key_duals
from tests.conftest import MODELS, all_models

PIPELINE = "canonicalize,binarize-weights,fold-thresholds,bounds,partition,lower-mip,tame-check,dualize"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tamec", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _expected_field(key: dict, g: float, s_ref: float) -> float:
    """The worked example: the LP moves the output across the big-M row of the side s_ref is on;
    field = g * jump / M with M = U - b above tau, a - L below, sign -1 where flip swaps the levels."""
    M = key["U_minus_tau"] - key["b_minus_tau"] if s_ref > 0 else key["a_minus_tau"] - key["L_minus_tau"]
    sign = -1.0 if key["flip"] else 1.0
    flows = (g * sign > 0) == (s_ref > 0)  # the loss asks for the flip this side can still make
    return sign * g * key["jump"] / M if flows else 0.0


@pytest.mark.parametrize("path", all_models())
def test_every_dual_certified(path):
    """Every lp/bb dual of every key is a minorant and dual feasible, bb is strong at s_ref, the
    lp field equals the worked example, neuron counts add up, and the head block is exact."""
    m = tamec.compile(str(path), PIPELINE)
    reps = m.reports["dualize"]
    assert [r["block"] for r in reps] == [b.name for b in m.mip.blocks]
    json.dumps(reps)
    for r, b in zip(reps, m.mip.blocks):
        if r.get("exact"):
            assert r["reason"] == "continuous affine block: LP dual is exact"
            continue
        assert r["unstable"] + r["stable"]["count"] == r["neurons"]
        assert sum(k["neurons"] for k in r.get("keys", [])) == r["unstable"]
        assert r["unique_keys"] == len(r.get("keys", []))
        for k in r.get("keys", []):
            for meth in ("lp", "bb"):
                for g, e in k[meth].items():
                    c = e["certificate"]
                    assert c["minorant"]["holds"], (b.name, k["key"], meth, g, c["minorant"])
                    assert c["dual_feasible"]["holds"], (b.name, k["key"], meth, g)
                    assert c["F0"]["holds"]
            for g, e in k["bb"].items():
                assert e["certificate"]["strong"], (b.name, k["key"], g, e["certificate"]["gap"])
                assert e["info"]["complete"]
            for g, e in k["lp"].items():
                assert e["field"] == pytest.approx(_expected_field(k["key"], float(g), e["s_ref"]), rel=1e-6, abs=1e-9)
        if r.get("keys"):
            assert r["summary"]["minorant"] and r["summary"]["strong_bb_share"] == 1.0
    assert any(r.get("exact") for r in reps)


def test_worked_example_exact_numbers():
    """A bipolar neuron with rows s >= L (1 - u), s <= U u (no lattice gap, L = -4, U = 8): the lp
    field is 2g/U = 0.25 for g = +1 above tau and 2g/|L| = -0.5 for g = -1 below; bb closes the gap
    (strong, field 0 at the reference point) and a dual shifted up by 1 fails its minorant check."""
    L, U = -4.0, 8.0
    spec = {"key": {"L_minus_tau": L, "U_minus_tau": U, "a_minus_tau": 0.0, "b_minus_tau": 0.0, "lattice": None,
                    "tie": 1.0, "ternary": False, "flip": False, "jump": 2.0},
            "example": {}, "neurons": 1,
            # s + L u >= L  ->  L u >= L - s ;  s - U u <= 0  ->  U u >= s
            "A": [[L], [U]], "d0": [L, 0.0], "e": [-1.0, 1.0], "lb": [0.0], "ub": [1.0], "cost": [2.0]}
    r = key_duals(spec)
    assert r["lp"]["+1"]["s_ref"] > 0 and r["lp"]["+1"]["field"] == pytest.approx(2 / U)
    assert r["lp"]["-1"]["s_ref"] < 0 and r["lp"]["-1"]["field"] == pytest.approx(2 * -1 / abs(L))
    for g in ("+1", "-1"):
        assert r["bb"][g]["certificate"]["strong"] and r["bb"][g]["field"] == 0.0
        assert r["lp"][g]["certificate"]["gap"] > 0.5  # the LP relaxation of a step has a gap
    # the checks can fail: shift the lp piece up by 1
    from tamec.dual.certificate import certify
    from tamec.dual.function import DualFunction

    c, A = np.array([2.0]), np.array(spec["A"])
    p = EnumProblem.build(c, A, np.array([L, 0.0]) + 4.0 * np.array([-1.0, 1.0]), np.ones(1, bool), 0, 1, ">=")
    piece = r["lp"]["+1"]["pieces"][0]
    bad = DualFunction("lp", p, [{"pi": np.array(piece["pi"]), "const": piece["kappa"] + 1.0}])
    assert not certify(bad, p, grid=[[L - s, s] for s in (-4.0, 0.0, 4.0, 8.0)])["minorant"]["holds"]


def test_workers_identical():
    """1 worker (inline) and 2 worker processes give identical dualize reports."""
    path = MODELS / "mlp_sign.onnx"
    one = tamec.compile(str(path), PIPELINE, workers=1).reports["dualize"]
    two = tamec.compile(str(path), PIPELINE, workers=2, executor="processes").reports["dualize"]
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_certificates_json_and_inspect_block(tmp_path):
    """--dump-dir writes certificates.json (one entry per block, dualize and tame-check side by
    side); `inspect --block 1` prints the rows, dual pieces and certificate; --block 99 exits 2."""
    out = tmp_path / "d"
    r = _cli("compile", MODELS / "mlp_sign.onnx", "--pipeline", PIPELINE, "--dump-dir", out)
    assert r.returncode == 0, r.stderr
    certs = json.loads((out / "certificates.json").read_text())
    m = tamec.compile(str(MODELS / "mlp_sign.onnx"), PIPELINE)
    assert [c["block"] for c in certs] == [b.name for b in m.mip.blocks]
    assert all({"dualize", "tame-check"} <= set(c) for c in certs)
    r = _cli("inspect", out, "--block", 1)
    assert r.returncode == 0, r.stderr
    name = certs[1]["block"]
    for word in (f"block {name}", "big-m-lo", "big-m-hi", "// dual functions", "lp g=+1", "bb g=-1", "piece(s)",
                 "minorant True", "// certificate", "verdict nice"):
        assert word in r.stdout, word
    r = _cli("inspect", out, "--block", 99)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "block 99" in r.stderr
