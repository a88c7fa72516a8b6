"""Training-mode MIP and `fit-mip`: the MIP is exact (its optimum is the best network, checked
against the network run in numpy and against enumeration of every weight assignment), the fitted
ONNX model runs identically in onnxruntime and tamec.Session, and the command's user errors exit 2."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from tamec.errors import UsageError
from tamec.lower.training import binarize_inputs, decode_weights, encode_solution, forward, hinge, lower_training
from tamec.solve import solve
from tests.conftest import MODELS

pytest.importorskip("sklearn")


def _solve_optimal(arch, x, y, **kw):
    mod, layout = lower_training(arch, x, y, **kw)
    milp = mod.assemble()
    sol = solve(milp, time_limit=60)
    assert sol.status == "optimal", sol.message
    return milp, layout, sol


def _hard_data(arch, n, seed, repeats=2):
    """+-1 data whose last `repeats` inputs repeat the first ones under other labels, so no
    network reaches zero loss."""
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 1.0], (n, arch[0]))
    y = rng.integers(0, arch[-1], n)
    for k in range(repeats):
        x[n - 1 - k], y[n - 1 - k] = x[k], (y[k] + 1) % arch[-1]
    return x, y


# small enough that HiGHS proves optimality in about a second each
@pytest.mark.parametrize("arch,weights,loss,margin,n,repeats,seed", [
    ([6, 3, 2], "binary", "max", 3.0, 6, 2, 5), ([6, 3, 2], "binary", "sum", 1.0, 6, 2, 5),
    ([4, 2, 2, 2], "binary", "max", 2.0, 5, 2, 6), ([6, 3, 2], "ternary", "max", 2.0, 6, 2, 10),
    ([4, 2, 2, 3], "ternary", "max", 2.0, 4, 1, 0)])
def test_training_mip_optimum_is_the_networks_loss(arch, weights, loss, margin, n, repeats, seed):
    """The optimal weights the MIP returns, run as a network in numpy, have exactly the MIP's
    objective as hinge loss, and the MIP's activations and scores are the network's."""
    x, y = _hard_data(arch, n, seed, repeats)
    milp, layout, sol = _solve_optimal(arch, x, y, weights=weights, loss=loss, margin=margin)
    params = decode_weights(layout, milp, sol.x)
    hidden, scores = forward(params, x)
    assert sol.objective > 0.5  # the repeated inputs force a loss: the check is not 0 == 0
    assert hinge(scores, y, margin, loss).sum() == pytest.approx(sol.objective, abs=1e-5)
    for g, h in zip(layout.act_groups, hidden):
        assert np.array_equal(2 * np.rint(sol.x[milp.col("train", g)]).reshape(h.shape) - 1, h)
    assert np.allclose(sol.x[milp.col("train", "score")].reshape(scores.shape), scores, atol=1e-5)
    for W, _ in params:
        assert set(np.unique(W)) <= ({-1, 1} if weights == "binary" else {-1, 0, 1})


@pytest.mark.parametrize("arch,weights,loss", [([6, 4, 3], "binary", "max"), ([5, 4, 3, 3], "binary", "sum"),
                                               ([5, 4, 3, 3], "ternary", "max"), ([5, 4, 3, 3], "ternary", "sum")])
def test_every_network_is_feasible_with_its_own_loss(arch, weights, loss):
    """The other half of exactness: any weights and thresholds, with the activations they
    compute, are a feasible MIP point whose objective is the network's hinge loss."""
    rng = np.random.default_rng(len(arch))
    x, y = rng.uniform(0, 1, (7, arch[0])), rng.integers(0, arch[-1], 7)
    mod, layout = lower_training(arch, x, y, weights=weights, loss=loss, margin=2.0, symmetry_breaking=False)
    milp = mod.assemble()
    vals = [-1, 1] if weights == "binary" else [-1, 0, 1]
    for trial in range(5):
        params = [(rng.choice(vals, (arch[l + 1], arch[l])),
                   rng.integers(-arch[l], arch[l] + 2, arch[l + 1]) if l < len(arch) - 2 else None)
                  for l in range(len(arch) - 1)]
        p = encode_solution(layout, milp, params)
        Ap = milp.A @ p
        assert np.all(Ap >= milp.lo - 1e-9) and np.all(Ap <= milp.hi + 1e-9)
        assert np.all(p >= milp.lb) and np.all(p <= milp.ub)
        assert milp.c @ p == pytest.approx(hinge(forward(params, x)[1], y, 2.0, loss).sum())
        for (W, tau), (W2, tau2) in zip(params, decode_weights(layout, milp, p)):
            assert np.array_equal(W, W2) and (tau is None or np.array_equal(tau, tau2))


