"""Training-mode MIP of a fully connected BNN: weights and thresholds are variables, data fixed.

The network (sizes `arch = [n0, n1, ..., nL]`, `W_l` of shape (n_l, n_{l-1})):

    h_0 = binarize(x)                       x in [0, 1]: +1 where x >= 0.5 else -1 (sign(x - 0.5)
                                            with +1 at the tie); +-1 data pass through unchanged
    z_l = W_l h_{l-1}                       integer, in [-n_{l-1}, n_{l-1}]
    h_l = +1 if z_l >= tau_l else -1        hidden layers l < L, integer tau_l, ties go to +1
    s   = W_L h_{L-1}                       integer class scores, no bias

Weights are bipolar (`w = 2b - 1`, b binary) or, with `weights="ternary"`, `w = p - n` with
binary p, n and `p + n <= 1`. The formulation (Toro Icarte et al. 2019; Thorbjarnarson & Yorke-
Smith 2021): one copy of the activations per training example, all sharing the weight variables,

- first layer: the input is data, so `z_1 = sum_j x_j (2 b_ij - 1)` is linear in the weight bits;
- later layers: each product of a weight and an activation bit is linearized exactly. Bipolar:
  `w h = 2 q - 1` with `q = XNOR(b, u) = 1 - (b xor u)`, from the four rows
  `q >= b + u - 1, q >= 1 - b - u, q <= 1 + b - u, q <= 1 - b + u` (q continuous in [0, 1]: the
  rows leave it exactly one value at binary b, u). Ternary: `w h = 2 (p AND u) - p - 2 (n AND u)
  + n` with the three standard AND rows each;
- sign activations: `h = 2u - 1` with big-M rows `z - tau >= -M_on (1 - u)` and
  `z - tau <= -1 + M_off u`, the Ms from the fan-in K and the tau range [t_lo, t_hi]
  (`M_on = K + t_hi`, `M_off = K - t_lo + 1`, both at most 2K + 1). z and tau are integers, so
  `z < tau <=> z - tau <= -1` exactly: u = 1 iff z >= tau (ties to +1), with no tolerance gap;
- objective: the multiclass hinge, `min sum_e xi_e`, `xi_e >= margin - (s_{e,y_e} - s_{e,c})`
  for every c != y_e, `xi_e >= 0` (`loss="max"`, one slack per example as in Toro Icarte et al.;
  `loss="sum"` gives every (e, c) pair its own slack: the Weston-Watkins sum of hinges); plus
  `weight_penalty * (number of nonzero weights)` for ternary weights (for bipolar weights that
  count is constant and the option is refused).

tau ranges over [-K, K + 1] (K the fan-in): -K makes a neuron constant +1, K + 1 constant -1.
With `symmetry_breaking` (default) two exact symmetries of hidden neurons are cut: negating a
neuron's incoming weights and outgoing column and replacing tau by 1 - tau computes the same
function (h = +1 iff z >= tau becomes -h = +1 iff -z >= 1 - tau), so tau >= 1 loses nothing;
and hidden neurons can be permuted, so tau is ordered non-decreasingly within a layer.

Variable groups of the one block "train" (mode "training"), examples in C order:

    W{l}            binary (n_l, n_{l-1}), role weight, encoding bipolar   (bipolar weights)
    W{l}+, W{l}-    binary (n_l, n_{l-1}), role weight, encoding pos/neg   (ternary weights)
    tau{l}          integer (n_l,), role weight                            (hidden layers)
    z{l}            continuous (E, n_l), the pre-activation                (hidden layers)
    h{l}            binary (E, n_l), encoding bipolar                      (hidden layers)
    xnor{l}         continuous (E, n_l, n_{l-1}), XNOR(b, u)               (l >= 2, bipolar)
    and{l}+, and{l}- continuous (E, n_l, n_{l-1}), p AND u, n AND u        (l >= 2, ternary)
    score           continuous (E, n_L), role output
    slack           continuous (E,) (loss "max") or (E * (n_L - 1),) (loss "sum", pairs
                    (e, c != y_e) in C order), the hinge slacks xi
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tamec.errors import UsageError
from tamec.ir.mip import Block, Milp, MipModule, VarGroup, verify_mip

BLOCK = "train"


@dataclass
class TrainingLayout:
    """Which variable groups of the training block are which, and the data it was built on."""

    arch: list[int]
    weights: str
    x: np.ndarray            # (E, n0) the binarized inputs, int64 +-1
    y: np.ndarray            # (E,) labels
    margin: float
    weight_groups: list[tuple[str, ...]]   # per layer: ("W1",) or ("W1+", "W1-")
    tau_groups: list[str]                  # per hidden layer
    act_groups: list[str]                  # per hidden layer
    score_group: str = "score"
    slack_group: str = "slack"
    block: str = BLOCK
    loss: str = "max"

    @property
    def examples(self) -> int:
        return int(self.x.shape[0])


def binarize_inputs(x: np.ndarray) -> np.ndarray:
    """sign(x - 0.5) with +1 at the tie, as int64: [0, 1] data to +-1; +-1 data unchanged."""
    return np.where(np.asarray(x, np.float64) >= 0.5, 1, -1).astype(np.int64)


def forward(params: list[tuple[np.ndarray, np.ndarray | None]], x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Run the network of `params` (as `decode_weights` returns) on x: (hidden activations, scores)."""
    h = binarize_inputs(x)
    hidden = []
    for W, tau in params[:-1]:
        h = np.where(h @ np.asarray(W, np.int64).T >= np.asarray(tau)[None, :], 1, -1).astype(np.int64)
        hidden.append(h)
    return hidden, h @ np.asarray(params[-1][0], np.int64).T


