"""MILP export: free MPS and CPLEX LP files that HiGHS, SCIP, CPLEX and Gurobi read.

Both writers take a flat `tamec.ir.mip.Milp` (`MipModule.assemble()`), keep its column order and
its variable and row names (made safe for both formats, unique, at most 255 characters), and
write every number with `repr`, so a reader gets back exactly the floats tamec solved.

Choices a reader of the files should know:
  MPS  integer columns always get explicit bounds (HiGHS and CPLEX read an integer column without
       bounds as binary); {0,1} integers are `BV`; `lo < hi` rows, both finite, are `G` rows with a
       `RANGES` entry `hi - lo`; free rows are extra `N` rows (readers drop them); the objective
       constant is the objective row's RHS, negated (the MPS convention).
  LP   every column appears in the objective (with coefficient 0 if need be) so readers create the
       columns in tamec's order; ranged rows become two rows `<name>_lo` and `<name>_hi` (the
       `lo <= expr <= hi` form is not read by HiGHS); free rows are left out.
Building the text is vectorized over the CSC/CSR arrays: one pass over the nonzeros, strings
joined once, so a 10^6-nonzero MILP writes in a few seconds.
"""
from __future__ import annotations

import os
import re

import numpy as np
import scipy.sparse as sp

from tamec.errors import VerificationError
from tamec.ir.mip import Milp

# Names both formats accept: no spaces or operators, not starting with a digit or a period (CPLEX),
# and not an LP keyword (HiGHS reads `st`, `bin`, `end`, `inf` ... as section markers or numbers).
_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,254}\Z")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9_.]")
_LP_WORDS = frozenset("""max maximize maximise maximum min minimize minimise minimum st s.t. st. subject
    such that to bound bounds general generals gen integer integers int binary binaries bin semi
    semis semi-continuous sos sos1 sos2 end free inf infinity obj""".split())
_MAX_NAME = 255


def safe_names(names, n: int, default: str, taken: set[str] | None = None) -> list[str]:
    """`n` unique names valid in MPS and LP files; `names` (or `default<i>` when absent or of the
    wrong length) with bad characters replaced by `_`, a `_` prefix where the first character or
    the whole name is not allowed, and `_<k>` suffixes to break ties. `taken` is updated."""
    names = list(names) if names is not None and len(names) == n else [f"{default}{i}" for i in range(n)]
    taken = set() if taken is None else taken
    out = []
    for s in names:
        s = str(s)
        if not _OK.match(s) or s.lower() in _LP_WORDS:
            s = _BAD_CHAR.sub("_", s)
            if not s or not (s[0].isalpha() or s[0] == "_") or s.lower() in _LP_WORDS:
                s = "_" + s
            s = s[:_MAX_NAME]
        if s in taken:
            s = _untaken(s, taken)
        taken.add(s)
        out.append(s)
    return out


def _untaken(s: str, taken: set[str]) -> str:
    k = 1
    while True:
        tail = f"_{k}"
        cand = s[:_MAX_NAME - len(tail)] + tail
        if cand not in taken:
            return cand
        k += 1


def _num(a) -> list[str]:
    """Shortest strings that read back as the same float64 (`repr`), integers without `.0`.
    Formats each distinct value once: BNN rows repeat a handful of coefficients."""
    a = np.asarray(a, np.float64).ravel()
    if a.size == 0:
        return []
    uniq, inv = np.unique(a, return_inverse=True)
    ints = (uniq == np.round(uniq)) & (np.abs(uniq) < 1e15)
    text = np.array([str(int(v)) if k else repr(v) for v, k in zip(uniq.tolist(), ints.tolist())], dtype=object)
    return text[inv].tolist()