def _enumerate_optimum(x, y, margin, loss, weights, penalty, hidden=2, classes=2):
    """min over every weight matrix and every tau in [-K, K+1] of the loss of a [3, hidden, classes]
    net, computed independently of tamec: distinct hidden patterns first, then the output layer."""
    xb = np.where(x >= 0.5, 1, -1)
    K = xb.shape[1]
    vals = (-1, 1) if weights == "binary" else (-1, 0, 1)
    W1s = np.array(list(itertools.product(vals, repeat=hidden * K))).reshape(-1, hidden, K)
    W2s = np.array(list(itertools.product(vals, repeat=classes * hidden))).reshape(-1, classes, hidden)
    taus = np.array(list(itertools.product(range(-K, K + 2), repeat=hidden)))
    z = np.einsum("ek,whk->weh", xb, W1s)                                   # (W1, E, hidden)
    H = np.where(z[:, None] >= taus[None, :, None, :], 1, -1)               # (W1, tau, E, hidden)
    cost1 = penalty * np.abs(W1s).sum((1, 2))
    best_hidden = {}                                                        # pattern -> cheapest W1
    for w in range(len(W1s)):
        for pat in {H[w, t].tobytes() for t in range(len(taus))}:
            best_hidden[pat] = min(best_hidden.get(pat, np.inf), cost1[w])
    ar = np.arange(len(y))
    best = np.inf
    for pat, c1 in best_hidden.items():
        h = np.frombuffer(pat, dtype=H.dtype).reshape(len(y), hidden)
        s = np.einsum("eh,wch->wec", h, W2s).astype(float)                  # (W2, E, classes)
        viol = margin - (s[:, ar, y][:, :, None] - s)
        viol[:, ar, y] = -np.inf
        per = np.maximum(0, viol.max(2)) if loss == "max" else np.maximum(0, viol).sum(2)
        best = min(best, c1 + (per.sum(1) + penalty * np.abs(W2s).sum((1, 2))).min())
    return best


# the ternary cases with the weight-count term tell tau >= 1 (exact symmetry breaking) from tau >= 2
@pytest.mark.parametrize("seed,margin,loss,weights,penalty,sym,repeat", [
    (0, 5.0, "max", "binary", 0.0, True, False), (4, 5.0, "max", "binary", 0.0, False, False),
    (4, 3.0, "sum", "binary", 0.0, True, True), (0, 3.0, "max", "ternary", 0.25, True, False),
    (0, 3.0, "max", "ternary", 0.25, False, False), (4, 3.0, "sum", "ternary", 0.0, True, True)])
def test_training_mip_equals_enumeration(seed, margin, loss, weights, penalty, sym, repeat):
    """On a [3, 2, 2] net and 3 examples the MIP optimum equals the optimum over every weight and
    threshold assignment (so the formulation, symmetry breaking included, loses no network)."""
    rng = np.random.default_rng(seed)
    x = rng.choice([0.0, 0.5, 1.0], (3, 3))  # 0.5 is the input tie: it binarizes to +1
    y = np.array([0, 1, rng.integers(0, 2)])
    if repeat:
        x[2], y[2] = x[0], 1
    _, _, sol = _solve_optimal([3, 2, 2], x, y, margin=margin, loss=loss, weights=weights,
                               weight_penalty=penalty, symmetry_breaking=sym)
    best = _enumerate_optimum(x, y, margin, loss, weights, penalty)
    assert best > 1  # a margin no network reaches everywhere: the optimum is not a trivial 0
    assert sol.objective == pytest.approx(best, abs=1e-5)


