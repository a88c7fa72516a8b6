"""Solving MILPs and LPs with HiGHS (highspy), reporting everything it says.

Status, objective, dual bound, gap and node count are returned, never swallowed: a time or node
limit gives status "limit" with the best bound known, which callers turn into an `unknown`
answer rather than a wrong one.

Ctrl-C: HiGHS runs in C++ and Python only sees a signal when it returns, so a long solve runs
in a worker thread while the main thread waits in short slices; a KeyboardInterrupt there asks
HiGHS to stop through its interrupt callbacks (highspy's `cbSimplexInterrupt`, `cbIpmInterrupt`,
`cbMipInterrupt`), and the solve returns status "interrupted" with the incumbent and the bound
HiGHS had. The same callbacks enforce `time_limit` as a wall-clock deadline, which HiGHS's own
option overshoots (presolve and the root LP run past it by a second or more).
"""
from __future__ import annotations

import atexit
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tamec.errors import UsageError
from tamec.ir.mip import Milp



@dataclass
class Solution:
    """What HiGHS found. `objective` and `bound` are in the problem's own sense (max stays max)."""

    status: str
    x: np.ndarray | None
    objective: float | None
    bound: float | None
    gap: float | None
    nodes: int
    message: str
    seconds: float = 0.0
    interrupted: bool = False  # Ctrl-C arrived during the solve: the caller should stop


    @property
    def ok(self) -> bool:
        return self.status == "optimal"

    def to_json(self) -> dict:
        return {"status": self.status, "objective": self.objective, "bound": self.bound, "gap": self.gap,
                "nodes": self.nodes, "message": self.message, "seconds": self.seconds}


_QUIET = []


def _new_highs():
    """A Highs instance; the first one prints a banner on the C stdout, which would corrupt
    `--json` output, so that one is made with fd 1 pointed at /dev/null."""
    import os

    import highspy

    if _QUIET:
        return highspy.Highs()
    import sys

    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
    _QUIET.append(True)
    return h


def _highs_model(p: Milp, cost: np.ndarray, integ: np.ndarray, sense: str):
    import highspy

    h = _new_highs()
    h.setOptionValue("output_flag", False)
    inf = h.getInfinity()
    A = p.A.tocsc()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = A.shape[1], A.shape[0]
    clip = lambda a: np.clip(np.asarray(a, np.float64), -inf, inf)  # noqa: E731
    lp.col_cost_ = cost
    lp.col_lower_, lp.col_upper_ = clip(p.lb), clip(p.ub)
    lp.row_lower_, lp.row_upper_ = clip(p.lo), clip(p.hi)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A.indptr, A.indices, A.data
    lp.sense_ = highspy.ObjSense.kMinimize if sense == "min" else highspy.ObjSense.kMaximize
    if np.any(integ):
        lp.integrality_ = [highspy.HighsVarType.kInteger if k else highspy.HighsVarType.kContinuous for k in integ]
    h.passModel(lp)
    return h


@dataclass
class Progress:
    """What a running MIP solve reports to `solve(progress=...)`, read from HiGHS's callbacks."""

    seconds: float
    primal: float | None
    dual: float | None
    nodes: int


GRACE = 1.0  # seconds HiGHS gets to return after Ctrl-C or its deadline before tamec stops waiting
ABANDONED: list = []  # (Highs, done Event) of workers still running HiGHS after tamec stopped waiting


@atexit.register
def _await_abandoned() -> None:
    """Wait (bounded) for abandoned HiGHS workers, told to stop, to reach their next callback:
    exiting while HiGHS's C++ threads run aborts the process. The CLI skips this by os._exit."""
    for _, done in ABANDONED:
        done.wait(120)


