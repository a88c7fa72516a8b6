"""dualize: every block of every bundled model (and TFC_1W1A) gets certified per-neuron dual
functions that are minorants and dual feasible; bb is strong at the neuron's right-hand side; the
lp field is the worked example's 2g/(U - b), 2g/(a - L) (2g/U, 2g/|L| without a lattice gap);
1 and 2 worker processes give the same report; certificates.json and `inspect --block` show it."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import tamec
from tamec.dual.blocks import EnumProblem, key_duals
from tamec.dual.pool import true_max, window_states, x_reference
from tests.conftest import MODELS, all_models

PIPELINE = "canonicalize,binarize-weights,fold-thresholds,bounds,partition,lower-mip,dualize,tame-check"


def _expected_field(key: dict, g: float, s_ref: float) -> float:
    """The worked example: the LP moves the output across the big-M row of the side s_ref is on;
    field = g * jump / M with M = U - b above tau, a - L below, sign -1 where flip swaps the levels."""
    M = key["U_minus_tau"] - key["b_minus_tau"] if s_ref > 0 else key["a_minus_tau"] - key["L_minus_tau"]
    sign = -1.0 if key["flip"] else 1.0
    flows = (g * sign > 0) == (s_ref > 0)  # the loss asks for the flip this side can still make
    return sign * g * key["jump"] / M if flows else 0.0


def _check_pool_key(k: dict) -> None:
    """A MaxPool key against an oracle that does not read the MIP rows: at every window state the
    lp and bb duals are <= g * (objective of the true max), equal to it at x_ref (strong)."""
    prob = {**k["problem"], "key": k["key"]}
    E, d0 = np.asarray(prob["E"]), np.asarray(prob["d0"])
    enc = k["key"]["encoding"]
    for meth in ("lp", "bb"):
        for g, e in k[meth].items():
            c = e["certificate"]
            assert c["minorant"]["holds"] and c["dual_feasible"]["holds"] and c["strong"], (k["key"], meth, g)
            Pi = np.array([p["pi"] for p in e["pieces"]])
            K = np.array([p["kappa"] for p in e["pieces"]])
            for x in window_states(prob):
                level = true_max(prob, x)
                z = float(g) * (level + 1.0 if enc == "bipolar" else level)  # 2g u with level 2u - 1
                F = float(np.min(Pi @ (d0 + E @ x) + K))
                assert F <= z + 1e-9, (k["key"], meth, g, x.tolist(), F, z)
            x = np.array(e["x_ref"])
            assert x.tolist() == x_reference(prob).tolist() and true_max(prob, x) == 1.0
            # the field is the gradient of the active piece: a chain-rule factor for the window bits
            assert len(e["field"]) == len(x)


@pytest.mark.parametrize("path", all_models())
def test_every_dual_certified(path):
    """Every lp/bb dual of every key is a minorant and dual feasible, bb is strong at s_ref, the
    lp field equals the worked example, neuron counts add up, MaxPool keys pass an independent
    oracle, every row group of every block is covered (each key says which rows and elements),
    and exactly the blocks without thresholds and MaxPool are reported exact."""
    m = tamec.compile(str(path), PIPELINE)
    reps = m.reports["dualize"]
    assert [r["block"] for r in reps] == [b.name for b in m.mip.blocks]
    json.dumps(reps)
    for r, b in zip(reps, m.mip.blocks):
        types = {m.graph.op(o).op_type for o in b.ops}
        assert bool(r.get("exact")) == (not {"Threshold", "MaxPool"} & types), (b.name, types)
        if r.get("exact"):
            assert r["reason"] == "continuous affine block: LP dual is exact"
        assert r["uncovered_rows"] == [] and [e["rows"] for e in r["rows"]] == [g.name for g in b.rows]
        assert r["unstable"] + r["stable"]["count"] == r["neurons"]
        keys = r.get("keys", [])
        thr = [k for k in keys if k["kind"] == "threshold"]
        pools = [k for k in keys if k["kind"] == "maxpool"]
        assert sum(k["neurons"] for k in thr) == r["unstable"]
        assert sum(k["neurons"] for k in pools) == r["pool_elements"]
        assert r["unique_keys"] == len(keys)
        # covers: every unstable neuron / pool output exactly once, with the rows that hold it
        seen: dict[str, list] = {}
        for k in keys:
            assert sum(len(c["elements"]) for c in k["covers"]) == k["neurons"]
            for c in k["covers"]:
                seen.setdefault(c["op"], []).extend(c["elements"])
                assert all(any(g.name == row and g.op == c["op"] for g in b.rows) for row in c["rows"])
        for op, els in seen.items():
            assert len(els) == len(set(els)), op
            if m.graph.op(op).op_type == "MaxPool":
                assert sorted(els) == list(range(len(els)))
                rows = {n.rsplit(":", 1)[-1] for k in pools for c in k["covers"] for n in c["rows"]}
                assert rows >= {"or-ge", "or-le"}
        for k in pools:
            _check_pool_key(k)
        for k in thr:
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
        if keys:
            assert r["summary"]["minorant"] and r["summary"]["strong_bb_share"] == 1.0
    assert {r.name: r.stats for r in m.history}["dualize"]["uncovered_rows"] == 0
    if path.stem == "cnn_sign":  # both MaxPools (layer1's and the head's) are dualized, not skipped
        assert [r["pool_elements"] for r in reps] == [0, 128, 64]


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


@pytest.fixture(scope="module")
def mlp_reports():
    """mlp_sign's dualize reports with the default executor (inline, 1 worker), as JSON text."""
    return json.dumps(tamec.compile(str(MODELS / "mlp_sign.onnx"), PIPELINE).reports["dualize"], sort_keys=True)