def _check(milp: Milp) -> tuple[sp.csr_matrix, int, int]:
    A = sp.csr_matrix(milp.A, dtype=np.float64)
    m, n = A.shape
    for what, arr, size in (("c", milp.c, n), ("lb", milp.lb, n), ("ub", milp.ub, n), ("lo", milp.lo, m),
                            ("hi", milp.hi, m), ("integrality", milp.integrality, n)):
        if np.asarray(arr).shape != (size,):
            raise VerificationError(f"MILP {what} has shape {np.asarray(arr).shape}, expected ({size},)",
                                    hint="build the Milp with MipModule.assemble()")
    bad = [w for w, arr in (("coefficients", A.data), ("objective", milp.c)) if not np.all(np.isfinite(arr))]
    bad += [w for w, arr in (("variable bounds", np.r_[milp.lb, milp.ub]), ("row bounds", np.r_[milp.lo, milp.hi]))
            if np.any(np.isnan(arr))]
    if bad or not np.isfinite(milp.constant):
        raise VerificationError(f"MILP has non-finite {', '.join(bad) or 'objective constant'}",
                                hint="run verify_mip on the module; MPS and LP files hold finite data only")
    if milp.sense not in ("min", "max"):
        raise VerificationError(f"MILP objective sense {milp.sense!r}", hint="use 'min' or 'max'")
    A.sum_duplicates()
    return A, m, n


