"""The plan pass and the rules read from it: the runtime's field is the certified s-range dual's."""
from __future__ import annotations

import glob
import functools

import numpy as np
import pytest

import tamec
from tamec.dual.srange import SRangeDual, certify_srange, srange_dual
from tamec.errors import UsageError
from tamec.runtime import rules as R
from tamec.runtime.autograd import GradProgram, rule_certificates

PIPE = ["canonicalize", "binarize-weights", "fold-thresholds", "bounds", "partition", "lower-mip", "dualize",
        "tame-check", "plan"]
MODELS = sorted(glob.glob("models/*.onnx"))
RULES = ("lp-dual", "bb-dual:3", "lp-mid", "bb-mid:5")


@functools.lru_cache(maxsize=None)
def compiled(model: str):
    return tamec.compile(model, pipeline=PIPE)


def _samples(key: dict, rng) -> np.ndarray:
    """Pre-activations s = z - tau to probe: lattice points around the threshold and across the
    range (hidden layers), or random reals over [L - 1, U + 1] (a real pre-activation)."""
    L, U = key["L_minus_tau"], key["U_minus_tau"]
    lat = key["lattice"]
    if lat is None:
        return rng.uniform(L - 1, U + 1, 40)
    a, st = key["a_minus_tau"], lat["step"]
    ks = np.concatenate([np.arange(-6, 6), rng.integers(int((L - a) / st) - 2, int((U - a) / st) + 2, 20)])
    return a + ks * st


@pytest.mark.parametrize("model", MODELS)
def test_runtime_field_equals_certified_dual(model):
    """For every key of every bundled model, the runtime's backward at sampled pre-activations is
    F.field of the block's certified s-range dual (through the BN map to the folded z), per rule."""
    mod = compiled(model)
    prog = GradProgram.from_model(model, rule="bb-mid:5")
    prog.use_plan(mod)
    duals = {r["block"]: r for r in mod.reports["dualize"]}
    rng = np.random.default_rng(0)
    checked = 0
    for rule in RULES:
        prog.set_rule(rule)
        spec = R.parse_rule(rule)
        for t in prog.thresholds.values():
            block, th, alpha, beta = prog.plan_map[t.op.id]
            assert t.table is not None, f"{t.op.id}: no certified table"
            keys = duals[block["block"]]["keys"]
            key_of = np.asarray(th["key_of"])
            for k in np.unique(key_of[key_of >= 0]):
                j = int(np.flatnonzero(key_of == k)[0])  # one neuron per key: they share the dual
                kd = keys[int(k)]
                Fp = srange_dual(kd["key"], kd["problem"], 1.0, spec.leaf_depth)
                Fn = srange_dual(kd["key"], kd["problem"], -1.0, spec.leaf_depth)
                assert Fp.certificate["holds"] and Fn.certificate["holds"]
                s = _samples(kd["key"], rng)
                z = s + th["tau"][j]
                x = (alpha[j] * z + beta[j]).astype(np.float32)
                if kd["key"]["lattice"] is None:  # real pre-activation: the s the float32 x stands for
                    s = (x.astype(np.float64) - beta[j]) / alpha[j] - th["tau"][j]
                P = int(np.prod(t.sample_shape))
                for gv in (1.0, -0.5):
                    X = np.zeros((s.size, P), np.float32)
                    X[:, j] = x
                    G = np.zeros((s.size, P), np.float32)
                    G[:, j] = gv
                    got = R.table_backward(spec, X, G, t.table)[:, j]
                    fp = np.array([Fp.field(v) for v in s])
                    fn = np.array([Fn.field(v) for v in s])
                    ds = gv * (fp - fn) / 2 if spec.midpoint else (gv * fp if gv > 0 else -gv * fn)
                    np.testing.assert_allclose(got, (ds / alpha[j]).astype(np.float32), rtol=1e-5, atol=1e-12,
                                               err_msg=f"{model} {rule} {t.op.id} key {k}")
                    checked += s.size
    assert checked > 0


@pytest.mark.parametrize("model", MODELS)
def test_srange_depth0_is_the_lp_dual_of_the_block(model):
    """At depth 0 the s-range dual's field at each key's reference point is HiGHS's LP-dual slope
    of the certified block (the folded pre-activation with its lattice gap), for both signs."""
    mod = compiled(model)
    n = 0
    for r in mod.reports["dualize"]:
        for k in r.get("keys", []):
            if k.get("kind", "threshold") != "threshold":
                continue
            for tag, sign in (("+1", 1.0), ("-1", -1.0)):
                e = k["lp"][tag]
                F = srange_dual(k["key"], k["problem"], sign, 0)
                assert F.field(e["s_ref"]) == pytest.approx(e["field"], rel=1e-9, abs=1e-12), (model, k["key"])
                n += 1
    assert n > 0 or model.endswith(("cnn_sign.onnx",))


