"""`tamec inspect DIR --block K --plot OUT.png`: a block's dual functions against its value function.

For each plotted key of the block (its first `keys` keys in certificates.json; a key stands for
all neurons / pool outputs with the same small MIP) and each upstream direction g = +1, -1, one
panel draws along a line of right-hand sides d(t) = b + t e through the reference point b:

  threshold key  the parametrization line itself, d(s') = d0 + s' e (e the pre-activation's column;
                 s' = s - tau on the x axis, so b = d(s_ref));
  MaxPool key    d(t) = d(x_ref) + t E u, u moving the window's first element from the top level
                 (t = 0, x_ref) to the bottom level (t = 1).

On it: the value function z(d(t)) by exact enumeration of the key's 1-2 binaries (`EnumProblem`,
no tolerance; +inf where the MIP is infeasible, drawn as a gap), and every dual function present
in the report (lp, bb, and chvatal when the pass was asked for it), evaluated from the stored
pieces, not rebuilt: min_k (pi_k d + kappa_k) for lp/bb; u beta + sum_k v_k ceil(...) in exact
rationals for chvatal. `plot_block` returns the arrays it drew, so a caller can check that every
dual is below the value function at every plotted point.

matplotlib draws through its Agg canvas directly (no pyplot, no global backend switch).
"""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from tamec.errors import UsageError

COLORS = {"lp": "tab:blue", "bb": "tab:orange", "chvatal": "tab:green"}
STYLES = {"lp": "-", "bb": "--", "chvatal": ":"}


def _min_affine(pieces: list[dict], D: np.ndarray) -> np.ndarray:
    """min_k pi_k d + kappa_k at each row of D (lp/bb pieces as stored in the report)."""
    Pi = np.array([p["pi"] for p in pieces], np.float64).reshape(len(pieces), D.shape[1])
    K = np.array([p["kappa"] for p in pieces], np.float64)
    if not len(K):
        return np.full(D.shape[0], np.inf)
    return np.min(D @ Pi.T + K[None, :], axis=1)


def _chvatal(pieces: dict, D: np.ndarray) -> np.ndarray:
    """F(d) = u beta + sum_k v_k F_k(beta), beta = (d, bounds), F_k = ceil(layer_k . (beta, F_<k)),
    exactly (Fractions from the stored strings; a float d converts exactly)."""
    u = [Fraction(a) for a in pieces["u"]]
    v = [Fraction(a) for a in pieces["v"]]
    layers = [[Fraction(a) for a in lam] for lam in pieces["layers"]]
    bounds = [Fraction(ub) for _, ub in pieces["bounds"]]
    out = []
    for d in D:
        beta = [Fraction(float(x)) for x in d] + bounds
        vals: list[int] = []
        for lam in layers:
            arg = sum((lam[i] * beta[i] for i in range(len(beta))), Fraction(0))
            arg += sum((lam[len(beta) + k] * vals[k] for k in range(len(vals))), Fraction(0))
            vals.append(math.ceil(arg))
        out.append(float(sum((a * x for a, x in zip(u, beta)), Fraction(0)) +
                         sum((a * x for a, x in zip(v, vals)), Fraction(0))))
    return np.array(out)


def _line(key: dict, points: int) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """(x-axis values, the right-hand sides D along them, axis label, reference x per g)."""
    prob = key["problem"]
    d0 = np.asarray(prob["d0"], np.float64)
    if key["kind"] == "maxpool":
        from tamec.dual.pool import BOTTOM_BIT, TOP_BIT, x_reference

        E = np.asarray(prob["E"], np.float64)
        x_ref = x_reference(prob)
        u = np.array([(BOTTOM_BIT[kd] - TOP_BIT[kd]) if el == 0 else 0.0
                      for kd, el in zip(prob["x_kinds"], prob["x_elem"])])
        ts = np.union1d(np.linspace(-0.5, 1.5, points), [0.0, 0.5, 1.0])
        D = (d0 + E @ x_ref)[None, :] + ts[:, None] * (E @ u)[None, :]
        return ts, D, "t (window element 0: top level at t=0, bottom at t=1)", {g: 0.0 for g in ("+1", "-1")}
    k = key["key"]
    e = np.asarray(prob["e"], np.float64)
    L, U = k["L_minus_tau"], k["U_minus_tau"]
    refs = {g: key["lp"][g]["s_ref"] for g in key["lp"]}
    refs_ch = [e_["s_ref"] for e_ in key.get("chvatal", {}).values() if "s_ref" in e_]
    marks = [L, k["b_minus_tau"], 0.0, k["a_minus_tau"], U, *refs.values(), *refs_ch]  # kinks and references
    ts = np.union1d(np.linspace(L - 1.0, U + 1.0, points), marks)
    D = d0[None, :] + ts[:, None] * e[None, :]
    return ts, D, "s' = s - tau (pre-activation minus threshold)", refs


