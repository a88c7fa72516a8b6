"""Proof by tests that the dual rules are conservative fields, and that the heuristics are not.

The Lipschitz surrogates. Each activation threshold y = sign(s) is the MIP block of DESIGN.md with
proven bounds [L, U] of s; its LP relaxation leaves u in [u_min(s), u_max(s)] = [max(0, s/U),
min(1, 1 - s/L)] (on the depth-K branch-and-bound leaf: L/2^K, U/2^K).

lp-dual / bb-dual:K. With upstream gradient g the relaxed value is v_g(s) = min{2 g u : u in the
interval} (the lower dual bound). The surrogate network replaces every sign by the relaxed primal
u*(s) that attains v (y = -1 + 2u*); u* depends on the sign of g, so the networks below are built
so that the sign of g is constant: the last threshold feeds a fixed linear loss <c, y> (c of fixed
sign per neuron for one block, of one sign for all neurons for deeper chains) and every weight
after the first layer is nonnegative, so g = W^T (u*' * g_next) keeps the sign of c everywhere
(u*' >= 0).

lp-mid / bb-mid:K. The rule is the derivative of the mean of the lower and upper dual bounds,
c (u_min + u_max) / 2: the surrogate replaces every sign by the centre of its relaxed interval,
y = -1 + (u_min(s) + u_max(s)), a FIXED function of s. So these tests need no sign restriction:
random weights of both signs everywhere, a real head, and a nonlinear loss (per-sample softmax
cross-entropy).

In both cases the surrogate f is a fixed composition of Lipschitz piecewise-linear (and, for the
cross-entropy, smooth) maps, and the runtime (its forward switched to the surrogate by
`GradProgram.vjp(..., surrogate=...)`, its backward unchanged) must return a conservative field
of f: for every absolutely continuous path gamma,
    f(gamma(1)) - f(gamma(0)) = integral_0^1 <v(gamma(t)), gamma'(t)> dt.

Quadrature and tolerance: midpoint rule with T cells of width dt = 1/T. On a cell the midpoint
rule errs by at most dt * (oscillation of h = <v, gamma'> on the cell); summed over the cells
that is at most dt * TV(h). h is piecewise constant (piecewise-linear paths in input space) or
piecewise smooth, so its variation shows up between neighbouring samples and the sampled total
variation estimates TV(h); the test allows 2 * dt * TV_sampled(h) plus 1e-4 (1 + |f|) for float32
arithmetic (relative rounding ~1e-7 per op, f of order 1-10). This is small against |f(1) - f(0)|
on the chosen paths, which the tests check, so an error by a factor (a rule scaled by 2) fails.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tamec.runtime import rules as R
from tamec.runtime.autograd import GradProgram
from tests.helpers import model

DUAL_RULES = ["lp-dual", "bb-dual:1", "bb-dual:2"]
MID_RULES = ["lp-mid", "bb-mid:1", "bb-mid:3"]


def sign_net(widths, seed: int, sign: float = 1.0):
    """x[N, w0] -> [Gemm(W_k, b_k) -> Sign] per layer; W_0 of any sign, W_k >= 0 for k >= 1.

    The surrogate of a unit with c > 0 outputs -1 on most of its range (u* = clip(s/U, 0, 1)), with
    c < 0 it outputs +1 on most of it; biases b_k = 0.75 * sign * (row sums of W_k) for k >= 1 put
    the next pre-activations near their thresholds, so that f changes along the paths."""
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], {}, "x"
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        w = rng.uniform(-1, 1, (b, a)) if k == 0 else rng.uniform(0.2, 1.0, (b, a))
        bias = rng.normal(0, 0.3, b) + (0.75 * sign * w.sum(axis=1) if k else 0)
        inits[f"W{k}"], inits[f"b{k}"] = w.astype(np.float32), bias.astype(np.float32)
        nodes += [helper.make_node("Gemm", [cur, f"W{k}", f"b{k}"], [f"z{k}"], transB=1),
                  helper.make_node("Sign", [f"z{k}"], [f"a{k}" if k < len(widths) - 2 else "y"])]
        cur = f"a{k}"
    return model(nodes, [("x", ["N", widths[0]])], [("y", ["N", widths[-1]])], inits)


def net(widths, seed, rule, sign=1.0):
    prog = GradProgram.from_model(sign_net(widths, seed, sign), rule=rule, input_bounds=(-1.0, 1.0))
    assert len(prog.thresholds) == len(widths) - 1
    return prog


def patterns(prog, c):
    """The fixed sign of c = d g per threshold (d = 2 > 0): sign(c) at the last, the common sign
    of c before it (nonnegative weights carry it back)."""
    ids = list(prog.thresholds)
    last = np.sign(c).astype(np.float64)
    common = float(np.sign(c.sum()))
    return {i: (last if i == ids[-1] else common) for i in ids}


def surrogate(prog, x, c, params=None, rule_scale=None):
    """(f per sample, grad wrt x, grads wrt params) of f = <c, y> on the surrogate network."""
    y, grads, gx = prog.vjp(x, np.broadcast_to(c, (x.shape[0], c.size)), params=params, surrogate=patterns(prog, c))
    return (y.astype(np.float64) @ c), gx, grads


# -- paths -------------------------------------------------------------------------------------------

def piecewise_linear(rng, a, b, lo=-1.0, hi=1.0, pieces=3):
    """a -> two random waypoints -> b, at constant speed per piece."""
    pts = np.vstack([a, rng.uniform(lo, hi, (pieces - 1, a.size)), b])

    def gamma(t):
        k = np.minimum((t * pieces).astype(int), pieces - 1)
        u = (t * pieces - k)[:, None]
        return (1 - u) * pts[k] + u * pts[k + 1], (pts[k + 1] - pts[k]) * pieces
    return gamma


def smooth(rng, a, b, amp=0.3):
    """a -> b along a line bent by sines (their sum vanishes at both ends)."""
    d, e = rng.uniform(-1, 1, (2, a.size))
    w = rng.integers(1, 3, a.size)

    def gamma(t):
        t = t[:, None]
        x = a + (b - a) * t + amp * np.sin(np.pi * w * t) * d + amp * np.sin(np.pi * t) ** 2 * e
        dx = (b - a) + amp * np.pi * w * np.cos(np.pi * w * t) * d + amp * 2 * np.pi * np.sin(
            np.pi * t) * np.cos(np.pi * t) * e
        return x, dx
    return gamma


def midpoints(T):
    return (np.arange(T) + 0.5) / T


def check_path(f0, f1, h, what: str, expect_pass: bool = True):
    """Compare f(1) - f(0) with the midpoint sum of h; returns (error, tolerance, |delta f|)."""
    dt = 1.0 / h.size
    integral = float(h.sum() * dt)
    tol = 2 * dt * float(np.abs(np.diff(h)).sum()) + 1e-4 * (1 + abs(f0) + abs(f1))
    err = abs((f1 - f0) - integral)
    if expect_pass:
        assert err <= tol, f"{what}: f(1)-f(0) = {f1 - f0:.6g}, integral {integral:.6g}, tolerance {tol:.3g}"
        # sensitivity: a field off by a factor 2 would miss by |f(1) - f(0)|, several tolerances
        assert abs(f1 - f0) > 3 * tol, f"{what}: f changes by {f1 - f0:.3g} only (tolerance {tol:.3g})"
    return err, tol, abs(f1 - f0)


def far_apart(f_values, candidates):
    """The two candidates with the smallest and the largest f: path ends with a large f(1) - f(0)."""
    return candidates[int(np.argmin(f_values))], candidates[int(np.argmax(f_values))]


def input_path_error(prog, c, gamma, T=20000):
    ends, _ = gamma(np.array([0.0, 1.0]))
    f0, f1 = surrogate(prog, ends.astype(np.float32), c)[0]
    xs, dxs = gamma(midpoints(T))
    _, gx, _ = surrogate(prog, xs.astype(np.float32), c)
    return f0, f1, np.sum(gx.astype(np.float64) * dxs, axis=1)


def input_paths(prog, c, rng, n, count=4):
    """Alternately piecewise-linear and smooth paths between inputs far apart in f."""
    out = []
    for k in range(count):
        cand = rng.uniform(-0.9, 0.9, (64, n))
        a, b = far_apart(surrogate(prog, cand.astype(np.float32), c)[0], cand)
        out.append((piecewise_linear if k % 2 == 0 else smooth)(rng, a, b))
    return out


@pytest.mark.parametrize("rule", DUAL_RULES)
@pytest.mark.parametrize("widths,cs", [([6, 5], [1.0, -0.5, 2.0, -1.5, 0.7]),  # one block: c of mixed sign
                                       ([6, 5, 4], [1.0, 0.5, 2.0, 0.3]),     # chain through 2 blocks
                                       ([6, 5, 4, 3], [-1.0, -0.4, -2.0])])   # chain through 3 blocks
def test_input_paths(rule, widths, cs):
    """Input space: for piecewise-linear and smooth random paths, f(gamma(1)) - f(gamma(0)) equals
    the path integral of the runtime's field on the surrogate, through 1, 2 and 3 blocks."""
    c = np.array(cs)
    prog = net(widths, seed=len(widths), rule=rule, sign=float(np.sign(c.sum())))
    rng = np.random.default_rng(10 + len(widths))
    for k, gamma in enumerate(input_paths(prog, c, rng, widths[0])):
        check_path(*input_path_error(prog, c, gamma), f"{rule} {widths} path {k}")