def hinge(scores: np.ndarray, y: np.ndarray, margin: float = 1.0, loss: str = "max") -> np.ndarray:
    """Per-example multiclass hinge, the MIP's slacks: max(0, max_{c != y} margin - (s_y - s_c))
    for loss "max"; the sum over c != y of max(0, margin - (s_y - s_c)) for loss "sum"."""
    s = np.asarray(scores, np.float64)
    ar = np.arange(s.shape[0])
    viol = margin - (s[ar, y][:, None] - s)
    viol[ar, y] = -np.inf
    return np.maximum(0.0, viol.max(1)) if loss == "max" else np.maximum(0.0, viol).sum(1)


def _check(arch, x, y, margin, weights, weight_penalty, loss) -> tuple[list[int], np.ndarray, np.ndarray]:
    try:
        arch = [int(a) for a in arch]
    except (TypeError, ValueError):
        raise UsageError(f"architecture {arch!r} is not a list of layer widths", hint="e.g. [64, 16, 10]") from None
    if len(arch) < 2 or min(arch) < 1:
        raise UsageError(f"architecture {arch} needs an input width and at least one layer of positive widths",
                         hint="e.g. [64, 16, 10]")
    if arch[-1] < 2:
        raise UsageError(f"architecture {arch} has {arch[-1]} output class", hint="a classifier needs >= 2 outputs")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[1] != arch[0] or x.shape[0] < 1:
        raise UsageError(f"data of shape {list(x.shape)} for input width {arch[0]}",
                         hint="pass x as (examples, features)")
    if not np.all(np.isfinite(x)):
        raise UsageError("data hold NaN or infinite values")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= arch[-1]:
        raise UsageError(f"labels must be integers in [0, {arch[-1]}) for each of the {x.shape[0]} examples")
    if weights not in ("binary", "ternary"):
        raise UsageError(f"weights {weights!r}", hint="use 'binary' or 'ternary'")
    if not np.isfinite(margin) or margin < 0:
        raise UsageError(f"margin {margin}", hint="use a margin >= 0")
    if loss not in ("max", "sum"):
        raise UsageError(f"loss {loss!r}", hint="use 'max' (one hinge slack per example) or 'sum'")
    if weight_penalty < 0 or (weight_penalty and weights == "binary"):
        raise UsageError(f"weight_penalty {weight_penalty} with {weights} weights",
                         hint="the weight-count term needs ternary weights (bipolar ones are all nonzero)")
    return arch, binarize_inputs(x), y.astype(np.int64)


