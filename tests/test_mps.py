"""MPS and LP export round trips: HiGHS (highspy) reads every file tamec writes back into exactly
the MILP tamec holds, and solving the file gives the in-memory optimum or the same status."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest
import scipy.sparse as sp

from tamec.export.mps import safe_names, write_lp, write_mps
from tamec.ir.mip import Milp
from tamec.solve import solve

highspy = pytest.importorskip("highspy")
INF = np.inf
WRITERS = {"mps": write_mps, "lp": write_lp}


def read_highs(path):
    """A Highs object holding the model read from `path` (quiet)."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    assert h.readModel(str(path)) == highspy.HighsStatus.kOk, f"HiGHS cannot read {path}"
    return h


def highs_solve(h) -> tuple[str, float | None]:
    """Run HiGHS on the model read from file; 'unbounded or infeasible' is settled as tamec.solve
    does it, by a feasibility run with zero costs."""
    h.run()
    st = h.getModelStatus()
    S = highspy.HighsModelStatus
    if st == S.kUnboundedOrInfeasible:
        n = h.getNumCol()
        h.changeColsCost(n, np.arange(n, dtype=np.int32), np.zeros(n))
        h.run()
        return ("unbounded" if h.getModelStatus() == S.kOptimal else "infeasible"), None
    names = {S.kOptimal: "optimal", S.kInfeasible: "infeasible", S.kUnbounded: "unbounded"}
    status = names.get(st, h.modelStatusToString(st))
    return status, (h.getInfo().objective_function_value if status == "optimal" else None)


def expected_rows(p: Milp, fmt: str):
    """The rows a reader builds: free rows dropped; LP splits lo < hi rows into two."""
    A = sp.csr_matrix(p.A)
    lo, hi = np.asarray(p.lo), np.asarray(p.hi)
    keep = np.isfinite(lo) | np.isfinite(hi)
    if fmt == "mps":
        return A[keep], lo[keep], hi[keep]
    rows, los, his = [], [], []
    for i in np.flatnonzero(keep):
        if np.isfinite(lo[i]) and np.isfinite(hi[i]) and lo[i] < hi[i]:
            rows += [i, i]
            los += [lo[i], -INF]
            his += [INF, hi[i]]
        else:
            rows.append(i)
            los.append(lo[i])
            his.append(hi[i])
    return A[rows], np.array(los, float), np.array(his, float)


def assert_same_model(h, p: Milp, fmt: str):
    """The model HiGHS read is `p`: costs, offset, sense, bounds, integrality, matrix, rows."""
    lp = h.getLp()
    n = p.A.shape[1]
    assert lp.num_col_ == n
    assert np.array_equal(lp.col_cost_, p.c)
    assert lp.offset_ == pytest.approx(p.constant, abs=0)
    assert (lp.sense_ == highspy.ObjSense.kMaximize) == (p.sense == "max")
    assert np.array_equal(lp.col_lower_, p.lb) and np.array_equal(lp.col_upper_, p.ub)
    integ = np.array([int(t) for t in lp.integrality_] or [0] * n)
    assert np.array_equal(integ != 0, np.asarray(p.integrality) != 0)
    A, lo, hi = expected_rows(p, fmt)
    assert lp.num_row_ == A.shape[0]
    a = lp.a_matrix_
    got = sp.csc_matrix((a.value_, a.index_, a.start_), shape=(lp.num_row_, n))
    assert abs(got - A).max() == 0 if A.nnz or got.nnz else True
    assert np.array_equal(lp.row_lower_, lo)
    # MPS ranges give hi as lo + (hi - lo): equal up to rounding
    np.testing.assert_allclose(lp.row_upper_, hi, rtol=1e-12, atol=1e-12)