@pytest.mark.parametrize("rule", DUAL_RULES)
@pytest.mark.parametrize("which", ["W0", "b0", "W1"])
def test_weight_paths(rule, which):
    """Weight space: paths of the first layer's weights and bias and (kept nonnegative) the second
    layer's weights; the field is the runtime's parameter gradient on a fixed batch, 2 blocks."""
    widths = [6, 5, 4]
    prog = net(widths, seed=21, rule=rule)
    c = np.array([1.0, 0.5, 2.0, 0.3])
    rng = np.random.default_rng(22)
    x = rng.uniform(-1, 1, (4, widths[0])).astype(np.float32)
    shape = prog.params[which].shape

    def f_and_grad(theta):
        f, _, grads = surrogate(prog, x, c, params={which: theta.reshape(shape).astype(np.float32)})
        return f.sum(), grads[which].astype(np.float64).reshape(-1)

    lo, hi = (0.2, 1.2) if which == "W1" else (-1.5, 1.5)  # W1 stays >= 0: the sign of g stays fixed
    cand = rng.uniform(lo, hi, (24, int(np.prod(shape))))
    a, b = far_apart([f_and_grad(t)[0] for t in cand], cand)
    if which == "W1":  # bent by a sine that keeps every entry >= 0.2 - 0.15 > 0
        d = rng.uniform(-1, 1, a.size)

        def gamma(t):
            t = t[:, None]
            return a + (b - a) * t + 0.15 * np.sin(np.pi * t) * d, (b - a) + 0.15 * np.pi * np.cos(np.pi * t) * d
    else:
        gamma = (piecewise_linear(rng, a, b, lo, hi) if which == "W0" else smooth(rng, a, b))
    T = 2000
    pts, dpts = gamma(midpoints(T))
    h = np.array([f_and_grad(p)[1] @ dp for p, dp in zip(pts, dpts)])
    ends = gamma(np.array([0.0, 1.0]))[0]
    check_path(f_and_grad(ends[0])[0], f_and_grad(ends[1])[0], h, f"{rule} {which}")