def test_lowering_structure_and_errors():
    """Groups, roles and big-M provenance are as documented; bad arguments are UsageErrors."""
    x, y = _hard_data([6, 4, 3], 5, 0)
    mod, layout = lower_training([6, 4, 3], x, y)
    (b,) = mod.blocks
    assert b.mode == "training" and [g.name for g in b.vars if g.role == "weight"] == ["W1", "tau1", "W2"]
    assert b.group("W1").encoding == "bipolar" and b.group("xnor2").shape == (5, 3, 4)
    bigm = [r for r in b.rows if r.kind == "big-m"]
    assert {r.big_m for r in bigm} == {"fan-in"} and all(r.m.max() <= 2 * 6 + 1 for r in bigm)
    assert np.array_equal(binarize_inputs(np.array([0.0, 0.49, 0.5, 1.0, -1.0])), [-1, -1, 1, 1, -1])
    for kw in ({"arch": [6]}, {"arch": [6, 4, 1]}, {"arch": [5, 4, 3]}, {"weights": "real"},
               {"weight_penalty": 0.1}, {"loss": "mse"}, {"y": np.array([0, 1, 2, 3, 0])}):
        args = {"arch": [6, 4, 3], "x": x, "y": y} | kw
        with pytest.raises(UsageError):
            lower_training(args.pop("arch"), args.pop("x"), args.pop("y"), **args)


def test_to_onnx_runs_identically_with_ties():
    """The exported ONNX graph computes the numpy network in onnxruntime and tamec.Session,
    including the ties (pixel exactly 0.5, pre-activation exactly tau) that go to +1."""
    from tamec.drivers.fit import run_both, to_onnx

    rng = np.random.default_rng(0)
    x = rng.choice([0.0, 0.5, 1.0, 0.25], (40, 64)).astype(np.float32)
    W1, W2, W3 = (rng.choice([-1, 1], s) for s in ((12, 64), (8, 12), (10, 8)))
    z1 = binarize_inputs(x) @ W1.T
    tau1 = z1[0]  # example 0 ties on every first-layer neuron
    h1 = np.where(z1 >= tau1, 1, -1)
    tau2 = (h1 @ W2.T)[1]
    params = [(W1, tau1), (W2, tau2), (W3, None)]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        path.write_bytes(to_onnx(params).SerializeToString())
        logits = run_both(str(path), x)
    assert np.array_equal(logits, forward(params, x)[1])


def test_arch_from_model():
    """A plain MLP gives its layer widths; a CNN is refused with a UsageError naming its ops."""
    from tamec.drivers.fit import arch_from_model

    assert arch_from_model(MODELS / "mlp_sign.onnx") == [64, 64, 64, 10]
    with pytest.raises(UsageError, match="not a plain MLP.*Conv"):
        arch_from_model(MODELS / "cnn_sign.onnx")


def test_missing_sklearn_is_a_usage_error(monkeypatch):
    """Without scikit-learn the data loader says how to install it."""
    from tamec.drivers.fit import load_data

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(UsageError, match="pip install scikit-learn"):
        load_data("digits")