@pytest.mark.parametrize("model", ["models/digits_bnn.onnx", "models/mlp_sign.onnx", "models/sign_ties.onnx"])
def test_hidden_layer_rule_uses_folded_lattice_slope(model):
    """On hidden layers lp-dual applies HiGHS's LP-dual slope of the certified block (the folded
    integer pre-activation with its lattice gap, 2/(U' - b'), times dz/dx) at every unstable
    neuron; the closed form from the BN output's real range (the old rule) does not."""
    mod = compiled(model)
    prog = GradProgram.from_model(model, rule="lp-dual")
    prog.use_plan(mod)
    duals = {r["block"]: r for r in mod.reports["dualize"]}
    hits = olds = n = 0
    for t in prog.thresholds.values():
        block, th, alpha, beta = prog.plan_map[t.op.id]
        keys = duals[block["block"]]["keys"]
        P = int(np.prod(t.sample_shape))
        for j in np.flatnonzero(np.asarray(th["key_of"]) >= 0):
            key = keys[th["key_of"][j]]
            if key["key"]["lattice"] is None:
                continue  # the first layer: a real pre-activation
            want = key["lp"]["+1"]["field"]  # HiGHS's LP dual slope on the certified block
            z = key["lp"]["+1"]["s_ref"] + th["tau"][j]  # on the side where the LP has its gap
            x = np.zeros((1, P), np.float32)
            x[0, j] = alpha[j] * z + beta[j]
            g = np.zeros_like(x)
            g[0, j] = 1.0
            got = R.table_backward(prog.rule_spec, x, g, t.table)[0, j]
            old = R.backward(prog.rule_spec, x, g, t.tau, t.coef)[0, j]  # closed form from the BN bounds
            n += 1
            hits += bool(np.isclose(got, want / alpha[j], rtol=1e-5))
            olds += bool(np.isclose(old, want / alpha[j], rtol=1e-5))
    assert n > 0 and hits == n
    assert olds < n / 2, f"the closed form matched the certified slope at {olds} of {n} points"


def test_uncertified_block_is_refused_unless_a_heuristic_is_named():
    """A block without a valid certificate (here: never tame-checked) gets no dual rule: use_plan
    names the block; with fallback='ste-clip' that block trains with ste-clip and says so."""
    model = "models/mlp_sign.onnx"
    mod = tamec.compile(model, pipeline=[p for p in PIPE if p != "tame-check"])
    assert not any(b["certified"] for b in mod.reports["plan"]["blocks"])
    prog = GradProgram.from_model(model, rule="bb-mid:5")
    with pytest.raises(UsageError, match=r"block layer0 .*not tame-checked"):
        prog.use_plan(mod)
    prog.use_plan(mod, fallback="ste-clip")
    rows = rule_certificates(prog)
    assert rows and all(r["rule_source"].startswith("heuristic fallback ste-clip") and r["certificate"] is None
                        for r in rows)
    ref = GradProgram.from_model(model, rule="ste-clip")
    x = np.random.default_rng(1).random((5,) + prog.sample_shape).astype(np.float32)
    dy = np.random.default_rng(2).standard_normal((5, 10)).astype(np.float32)
    got, want = prog.vjp(x, dy)[2], ref.vjp(x, dy)[2]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(UsageError, match="dual rule"):
        prog.use_plan(mod, fallback="lp-dual")


def test_str_and_metrics_cite_the_certificate():
    """str(prog) and rule_certificates name, per threshold, the dualize certificate of its block."""
    model = "models/mlp_sign.onnx"
    prog = GradProgram.from_model(model, rule="bb-mid:5")
    assert "no plan read" in str(prog)
    prog.use_plan(compiled(model))
    text = str(prog)
    for r in rule_certificates(prog):
        assert r["certified"] and r["certificate"].startswith(f"dualize:{r['block']} s-range")
        assert r["certificate"] in text


def test_vjp_reads_the_plan_tables():
    """With a plan, vjp's input gradient is built from the certified tables: it equals the chain
    rule through the table kernel and differs from the closed-form rule on the hidden layer."""
    model = "models/digits_bnn.onnx"
    prog = GradProgram.from_model(model, rule="lp-dual")
    x = np.random.default_rng(3).random((16,) + prog.sample_shape).astype(np.float32)
    dy = np.random.default_rng(4).standard_normal((16, 10)).astype(np.float32)
    before = prog.vjp(x, dy)[2]
    prog.use_plan(compiled(model))
    after = prog.vjp(x, dy)[2]
    assert np.isfinite(after).all() and not np.allclose(before, after)