@pytest.mark.parametrize("rule", DUAL_RULES)
def test_finite_differences(rule):
    """At random points where the surrogate is differentiable (the field is the same at x - h e,
    x and x + h e), central differences of f along a random e equal <v(x), e>, in input space and
    in weight space (float32 f, h = 1e-2: tolerance 1e-3 (1 + |<v, e>|))."""
    widths = [6, 5, 4, 3]
    prog = net(widths, seed=31, rule=rule)
    c = np.array([0.8, 1.3, 0.4])
    rng = np.random.default_rng(32)
    hstep = 1e-2
    x = rng.uniform(-1, 1, (400, widths[0]))
    e = rng.normal(size=x.shape)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    f, g, _ = surrogate(prog, x.astype(np.float32), c)
    fp, gp, _ = surrogate(prog, (x + hstep * e).astype(np.float32), c)
    fm, gm, _ = surrogate(prog, (x - hstep * e).astype(np.float32), c)
    smooth_here = np.all(np.isclose(gp, g, atol=1e-6) & np.isclose(gm, g, atol=1e-6), axis=1)
    assert smooth_here.sum() >= 50
    fd = (fp - fm) / (2 * hstep)
    dd = np.sum(g.astype(np.float64) * e, axis=1)
    assert np.any(np.abs(dd[smooth_here]) > 0.1), "no point with a nonzero field: the test is weak"
    np.testing.assert_allclose(fd[smooth_here], dd[smooth_here], atol=1e-3, rtol=1e-3)
    xb = rng.uniform(-1, 1, (8, widths[0])).astype(np.float32)
    checked = 0
    for _ in range(60):
        theta = rng.uniform(-1, 1, prog.params["W0"].shape)
        d = rng.normal(size=theta.shape)
        d /= np.linalg.norm(d)
        vals = [surrogate(prog, xb, c, params={"W0": (theta + s * hstep * d).astype(np.float32)}) for s in (-1, 0, 1)]
        gw = [v[2]["W0"].astype(np.float64) for v in vals]
        if not (np.allclose(gw[0], gw[1], atol=1e-6) and np.allclose(gw[2], gw[1], atol=1e-6)):
            continue
        checked += 1
        fd = (vals[2][0].sum() - vals[0][0].sum()) / (2 * hstep)
        assert fd == pytest.approx(float(np.sum(gw[1] * d)), abs=1e-3 * (1 + abs(float(np.sum(gw[1] * d)))))
    assert checked >= 10