def _run(h, deadline: float | None, progress: Callable[[Progress], None] | None) -> dict:
    """h.run(), stoppable by Ctrl-C and by `deadline` (a time.perf_counter() value). Returns
    {"user": Ctrl-C seen, "abandoned": HiGHS still running GRACE s after Ctrl-C or the
    deadline, "seen": the last (primal, dual, nodes) of a MIP callback, "x": the last improving
    MIP solution}. Some HiGHS phases (presolve, root cut rounds) check no callback for seconds;
    tamec then stops waiting and answers from what the callbacks said, and the worker (a daemon
    thread, told to stop) ends at its next callback or with the process. Off the main thread
    (executors) no signal can arrive, so HiGHS runs in place, with the callbacks only for a
    deadline."""
    main = threading.current_thread() is threading.main_thread()
    state = {"stop": False, "seen": None, "x": None, "user": False, "abandoned": False}
    if not main and deadline is None:
        h.run()
        return state
    t0 = time.perf_counter()
    kinds = _cb().HighsCallbackType
    fin = lambda v: float(v) if abs(v) < 1e20 else None  # noqa: E731  HiGHS's +-inf

    def on_event(e) -> None:
        o = e.data_out
        if e.callback_type == kinds.kCallbackMipImprovingSolution:
            state["x"] = (np.array(o.mip_solution, np.float64), float(o.objective_function_value))
            return
        if e.callback_type == kinds.kCallbackMipInterrupt:
            state["seen"] = (fin(o.mip_primal_bound), fin(o.mip_dual_bound), int(o.mip_node_count))
        if state["stop"] or (deadline is not None and time.perf_counter() >= deadline):
            e.interrupt()

    for cb in (h.cbSimplexInterrupt, h.cbIpmInterrupt, h.cbMipInterrupt, h.cbMipImprovingSolution):
        cb.subscribe(on_event)
    if not main:
        h.run()
        return state
    # an Event, not Thread.join: a join that Ctrl-C interrupts marks a live thread as stopped
    # (CPython 3.11's _wait_for_tstate_lock releases the lock the running thread holds)
    done = threading.Event()

    def work() -> None:
        try:
            h.run()
        finally:
            done.set()

    threading.Thread(target=work, name="tamec-highs", daemon=True).start()
    hard = None if deadline is None else deadline + GRACE
    while not done.is_set():
        try:
            done.wait(0.2)
            if progress is not None and state["seen"] is not None:
                progress(Progress(time.perf_counter() - t0, *state["seen"]))
            if hard is not None and time.perf_counter() > hard and not done.is_set():
                state["stop"] = state["abandoned"] = True
        except KeyboardInterrupt:
            state["user"] = state["stop"] = True  # HiGHS stops at its next callback, incumbent kept
            state["abandoned"] = not done.wait(GRACE)
        if state["abandoned"]:
            ABANDONED.append((h, done))  # h kept alive: the worker still uses it
            break
    return state


def _cb():
    import highspy

    return highspy.cb