def _row_kinds(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per row: 0 free, 1 E, 2 G, 3 L, 4 ranged (both finite, lo < hi)."""
    flo, fhi = np.isfinite(lo), np.isfinite(hi)
    kind = np.zeros(lo.size, np.int8)
    kind[flo & ~fhi] = 2
    kind[~flo & fhi] = 3
    both = flo & fhi
    kind[both & (lo == hi)] = 1
    kind[both & (lo != hi)] = 4
    return kind


def write_mps(milp: Milp, path: str | os.PathLike, name: str = "tamec") -> None:
    """Write `milp` as a free-format MPS file."""
    A, m, n = _check(milp)
    rows = safe_names(milp.row_names, m, "r", {"obj"})
    cols = np.array(safe_names(milp.var_names, n, "x"), dtype=object)
    rows_arr = np.array(rows + ["obj"], dtype=object)  # index m is the objective row
    lo, hi = np.asarray(milp.lo, np.float64), np.asarray(milp.hi, np.float64)
    kind = _row_kinds(lo, hi)
    out = [f"NAME {safe_names([name], 1, 'tamec')[0]}"]
    if milp.sense == "max":
        out += ["OBJSENSE", "    MAX"]
    out.append("ROWS")
    out.append(" N  obj")
    letter = np.array(["N", "E", "G", "L", "G"], dtype=object)[kind]
    out += [f" {t}  {r}" for t, r in zip(letter.tolist(), rows)]

    # COLUMNS: one entry a line, column by column; the objective entry first, and written for
    # empty columns too so that every column is declared.
    C = A.tocsc()
    C.sort_indices()
    c = np.asarray(milp.c, np.float64)
    counts = np.diff(C.indptr)
    obj_cols = np.flatnonzero((c != 0) | (counts == 0))
    ent_col = np.r_[obj_cols, np.repeat(np.arange(n), counts)]
    ent_row = np.r_[np.full(obj_cols.size, m), C.indices]
    ent_val = np.r_[c[obj_cols], C.data]
    order = np.lexsort((ent_row != m, ent_col))  # by column, objective entry first
    ent_col, ent_row, ent_val = ent_col[order], ent_row[order], ent_val[order]
    lines = [f"    {a} {b} {v}" for a, b, v in zip(cols[ent_col].tolist(), rows_arr[ent_row].tolist(), _num(ent_val))]
    start = np.searchsorted(ent_col, np.arange(n + 1))  # first entry of each column
    integ = np.asarray(milp.integrality) != 0
    out.append("COLUMNS")
    cuts = np.r_[0, np.flatnonzero(np.diff(integ.astype(np.int8))) + 1, n]
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        if a == b:
            continue
        seg = lines[start[a]:start[b]]
        if integ[a]:
            out += ["    MARKER 'MARKER' 'INTORG'", *seg, "    MARKER 'MARKER' 'INTEND'"]
        else:
            out += seg

    # RHS: E/G/ranged rows hold lo, L rows hi; the objective row holds minus the constant.
    rhs = np.where(kind == 3, hi, lo)
    has = np.flatnonzero((kind != 0) & (rhs != 0))
    out.append("RHS")
    if milp.constant:
        out.append(f"    RHS obj {_num([-milp.constant])[0]}")
    out += [f"    RHS {r} {v}" for r, v in zip(rows_arr[has].tolist(), _num(rhs[has]))]
    rng = np.flatnonzero(kind == 4)
    if rng.size:
        out.append("RANGES")
        out += [f"    RNG {r} {v}" for r, v in zip(rows_arr[rng].tolist(), _num(hi[rng] - lo[rng]))]
    out += _mps_bounds(cols, np.asarray(milp.lb, np.float64), np.asarray(milp.ub, np.float64), integ)
    out.append("ENDATA\n")
    _write(path, out)


def _mps_bounds(cols: np.ndarray, lb: np.ndarray, ub: np.ndarray, integ: np.ndarray) -> list[str]:
    """BOUNDS lines, per column the lower bound before the upper (UP < 0 after MI or LO)."""
    parts: list[tuple[np.ndarray, int, list[str]]] = []  # (columns, 0 lower / 1 upper, lines)

    def add(mask, key, tag, vals=None):
        j = np.flatnonzero(mask)
        if j.size:
            names = cols[j].tolist()
            text = ([f" {tag} BND {c}" for c in names] if vals is None else
                    [f" {tag} BND {c} {v}" for c, v in zip(names, _num(vals[j]))])
            parts.append((j, key, text))

    flb, fub = np.isfinite(lb), np.isfinite(ub)
    fixed = flb & (lb == ub)
    binary = integ & (lb == 0) & (ub == 1)
    free = ~flb & ~fub & (lb < 0) & (ub > 0)
    rest = ~fixed & ~binary & ~free
    add(fixed, 0, "FX", lb)
    add(binary, 0, "BV")
    add(free, 0, "FR")
    add(rest & ~flb & (lb < 0), 0, "MI")
    # integers always carry explicit bounds; continuous columns skip the default lower bound 0
    # unless the upper bound is negative (old readers then move the lower bound to -inf)
    add(rest & flb & ((lb != 0) | integ | (ub < 0)), 0, "LO", lb)
    add(rest & ~flb & (lb > 0), 0, "LO", lb)  # lb = +inf: an infeasible column, kept as written
    add(rest & fub, 1, "UP", ub)
    add(rest & ~fub & (ub < 0), 1, "UP", ub)  # ub = -inf, likewise
    add(rest & integ & ~fub & (ub > 0), 1, "PL")
    if not parts:
        return []
    j = np.concatenate([p[0] for p in parts])
    key = np.concatenate([np.full(p[0].size, p[1]) for p in parts])
    text = [t for p in parts for t in p[2]]
    order = np.lexsort((key, j))
    return ["BOUNDS"] + [text[k] for k in order.tolist()]


def write_lp(milp: Milp, path: str | os.PathLike, name: str = "tamec") -> None:
    """Write `milp` as a CPLEX LP file."""
    A, m, n = _check(milp)
    if n == 0:
        raise VerificationError("MILP has no variables", hint="an LP file needs at least one column")
    lo, hi = np.asarray(milp.lo, np.float64), np.asarray(milp.hi, np.float64)
    kind = _row_kinds(lo, hi)
    cols_list = safe_names(milp.var_names, n, "x")
    cols = np.array(cols_list, dtype=object)
    # row names: ranged rows become <name>_lo and <name>_hi, all unique among themselves
    base = safe_names(milp.row_names, m, "r", {"obj"})
    taken = {"obj"} | {r for r, k in zip(base, kind.tolist()) if k in (1, 2, 3)}
    lo_name, hi_name = {}, {}
    for i in np.flatnonzero(kind == 4).tolist():
        lo_name[i] = safe_names([base[i] + "_lo"], 1, "r", taken)[0]
        hi_name[i] = safe_names([base[i] + "_hi"], 1, "r", taken)[0]

    out = [f"\\ {safe_names([name], 1, 'tamec')[0]}: written by tamec",
           "Maximize" if milp.sense == "max" else "Minimize"]
    c = np.asarray(milp.c, np.float64)
    obj_terms = _terms(c, cols, keep_zero=True)
    if milp.constant:
        k = _num([abs(milp.constant)])[0]
        obj_terms.append(("- " if milp.constant < 0 else "+ ") + k)
    out.append(" obj: " + _wrap(obj_terms))

    out.append("Subject To")
    R = A.tocsr()
    R.sort_indices()
    terms = _terms(R.data, cols[R.indices])
    ptr = R.indptr.tolist()
    rhs_lo, rhs_hi = _num(lo), _num(hi)
    first = f"0 {cols_list[0]}"
    for i, k in enumerate(kind.tolist()):
        if k == 0:
            continue
        expr = _wrap(terms[ptr[i]:ptr[i + 1]]) if ptr[i + 1] > ptr[i] else first
        if k == 1:
            out.append(f" {base[i]}: {expr} = {rhs_lo[i]}")
        elif k == 2:
            out.append(f" {base[i]}: {expr} >= {rhs_lo[i]}")
        elif k == 3:
            out.append(f" {base[i]}: {expr} <= {rhs_hi[i]}")
        else:
            out.append(f" {lo_name[i]}: {expr} >= {rhs_lo[i]}")
            out.append(f" {hi_name[i]}: {expr} <= {rhs_hi[i]}")

    lb, ub = np.asarray(milp.lb, np.float64), np.asarray(milp.ub, np.float64)
    integ = np.asarray(milp.integrality) != 0
    binary = integ & (lb == 0) & (ub == 1)
    out.append("Bounds")
    out += _lp_bounds(cols, lb, ub, ~binary)
    gen = np.flatnonzero(integ & ~binary)
    if gen.size:
        out += ["General", " " + _wrap(cols[gen].tolist())]
    if binary.any():
        out += ["Binary", " " + _wrap(cols[binary].tolist())]
    out.append("End\n")
    _write(path, out)


def _terms(vals: np.ndarray, names: np.ndarray, keep_zero: bool = False) -> list[str]:
    """`+ 2.5 x`, `- y` (coefficient 1 left out), `+ 0 z` where kept."""
    vals = np.asarray(vals, np.float64)
    mag = _num(np.abs(vals))
    one = (np.abs(vals) == 1).tolist()
    sign = np.where(np.signbit(vals) & (vals != 0), "- ", "+ ").tolist()
    out = [f"{s}{nm}" if o else f"{s}{v} {nm}" for s, v, o, nm in zip(sign, mag, one, names.tolist())]
    if not keep_zero:
        nz = (vals != 0).tolist()
        out = [t for t, k in zip(out, nz) if k]
    return out


def _wrap(items: list[str], per_line: int = 8) -> str:
    """Join with spaces, `per_line` items a line (CPLEX caps line length)."""
    if len(items) <= per_line:
        return " ".join(items)
    return "\n  ".join(" ".join(items[k:k + per_line]) for k in range(0, len(items), per_line))


def _lp_bounds(cols: np.ndarray, lb: np.ndarray, ub: np.ndarray, mask: np.ndarray) -> list[str]:
    """Bounds lines for the columns in `mask` whose bounds differ from the default [0, inf)."""
    flb, fub = np.isfinite(lb), np.isfinite(ub)
    slb, sub = _num(lb), _num(ub)
    out = []
    for j in np.flatnonzero(mask & ~((lb == 0) & ~fub & (ub > 0))).tolist():
        c = cols[j]
        if flb[j] and lb[j] == ub[j]:
            out.append(f" {c} = {slb[j]}")
        elif not flb[j] and not fub[j] and lb[j] < 0 < ub[j]:
            out.append(f" {c} free")
        else:
            lo_s = slb[j] if flb[j] else ("-inf" if lb[j] < 0 else "+inf")
            hi_s = sub[j] if fub[j] else ("+inf" if ub[j] > 0 else "-inf")
            out.append(f" {lo_s} <= {c} <= {hi_s}")
    return out


def _write(path, lines: list[str]) -> None:
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("\n".join(lines))