def test_wrong_rule_fails_the_path_test():
    """The path test can fail: lp-dual with its slopes doubled (a field off by a factor) misses
    f(1) - f(0) by far more than the tolerance, on the same paths the right rule passes."""
    widths = [6, 5, 4]
    prog = net(widths, seed=3, rule="lp-dual")
    c = np.array([1.0, 0.5, 2.0, 0.3])
    rng = np.random.default_rng(41)
    gammas = input_paths(prog, c, rng, widths[0], count=2)
    for gamma in gammas:
        check_path(*input_path_error(prog, c, gamma), "lp-dual")
    for t in prog.thresholds.values():
        t.coef = dict(t.coef, kneg=2 * t.coef["kneg"], kpos=2 * t.coef["kpos"])
    for gamma in gammas:
        err, tol, df = check_path(*input_path_error(prog, c, gamma), "lp-dual x2", expect_pass=False)
        assert err > 10 * tol, f"the doubled rule passed: error {err:.3g}, tolerance {tol:.3g}"


@pytest.mark.parametrize("rule", ["ste", "ste-clip"])
def test_heuristics_are_not_fields_of_the_sign_network(rule):
    """ste and ste-clip FAIL the path test on the sign network: its f = <c, y> is piecewise
    constant, so on a path that crosses no threshold f(1) - f(0) = 0 exactly, while the integral
    of the STE field along it is far from 0. They are heuristics, not conservative fields of the
    sign network. (The sign network has no conservative field at all, its value jumps; the dual
    rules are fields of the Lipschitz surrogate, checked above, and make no claim about it.)"""
    widths = [6, 5, 4]
    prog = net(widths, seed=51, rule=rule, sign=0.0)
    c = np.array([1.0, 0.5, 2.0, 0.3])
    rng = np.random.default_rng(52)
    values = prog.forward(rng.uniform(-1, 1, (500, widths[0])).astype(np.float32)) @ c
    assert np.unique(values).size >= 5, "f is not piecewise constant with several pieces: a weak test"
    T = 2000
    found = 0
    for _ in range(200):
        x0 = rng.uniform(-0.5, 0.5, widths[0])
        _, _, gx = prog.vjp(x0[None].astype(np.float32), c[None])
        if np.linalg.norm(gx) < 1e-3:
            continue
        delta = 0.05 * gx[0] / np.linalg.norm(gx[0])  # along the STE field: the integral is 0.05 |v|
        ts = midpoints(T)
        xs = (x0 + ts[:, None] * delta).astype(np.float32)
        y, _, g = prog.vjp(xs, np.broadcast_to(c, (T, c.size)))
        ends = prog.forward(np.stack([x0, x0 + delta]).astype(np.float32)) @ c
        if not np.all(y == y[0]):
            continue  # the path crosses a threshold: pick another
        found += 1
        integral = float(np.sum(g.astype(np.float64) @ delta) / T)
        assert ends[1] - ends[0] == 0.0
        assert abs(integral) > 1e-2, f"{rule}: integral {integral:.3g} on a path where f is constant"
        if found == 3:
            break
    assert found == 3