def _values(key: dict, g: str, D: np.ndarray) -> np.ndarray:
    """z(d) at each row of D by enumeration of the key's binaries (exact)."""
    from tamec.dual.blocks import EnumProblem

    prob = key["problem"]
    c = float(g) * np.asarray(prob["cost"], np.float64)
    A = np.asarray(prob["A"], np.float64)
    p = EnumProblem.build(c, A, D[0], np.ones(A.shape[1], bool), prob["lb"], prob["ub"], ">=")
    return np.array([p.value(d) for d in D])


def block_data(entry: dict, keys: int = 3, points: int = 241) -> list[dict]:
    """The curves of the first `keys` keys of one certificates.json entry: per (key, g) a dict
    {key, kind, g, x, xlabel, ref, value, duals: {method: array}, neurons}."""
    dual = entry.get("dualize") or {}
    ks = dual.get("keys") or []
    if not ks:
        if not dual:
            why = "no dualize report (run the dualize pass)"
        else:
            why = dual.get("reason") or "every neuron is stable (F = const) and there is no MaxPool"
        raise UsageError(f"block {entry.get('block')} has no dual functions to plot: {why}",
                         hint="pick a block with thresholds or MaxPool (tamec inspect DIR --block K lists them)")
    panels = []
    for i, key in enumerate(ks[:keys]):
        if "problem" not in key:
            raise UsageError(f"key {i} of block {entry.get('block')} has no stored problem",
                             hint="re-run `tamec compile ... --dump-dir` with this version of tamec")
        xs, D, label, refs = _line(key, points)
        for g in ("+1", "-1"):
            duals = {}
            for m in ("lp", "bb", "chvatal"):
                ent = key.get(m, {}).get(g)
                if not ent or "pieces" not in ent:
                    continue
                duals[m] = _chvatal(ent["pieces"], D) if m == "chvatal" else _min_affine(ent["pieces"], D)
            panels.append({"key": i, "kind": key["kind"], "g": g, "x": xs, "xlabel": label, "ref": refs[g],
                           "value": _values(key, g, D), "duals": duals, "neurons": key["neurons"]})
    return panels


def block_figure(entry: dict, keys: int = 3, points: int = 241):
    """The matplotlib Figure of `block_data(entry)` (two panels per key: g = +1, -1) and the panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = block_data(entry, keys, points)
    rows = len(panels) // 2
    fig = Figure(figsize=(10, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 2, squeeze=False)
    for ax, p in zip(axes.ravel(), panels):
        z = np.where(np.isfinite(p["value"]), p["value"], np.nan)  # infeasible right-hand sides: a gap
        ax.plot(p["x"], z, color="black", lw=2.2, label="value z (exact)")
        if p["kind"] == "maxpool":  # z is finite only at window states: isolated points
            ax.plot(p["x"], z, "o", color="black", ms=5)
        for m, f in p["duals"].items():
            ax.plot(p["x"], np.where(np.isfinite(f), f, np.nan), STYLES[m], color=COLORS[m], lw=1.4, label=m)
        ax.axvline(p["ref"], color="gray", lw=0.8, ls=":")
        what = "threshold" if p["kind"] == "threshold" else "MaxPool"
        ax.set_title(f"key {p['key']} ({what}, {p['neurons']} element(s)), g = {p['g']}", fontsize=9)
        ax.set_xlabel(p["xlabel"], fontsize=8)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle(f"block {entry.get('block')}: dual functions and value function along d(t) = b + t e")
    return fig, panels


def plot_block(entry: dict, out, keys: int = 3, points: int = 241) -> dict:
    """Draw `block_data(entry)` to the PNG `out`; returns {"path", "block", "panels"} (the arrays drawn)."""
    path = Path(out)
    if not path.parent.is_dir():  # before any work: the figure takes a second to draw
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist",
                         hint="pick a writable path for --plot")
    fig, panels = block_figure(entry, keys, points)
    try:
        fig.savefig(path, format="png", dpi=90)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}", hint="pick a writable path for --plot") from None
    return {"path": str(path), "block": entry.get("block"), "panels": panels}