def _coo(shape, r, c, v=1.0) -> sp.csr_matrix:
    r, c = np.asarray(r), np.asarray(c)
    return sp.csr_matrix((np.broadcast_to(np.asarray(v, np.float64), r.shape), (r, c)), shape=shape)


def lower_training(arch: list[int], x: np.ndarray, y: np.ndarray, *, margin: float = 1.0, weights: str = "binary",
                   weight_penalty: float = 0.0, symmetry_breaking: bool = True,
                   loss: str = "max") -> tuple[MipModule, TrainingLayout]:
    """The training MIP of an MLP BNN `arch` on data (x, y): one block "train"; see the module doc."""
    arch, xb, y = _check(arch, x, y, margin, weights, weight_penalty, loss)
    E, L = xb.shape[0], len(arch) - 1
    b = Block(BLOCK, mode="training", meta={"arch": arch, "weights": weights, "examples": E, "margin": float(margin),
                                            "loss": loss, "input_binarization": "x >= 0.5 -> +1 else -1"})
    wgroups, tgroups, hgroups = [], [], []
    ternary = weights == "ternary"
    prev = None  # name of the previous layer's activation group (None: the data)
    for l in range(1, L + 1):
        K, n = arch[l - 1], arch[l]
        op = f"layer{l}"
        if ternary:
            wg = (f"W{l}+", f"W{l}-")
            b.add_vars(VarGroup(wg[0], (n, K), "binary", 0, 1, "weight", f"W{l}", "pos"))
            b.add_vars(VarGroup(wg[1], (n, K), "binary", 0, 1, "weight", f"W{l}", "neg"))
            eye = sp.identity(n * K, format="csr")
            b.add_rows(f"W{l}:exclusive", {wg[0]: eye, wg[1]: eye}, -np.inf, 1, op=op, kind="exclusive")
        else:
            wg = (f"W{l}",)
            b.add_vars(VarGroup(wg[0], (n, K), "binary", 0, 1, "weight", f"W{l}", "bipolar"))
        wgroups.append(wg)
        hidden = l < L
        pre = f"z{l}" if hidden else "score"
        b.add_vars(VarGroup(pre, (E, n), "continuous", -K, K, "internal" if hidden else "output", pre))
        eye_pre = sp.identity(E * n, format="csr")
        # (e, i, j) for every product term, flattened in C order: row (e, i) of the pre-activation
        e = np.repeat(np.arange(E), n * K)
        i = np.tile(np.repeat(np.arange(n), K), E)
        j = np.tile(np.arange(K), E * n)
        r, wc = e * n + i, i * K + j
        if prev is None:
            # data fixed: z = sum_j x_j w_ij is linear in the weight bits
            X = _coo((E * n, n * K), r, wc, xb[e, j])
            if ternary:
                parts, rhs = {pre: eye_pre, wg[0]: -X, wg[1]: X}, 0.0
            else:
                parts, rhs = {pre: eye_pre, wg[0]: -2 * X}, -np.repeat(xb.sum(1), n)
            b.add_rows(f"{pre}:def", parts, rhs, rhs, op=op, kind="linear")
        else:
            q = np.arange(E * n * K)
            Sw = _coo((E * n * K, n * K), q, wc)
            Sh = _coo((E * n * K, E * K), q, e * K + j)
            G = _coo((E * n, E * n * K), r, q)
            if ternary:
                R = _coo((E * n, n * K), r, wc)
                ands = (f"and{l}+", f"and{l}-")
                for a, w in zip(ands, wg):
                    b.add_vars(VarGroup(a, (E, n, K), "continuous", 0, 1))
                    I = sp.identity(E * n * K, format="csr")
                    b.add_rows(f"{a}:and", {a: sp.vstack([I, I, I]), w: sp.vstack([-Sw, 0 * Sw, -Sw]),
                                            prev: sp.vstack([0 * Sh, -Sh, -Sh])},
                               np.repeat([-np.inf, -np.inf, -1.0], E * n * K), np.repeat([0.0, 0.0, np.inf], E * n * K),
                               op=op, kind="product")
                # w h = (p - n)(2u - 1) = 2 pu - p - 2 nu + n
                b.add_rows(f"{pre}:def", {pre: eye_pre, ands[0]: -2 * G, ands[1]: 2 * G, wg[0]: R, wg[1]: -R},
                           0.0, 0.0, op=op, kind="linear")
            else:
                xn = f"xnor{l}"
                b.add_vars(VarGroup(xn, (E, n, K), "continuous", 0, 1))
                I = sp.identity(E * n * K, format="csr")
                Q = E * n * K
                # q >= b + u - 1, q >= 1 - b - u, q <= 1 + b - u, q <= 1 - b + u
                b.add_rows(f"{xn}:xnor", {xn: sp.vstack([I, I, I, I]), wg[0]: sp.vstack([-Sw, Sw, -Sw, Sw]),
                                          prev: sp.vstack([-Sh, Sh, Sh, -Sh])},
                           np.repeat([-1.0, 1.0, -np.inf, -np.inf], Q), np.repeat([np.inf, np.inf, 1.0, 1.0], Q),
                           op=op, kind="product")
                # w h = 2 q - 1, summed over the K inputs
                b.add_rows(f"{pre}:def", {pre: eye_pre, xn: -2 * G}, -K, -K, op=op, kind="linear")
        if hidden:
            tg, hg = f"tau{l}", f"h{l}"
            tlo, thi = (1 if symmetry_breaking else -K), K + 1
            b.add_vars(VarGroup(tg, (n,), "integer", tlo, thi, "weight", tg))
            b.add_vars(VarGroup(hg, (E, n), "binary", 0, 1, "internal", hg, "bipolar"))
            T = _coo((E * n, n), np.arange(E * n), np.tile(np.arange(n), E))
            # z - tau lies in [-K - thi, K - tlo]: the smallest M that switches each row off
            m_on, m_off = K + thi, K - tlo + 1
            b.add_rows(f"{hg}:on", {pre: eye_pre, tg: -T, hg: -m_on * eye_pre}, -m_on, np.inf, op=op, kind="big-m",
                       big_m="fan-in", m=np.full(E * n, float(m_on)))
            b.add_rows(f"{hg}:off", {pre: eye_pre, tg: -T, hg: -m_off * eye_pre}, -np.inf, -1, op=op, kind="big-m",
                       big_m="fan-in", m=np.full(E * n, float(m_off)))
            if symmetry_breaking and n > 1:
                k = np.arange(n - 1)
                D = _coo((n - 1, n), np.r_[k, k], np.r_[k, k + 1], np.r_[np.ones(n - 1), -np.ones(n - 1)])
                b.add_rows(f"{tg}:order", {tg: D}, -np.inf, 0, op=op, kind="symmetry")
            tgroups.append(tg)
            hgroups.append(hg)
            prev = hg
    # hinge: xi_e + s_{e, y_e} - s_{e, c} >= margin for c != y_e
    nL = arch[-1]
    ee = np.repeat(np.arange(E), nL)
    cc = np.tile(np.arange(nL), E)
    keep = cc != y[ee]
    ee, cc = ee[keep], cc[keep]
    R = ee.size
    S = _coo((R, E * nL), np.r_[np.arange(R), np.arange(R)], np.r_[ee * nL + y[ee], ee * nL + cc],
             np.r_[np.ones(R), -np.ones(R)])
    if loss == "max":
        b.add_vars(VarGroup("slack", (E,), "continuous", 0, np.inf, "internal", "slack"))
        P = _coo((R, E), np.arange(R), ee)
    else:
        b.add_vars(VarGroup("slack", (R,), "continuous", 0, np.inf, "internal", "slack"))
        P = sp.identity(R, format="csr")
    b.add_rows("hinge", {"slack": P, "score": S}, margin, np.inf, op="loss", kind="hinge")
    c = np.zeros(b.n_vars)
    c[b.cols("slack")] = 1.0
    if ternary and weight_penalty:
        for wg in wgroups:
            for g in wg:
                c[b.cols(g)] = weight_penalty
    b.c, b.sense, b.outputs = c, "min", ["score"]
    mod = MipModule([b], meta={"mode": "training", "inputs": {}, "outputs": {"score": [(BLOCK, "score")]},
                               "weights": {f"W{l + 1}": [(BLOCK, g) for g in wg] for l, wg in enumerate(wgroups)}
                               | {t: [(BLOCK, t)] for t in tgroups}})
    verify_mip(mod)
    return mod, TrainingLayout(arch, weights, xb, y, float(margin), wgroups, tgroups, hgroups, loss=loss)