def random_milp(seed: int) -> Milp:
    """A small MILP with every feature: continuous, integer and binary columns; free, fixed,
    half-infinite and boxed bounds; E/L/G/ranged/free rows; either sense; a constant."""
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(2, 8)), int(rng.integers(1, 6))
    kind = rng.choice(["continuous", "integer", "binary"], n)
    lb, ub = np.zeros(n), np.zeros(n)
    for j in range(n):
        a, b = sorted(rng.integers(-4, 5, 2) / (1 if kind[j] != "continuous" else 2))
        shape = rng.choice(["box", "box", "fixed", "free", "lower", "upper", "default"])
        if kind[j] == "binary":
            lb[j], ub[j] = (0, 1) if shape != "fixed" else (1, 1)
            continue
        lb[j], ub[j] = {"box": (a, b), "fixed": (a, a), "free": (-INF, INF), "lower": (a, INF),
                        "upper": (-INF, b), "default": (0, INF)}[shape]
    A = rng.integers(-3, 4, (m, n)) * (rng.random((m, n)) < 0.7) / rng.choice([1, 2], (m, 1))
    lo, hi = np.zeros(m), np.zeros(m)
    for i in range(m):
        a, b = sorted(rng.integers(-6, 7, 2) / 2)
        lo[i], hi[i] = {"E": (a, a), "L": (-INF, b), "G": (a, INF), "R": (a, b + 1), "N": (-INF, INF)}[
            rng.choice(["E", "L", "G", "R", "R", "N"])]
    c = rng.integers(-3, 4, n) / rng.choice([1, 2, 4])
    p = Milp(c, sp.csr_matrix(A), lo, hi, lb, ub, (kind != "continuous").astype(np.uint8),
             [f"v{j}" for j in range(n)], [f"c{i}" for i in range(m)], {}, str(rng.choice(["min", "max"])),
             float(rng.integers(-5, 6)) / 2)
    return p


@pytest.mark.parametrize("fmt", ["mps", "lp"])
def test_random_milps_round_trip(fmt, tmp_path):
    """60 random MILPs per format: HiGHS reads back exactly the model and finds the in-memory
    optimum, or the same infeasible/unbounded status."""
    statuses = set()
    for seed in range(60):
        p = random_milp(seed)
        path = tmp_path / f"m{seed}.{fmt}"
        WRITERS[fmt](p, path)
        h = read_highs(path)
        assert_same_model(h, p, fmt)
        ref = solve(p)
        status, obj = highs_solve(h)
        assert status == ref.status, (seed, ref.message, path.read_text())
        if status == "optimal":
            assert obj == pytest.approx(ref.objective, abs=1e-6), (seed, path.read_text())
        statuses.add(status)
    assert statuses == {"optimal", "infeasible", "unbounded"}  # the grid covers all three


ODD = ["x y", "1abc", "a:b", "\u00e4", "", "obj", "dup", "dup", "e1", "free", "st", "End", "s.t.", "[x]",
       "-x", "+x", "x\ty", "inf", "good_name.1", "n" * 300, "bin", "R1"]