# -- lp-mid and bb-mid:K: a fixed surrogate, so no sign restriction -----------------------------------

def mixed_net(widths, classes: int, seed: int):
    """x[N, w0] -> [Gemm(W_k, b_k) -> Sign] per block -> Gemm(H, h) -> logits, every weight of both
    signs (uniform in [-1, 1], the head in [-2, 2])."""
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], {}, "x"
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        inits[f"W{k}"] = rng.uniform(-1, 1, (b, a)).astype(np.float32)
        inits[f"b{k}"] = rng.normal(0, 0.3, b).astype(np.float32)
        nodes += [helper.make_node("Gemm", [cur, f"W{k}", f"b{k}"], [f"z{k}"], transB=1),
                  helper.make_node("Sign", [f"z{k}"], [f"a{k}"])]
        cur = f"a{k}"
    inits["H"] = rng.uniform(-2, 2, (classes, widths[-1])).astype(np.float32)
    inits["h"] = rng.normal(0, 0.3, classes).astype(np.float32)
    nodes.append(helper.make_node("Gemm", [cur, "H", "h"], ["y"], transB=1))
    return model(nodes, [("x", ["N", widths[0]])], [("y", ["N", classes])], inits)


def mid_net(widths, seed, rule, classes=3):
    prog = GradProgram.from_model(mixed_net(widths, classes, seed), rule=rule, input_bounds=(-1.0, 1.0))
    assert len(prog.thresholds) == len(widths) - 1
    return prog


def cross_entropy(logits, labels):
    """Per-sample softmax cross-entropy (float64) and its gradient w.r.t. the logits."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    rows = np.arange(len(z))
    p = np.exp(z - lse[:, None])
    p[rows, labels] -= 1.0
    return lse - z[rows, labels], p


def surrogate_ce(prog, x, labels, params=None):
    """(f per sample, grad wrt x, grads wrt params) of the per-sample cross-entropy of the surrogate
    network's logits (the parameter grads are those of the sum over the batch)."""
    f, dlogits = cross_entropy(prog.forward(x, params, surrogate=True), labels)
    _, grads, gx = prog.vjp(x, dlogits.astype(np.float32), params=params, surrogate=True)
    return f, gx, grads


def reference(prog, x, params=None):
    """The midpoint surrogate computed directly in float64 from the weights and the rule's leaf
    bounds (not the runtime's tape): logits, and the linear piece of every neuron (-3 below the
    leaf, -1 in [L_K, 0), 0 at 0, 1 in (0, U_K], 3 above), concatenated per sample."""
    p = {k: np.asarray(v, np.float64) for k, v in dict(prog.params, **(params or {})).items()}
    h, pieces = np.asarray(x, np.float64), []
    for k, t in enumerate(prog.thresholds.values()):
        s = h @ p[f"W{k}"].T + p[f"b{k}"] - t.tau
        LK, UK = t.coef["LK"], t.coef["UK"]
        pieces.append(np.sign(s) + 2 * (s > UK) - 2 * (s < LK))
        h = t.down + t.d * R.centre_u(s, LK, UK)
    return h @ p["H"].T + p["h"], np.concatenate(pieces, axis=1)


def mid_input_path(prog, label, gamma, T=20000):
    ends, _ = gamma(np.array([0.0, 1.0]))
    f0, f1 = surrogate_ce(prog, ends.astype(np.float32), np.repeat(label, 2))[0]
    xs, dxs = gamma(midpoints(T))
    _, gx, _ = surrogate_ce(prog, xs.astype(np.float32), np.repeat(label, T))
    return f0, f1, np.sum(gx.astype(np.float64) * dxs, axis=1)


def mid_input_paths(prog, rng, n, count=4):
    """(label, path) pairs: alternately piecewise-linear and smooth paths between inputs far apart
    in the cross-entropy of that label."""
    out = []
    for k in range(count):
        label = np.array([k % 3])
        cand = rng.uniform(-0.9, 0.9, (64, n))
        a, b = far_apart(surrogate_ce(prog, cand.astype(np.float32), np.repeat(label, 64))[0], cand)
        out.append((label, (piecewise_linear if k % 2 == 0 else smooth)(rng, a, b)))
    return out