def solve(p: Milp, *, time_limit: float | None = None, node_limit: int | None = None,
          mip_rel_gap: float | None = None, relax: bool = False, c: np.ndarray | None = None,
          sense: str | None = None, start: np.ndarray | None = None,
          progress: Callable[[Progress], None] | None = None) -> Solution:
    """Solve `p` (or its LP relaxation with `relax=True`), optionally with another objective
    `c` and `sense` ("min" or "max"), from a known feasible point `start` (a warm start: HiGHS
    then always has an incumbent to report). `time_limit` is wall-clock seconds for this call;
    Ctrl-C gives status "interrupted" with what HiGHS had (module doc); `progress` is called
    a few times a second with the incumbent and bound of a running MIP."""
    import highspy

    sense = sense or p.sense
    if sense not in ("min", "max"):
        raise UsageError(f"objective sense {sense!r}", hint="use 'min' or 'max'")
    cost = np.asarray(p.c if c is None else c, np.float64)
    integ = np.zeros_like(p.integrality) if relax else p.integrality
    if cost.size == 0:  # no columns: HiGHS refuses the model; the rows alone decide feasibility
        ok = bool(np.all(p.lo <= 0) and np.all(p.hi >= 0))
        return Solution("optimal" if ok else "infeasible", np.zeros(0), p.constant if ok else None,
                        p.constant if ok else None, 0.0 if ok else None, 0, "model has no variables")
    t0 = time.perf_counter()
    if time_limit is not None and time_limit <= 0:  # a spent budget: no solve, no answer
        return Solution("limit", None, None, None, None, 0, "time budget spent before this solve")
    deadline = None if time_limit is None else t0 + float(time_limit)
    h = _highs_model(p, cost, integ, sense)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    if node_limit is not None and not relax:
        h.setOptionValue("mip_max_nodes", int(node_limit))
    if mip_rel_gap is not None and not relax:
        h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
    if start is not None:
        sol0 = highspy.HighsSolution()
        sol0.col_value = np.asarray(start, np.float64)
        sol0.value_valid = True
        h.setSolution(sol0)
    run = _run(h, deadline, progress)
    user_stop = run["user"]
    if run["abandoned"]:  # HiGHS is still busy: answer from what its callbacks last said
        _, db, nodes = run["seen"] or (None, None, 0)
        x, obj = run["x"] or ((start, float(cost @ start)) if start is not None else (None, None))
        status = "interrupted" if user_stop else "limit"
        why = "interrupted by the user" if user_stop else f"time limit {time_limit:g} s"
        return Solution(status, x, None if obj is None else obj + p.constant,
                        None if db is None or relax else db + p.constant, None, nodes,
                        f"{why}; HiGHS did not stop within {GRACE:g} s, answer from its last callback",
                        time.perf_counter() - t0, user_stop)
    ms = h.getModelStatus()
    M = highspy.HighsModelStatus
    status = {M.kOptimal: "optimal", M.kInfeasible: "infeasible", M.kUnbounded: "unbounded",
              M.kTimeLimit: "limit", M.kIterationLimit: "limit", M.kSolutionLimit: "limit",
              M.kInterrupt: "limit", M.kObjectiveBound: "limit", M.kObjectiveTarget: "limit"}.get(ms, "error")
    if ms == M.kInterrupt and user_stop:
        status = "interrupted"
    if ms == M.kUnboundedOrInfeasible:  # feasible => unbounded (rational data), else infeasible
        feas = solve(p, time_limit=time_limit, node_limit=node_limit, relax=relax, c=np.zeros_like(cost))
        status = {"optimal": "unbounded", "limit": "limit", "infeasible": "infeasible"}.get(feas.status, "error")
    info = h.getInfo()
    has_x = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.asarray(h.getSolution().col_value) if has_x else None
    obj = float(info.objective_function_value) + p.constant if has_x else None
    is_mip = bool(np.any(integ))
    if is_mip:
        bound = float(info.mip_dual_bound)
        bound = None if not np.isfinite(bound) or abs(bound) >= h.getInfinity() else bound + p.constant
        gap = float(info.mip_gap) if has_x and np.isfinite(info.mip_gap) else None
        nodes = int(info.mip_node_count)
    else:
        bound, gap, nodes = (obj if status == "optimal" else None), (0.0 if status == "optimal" else None), 0
    if status in ("unbounded", "infeasible"):
        x = obj = bound = gap = None  # a primal point of an unbounded model is no answer
    if status == "optimal" and bound is None:
        bound = obj
    return Solution(status, x, obj, bound, gap, nodes, h.modelStatusToString(ms), time.perf_counter() - t0,
                    user_stop)


def infeasible_row_groups(mod, relax: bool = True) -> list[tuple[str, str, str]]:
    """A minimal set of (block, row group, op) that together are infeasible (a deletion filter
    over row groups; the LP relaxation by default), or [] when the module is feasible."""
    from tamec.ir.mip import MipModule

    def feasible(keep: list[tuple[int, int]]) -> bool:
        blocks = []
        for bi, b in enumerate(mod.blocks):
            nb = b.copy()
            nb.rows = [r for ri, r in enumerate(b.rows) if (bi, ri) in keep]
            nb.c = None
            blocks.append(nb)
        p = MipModule(blocks, mod.links, mod.meta).assemble()
        return solve(p, relax=relax, c=np.zeros(p.A.shape[1])).status != "infeasible"

    keep = [(bi, ri) for bi, b in enumerate(mod.blocks) for ri in range(len(b.rows))]
    if feasible(keep):
        return []
    for item in list(keep):
        trial = [k for k in keep if k != item]
        if not feasible(trial):
            keep = trial
    return [(mod.blocks[bi].name, mod.blocks[bi].rows[ri].name, mod.blocks[bi].rows[ri].op) for bi, ri in keep]
