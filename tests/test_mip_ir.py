"""The MIP IR by hand: blocks built with add_vars/add_rows and indicators, verify_mip's invariants,
exact indicator linearization, the right-hand-side map, the text form, and HiGHS solves of known
MILPs with every status reported."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from tamec.errors import VerificationError
from tamec.ir.mip import Block, IndicatorGroup, Link, Milp, MipModule, RowGroup, VarGroup, verify_mip
from tamec.ir.text import print_mip
from tamec.solve import solve

INF = np.inf


def milp(c, A, lo, hi, lb, ub, integ, sense="min") -> Milp:
    """A flat Milp from dense data (for small hand-written problems)."""
    c = np.asarray(c, np.float64)
    A = sp.csr_matrix(np.asarray(A, np.float64).reshape(len(lo), c.size))
    return Milp(c, A, np.asarray(lo, np.float64), np.asarray(hi, np.float64), np.asarray(lb, np.float64),
                np.asarray(ub, np.float64), np.asarray(integ, np.uint8), [f"x{j}" for j in range(c.size)],
                [f"r{i}" for i in range(len(lo))], {}, sense)


def sign_layer(name: str, w: np.ndarray, tau: np.ndarray, x_kind: str = "integer", x_lo=-2, x_hi=2) -> Block:
    """One binarized layer: inputs x, pre-activation s = W x (continuous), outputs y in {0,1}
    (bipolar 2y - 1) with y = 1 -> s >= tau and y = 0 -> s <= tau - 1/2, as indicators."""
    k, n = w.shape
    b = Block(name, ops=(f"{name}.linear", f"{name}.threshold"))
    b.add_vars(VarGroup("x", (n,), x_kind, x_lo, x_hi, role="input", encodes="x"))
    smax = np.abs(w).sum(1) * max(abs(x_lo), abs(x_hi))
    b.add_vars(VarGroup("s", (k,), "continuous", -smax, smax, encodes=f"{name}.s"))
    b.add_vars(VarGroup("y", (k,), "binary", 0, 1, role="output", encodes=f"{name}.y", encoding="bipolar"))
    b.add_rows("lin", {"s": sp.eye(k), "x": -sp.csr_matrix(w)}, 0, 0, op=f"{name}.linear", origin=("Gemm_0",))
    ycols = b.cols("y")
    sel = sp.csr_matrix((np.ones(k), (np.arange(k), b.cols("s"))), shape=(k, b.n_vars))
    A2 = sp.vstack([sel, sel]).tocsr()
    b.indicators.append(IndicatorGroup("act", np.r_[ycols, ycols], np.r_[np.ones(k), np.zeros(k)].astype(int), A2,
                                       np.r_[tau, np.full(k, -INF)], np.r_[np.full(k, INF), tau - 0.5],
                                       op=f"{name}.threshold", origin=("Sign_1",)))
    b.inputs, b.outputs = ["x"], ["y"]
    return b


def two_block_module() -> MipModule:
    """Layer 0 (2 integer inputs -> 3 bits) linked to layer 1 (3 bits as integer inputs -> 2 bits)."""
    b0 = sign_layer("L0", np.array([[1, -1], [1, 1], [-1, 1]]), np.array([0.0, 1.0, -1.0]))
    b1 = sign_layer("L1", np.array([[1, 1, -1], [-1, 1, 1]]), np.array([1.0, 0.0]), x_kind="binary", x_lo=0, x_hi=1)
    b1.group("x").encoding = "bipolar"
    b1.c = np.r_[np.zeros(b1.n_vars - 2), 1.0, 2.0]
    b1.sense = "max"
    mod = MipModule([b0, b1], [Link("L0", "y", "L1", "x")])
    mod.meta["inputs"] = {"x": [("L0", "x")]}
    mod.meta["outputs"] = {"y": [("L1", "y")]}
    return mod


# -- verify_mip ------------------------------------------------------------------------------------

def test_verify_accepts_well_formed_module():
    """A module built through the API passes verify_mip and assembles with a link row per bit."""
    mod = two_block_module()
    verify_mip(mod)
    p = mod.assemble()
    assert p.A.shape[1] == sum(b.n_vars for b in mod.blocks)
    assert sum(r.startswith("link.") for r in p.row_names) == 3
    assert len(p.row_names) == p.A.shape[0] and len(p.var_names) == p.A.shape[1]


def _break_unbounded_int(mod):
    mod.blocks[0].add_vars(VarGroup("z", (2,), "integer", 0, INF))


def _break_lb_ub(mod):
    mod.blocks[0].group("s").lb[1] = mod.blocks[0].group("s").ub[1] + 1


def _break_columns(mod):
    b = mod.blocks[0]
    b.rows.append(RowGroup("bad", sp.csr_matrix((1, b.n_vars + 1)), 0, 0))


def _break_lo_hi(mod):
    r = mod.blocks[1].rows[0]
    r.lo[0] = r.hi[0] + 1


def _break_link_size(mod):
    mod.blocks[1].add_vars(VarGroup("w", (5,), "binary", 0, 1, encoding="bipolar"))
    mod.links.append(Link("L0", "y", "L1", "w"))


def _break_link_encoding(mod):
    mod.blocks[1].group("x").encoding = "value"


def _break_binary_range(mod):
    mod.blocks[0].group("y").ub[0] = 2


@pytest.mark.parametrize("breaker, message", [
    (_break_unbounded_int, "unbounded"),
    (_break_lb_ub, "lb > ub"),
    (_break_columns, "columns"),
    (_break_lo_hi, "lo > hi"),
    (_break_link_size, "sizes"),
    (_break_link_encoding, "encodings"),
    (_break_binary_range, "outside"),
])
def test_verify_rejects_each_broken_invariant(breaker, message):
    """Each broken invariant (one at a time, on an otherwise valid module) is a VerificationError."""
    mod = two_block_module()
    breaker(mod)
    with pytest.raises(VerificationError, match=message):
        verify_mip(mod)


def test_assemble_rejects_link_of_unequal_sizes():
    """assemble() refuses to join groups of different sizes even without verify_mip."""
    mod = two_block_module()
    _break_link_size(mod)
    with pytest.raises(VerificationError, match="sizes"):
        mod.assemble()


# -- indicators as rows ----------------------------------------------------------------------------

def test_indicators_as_rows_exact_pure_integer():
    """Pure-integer block: at every integer point of the box (x, s, y), the big-M rows hold iff
    every active indicator holds; with s = W x that leaves exactly y = [W x >= tau]."""
    w = np.array([[1, -2], [2, 1], [-1, -1]])
    tau = np.array([0.0, 1.0, -1.0])
    b = sign_layer("L", w, tau)
    b.group("s").kind = "integer"
    b.indicators[0].hi[3:] = tau - 1  # integer s: y = 0 -> s <= tau - 1
    rows = b.indicators_as_rows()
    assert all(r.kind == "big-m" and r.m is not None for r in rows)
    A = sp.vstack([r.A for r in rows]).tocsr()
    lo, hi = np.concatenate([r.lo for r in rows]), np.concatenate([r.hi for r in rows])
    X = np.array(list(itertools.product(*[range(int(l), int(u) + 1) for l, u in zip(b.lb(), b.ub())])), np.float64)
    AX = (A @ X.T).T
    by_rows = np.all((AX >= lo - 1e-9) & (AX <= hi + 1e-9), axis=1)
    by_def = np.ones(len(X), bool)
    for ind in b.indicators:
        IX = (sp.csr_matrix(ind.A) @ X.T).T
        on = X[:, ind.var] == ind.value
        by_def &= np.all(~on | ((IX >= ind.lo) & (IX <= ind.hi)), axis=1)
    assert len(X) == 5 ** 2 * 13 * 13 * 9 * 2 ** 3
    assert np.array_equal(by_rows, by_def), X[by_rows != by_def][:5]
    # on the layer (s = W x) each input has exactly one feasible output, the threshold of W x
    xs, s, y = X[:, :2], X[:, 2:5], X[:, 5:]
    layer = np.all(s == xs @ w.T, axis=1) & by_rows
    assert layer.sum() == 25 and np.array_equal(y[layer], (s[layer] >= tau).astype(float))


def test_indicators_as_rows_exact_mixed():
    """Continuous x, binary switches: for every switch assignment the big-M polyhedron and the
    indicator definition have the same feasibility and the same min/max in random directions."""
    rng = np.random.default_rng(3)
    b = sign_layer("L", np.array([[1.0, -0.5], [0.25, 1.0]]), np.array([0.3, -0.2]), "continuous", -1, 1)
    b.add_rows("cap", {"x": np.ones((1, 2))}, -INF, 1.5)
    A, lo, hi = b.matrix()
    n, ycols = b.n_vars, b.cols("y")
    lb, ub = b.lb(), b.ub()
    for y in itertools.product((0, 1), repeat=ycols.size):
        lb_y, ub_y = lb.copy(), ub.copy()
        lb_y[ycols] = ub_y[ycols] = y
        # the definition: plain rows plus the indicator rows whose switch is on
        plain = [(r.A, r.lo, r.hi) for r in b.rows]
        for ind in b.indicators:
            on = np.isclose(np.asarray(y, float)[np.searchsorted(ycols, ind.var)], ind.value)
            plain.append((sp.csr_matrix(ind.A)[on], ind.lo[on], ind.hi[on]))
        D = sp.vstack([p[0] for p in plain]).tocsr()
        dlo, dhi = np.concatenate([p[1] for p in plain]), np.concatenate([p[2] for p in plain])
        for d in [np.zeros(n)] + [rng.standard_normal(n) for _ in range(4)]:
            for sense in ("min", "max"):
                big = solve(Milp(d, A, lo, hi, lb_y, ub_y, np.zeros(n, np.uint8), [], [], {}, sense), relax=True)
                ref = solve(Milp(d, D, dlo, dhi, lb_y, ub_y, np.zeros(n, np.uint8), [], [], {}, sense), relax=True)
                assert big.status == ref.status, (y, big.message, ref.message)
                if ref.ok:
                    assert big.objective == pytest.approx(ref.objective, abs=1e-7), (y, d, sense)


# -- rhs_map -----------------------------------------------------------------------------------------

def test_rhs_map_equals_fixing_inputs():
    """For every integer input x: the block's own MIP with b = lo/hi - B_x x has the optimum of the
    whole block with the input bounds fixed to x (objective on inputs added back)."""
    b = sign_layer("L", np.array([[1, -1], [1, 1], [-1, 2]]), np.array([0.0, 1.0, -1.0]))
    b.c = np.r_[0.5, -0.25, 0.1, -0.2, 0.3, 1.0, -2.0, 3.0]
    Ap, lo, hi, Bx, own = b.rhs_map()
    inp = b.cols("x")
    assert Ap.shape[1] + Bx.shape[1] == b.n_vars and np.array_equal(np.sort(np.r_[own, inp]), np.arange(b.n_vars))
    lb, ub, integ = b.lb(), b.ub(), b.integrality()
    full_A, full_lo, full_hi = b.matrix()
    seen = set()
    for x in itertools.product(range(-2, 3), repeat=2):
        x = np.array(x, np.float64)
        shift = Bx @ x
        own_p = Milp(b.c[own], Ap, lo - shift, hi - shift, lb[own], ub[own], integ[own], [], [], {})
        own_p.constant = float(b.c[inp] @ x)
        lbx, ubx = lb.copy(), ub.copy()
        lbx[inp] = ubx[inp] = x
        whole = Milp(b.c, full_A, full_lo, full_hi, lbx, ubx, integ, [], [], {})
        got, ref = solve(own_p), solve(whole)
        assert got.status == ref.status == "optimal"
        assert got.objective == pytest.approx(ref.objective, abs=1e-9)
        seen.add(round(ref.objective, 9))
    assert len(seen) > 3  # the inputs really move the optimum


# -- text form -----------------------------------------------------------------------------------

def _changed(a: str, b: str) -> list[tuple[str, str]]:
    la, lb = a.splitlines(), b.splitlines()
    assert len(la) == len(lb)
    return [(x, y) for x, y in zip(la, lb) if x != y]


def test_print_mip_stable_and_complete():
    """Printing twice, or a copy, gives the same text; every group, link and interface is a line."""
    mod = two_block_module()
    text = print_mip(mod)
    assert text == print_mip(mod) == print_mip(mod.copy())
    lines = text.splitlines()
    assert lines[0] == "mip {" and lines[-1] == "}"
    assert "  input %x = L0.x" in lines and "  output %y = L1.y" in lines
    assert "  link L0.y -> L1.x" in lines
    assert sum(ln.lstrip().startswith("var ") for ln in lines) == 6
    assert sum(ln.lstrip().startswith("rows ") for ln in lines) == 2
    assert sum(ln.lstrip().startswith("ind ") for ln in lines) == 2
    assert any("objective max nnz=2 c=[1..2]" in ln for ln in lines)
    row = next(ln for ln in lines if "rows lin" in ln and "L0.linear" in ln)
    assert "linear[3] nnz=9" in row and 'origin=["Gemm_0"]' in row and "sha256:" in row
    var = next(ln for ln in lines if ln.lstrip().startswith("var s"))
    assert "continuous[3]" in var and "bounds=[-4..4]" in var and "fixed=0" in var


def test_print_mip_one_change_one_line():
    """Changing one coefficient, one row bound, one variable bound or one indicator changes exactly
    the line of that group; re-encoding the same rows (explicit zeros, unsorted) changes nothing."""
    mod = two_block_module()
    base = print_mip(mod)

    def edit_coef(m):
        m.blocks[1].rows[0].A.data[0] += 1

    def edit_rhs(m):
        m.blocks[0].rows[0].hi[2] = 0.5

    def edit_bound(m):
        m.blocks[0].group("s").ub[0] -= 1

    def edit_indicator(m):
        m.blocks[1].indicators[0].lo[0] += 1

    def edit_m(m):
        r = m.blocks[0].rows[0]
        r.kind, r.big_m, r.m = "big-m", "interval", np.full(r.size, 3.0)

    for edit, starts in [(edit_coef, "rows lin"), (edit_rhs, "rows lin"), (edit_bound, "var s"),
                         (edit_indicator, "ind act"), (edit_m, "rows lin")]:
        m = mod.copy()
        for b in m.blocks:  # deep-copy the arrays the edit touches
            b.rows = [RowGroup(r.name, r.A.copy(), r.lo, r.hi, r.op, r.origin, r.kind, r.big_m, r.m) for r in b.rows]
            b.indicators = [IndicatorGroup(i.name, i.var.copy(), i.value.copy(), i.A.copy(), i.lo.copy(), i.hi.copy(),
                                           i.op, i.origin) for i in b.indicators]
        edit(m)
        diff = _changed(base, print_mip(m))
        assert len(diff) == 1 and diff[0][1].lstrip().startswith(starts), (edit.__name__, diff)
        assert print_mip(mod) == base  # the original is untouched

    same = mod.copy()
    r = same.blocks[0].rows[0]
    coo = r.A.tocoo()
    k = np.arange(coo.nnz)[::-1]
    A = sp.coo_matrix((np.r_[coo.data[k], 0.0], (np.r_[coo.row[k], 0], np.r_[coo.col[k], coo.shape[1] - 1])),
                      shape=coo.shape).tocsr()
    same.blocks[0].rows[0] = RowGroup(r.name, A, r.lo, r.hi, r.op, r.origin, r.kind)
    assert print_mip(same) == base


# -- solving known MILPs ---------------------------------------------------------------------------

def test_knapsack_matches_enumeration():
    """A 12-item 0/1 knapsack: HiGHS through tamec.solve finds the enumerated optimum, both as a
    max-sense Milp and as a max-sense block assembled (negated) into a min Milp."""
    rng = np.random.default_rng(7)
    v, w = rng.integers(1, 30, 12).astype(float), rng.integers(1, 20, 12).astype(float)
    cap = float(w.sum() // 2)
    best = max(float(v @ x) for x in itertools.product((0, 1), repeat=12) if w @ np.array(x) <= cap)
    sol = solve(milp(v, [w], [-INF], [cap], np.zeros(12), np.ones(12), np.ones(12), "max"))
    assert sol.status == "optimal" and sol.objective == pytest.approx(best, abs=1e-9)
    assert w @ sol.x <= cap + 1e-9 and v @ np.round(sol.x) == pytest.approx(best)
    assert sol.bound == pytest.approx(best, abs=1e-6) and sol.gap is not None and sol.gap <= 1e-4

    b = Block("knap", c=v, sense="max")
    b.add_vars(VarGroup("x", (12,), "binary", 0, 1))
    b.add_rows("cap", {"x": w[None]}, -INF, cap)
    p = MipModule([b]).assemble()
    assert p.sense == "min" and solve(p).objective == pytest.approx(-best, abs=1e-9)


TEXTBOOK = {-3: 0, -2.5: 1, -1.5: 0, -1: 1, 0: 0, 0.5: 1, 1: 0.5, 1.5: 1.5, 2: 1, 3: 1.5}


@pytest.mark.parametrize("d", sorted(TEXTBOOK))
def test_textbook_value_function(d):
    """min x1/2 + 2 x3 + x4 s.t. x1 - 3/2 x2 + x3 - x4 = d, x1, x2 in Z+ (<= 10), x3, x4 >= 0 has the
    value function of DESIGN.md at all ten points."""
    b = Block("tb", c=np.array([0.5, 0.0, 2.0, 1.0]))
    b.add_vars(VarGroup("x12", (2,), "integer", 0, 10))
    b.add_vars(VarGroup("x34", (2,), "continuous", 0, INF))
    b.add_rows("eq", {"x12": [[1.0, -1.5]], "x34": [[1.0, -1.0]]}, d, d)
    verify_mip(MipModule([b]))
    sol = solve(MipModule([b]).assemble())
    # HiGHS accepts integers within 1e-6, so its objective is within ~1e-6; the exact value comes
    # from its integer part rounded: the best continuous completion costs 2 r (r > 0) or -r.
    assert sol.status == "optimal" and sol.objective == pytest.approx(TEXTBOOK[d], abs=1e-5)
    x1, x2 = np.round(sol.x[:2])
    r = d - x1 + 1.5 * x2
    assert 0.5 * x1 + (2 * r if r > 0 else -r) == TEXTBOOK[d]


# -- status reporting ------------------------------------------------------------------------------

def test_infeasible_reported():
    """2 x = 1 over integers, and an integer-infeasible problem with an unbounded LP relaxation,
    are both 'infeasible' with no objective."""
    for p in (milp([1], [[2]], [1], [1], [0], [5], [1]),
              milp([-1, 0], [[2, -2]], [1], [1], [0, 0], [INF, INF], [1, 1])):
        sol = solve(p)
        assert sol.status == "infeasible" and sol.objective is None and sol.x is None, sol.message


def test_unbounded_reported():
    """An unbounded LP and an unbounded MILP (HiGHS says 'unbounded or infeasible') are both
    'unbounded'."""
    for integ in ([0, 0], [1, 0], [1, 1]):
        sol = solve(milp([-1, 0], [[1, -1]], [0], [0], [0, 0], [INF, INF], integ))
        assert sol.status == "unbounded" and sol.objective is None, (integ, sol.message)


def market_split(seed: int = 0, m: int = 4, n: int = 30) -> Milp:
    """A Cornuejols-Dawande market split instance (min total slack): hard for branch and bound."""
    rng = np.random.default_rng(seed)
    A = rng.integers(0, 100, (m, n))
    d = A.sum(1) // 2
    return milp(np.r_[np.zeros(n), np.ones(2 * m)], np.hstack([A, np.eye(m), -np.eye(m)]), d, d,
                np.zeros(n + 2 * m), np.r_[np.ones(n), np.full(2 * m, INF)], np.r_[np.ones(n), np.zeros(2 * m)])


def test_node_and_time_limits_reported():
    """Node and time limits end in status 'limit' with the dual bound, gap and node count
    reported, and a best point no better than the bound; never a crash or a wrong 'optimal'."""
    p = market_split()
    for kw in ({"node_limit": 2}, {"time_limit": 0.05}):
        sol = solve(p, **kw)
        assert sol.status == "limit", (kw, sol.message)
        assert sol.bound is not None and np.isfinite(sol.bound) and sol.nodes >= 0
        if sol.objective is not None:
            assert sol.objective >= sol.bound - 1e-9 and sol.gap is not None and sol.gap > 0
        assert sol.to_json()["status"] == "limit"


def test_empty_model_solves():
    """A MILP without variables is optimal at its constant (feasible rows) or infeasible."""
    p = milp([], np.zeros((0, 0)), [], [], [], [], [])
    p.constant = 2.5
    assert solve(p).status == "optimal" and solve(p).objective == 2.5
    bad = Milp(np.zeros(0), sp.csr_matrix((1, 0)), np.ones(1), np.ones(1), np.zeros(0), np.zeros(0),
               np.zeros(0, np.uint8), [], ["r"], {})
    assert solve(bad).status == "infeasible"


def test_pass_manager_dumps_mip(tmp_path):
    """After a pass that leaves a MIP on the module, the dump folder holds NN-<pass>.mip.tir (the
    text form) and NN-<pass>.mps (the assembled MILP, which HiGHS reads and solves to the same
    optimum), and --print-after shows the MIP text."""
    import io

    import tamec
    from tamec.passmanager import _after

    highspy = pytest.importorskip("highspy")
    from tests.conftest import MODELS

    module = tamec.load(str(MODELS / "mlp_sign.onnx"))
    module.mip = two_block_module()
    out = io.StringIO()
    _after(module, "lower-mip", 5, "lower-mip", tmp_path, out)
    assert (tmp_path / "05-lower-mip.tir").exists() and (tmp_path / "05-lower-mip.onnx").exists()
    assert (tmp_path / "05-lower-mip.mip.tir").read_text() == print_mip(module.mip)
    assert print_mip(module.mip) in out.getvalue()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    assert h.readModel(str(tmp_path / "05-lower-mip.mps")) == highspy.HighsStatus.kOk
    h.run()
    ref = solve(module.mip.assemble())
    assert ref.ok and h.getInfo().objective_function_value == pytest.approx(ref.objective, abs=1e-6)


def test_infeasible_rows_are_named():
    """An infeasible module is explained by a minimal set of row groups, each named with its op."""
    import scipy.sparse as sp

    from tamec.ir.mip import Block, MipModule, VarGroup
    from tamec.solve import infeasible_row_groups

    b = Block("b")
    b.add_vars(VarGroup("x", (2,), "continuous", 0, 10))
    b.add_rows("sum_ge", {"x": sp.csr_matrix(np.ones((1, 2)))}, 15, np.inf, op="opA")
    b.add_rows("x0_le", {"x": sp.csr_matrix(np.array([[1.0, 0.0]]))}, -np.inf, 4, op="opB")
    b.add_rows("harmless", {"x": sp.csr_matrix(np.array([[0.0, 1.0]]))}, -np.inf, 100, op="opC")
    rows = infeasible_row_groups(MipModule([b]))
    assert sorted(r for _, r, _ in rows) == ["sum_ge", "x0_le"]
    b.rows[1].hi[:] = 6
    assert infeasible_row_groups(MipModule([b])) == []