@pytest.mark.parametrize("rule", MID_RULES)
@pytest.mark.parametrize("widths", [[6, 5], [6, 5, 4], [6, 5, 4, 3]])
def test_mid_input_paths(rule, widths):
    """lp-mid / bb-mid:K with weights of both signs and softmax cross-entropy: for piecewise-linear
    and smooth random input paths, f(gamma(1)) - f(gamma(0)) equals the path integral of the
    runtime's field on the surrogate, through 1, 2 and 3 blocks. The runtime's surrogate forward is
    the direct float64 computation."""
    prog = mid_net(widths, seed=70 + len(widths), rule=rule)
    rng = np.random.default_rng(71 + len(widths))
    probe = rng.uniform(-1, 1, (64, widths[0])).astype(np.float32)
    np.testing.assert_allclose(prog.forward(probe, surrogate=True), reference(prog, probe)[0], atol=1e-5)
    for k, (label, gamma) in enumerate(mid_input_paths(prog, rng, widths[0])):
        check_path(*mid_input_path(prog, label, gamma), f"{rule} {widths} path {k}")


@pytest.mark.parametrize("rule", ["lp-mid", "bb-mid:2"])
@pytest.mark.parametrize("which", ["W0", "W1", "b1"])
def test_mid_weight_paths(rule, which):
    """Weight space, no sign restriction: paths of the first and second layers' weights and the
    second bias through values of both signs; the field is the runtime's parameter gradient of the
    summed cross-entropy of a fixed batch, 2 blocks and a real head."""
    prog = mid_net([6, 5, 4], seed=81, rule=rule)
    rng = np.random.default_rng(82)
    x = rng.uniform(-1, 1, (8, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 8)
    shape = prog.params[which].shape

    def f_and_grad(theta):
        f, _, grads = surrogate_ce(prog, x, labels, params={which: theta.reshape(shape).astype(np.float32)})
        return f.sum(), grads[which].astype(np.float64).reshape(-1)

    cand = rng.uniform(-1.5, 1.5, (24, int(np.prod(shape))))
    a, b = far_apart([f_and_grad(t)[0] for t in cand], cand)
    gamma = smooth(rng, a, b) if which == "b1" else piecewise_linear(rng, a, b, -1.5, 1.5)
    T = 2000
    pts, dpts = gamma(midpoints(T))
    h = np.array([f_and_grad(p)[1] @ dp for p, dp in zip(pts, dpts)])
    ends = gamma(np.array([0.0, 1.0]))[0]
    check_path(f_and_grad(ends[0])[0], f_and_grad(ends[1])[0], h, f"{rule} {which}")


@pytest.mark.parametrize("rule", ["lp-mid", "bb-mid:3"])
def test_mid_finite_differences(rule):
    """Where the surrogate is differentiable (every neuron in the same linear piece at x - h e, x and
    x + h e, read off the direct float64 computation), central differences of the per-sample
    cross-entropy along a random e equal <v(x), e> of the runtime, in input space and in weight
    space (3 blocks, weights of both signs; h = 1e-4 on float64 f: tolerance 1e-3 (1 + |<v, e>|))."""
    prog = mid_net([6, 5, 4, 3], seed=91, rule=rule)
    rng = np.random.default_rng(92)
    hstep = 1e-4
    x = rng.uniform(-1, 1, (400, 6))
    labels = rng.integers(0, 3, len(x))
    e = rng.normal(size=x.shape)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    (lp, pp), (l0, p0), (lm, pm) = (reference(prog, x + k * hstep * e) for k in (1, 0, -1))
    same = np.all((pp == p0) & (pm == p0), axis=1)
    assert same.sum() >= 50
    fd = (cross_entropy(lp, labels)[0] - cross_entropy(lm, labels)[0]) / (2 * hstep)
    _, gx, _ = surrogate_ce(prog, x.astype(np.float32), labels)
    dd = np.sum(gx.astype(np.float64) * e, axis=1)
    assert np.abs(dd[same]).max() > 0.1, "no point with a nonzero field: the test is weak"
    np.testing.assert_allclose(fd[same], dd[same], atol=1e-3, rtol=1e-3)
    xb, yb = x[:8], labels[:8]
    checked = 0
    for _ in range(60):
        theta = rng.uniform(-1, 1, prog.params["W1"].shape)
        d = rng.normal(size=theta.shape)
        d /= np.linalg.norm(d)
        refs = [reference(prog, xb, {"W1": theta + k * hstep * d}) for k in (1, 0, -1)]
        if not (np.array_equal(refs[0][1], refs[1][1]) and np.array_equal(refs[2][1], refs[1][1])):
            continue
        checked += 1
        fd = (cross_entropy(refs[0][0], yb)[0].sum() - cross_entropy(refs[2][0], yb)[0].sum()) / (2 * hstep)
        gw = surrogate_ce(prog, xb.astype(np.float32), yb, params={"W1": theta.astype(np.float32)})[2]["W1"]
        want = float(np.sum(gw.astype(np.float64) * d))
        assert fd == pytest.approx(want, abs=1e-3 * (1 + abs(want)))
    assert checked >= 10


def test_mid_wrong_rule_fails_the_path_test():
    """The midpoint path test can fail: bb-mid:2 without the 1/2 (the slopes of u_min + u_max instead
    of their mean) misses f(1) - f(0) by far more than the tolerance, on the same paths (2 blocks,
    cross-entropy) that the right rule passes."""
    prog = mid_net([6, 5, 4], seed=101, rule="bb-mid:2")
    paths = mid_input_paths(prog, np.random.default_rng(102), 6, count=2)
    for label, gamma in paths:
        check_path(*mid_input_path(prog, label, gamma), "bb-mid:2")
    for t in prog.thresholds.values():
        t.coef = dict(t.coef, kneg=2 * t.coef["kneg"], kpos=2 * t.coef["kpos"], kmid=2 * t.coef["kmid"])
    for label, gamma in paths:
        err, tol, df = check_path(*mid_input_path(prog, label, gamma), "bb-mid:2 x2", expect_pass=False)
        assert err > 10 * tol, f"the doubled rule passed: error {err:.3g}, tolerance {tol:.3g}"


# -- the one-dimensional rules ---------------------------------------------------------------------

def test_leaf_bounds_numbers():
    """bb-dual:K leaf bounds: L/2^K, U/2^K; on a lattice rounded outward and never narrower than the
    lattice points next to the threshold."""
    L, U = np.array([-7.0]), np.array([9.0])
    def lb(*args):
        return [float(v[0]) for v in R.leaf_bounds(*args)]

    assert lb(L, U, 2) == [-1.75, 2.25]
    lat = (np.array([-7.0]), np.array([2.0]))  # s in {-7, -5, ..., 9}: odd values
    assert lb(L, U, 1, lat) == [-5.0, 5.0]
    assert lb(L, U, 6, lat) == [-1.0, 1.0]
    lat0 = (np.array([-6.0]), np.array([2.0]))  # s in {-6, ..., 8}: 0 is a tie point
    assert lb(np.array([-6.0]), np.array([8.0]), 9, lat0) == [-2.0, 2.0]


@pytest.mark.parametrize("rule", ["lp-dual", "bb-dual:1", "bb-dual:2", "bb-dual:3", "lp-mid", "bb-mid:2"])
def test_rule_is_derivative_of_its_value(rule):
    """In one dimension the kernel's dloss/ds is the derivative of its value v(s) (c u*(s) for the
    lp/bb-dual rules, c (u_min + u_max) / 2 for the midpoint rules; central differences away from
    the kinks) and integrates exactly to v(b) - v(a), for both signs of g and flipped units (d = -2)."""
    spec = R.parse_rule(rule)
    rng = np.random.default_rng(61)
    P = 40
    L, U = -rng.uniform(0.5, 8, P), rng.uniform(0.5, 8, P)
    d = np.where(np.arange(P) % 3 == 0, -2.0, 2.0)
    g = np.where(np.arange(P) % 2 == 0, 1.3, -0.7)
    co = R.coefficients(spec, L, U, d)
    T = 40000
    s = np.linspace(-9, 9, T + 1)
    mid = (s[:-1] + s[1:]) / 2
    x = np.ascontiguousarray(np.broadcast_to(mid[:, None], (T, P)), np.float32)
    v = R.backward(spec, x, np.ascontiguousarray(np.broadcast_to(g, (T, P)), np.float32), np.zeros(P), co)
    vals = R.surrogate_value(spec, s[:, None], g, L, U, d)
    ds = s[1] - s[0]
    tol = 2 * ds * np.abs(np.diff(v.astype(np.float64), axis=0)).sum(0) + 1e-5  # as check_path
    assert np.all(np.abs(v.astype(np.float64).sum(0) * ds - (vals[-1] - vals[0])) <= tol)
    h = 1e-4
    fd = (R.surrogate_value(spec, mid[:, None] + h, g, L, U, d) - R.surrogate_value(spec, mid[:, None] - h, g, L, U, d)) / (2 * h)
    kinks = np.concatenate([co["LK"], co["UK"], np.zeros(P)])
    away = np.min(np.abs(mid[:, None] - kinks[None, :]), axis=1) > 2 * h
    np.testing.assert_allclose(v[away], fd[away], atol=1e-4)


def test_bb_values_tighten_to_the_step():
    """v_0 <= v_1 <= v_2 <= ... <= the exact block value c u(s) (u = [s > 0]); away from s = 0 the
    gap closes as K grows: the limit is the step the tame-check reports (no field exists there)."""
    L, U, d = np.array([-6.0]), np.array([4.0]), np.array([2.0])
    s = np.linspace(-6, 4, 2001)[:, None]
    for g in (1.0, -1.0):
        exact = 2 * g * (s > 0)
        prev = None
        for K in range(8):
            v = R.surrogate_value(R.Rule("bb-dual", K), s, g, L, U, d)
            assert np.all(v <= exact + 1e-12)
            if prev is not None:
                assert np.all(v >= prev - 1e-12)
            prev = v
        far = np.abs(s[:, 0]) > 0.1
        assert np.max(np.abs(prev - exact)[far]) < 0.05 < np.max(np.abs(R.surrogate_value(R.Rule("lp-dual"), s, g, L, U, d) - exact)[far])


@pytest.mark.parametrize("K", [0, 2, 5])
def test_mid_value_is_the_mean_of_the_dual_bounds(K):
    """lp-mid / bb-mid:K's value is the mean of the block's lower dual bound min_u c u (the lp-dual /
    bb-dual:K value) and its upper dual bound max_u c u = -min_u (-c) u; divided by g it is one
    function of s for both signs of g (a fixed surrogate)."""
    mid, dual = (R.Rule("lp-mid"), R.Rule("lp-dual")) if K == 0 else (R.Rule("bb-mid", K), R.Rule("bb-dual", K))
    L, U, d = np.array([-6.0, -3.0]), np.array([10.0, 2.0]), np.array([2.0, -2.0])
    s = np.linspace(-7, 11, 3001)[:, None]
    for g in (1.3, -0.7):
        lower = R.surrogate_value(dual, s, g, L, U, d)
        upper = -R.surrogate_value(dual, s, -g, L, U, d)
        assert np.all(lower <= upper + 1e-12) and np.any(upper - lower > 0.1)
        np.testing.assert_allclose(R.surrogate_value(mid, s, g, L, U, d), (lower + upper) / 2, atol=1e-12)
        np.testing.assert_allclose(R.surrogate_value(mid, s, g, L, U, d) / g, R.surrogate_value(mid, s, 1.0, L, U, d))


def test_mid_kernel_numbers():
    """bb-mid:2 with L = -6, U = 10, d = 2: leaf [-1.5, 2.5], slopes d/(2 |L_K|) = 2/3 left of 0 and
    d/(2 U_K) = 0.4 right of it, 0 outside the leaf, their mean 8/15 at s = 0; the upstream g
    scales it whatever its sign."""
    rule = R.parse_rule("bb-mid:2")
    co = R.coefficients(rule, np.array([-6.0]), np.array([10.0]), np.array([2.0]))
    s = np.array([[-2.0], [-1.5], [-0.3], [0.0], [0.7], [2.5], [3.0]], np.float32)
    want = np.array([0.0, 2 / 3, 2 / 3, 8 / 15, 0.4, 0.4, 0.0])
    for g in (1.0, -2.0):
        got = R.backward(rule, s, np.full_like(s, g), np.zeros(1), co)
        np.testing.assert_allclose(got[:, 0], g * want, rtol=1e-6)