def test_workers_identical(mlp_reports):
    """1 worker (inline) and 2 worker processes give identical dualize reports."""
    two = tamec.compile(str(MODELS / "mlp_sign.onnx"), PIPELINE, workers=2, executor="processes").reports["dualize"]
    assert json.dumps(two, sort_keys=True) == mlp_reports


def test_dask_executor_matches_default(mlp_reports, tmp_path, capsys):
    """On an in-process Dask LocalCluster, the API (executor="dask://...") and the CLI
    (--executor dask://...) give the same certificates as the default executor."""
    distributed = pytest.importorskip("distributed")
    from tamec.cli import main

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        spec = "dask://" + cluster.scheduler_address
        m = tamec.compile(str(MODELS / "mlp_sign.onnx"), PIPELINE, executor=spec)
        assert json.dumps(m.reports["dualize"], sort_keys=True) == mlp_reports
        st = {r.name: r.stats for r in m.history}["dualize"]
        assert st["executor"] == "dask" and st["workers"] == 1
        out = tmp_path / "d"
        assert main(["compile", str(MODELS / "mlp_sign.onnx"), "--pipeline", PIPELINE, "--dump-dir", str(out),
                     "--executor", spec]) == 0
    certs = json.loads((out / "certificates.json").read_text())
    assert json.dumps([c["dualize"] for c in certs], sort_keys=True) == mlp_reports
    assert "dualize" in capsys.readouterr().out


def test_dask_executor_errors(monkeypatch):
    """An unreachable scheduler, a missing `distributed` and an empty address are UsageErrors that
    name the address and say what to do; the CLI prints one line and exits 2."""
    from tamec.cli import main
    from tamec.errors import UsageError

    path = str(MODELS / "sign_ties.onnx")
    with pytest.raises(UsageError) as e:
        tamec.compile(path, PIPELINE, executor="dask://127.0.0.1:9", dask_timeout=0.5)
    assert "tcp://127.0.0.1:9" in str(e.value) and "dask scheduler" in str(e.value)
    with pytest.raises(UsageError, match="names no scheduler"):
        tamec.compile(path, PIPELINE, executor="dask://")
    with pytest.raises(UsageError, match="use one of"):
        tamec.compile(path, PIPELINE, executor="cluster")
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    with pytest.raises(UsageError) as e:
        tamec.compile(path, PIPELINE, executor="dask://10.0.0.1:8786")
    assert "dask://10.0.0.1:8786" in str(e.value) and 'pip install "tamec[dask]"' in str(e.value)
    assert main(["compile", path, "--pipeline", PIPELINE, "--executor", "dask://10.0.0.1:8786"]) == 2