@pytest.mark.parametrize("fmt", ["mps", "lp"])
def test_odd_names(fmt, tmp_path):
    """Names with spaces, operators, non-ASCII, LP keywords, duplicates, leading digits and 300
    characters are made safe and unique; safe names are kept; HiGHS reads and solves the file."""
    n = len(ODD)
    rng = np.random.default_rng(1)
    A = sp.csr_matrix(rng.integers(-2, 3, (n, n)) * (rng.random((n, n)) < 0.3))
    rows = ODD[::-1]
    hi = np.r_[np.full(n // 2, 3.0), np.full(n - n // 2, 5.0)]
    p = Milp(rng.integers(-2, 3, n).astype(float), A, np.full(n, -3.0), hi,
             np.full(n, -2.0), np.full(n, 2.0), (np.arange(n) % 2).astype(np.uint8), ODD, rows, {}, "max")
    path = tmp_path / f"odd.{fmt}"
    WRITERS[fmt](p, path)
    h = read_highs(path)
    assert_same_model(h, p, fmt)
    cols = list(h.getLp().col_names_)
    assert len(set(cols)) == n and all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{0,254}", c) for c in cols)
    assert cols[ODD.index("good_name.1")] == "good_name.1" and cols[ODD.index("R1")] == "R1"
    assert "obj" not in h.getLp().row_names_
    ref = solve(p)
    status, obj = highs_solve(h)
    assert status == ref.status == "optimal" and obj == pytest.approx(ref.objective, abs=1e-6)


def test_safe_names_unique_and_stable():
    """safe_names keeps valid names, fixes the rest, breaks ties with suffixes, and is a function
    of its input (same names in, same names out)."""
    names = ["a", "a", "a_1", "1", "", "max", "x-y", "x_y"]
    out = safe_names(names, len(names), "v")
    assert out == safe_names(names, len(names), "v")
    assert len(set(out)) == len(out) and out[0] == "a" and out[6] != out[7]
    assert safe_names(None, 3, "v") == ["v0", "v1", "v2"]
    assert safe_names(["a"], 2, "v") == ["v0", "v1"]  # wrong length: generated names


def test_mps_sections(tmp_path):
    """The MPS text has the sections and entries promised: OBJSENSE MAX, integer markers, BV for
    binaries, explicit bounds on integers, RANGES for lo < hi rows, the constant as -RHS of obj."""
    p = Milp(np.array([1.0, 2.0, 0.0]), sp.csr_matrix([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]), np.array([1.0, -INF]),
             np.array([4.0, 3.0]), np.array([0.0, -5.0, -INF]), np.array([1.0, INF, INF]),
             np.array([1, 1, 0], np.uint8), ["b", "i", "f"], ["rng", "le"], {}, "max", 3.0)
    write_mps(p, tmp_path / "p.mps")
    text = (tmp_path / "p.mps").read_text().splitlines()
    assert text[:3] == ["NAME tamec", "OBJSENSE", "    MAX"] and text[-1] == "ENDATA"
    assert text.count("    MARKER 'MARKER' 'INTORG'") == 1 and " G  rng" in text and " L  le" in text
    assert {" BV BND b", " LO BND i -5", " PL BND i", " FR BND f", "    RHS obj -3", "    RNG rng 3"} <= set(text)


def test_writers_refuse_non_finite_data(tmp_path):
    """NaN coefficients or bounds are refused with a VerificationError, not written."""
    from tamec.errors import VerificationError

    p = random_milp(0)
    p.A.data[0] = np.nan
    for w in WRITERS.values():
        with pytest.raises(VerificationError, match="non-finite"):
            w(p, tmp_path / "bad")


def test_million_nonzeros_write_fast(tmp_path):
    """A 10^6-nonzero MILP writes in a few seconds in each format and HiGHS reads every nonzero."""
    rng = np.random.default_rng(0)
    m, n = 5000, 40000
    per = 25  # nonzeros a column, in distinct rows (stride 197: 25 * 197 < m)
    rows = (rng.integers(0, m, n)[:, None] + 197 * np.arange(per)).ravel() % m
    A = sp.csc_matrix((rng.choice([-1.0, 1.0, 2.0], n * per), rows, per * np.arange(n + 1)), shape=(m, n)).tocsr()
    assert A.nnz == 10 ** 6
    integ = (rng.random(n) < 0.5).astype(np.uint8)
    p = Milp(rng.integers(-3, 4, n).astype(float), A, np.full(m, -1.0), np.where(rng.random(m) < 0.5, 1.0, INF),
             np.where(integ, 0, -1.0), np.where(integ, 1, 2.0), integ, [f"b.x.{j}" for j in range(n)],
             [f"b.r.{i}" for i in range(m)], {})
    for fmt, w in WRITERS.items():
        t0 = time.perf_counter()
        w(p, tmp_path / f"big.{fmt}")
        assert time.perf_counter() - t0 < 10, f"{fmt} writer too slow"
    h = read_highs(tmp_path / "big.mps")
    assert h.getNumCol() == n and h.getNumRow() == m and h.getNumNz() == A.nnz


def test_lowered_network_mps(tmp_path):
    """The MPS of a real lowered network (mlp_sign) reads back exactly; with the input fixed and
    the objective the sum of the outputs, the file and the in-memory solve agree."""
    lower = pytest.importorskip("tamec.lower.inference")
    import tamec
    from tests.conftest import MODELS

    mod = lower.lower_inference(tamec.compile(str(MODELS / "mlp_sign.onnx")).graph)
    p = mod.assemble()
    write_mps(p, tmp_path / "net.mps")
    assert_same_model(read_highs(tmp_path / "net.mps"), p, "mps")
    rng = np.random.default_rng(0)
    for places in mod.meta["inputs"].values():
        for blk, grp in places:
            cols = p.col(blk, grp)
            p.lb[cols] = p.ub[cols] = np.round(rng.uniform(p.lb[cols], p.ub[cols]), 3)
    p.c = np.zeros_like(p.c)
    for places in mod.meta["outputs"].values():
        for blk, grp in places:
            p.c[p.col(blk, grp)] = 1.0
    write_mps(p, tmp_path / "fixed.mps")
    ref = solve(p, time_limit=20)
    status, obj = highs_solve(read_highs(tmp_path / "fixed.mps"))
    assert status == ref.status == "optimal" and obj == pytest.approx(ref.objective, abs=1e-5)