def test_fit_mip_end_to_end(tmp_path):
    """fit_mip writes model.onnx (run identically by onnxruntime and tamec.Session, with the
    accuracies it reports) and report.json; its architecture reads back from the file."""
    import onnxruntime as ort

    import tamec
    from tamec.drivers.fit import arch_from_model, fit_mip, load_data

    rep = fit_mip([64, 16, 10], per_class=2, time_limit=20, out_dir=tmp_path)
    assert rep.solved, rep.notes  # HiGHS finds an incumbent in well under 20 s here
    model = tmp_path / "model.onnx"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mip"]["status"] in ("optimal", "limit") and report["arch"] == [64, 16, 10]
    for key in ("objective", "bound", "gap", "nodes", "seconds", "train_acc", "test_acc"):
        assert key in report["mip"]
    assert report["per_class"] == 2 and report["seed"] == 0 and report["examples"]["train"] == 20
    assert 0 <= report["gradient"]["train_acc"] <= 1 and 0 <= report["gradient"]["test_acc"] <= 1
    assert report["mip"]["objective_recomputed"] == pytest.approx(report["mip"]["objective"], abs=1e-6)
    _, xte, _, yte = load_data()
    (ref,) = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": xte})
    (got,) = tamec.Session(str(model)).run(None, {"x": xte})
    assert np.array_equal(ref.argmax(1), got.argmax(1)) and np.array_equal(ref, got)
    assert report["mip"]["test_acc"] == pytest.approx(float(np.mean(ref.argmax(1) == yte)))
    params = [(np.array(w["W"]), None if w["tau"] is None else np.array(w["tau"])) for w in report["mip"]["weights"]]
    assert np.array_equal(forward(params, xte)[1], ref)
    assert arch_from_model(model) == [64, 16, 10]


def test_cli_fit_mip_smoke(tmp_path):
    """`tamec fit-mip` prints the comparison table and the output path and writes its files."""
    out = tmp_path / "fit"
    r = subprocess.run([sys.executable, "-m", "tamec", "fit-mip", "--arch", "64-8-10", "--per-class", "1",
                        "--time-limit", "5", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for word in ("method", "train acc", "test acc", "solver status", "gap", "mip (HiGHS, from gradient)",
                 "gradient (STE)",
                 str(out / "report.json")):
        assert word in r.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["arch"] == [64, 8, 10] and report["examples"]["train"] == 10
    assert (out / "model.onnx").exists() == (report["mip"]["train_acc"] is not None)


@pytest.mark.parametrize("args,words", [
    (["--per-class", "0"], "per-class 0"),
    (["--arch", "64"], "single layer"),
    (["--arch", "64-16-3"], "does not fit digits"),
    (["--time-limit", "-1"], "time limit"),
    (["--data", "mnist"], "unknown dataset"),
    ([str(MODELS / "cnn_sign.onnx")], "not a plain MLP"),
    ([str(MODELS / "mlp_sign.onnx"), "--arch", "64-16-10"], "disagrees"),
])
def test_cli_fit_mip_bad_input(args, words, tmp_path, capsys):
    """User errors exit 2 with one line on stderr, before any solving."""
    from tamec.cli import main

    assert main(["fit-mip", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tamec: error:") and words in err and "\n" not in err


def test_cli_fit_mip_unwritable_out(tmp_path, capsys):
    """An --out that cannot be created (below a regular file) exits 2 with one line."""
    from tamec.cli import main

    (tmp_path / "file").write_text("")
    assert main(["fit-mip", "--per-class", "1", "--out", str(tmp_path / "file" / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tamec: error: cannot write") and "\n" not in err


def test_no_incumbent_is_reported_not_raised(tmp_path, monkeypatch, capsys):
    """When the solver returns no point within the limit, fit-mip exits 0, writes no model and
    says so, and the report carries the solver status."""
    import tamec.solve
    from tamec.cli import main

    def no_point(milp, **kw):
        return tamec.solve.Solution("limit", None, None, 0.0, None, 0, "Time limit reached", kw["time_limit"])

    monkeypatch.setattr(tamec.solve, "solve", no_point)
    assert main(["fit-mip", "--arch", "64-4-10", "--per-class", "1", "--time-limit", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no solution within the time limit" in out and "model:" not in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mip"]["status"] == "limit" and report["mip"]["train_acc"] is None and report["model_path"] is None
    assert not (tmp_path / "model.onnx").exists() and report["gradient"]["train_acc"] is not None