def decode_weights(layout: TrainingLayout, milp: Milp, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The network a MIP solution x encodes: per layer (W_l as int64 +-1 (or 0) array, tau_l),
    tau_l None for the output layer."""
    x = np.asarray(x, np.float64)
    out = []
    L = len(layout.arch) - 1
    for l in range(L):
        n, K = layout.arch[l + 1], layout.arch[l]
        bits = [np.rint(x[milp.col(layout.block, g)]).astype(np.int64) for g in layout.weight_groups[l]]
        W = 2 * bits[0] - 1 if layout.weights == "binary" else bits[0] - bits[1]
        tau = np.rint(x[milp.col(layout.block, layout.tau_groups[l])]).astype(np.int64) if l < L - 1 else None
        out.append((W.reshape(n, K), tau))
    return out


def encode_solution(layout: TrainingLayout, milp: Milp,
                    params: list[tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """The MIP point of the network `params` on the layout's data (inverse of `decode_weights`):
    every variable at the value the network gives it, slacks at the hinge. A warm start, and a
    check that every network is feasible with its own loss as objective."""
    x = np.zeros(milp.shape[1])
    put = lambda g, v: x.__setitem__(milp.col(layout.block, g), np.asarray(v, np.float64).reshape(-1))  # noqa: E731
    hidden, scores = forward(params, layout.x)
    acts = [layout.x] + hidden
    for l, (W, tau) in enumerate(params, start=1):
        W = np.asarray(W, np.int64)
        if layout.weights == "binary":
            put(layout.weight_groups[l - 1][0], (W + 1) // 2)
        else:
            put(layout.weight_groups[l - 1][0], W > 0)
            put(layout.weight_groups[l - 1][1], W < 0)
        z = acts[l - 1] @ W.T
        if l < len(params):
            put(f"z{l}", z)
            put(layout.tau_groups[l - 1], tau)
            put(layout.act_groups[l - 1], (hidden[l - 1] + 1) // 2)
        if l > 1:
            u = (acts[l - 1][:, None, :] + 1) // 2
            if layout.weights == "binary":
                put(f"xnor{l}", ((W[None] + 1) // 2) == u)
            else:
                put(f"and{l}+", (W[None] > 0) & (u == 1))
                put(f"and{l}-", (W[None] < 0) & (u == 1))
    put(layout.score_group, scores)
    if layout.loss == "max":
        put(layout.slack_group, hinge(scores, layout.y, layout.margin, "max"))
    else:
        s = scores.astype(np.float64)
        E, nL = s.shape
        ee, cc = np.repeat(np.arange(E), nL), np.tile(np.arange(nL), E)
        keep = cc != layout.y[ee]
        ee, cc = ee[keep], cc[keep]
        put(layout.slack_group, np.maximum(0.0, layout.margin - (s[ee, layout.y[ee]] - s[ee, cc])))
    return x
