"""Training trains what it certifies, and the function it reports is the one whose field it follows.

- `tamec train` parses the model once and compiles it once; the bounds refresh is an analysis
  call (no pass re-run); the certificates of the trained weights are written next to the model.
- The default forward (`surrogate`) makes the training gradient the conservative field of the
  reported loss: loop integrals of <grad, d gamma> vanish and path integrals equal the change of the
  loss `loss_and_grads` reports, in input space and in the space of the real parameters (BatchNorm
  scale and shift, real weights), for every rule with a fixed surrogate (lp-mid, bb-mid:K; ste and
  ste-clip against their own identity / hardtanh surrogates), through the runtime and through the
  exported gradient graph (onnxruntime).
- The bounds the rules read hold for the pre-activations training evaluates.

Quadrature and tolerances as in tests/test_conservative.py (check_path).
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from onnx import helper

from tamec.export.grad import gradient_model
from tamec.runtime.autograd import GradProgram
from tests.helpers import model
from tests.test_conservative import check_path, far_apart, midpoints, piecewise_linear, smooth

FIELD_RULES = ["lp-mid", "bb-mid:1", "bb-mid:3", "ste", "ste-clip"]


def bn_net(widths, classes: int, seed: int, binary: bool = False, fitted: bool = True):
    """x -> [Gemm(W_k) -> BatchNorm -> Sign] per block -> Gemm(H, h) -> logits. `binary`: +-1
    weights (trained as latents); `fitted=False`: running statistics that do not fit the data
    (mean 0, standard deviation 8 x fan-in)."""
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], {}, "x"
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        w = rng.uniform(-1, 1, (b, a))
        inits[f"W{k}"] = (np.where(w >= 0, 1.0, -1.0) if binary else w).astype(np.float32)
        inits[f"g{k}"] = rng.uniform(0.5, 1.5, b).astype(np.float32)
        inits[f"B{k}"] = rng.normal(0, 0.3, b).astype(np.float32)
        # unfitted: statistics of another data scale (variance far above the batch's), so
        # eval-mode bounds are much narrower than batch-normalized values
        scale = 8.0 * a if not fitted else np.sqrt(a) * (0.5 if k == 0 else 1.0)
        inits[f"m{k}"] = (rng.normal(0, 0.2, b) * fitted).astype(np.float32)
        inits[f"v{k}"] = np.full(b, scale ** 2, np.float32)
        nodes += [helper.make_node("Gemm", [cur, f"W{k}"], [f"z{k}"], transB=1),
                  helper.make_node("BatchNormalization", [f"z{k}", f"g{k}", f"B{k}", f"m{k}", f"v{k}"], [f"n{k}"]),
                  helper.make_node("Sign", [f"n{k}"], [f"a{k}"])]
        cur = f"a{k}"
    inits["H"] = rng.uniform(-1, 1, (classes, widths[-1])).astype(np.float32)
    inits["h"] = rng.normal(0, 0.3, classes).astype(np.float32)
    nodes.append(helper.make_node("Gemm", [cur, "H", "h"], ["y"], transB=1))
    return model(nodes, [("x", ["N", widths[0]])], [("y", ["N", classes])], inits)


def reported(prog, x, labels, params=None):
    """(loss, param grads) as `tamec train` computes them in its default mode."""
    loss, grads, _ = prog.loss_and_grads(x, labels, params, train=False, surrogate=True)
    return loss, grads


def input_field(prog, x, labels):
    """Per-sample reported loss and its input gradient (BatchNorm in eval mode, as training runs
    it: the samples of a batch do not interact, so one batch computes them all)."""
    from tests.test_conservative import cross_entropy

    f, dl = cross_entropy(prog.forward(x, surrogate=True), labels)
    _, _, gx = prog.vjp(x, dl.astype(np.float32), surrogate=True)
    return f, gx.astype(np.float64)


def loop(rng, a, lo, hi, pieces=4):
    """A closed piecewise-linear loop a -> three random points -> a."""
    gamma = piecewise_linear(rng, a, a, lo, hi, pieces=pieces)
    return gamma


def check_loop(h, f0, f1, what):
    """A closed path: f(1) = f(0), the integral of the field must vanish (tolerance of check_path),
    and the loop must cross the kinks (the field varies along it) so a non-field would show."""
    dt = 1.0 / h.size
    integral = float(h.sum() * dt)
    tol = 2 * dt * float(np.abs(np.diff(h)).sum()) + 1e-4 * (1 + abs(f0) + abs(f1))
    assert abs(f1 - f0) <= 1e-6 * (1 + abs(f0)), f"{what}: not closed"
    assert abs(integral) <= tol, f"{what}: loop integral {integral:.4g}, tolerance {tol:.3g}"
    assert float(np.abs(h).sum() * dt) > 5 * tol, f"{what}: the field hardly moves along the loop"


def prog_for(rule, seed=5):
    return GradProgram.from_model(bn_net([6, 5, 4], 3, seed), rule=rule, input_bounds=(-1.0, 1.0))


@pytest.mark.parametrize("rule", FIELD_RULES)
def test_input_paths_and_loops_of_the_reported_loss(rule):
    """Input space: along random piecewise-linear and smooth paths the change of the loss that
    training reports equals the integral of the runtime's input gradient, and around random closed
    loops that integral is 0 (2 blocks with BatchNorm, softmax cross-entropy)."""
    prog = prog_for(rule)
    rng = np.random.default_rng(11)
    T = 20000
    for k in range(3):
        label = np.array([k % 3])
        cand = rng.uniform(-0.9, 0.9, (48, 6)).astype(np.float32)
        f_c, _ = input_field(prog, cand, np.repeat(label, 48))
        a, b = far_apart(f_c, cand.astype(np.float64))
        for closed, gamma in ((False, (piecewise_linear if k % 2 == 0 else smooth)(rng, a, b)),
                              (True, loop(rng, a, -1.0, 1.0))):
            ends = gamma(np.array([0.0, 1.0]))[0].astype(np.float32)
            fe, _ = input_field(prog, ends, np.repeat(label, 2))
            xs, dxs = gamma(midpoints(T))
            _, gx = input_field(prog, xs.astype(np.float32), np.repeat(label, T))
            h = np.sum(gx * dxs, axis=1)
            if closed:
                check_loop(h, fe[0], fe[1], f"{rule} input loop {k}")
            else:
                check_path(fe[0], fe[1], h, f"{rule} input path {k}")


def _ort_field(m, prog, x, labels):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    def run(params):
        feeds = {prog.input_name: x, "labels": labels.astype(np.int64), **{k: v.astype(np.float32)
                                                                       for k, v in params.items()}}
        out = dict(zip(names, sess.run(None, feeds)))
        return float(out["loss"]), {k: out[f"grad_{k}"] for k in params}
    return run


@pytest.mark.parametrize("rule", FIELD_RULES)
@pytest.mark.parametrize("engine", ["runtime", "export-grad"])
def test_weight_paths_and_loops_of_the_reported_loss(rule, engine):
    """Weight space (BatchNorm scales and shifts of both blocks, moved together): path integrals of the parameter gradient equal the change of the reported
    batch loss and loops integrate to 0, with the runtime's loss_and_grads and with the exported
    gradient graph (`tamec export-grad --forward surrogate`) run by onnxruntime; the two agree."""
    prog = prog_for(rule, seed=7)
    rng = np.random.default_rng(12)
    x = rng.uniform(-1, 1, (16, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 16)
    names = ["g0", "B0", "g1", "B1"]
    shapes = [prog.params[n].shape for n in names]
    sizes = [int(np.prod(s)) for s in shapes]
    base = {n: prog.params[n].copy() for n in names}
    ort_run = _ort_field(gradient_model(prog, surrogate=True), prog, x, labels) if engine == "export-grad" else None

    def unpack(theta):
        out, i = {}, 0
        for n, s, k in zip(names, shapes, sizes):
            out[n] = theta[i:i + k].reshape(s).astype(np.float32)
            i += k
        return out

    def f_and_grad(theta):
        p = unpack(theta)
        if ort_run is None:
            loss, grads = reported(prog, x, labels, p)
        else:
            loss, grads = ort_run({**prog.params, **p})
        return loss, np.concatenate([np.asarray(grads[n], np.float64).reshape(-1) for n in names])

    theta0 = np.concatenate([base[n].reshape(-1) for n in names]).astype(np.float64)
    if ort_run is not None:  # the exported graph computes the runtime's loss and field
        lr, gr = reported(prog, x, labels)
        lo, go = ort_run(prog.params)
        assert abs(lr - lo) <= 1e-5 * (1 + abs(lr))
        for n in names:
            np.testing.assert_allclose(go[n], gr[n], rtol=1e-4, atol=1e-5)
    cand = theta0 + rng.normal(0, 0.6, (24, theta0.size))
    a, b = far_apart([f_and_grad(t)[0] for t in cand], cand)
    T = 4000
    for closed, gamma in ((False, smooth(rng, a, b, amp=0.4)), (True, loop(rng, a, -2.0, 2.0))):
        if closed:  # a loop around a, through points near the current parameters
            pts = np.vstack([a, a + rng.normal(0, 0.6, (3, a.size)), a])

            def gamma(t, pts=pts):
                k = np.minimum((t * 4).astype(int), 3)
                u = (t * 4 - k)[:, None]
                return (1 - u) * pts[k] + u * pts[k + 1], (pts[k + 1] - pts[k]) * 4
        ps, dps = gamma(midpoints(T))
        h = np.array([f_and_grad(p)[1] @ dp for p, dp in zip(ps, dps)])
        ends = gamma(np.array([0.0, 1.0]))[0]
        f0, f1 = f_and_grad(ends[0])[0], f_and_grad(ends[1])[0]
        if closed:
            check_loop(h, f0, f1, f"{rule} {engine} weight loop")
        else:
            check_path(f0, f1, h, f"{rule} {engine} weight path")


def test_sign_heuristic_is_not_the_field_of_its_reported_loss():
    """The sign-forward mode (bb-mid:3, --forward sign-heuristic) fails the same weight-space path
    test: its reported loss is the sign network's, whose BatchNorm-shift field is 0 almost everywhere,
    while the rule's gradient is not (the test above can fail)."""
    prog = prog_for("bb-mid:3", seed=7)
    rng = np.random.default_rng(13)
    x = rng.uniform(-1, 1, (16, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 16)
    shape = prog.params["B0"].shape
    a = prog.params["B0"].astype(np.float64) - 1.0
    b = prog.params["B0"].astype(np.float64) + 1.0
    T = 1500
    ts = midpoints(T)
    h = []
    for t in ts:
        p = {"B0": ((1 - t) * a + t * b).reshape(shape).astype(np.float32)}
        _, grads, _ = prog.loss_and_grads(x, labels, p, train=False)
        h.append(float(grads["B0"].astype(np.float64) @ (b - a)))
    f0 = prog.loss_and_grads(x, labels, {"B0": a.astype(np.float32)}, train=False)[0]
    f1 = prog.loss_and_grads(x, labels, {"B0": b.astype(np.float32)}, train=False)[0]
    err, tol, _ = check_path(f0, f1, np.array(h), "sign-heuristic", expect_pass=False)
    assert err > 3 * tol


# -- tamec train: one parse, one compile, certificates, metrics, bounds --------------------------------

def _tiny_digits_model(tmp_path):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(bn_net([64, 12, 10], 10, seed=3, binary=True, fitted=False).SerializeToString())
    return str(path)


def test_train_parses_once_compiles_once_and_writes_certificates(tmp_path, monkeypatch):
    """A `tamec train` run (full compile) reads the ONNX file once, imports it once, runs each
    compiler pass at most twice (the compile before training; binarize-weights .. tame-check once
    more on the trained weights for the final certificates) and the bounds refresh never runs a
    pass; certificates.json is written next to model.onnx and cited in metrics.json, which reports
    per epoch the surrogate loss, the BNN's loss and accuracy and their gap."""
    import onnx

    import tamec.frontend.onnx as fe
    from tamec.passes.base import Pass
    from tamec.runtime.train import TrainConfig, train

    counts = {"onnx.load": 0, "import": 0}
    passes: dict[str, int] = {}
    real_load, real_import, real_run = onnx.load, fe.import_onnx, Pass.run

    def load(*a, **k):
        counts["onnx.load"] += 1
        return real_load(*a, **k)

    def imp(*a, **k):
        counts["import"] += 1
        return real_import(*a, **k)

    def run(self, *a, **k):
        passes[self.name] = passes.get(self.name, 0) + 1
        return real_run(self, *a, **k)

    monkeypatch.setattr(onnx, "load", load)
    monkeypatch.setattr(onnx, "load_model", load)
    monkeypatch.setattr(fe, "import_onnx", imp)
    monkeypatch.setattr(Pass, "run", run)
    res = train(TrainConfig(model=_tiny_digits_model(tmp_path), epochs=2, batch=64), out=tmp_path / "run",
                progress=False, stdout=io.StringIO(), full_compile=True)
    assert counts == {"onnx.load": 1, "import": 1}
    assert passes["canonicalize"] == 1
    assert passes["bounds"] == passes["dualize"] == passes["tame-check"] == 2  # before training, final weights
    certs = json.loads((tmp_path / "run" / "certificates.json").read_text())
    assert certs and all("dualize" in c and "tame-check" in c for c in certs)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["files"]["certificates"] == str(tmp_path / "run" / "certificates.json")
    assert metrics["config"]["forward_mode"] == "surrogate"
    for h in metrics["epochs"]:
        assert h["surrogate_bnn_gap"] == pytest.approx(h["surrogate_train_loss"] - h["bnn_train_loss"])
        assert 0 <= h["bnn_train_accuracy"] <= 1 and h["train_accuracy"] == h["bnn_train_accuracy"]
    assert metrics["test_accuracy"] == metrics["epochs"][-1]["test_accuracy"] == res.test_accuracy
    assert metrics["onnxruntime_agrees"]


def test_training_pre_activations_lie_in_the_bounds_the_rule_reads(tmp_path, monkeypatch):
    """On a model with unfitted running statistics, every pre-activation the first training step of
    each epoch evaluates lies in the [L, U] the rule reads at that step (the bounds are computed
    from the BatchNorm statistics training uses), none outside."""
    from tamec.runtime.train import TrainConfig, train

    seen = []
    real = GradProgram.loss_and_grads

    def spy(self, x, labels, params=None, train=False, surrogate=None):
        env, _ = self._run(x, params, train, surrogate)
        if self.state_slots and hasattr(self, "_spy_epoch_start"):
            for t in self.thresholds.values():
                s = np.asarray(env[self._slot[t.op.inputs[0]]], np.float64).reshape(len(x), -1)
                seen.append(float(np.mean((s < t.lo) | (s > t.hi))))
        return real(self, x, labels, params, train, **({"surrogate": surrogate} if surrogate is not None else {}))

    real_refresh = GradProgram.refresh_bounds

    def refresh(self, params=None):
        real_refresh(self, params)
        self._spy_epoch_start = True  # the next step runs at the params of these bounds

    def first_only(self, *a, **k):
        out = spy(self, *a, **k)
        if hasattr(self, "_spy_epoch_start"):
            del self._spy_epoch_start
        return out

    monkeypatch.setattr(GradProgram, "refresh_bounds", refresh)
    monkeypatch.setattr(GradProgram, "loss_and_grads", first_only)
    train(TrainConfig(model=_tiny_digits_model(tmp_path), epochs=2, batch=64), out=tmp_path / "run",
          progress=False, stdout=io.StringIO(), full_compile=False)
    assert len(seen) >= 2 and max(seen) == 0.0, seen