def _pool_model(low: float):
    """x[1,1,4,4] -> Where(x > 0.3, 1, low) -> MaxPool 3x3 stride 2 pad 1 -> Flatten -> MatMul:
    bipolar (low=-1) or bin01 (low=0) MaxPool windows of 4, 6 and 9 elements (padding)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {"t": np.array(0.3, np.float32), "one": np.array(1, np.float32), "lo": np.array(low, np.float32),
             "W": np.arange(12, dtype=np.float32).reshape(4, 3) / 10}
    nodes = [helper.make_node("Greater", ["x", "t"], ["gt"]), helper.make_node("Where", ["gt", "one", "lo"], ["h"]),
             helper.make_node("MaxPool", ["h"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])]
    g = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@pytest.mark.parametrize("low,enc", [(-1.0, "bipolar"), (0.0, "value")])
def test_maxpool_or_rows_dualized(low, enc):
    """A binary MaxPool's OR rows get certified lp and bb duals per window shape (4, 6, 9 elements;
    minorants decided by MILP), covering each output once; the duals pass the
    independent max oracle and the head is no longer called exact."""
    m = tamec.compile(_pool_model(low), PIPELINE)
    head = m.reports["dualize"][-1]
    assert not head.get("exact") and head["uncovered_rows"] == [] and head["pool_elements"] == 4
    keys = head["keys"]
    assert [(k["key"]["window"], k["key"]["encoding"], k["neurons"]) for k in keys] == \
        [(4, enc, 1), (6, enc, 2), (9, enc, 1)]
    assert sorted(j for k in keys for c in k["covers"] for j in c["elements"]) == [0, 1, 2, 3]
    assert all(sorted(c["rows"]) == ["MaxPool_2:or-ge", "MaxPool_2:or-le"] for k in keys for c in k["covers"])
    for k in keys:
        _check_pool_key(k)
    g = keys[0]["lp"]["+1"]  # a unique max routes the upstream gradient to its window element
    assert g["field"] == [2.0 if enc == "bipolar" else 1.0, 0.0, 0.0, 0.0]
    # the minorant is decided exactly (one MILP over all 512 window states), not on the sampled grid
    assert keys[2]["lp"]["+1"]["certificate"]["minorant"]["method"] == "milp"


def test_certificates_json_and_inspect_block(mlp_reports, tmp_path, capsys):
    """--dump-dir writes certificates.json (one entry per block, dualize and tame-check side by
    side); `inspect --block 1` prints the rows, dual pieces, the rows each key covers and the
    certificate; a MaxPool block prints its window keys; --block 99 exits 2 with one line."""
    from tamec.cli import main

    out = tmp_path / "d"
    assert main(["compile", str(MODELS / "mlp_sign.onnx"), "--pipeline", PIPELINE, "--dump-dir", str(out)]) == 0
    certs = json.loads((out / "certificates.json").read_text())
    assert json.dumps([c["dualize"] for c in certs], sort_keys=True) == mlp_reports
    assert all({"dualize", "tame-check"} <= set(c) for c in certs)
    capsys.readouterr()
    assert main(["inspect", str(out), "--block", "1"]) == 0
    stdout = capsys.readouterr().out
    name = certs[1]["block"]
    for word in (f"block {name}", "big-m-lo", "big-m-hi", "// dual functions", "lp g=+1", "bb g=-1", "piece(s)",
                 "rows big-m-hi,big-m-lo", "minorant True", "// certificate", "verdict nice"):
        assert word in stdout, word
    assert main(["inspect", str(out), "--block", "99"]) == 2
    r = capsys.readouterr()
    assert r.out == "" and len(r.err.strip().splitlines()) == 1 and "block 99" in r.err
    model = tmp_path / "pool.onnx"
    model.write_bytes(_pool_model(-1.0))
    assert main(["compile", str(model), "--pipeline", PIPELINE, "--dump-dir", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "p"), "--block", "head"]) == 0
    stdout = capsys.readouterr().out
    for word in ("key MaxPool window=4 encoding=bipolar (1 outputs; covers MaxPool_2 rows or-ge,or-le)",
                 "lp g=+1: 1 piece(s) at x_ref=[1.0, 0.0, 0.0, 0.0]: field [2.0, 0.0, 0.0, 0.0]", "strong True"):
        assert word in stdout, word