def test_srange_certificate_catches_a_piece_above_the_value_function():
    """certify_srange is exact: lifting one segment by 1e-3 above the step is a minorant failure."""
    key = {"L_minus_tau": -4.0, "U_minus_tau": 6.0, "a_minus_tau": 1.0, "b_minus_tau": -1.0,
           "lattice": {"origin": -5.0, "step": 2.0, "tau_on_lattice": False}, "tie": 0.0, "ternary": False}
    # one binary u (y = 2u - 1): s >= -4 (1 - u) + 1 u, s <= -1 (1 - u) + 6 u
    prob = {"A": [[5.0], [7.0]], "d0": [-4.0, 1.0], "e": [-1.0, 1.0], "lb": [0.0], "ub": [1.0], "cost": [2.0]}
    F = srange_dual(key, prob, 1.0, 0)
    assert F.certificate["holds"]
    assert F.field(3.0) == pytest.approx(2.0 / (6.0 - (-1.0)))  # 2/(U - b): the lattice gap
    assert F.field(-3.0) == 0.0 and F.field(7.0) == 0.0
    bad = SRangeDual(F.depth, F.cost, F.L, F.U, F.leaves,
                     [(s0, s1, v0 + (1e-3 if i == 1 else 0.0), k) for i, (s0, s1, v0, k) in enumerate(F.segments)],
                     F.vertices)
    cert = certify_srange(bad)
    assert not cert["minorant"]["holds"] and not cert["holds"]


@pytest.mark.parametrize("rule,pattern", [("bb-mid:5", None), ("lp-mid", None), ("bb-dual:3", 1.0),
                                          ("lp-dual", -1.0)])
def test_plan_field_is_conservative_on_its_surrogate(rule, pattern):
    """Along a path through every neuron's whole range, the integral of the plan rule's field
    (table_backward, unsnapped) equals the change of table_surrogate: the certified pieces are
    the field of that Lipschitz surrogate, on real and on lattice pre-activations."""
    model = "models/mlp_sign.onnx"
    prog = GradProgram.from_model(model, rule=rule)
    prog.use_plan(compiled(model))
    spec = R.parse_rule(rule)
    for t in prog.thresholds.values():
        block, th, alpha, beta = prog.plan_map[t.op.id]
        tab = t.table
        keys = block["keys"]
        key_of = np.asarray(th["key_of"])
        L = np.array([keys[k]["key"]["L_minus_tau"] if k >= 0 else -1.0 for k in key_of])
        U = np.array([keys[k]["key"]["U_minus_tau"] if k >= 0 else 1.0 for k in key_of])
        tau = np.asarray(th["tau"])
        x0, x1 = alpha * (L - 1 + tau) + beta, alpha * (U + 1 + tau) + beta
        ts = np.linspace(0.0, 1.0, 40001)
        X = (x0[None] + ts[:, None] * (x1 - x0)[None]).astype(np.float32)
        g = 1.0 if pattern is None else pattern
        G = np.full(X.shape, g, np.float32)
        field = R.table_backward(spec, X, G, tab, snap=False).astype(np.float64)
        mids = 0.5 * (field[1:] + field[:-1]) * np.diff(X.astype(np.float64), axis=0)
        integral = mids.sum(axis=0)
        top = np.where(alpha > 0, t.up, t.down)
        Y = R.table_surrogate(spec, X[[0, -1]], tab, top, pattern).astype(np.float64)
        change = g * (Y[1] - Y[0])
        live = key_of >= 0
        assert live.any()
        np.testing.assert_allclose(integral[live], change[live], atol=2e-3 * max(1.0, np.abs(change).max()))
        assert np.abs(change[live]).max() > 0.1  # the path crosses the threshold: not a vacuous check


def test_plan_is_plain_data_and_needs_dualize():
    """The plan report survives a JSON round trip unchanged (runtime-independent data), and the
    plan pass refuses a module that was not dualized, naming the passes to run."""
    import json

    from tamec.errors import PassError

    plan = compiled("models/sign_ties.onnx").reports["plan"]
    assert json.loads(json.dumps(plan)) == plan  # no tuple, no numpy scalar: exactly JSON data
    assert {b["block"] for b in plan["blocks"]} == {"layer0", "layer1", "head"}
    with pytest.raises(PassError, match="requires"):
        tamec.compile("models/sign_ties.onnx", pipeline=["canonicalize", "binarize-weights", "fold-thresholds",
                                                         "bounds", "partition", "lower-mip", "plan"])
