"""The `tamec` command. Exit 0 on success; 2 on a user error, with one line and no traceback."""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from tamec.errors import TamecError, UsageError


def _table(rows: list[list], head: list[str]) -> str:
    cells = [head] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]])


def _key_stats(stats: dict) -> str:
    parts = []
    for k, v in stats.items():
        if isinstance(v, (int, float)) and v and k != "check_batches":
            parts.append(f"{k}={v}")
        elif isinstance(v, dict) and v and k == "not_folded":
            parts.append("not_folded=" + ",".join(f"{r}:{n}" for r, n in v.items()))
    return " ".join(parts)


def pass_table(history) -> str:
    rows = [[r.name, f"{r.seconds * 1000:.1f}", "yes" if r.modified else "no", sum(r.op_counts.values()),
             _key_stats(r.stats)] for r in history]
    return _table(rows, ["pass", "ms", "changed", "ops", "statistics"])


def bounds_table(report: list[dict]) -> str:
    if report and "stable_tightened" in report[0]:
        rows = [[r["op"], r["neurons"], r["stable"], r["stable_tightened"], f"{r['max_big_m']:g}",
                 f"{r['max_big_m_tightened']:g}", r["can_tie"], r["lps"], r["tighten_seconds"]] for r in report]
        return _table(rows, ["threshold layer", "neurons", "stable (interval)", "stable (LP)", "max big-M (interval)",
                             "max big-M (LP)", "can tie", "LPs", "LP s"])
    rows = [[r["op"], r["neurons"], r["stable"], r["unstable"], f"{r['max_big_m']:g}", r["can_tie"]] for r in report]
    return _table(rows, ["threshold layer", "neurons", "stable", "unstable", "max big-M", "can tie"])


def cmd_compile(a) -> int:
    import tamec

    from tamec.errors import Interrupted

    model = a.model or tamec.default_model()
    if a.dump_dir:  # a read-only folder fails here, before the passes run, not at the first dump
        from tamec.files import writable_folder

        writable_folder(a.dump_dir, "--dump-dir")
    from tamec.drivers.report import reporting

    # the report is built from the dumps (in a temporary folder without --dump-dir)
    try:
        with reporting(a.report, a.dump_dir) if a.report else nullcontext(a.dump_dir) as dump_dir:
            m = tamec.compile(model, a.pipeline, a.input_bounds, dump_dir, print_after=a.print_after,
                              stop_after=a.stop_after, check=a.check, tighten=a.tighten, force=a.force,
                              **({"executor": a.executor} if a.executor else {}))
    except Interrupted as e:  # Ctrl-C in LP tightening: the layers tightened so far, then exit 130
        rows = [[r["op"], r["neurons"], r["lps"], f"{r['seconds']:.2f}", r["skipped"] or "done"]
                for r in e.partial or []]
        print(f"interrupted compiling {model} in LP tightening; layers so far (their bounds are not kept):")
        print(_table(rows, ["threshold layer", "neurons", "LPs", "s", "status"]))
        print("tamec: interrupted", file=sys.stderr)
        return 130
    print(f"compiled {model}")
    print(pass_table(m.history))
    if m.reports.get("bounds"):
        print("\ninterval bounds (input box: " + (a.input_bounds or "domain, or [0,1] for real inputs") + ")")
        print(bounds_table(m.reports["bounds"]))
    if a.check:
        print(f"\ncheck: {a.check} probe inputs agree with the original model after every pass")
    if a.dump_dir:
        print(f"dumps in {a.dump_dir}/ (NN-<pass>.tir, NN-<pass>.onnx, stats.json; each MIP once, as "
              "NN-<pass>.mip.tir and .mps of the pass that made it)")
    if a.report:
        print(f"report: {a.report}")
    return 0


def _load_array(path: str) -> np.ndarray:
    from tamec.files import regular_file

    regular_file(path, "pass a .npy file written by numpy.save")  # a FIFO would block np.load forever
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"cannot read {path}: {e}", hint="pass a .npy file written by numpy.save") from None
    if not isinstance(a, np.ndarray):
        a.close()
        raise UsageError(f"{path} is an .npz archive, not one array", hint="pass a .npy file written by numpy.save")
    return a


def _as_model_dtype(a: np.ndarray, dtype, what: str) -> np.ndarray:
    """Cast a float array to the model's float dtype (as `verify` does), saying so on stderr; any
    other mismatch is left for the session's own check to refuse."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:  # a type numpy does not name (the session refuses the feed itself)
        return a
    if a.dtype != dtype and a.dtype.kind == "f" and dtype.kind == "f":
        print(f"tamec: note: {what} cast from {a.dtype.name} to the model's {dtype.name}", file=sys.stderr)
        return a.astype(dtype)
    return a


def cmd_run(a) -> int:
    import tamec

    sess = tamec.Session(a.model)
    names = [i.name for i in sess.get_inputs()]
    feeds = {}
    for spec in a.input:
        name, eq, path = spec.partition("=")
        if not eq:
            if len(names) != 1:
                raise UsageError(f"the model has inputs {names}", hint="write --input NAME=X.npy for each")
            name, path = names[0], spec
        if name not in names:
            raise UsageError(f"the model has no input {name!r}", hint="its inputs: " + ", ".join(names))
        feeds[name] = _as_model_dtype(_load_array(path), sess.graph.values[name].dtype, f"input {name!r} ({path})")
    outs = sess.run(None, feeds)
    onames = [o.name for o in sess.get_outputs()]
    for n, y in zip(onames, outs):
        print(f"{n}: shape {list(y.shape)} dtype {y.dtype}")
        with np.printoptions(precision=6, suppress=True, threshold=200):
            print(y)
    if a.output:
        try:
            if a.output.endswith(".npz"):
                np.savez(a.output, **dict(zip(onames, outs)))
            else:
                np.save(a.output, outs[0])
        except OSError as e:
            raise UsageError(f"cannot write {a.output}: {e.strerror}", hint="pick a writable path") from None
    return 0


def cmd_inspect(a) -> int:
    d = Path(a.dir)
    stats_file = d / "stats.json"
    if not stats_file.is_file():
        raise UsageError(f"{d} has no stats.json", hint="make one with `tamec compile MODEL --dump-dir DIR`")
    data = json.loads(stats_file.read_text())
    if a.html:
        from tamec.drivers.report import write_report

        res = write_report(d, a.html)
        print(f"report: {res['path']} ({res['bytes'] / 1e6:.2f} MB, {res['passes']} passes)")
        return 0
    if a.block is not None:
        return _inspect_block(d, a.block, a.plot)
    if a.plot:
        raise UsageError("--plot draws one block", hint="add --block K")
    if a.show:
        hits = sorted(d.glob(f"*-{a.show}.tir"))
        if not hits:
            raise UsageError(f"no dump for pass {a.show!r} in {d}",
                             hint="passes dumped: " + ", ".join(sorted(p.stem for p in d.glob("*.tir"))))
        print(hits[0].read_text(), end="")
        return 0
    from tamec.module import PassRecord

    print(f"model {data.get('source')}")
    print(pass_table([PassRecord(**r) for r in data["passes"]]))
    if data.get("reports", {}).get("bounds"):
        print()
        print(bounds_table(data["reports"]["bounds"]))
    print("\ndumps: " + ", ".join(sorted(p.name for p in d.glob("*.tir"))))
    return 0


def _inspect_block(d: Path, which: str, plot: str | None = None) -> int:
    """Print block `which` (index or name): its MIP text from the last .mip.tir dump, its dual
    functions and its certificate from certificates.json; with `plot`, draw its dual functions and
    value function to that PNG (tamec/drivers/plot.py)."""
    cert_file = d / "certificates.json"
    if not cert_file.is_file():
        raise UsageError(f"{d} has no certificates.json",
                         hint="compile with a pipeline ending in dualize,tame-check and --dump-dir")
    entries = json.loads(cert_file.read_text())
    names = [e["block"] for e in entries]
    if which in names:
        k = names.index(which)
    elif which.isdigit() and int(which) < len(entries):
        k = int(which)
    else:
        raise UsageError(f"no block {which} in {d}",
                         hint=f"blocks: 0..{len(entries) - 1} or a name ({', '.join(names)})")
    e, name = entries[k], names[k]
    print(f"block {k}: {name}")
    dumps = sorted(d.glob("*.mip.tir"))
    if dumps:
        lines = dumps[-1].read_text().splitlines()
        head = [i for i, ln in enumerate(lines) if ln.startswith(f"  block {name} ") or
                ln.startswith(f'  block "{name}" ')]
        if head:
            end = next((i for i in range(head[0] + 1, len(lines)) if lines[i] == "  }"), len(lines) - 1)
            print(f"\n// MIP ({dumps[-1].name})")
            print("\n".join(lines[head[0]:end + 1]))
    dual = e.get("dualize")
    print("\n// dual functions")
    if dual is None:
        print("  (no dualize report: run the dualize pass)")
    elif dual.get("exact"):
        print(f"  exact: {dual['reason']}")
    else:
        print(f"  neurons {dual['neurons']} (unstable {dual['unstable']}, stable {dual['stable']['count']}: "
              f"{dual['stable']['dual']}), unique keys {dual['unique_keys']}, methods {', '.join(dual['methods'])}")
        if "summary" in dual:
            print(f"  summary: {json.dumps(dual['summary'])}")
        for key in dual.get("keys", [])[:3]:
            kk = key["key"]
            covers = "; ".join(f"{c['op']} rows {','.join(r.rsplit(':', 1)[-1] for r in c['rows'])}"
                               for c in key.get("covers", []))
            if key.get("kind") == "maxpool":
                print(f"  key MaxPool window={kk['window']} encoding={kk['encoding']} ({key['neurons']} outputs; "
                      f"covers {covers})")
            else:
                print(f"  key L-tau={kk['L_minus_tau']:g} U-tau={kk['U_minus_tau']:g} lattice={kk['lattice']} "
                      f"tie={kk['tie']:g} ternary={kk['ternary']} ({key['neurons']} neurons; covers {covers})")
            for m in ("lp", "bb", "chvatal"):
                for g, ent in key.get(m, {}).items():
                    if "certificate" not in ent:
                        print(f"    {m} g={g}: none ({ent.get('skipped', '')})")
                        continue
                    c = ent["certificate"]
                    if m == "chvatal":
                        head = (f"{ent['info'].get('cuts', 0)} rounding layer(s), {ent['info'].get('status')} "
                                f"at s'={ent['s_ref']:g}: field {ent['field']:.6g}")
                    elif key.get("kind") == "maxpool":
                        head = f"{len(ent['pieces'])} piece(s) at x_ref={ent['x_ref']}: field {ent['field']}"
                    else:
                        pcs = "; ".join(f"{p['slope']:.6g} s' + {p['const']:.6g}" for p in ent["pieces"][:4])
                        head = f"{len(ent['pieces'])} piece(s) min[{pcs}] at s'={ent['s_ref']:g}: field {ent['field']:.6g}"
                    print(f"    {m} g={g}: {head}; minorant {c['minorant']['holds']}, dual feasible "
                          f"{c['dual_feasible']['holds']}, gap {c['gap']:.3g}, strong {c['strong']}")
        if len(dual.get("keys", [])) > 3:
            print(f"  ... {len(dual['keys']) - 3} more keys in {cert_file.name}")
    tame = e.get("tame-check")
    print("\n// certificate")
    if tame is None:
        print("  (no tame-check report: run the tame-check pass)")
    else:
        print(f"  verdict {tame['verdict']}: {tame.get('reason') or 'ok'}")
        print(f"  structure {tame['structure']}; lipschitz: {tame.get('lipschitz')}")
        print(f"  nonsmooth pieces {tame['nonsmooth_pieces']['total']}; discontinuous ops "
              f"{', '.join(x['op'] for x in tame.get('discontinuous_ops', [])) or 'none'}")
    if plot:
        from tamec.drivers.plot import plot_block

        res = plot_block(e, plot)
        print(f"\nplot: {res['path']} ({len(res['panels'])} panels: value function and "
              f"{', '.join(sorted({m for p in res['panels'] for m in p['duals']}))} duals of the first keys)")
    return 0


def cmd_diff(a) -> int:
    from tamec.ir.diff import diff_text

    texts = []
    for p in (a.a, a.b):
        try:
            texts.append(Path(p).read_text())
        except OSError as e:
            raise UsageError(f"cannot read {p}: {e.strerror}") from None
    lines = diff_text(*texts)
    print("\n".join(lines) if lines else "no differences")
    return 1 if lines else 0  # as diff(1): 0 same, 1 different, 2 trouble


def cmd_fit_mip(a) -> int:
    from tamec.drivers.fit import arch_from_model, fit_mip, parse_arch

    arch = parse_arch(a.arch) if a.arch else None
    if a.model:
        found = arch_from_model(a.model)
        if arch is not None and arch != found:
            raise UsageError(f"--arch {a.arch} disagrees with {a.model} ({'-'.join(map(str, found))})",
                             hint="give MODEL or --arch, not both")
        arch = found
        print(f"architecture {'-'.join(map(str, arch))} taken from {a.model}")
    arch = arch or [64, 16, 10]
    from tamec.errors import Interrupted

    try:
        rep = fit_mip(arch, a.data, a.per_class, a.time_limit, a.seed, a.out, warm_start=a.warm_start,
                      progress=not a.quiet)
    except Interrupted as e:  # Ctrl-C: the incumbent's network and the bound, then exit 130
        _print_fit(a, arch, e.partial)
        print("tamec: interrupted", file=sys.stderr)
        return 130
    return _print_fit(a, arch, rep)


def _print_fit(a, arch, rep) -> int:
    m, g = rep.mip, rep.gradient
    acc = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    gap = "-" if m["gap"] is None else f"{m['gap']:.1%}"
    print(f"fit {'-'.join(map(str, arch))} on {rep.data}: {rep.examples['train']} training examples "
          f"({rep.per_class} per class, seed {rep.seed}), {rep.examples['test']} test examples")
    num = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
    label = "mip (HiGHS)" if a.warm_start == "none" else "mip (HiGHS, from gradient)"
    print(_table([[label, acc(m["train_acc"]), acc(m["test_acc"]), num(m.get("objective_recomputed")),
                   m["status"], gap, f"{m['seconds']:.1f}"],
                  ["gradient (STE)", acc(g["train_acc"]), acc(g["test_acc"]), num(g["hinge"]), "-", "-",
                   f"{g['seconds']:.1f}"]],
                 ["method", "train acc", "test acc", "train hinge", "solver status", "gap", "seconds"]))
    print(f"mip: objective {num(m['objective'])}, bound {num(m['bound'])}, "
          f"{m['nodes']} nodes, {m['integer_variables']} integer variables, {m['rows']} rows")
    for note in rep.notes:
        print("note: " + note)
    if rep.model_path:
        print(f"model: {rep.model_path}")
    print(f"report: {rep.report_path}")
    return 0


def cmd_verify(a) -> int:
    from tamec.drivers.verify import verify
    from tamec.errors import Interrupted

    x = _load_array(a.input)
    try:
        res = verify(a.model, x, a.eps, norm=a.norm, label=a.label, time_limit=a.time_limit,
                     node_limit=a.node_limit, sample=not a.no_sample, progress=not a.quiet)
    except Interrupted as e:  # Ctrl-C: the classes decided so far, then exit 130
        _print_verify(a, e.partial)
        print("tamec: interrupted", file=sys.stderr)
        return 130
    return _print_verify(a, res)


def _print_verify(a, res) -> int:
    if res.counterexample is not None and a.counterexample_out:
        try:
            np.save(a.counterexample_out, res.counterexample)
        except OSError as e:
            raise UsageError(f"cannot write {a.counterexample_out}: {e.strerror}") from None
    if a.json:
        print(json.dumps(res.to_json(), indent=2))
        return 0
    why = f" ({res.reason})" if res.answer == "unknown" and res.reason and not res.interrupted else ""
    print(f"{res.answer}{why}{' (interrupted)' if res.interrupted else ''}: label {res.label}, "
          f"{a.norm} ball of radius {a.eps:g}"
          + (f" -> class {res.counterexample_label}" if res.counterexample_label is not None else "")
          + f" ({res.seconds:.2f} s)")
    if res.per_class:
        rows = [[e["class"], e["status"], "-" if e["objective"] is None else f"{e['objective']:.4g}",
                 "-" if e["bound"] is None else f"{e['bound']:.4g}", e["nodes"], f"{e['seconds']:.2f}"]
                for e in res.per_class]
        print(_table(rows, ["class", "status", "max logit_j - logit_c", "bound", "nodes", "s"]))
    if res.note:
        print(res.note)
    if res.counterexample is not None and a.counterexample_out:
        print(f"counterexample written to {a.counterexample_out}")
    return 0


def cmd_train(a) -> int:
    from tamec.runtime.train import TrainConfig, train

    explicit = {k for k in TrainConfig.RESUMED if getattr(a, k) is not None}
    cfg = TrainConfig(model=a.model, **{k: getattr(a, k) for k in explicit})
    train(cfg, out=a.out, resume=a.resume, progress=not a.no_progress, explicit=frozenset(explicit),
          full_compile=not a.skip_certify)
    return 0


def _grad_program(a):
    """The GradProgram of a.model with a.rule (the rule name is checked before compiling)."""
    from tamec.runtime.autograd import GradProgram
    from tamec.runtime.rules import parse_rule

    rule = parse_rule(a.rule)
    if a.forward == "surrogate" and not rule.fixed_surrogate:
        raise UsageError(f"rule {rule.name} has no fixed surrogate network: its surrogate depends on the sign of "
                         "the upstream gradient", hint="use --forward sign-heuristic, or a rule lp-mid, bb-mid:K, ste, "
                                                       "ste-clip")
    return GradProgram.from_model(a.model, rule=rule, input_bounds=a.input_bounds)


def _surrogate_forward(a) -> bool:
    """--forward of grad/export-grad: surrogate by default for lp-mid and bb-mid:K (what `tamec train`
    trains), the sign network (a heuristic for the dual rules) otherwise."""
    from tamec.runtime.rules import parse_rule

    return (a.forward or ("surrogate" if parse_rule(a.rule).midpoint else "sign-heuristic")) == "surrogate"


def cmd_export_grad(a) -> int:
    import onnx

    from tamec.export.grad import gradient_model

    prog = _grad_program(a)
    sur = _surrogate_forward(a)
    model = gradient_model(prog, prog.rule, surrogate=sur)
    try:
        onnx.save_model(model, a.output)
    except OSError as e:
        raise UsageError(f"cannot write {a.output}: {e.strerror}", hint="pick a writable path") from None
    print(f"gradient graph (rule {prog.rule}, forward {'surrogate' if sur else 'sign-heuristic'}, bounds baked in) written to {a.output}: inputs "
          f"{prog.input_name}, labels, {len(prog.params)} weights; outputs loss, "
          + ", ".join(f"grad_{k}" for k in prog.params))
    return 0


def cmd_grad(a) -> int:
    prog = _grad_program(a)
    x = _as_model_dtype(_load_array(a.input), "float32", f"input {a.input}")  # GradProgram's inputs are float32
    labels = _load_array(a.labels)
    sur = _surrogate_forward(a)
    loss, grads, _ = prog.loss_and_grads(x, labels, surrogate=True if sur else None)
    if "loss" in grads:
        raise UsageError("the model has a weight named 'loss'", hint="rename it; GRADS.npz keys are loss and weights")
    try:
        with open(a.output, "wb") as f:  # a file object: np.savez would append .npz to a bare name
            np.savez(f, loss=np.float32(loss), **grads)
    except OSError as e:
        raise UsageError(f"cannot write {a.output}: {e.strerror}", hint="pick a writable path") from None
    print(f"loss {loss:.6g} (mean softmax cross-entropy over {x.shape[0]} examples, rule {prog.rule}, forward "
          f"{'surrogate' if sur else 'sign-heuristic'})")
    print(_table([[k, list(g.shape), f"{float(np.linalg.norm(g)):.4g}"] for k, g in grads.items()],
                 ["weight", "shape", "|grad|"]))
    print(f"written to {a.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tamec import __version__
    from tamec.passmanager import DEFAULT_PIPELINE

    p = argparse.ArgumentParser(prog="tamec", description="compile, inspect and run binarized neural networks")
    p.add_argument("--version", action="version", version=f"tamec {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="import an ONNX model and run the pass pipeline",
                       description="Import MODEL (default: the bundled model) and run the passes, "
                                   "printing a per-pass table and the interval-bounds report.")
    c.add_argument("model", nargs="?", help="ONNX file (default: the bundled mlp_sign.onnx)")
    c.add_argument("--pipeline", help="comma-separated pass names (default: %s)" % ",".join(DEFAULT_PIPELINE))
    c.add_argument("--input-bounds", metavar="LO:HI", help="input box for the bounds pass (or name=LO:HI,...)")
    c.add_argument("--dump-dir", metavar="DIR", help="write NN-<pass>.tir, NN-<pass>.onnx and stats.json")
    c.add_argument("--force", action="store_true", help="reuse a --dump-dir that holds another model's dump "
                   "(tamec's own NN-<pass>.* files there are replaced; other files are kept)")
    c.add_argument("--print-after", metavar="PASS|all", help="print the IR after this pass (or all)")
    c.add_argument("--stop-after", metavar="PASS", help="stop the pipeline after this pass")
    c.add_argument("--check", type=int, default=0, metavar="N",
                   help="compare N probe inputs with the original model after every pass")
    c.add_argument("--tighten", choices=["none", "lp"], default="none",
                   help="bounds pass: also tighten pre-activation bounds by LP with dual certificates")
    c.add_argument("--executor", metavar="processes|threads|dask://HOST:PORT",
                   help="dualize pass: where the per-block dual computations run (default processes; "
                        "dask://HOST:PORT maps them over a Dask distributed scheduler, pip install \"tamec[dask]\")")
    c.add_argument("--report", metavar="R.html", help="write the whole compile as one self-contained HTML page "
                   "(every pass's graph and diff, probe checks, bounds, MIP blocks, certificates)")
    c.set_defaults(fn=cmd_compile)

    r = sub.add_parser("run", help="run a model on .npy inputs", description="Compile MODEL and run it on inputs.")
    r.add_argument("model")
    r.add_argument("--input", action="append", required=True, metavar="[NAME=]X.npy")
    r.add_argument("--output", metavar="Y.npy|Y.npz", help="save the first output (.npy) or all (.npz)")
    r.set_defaults(fn=cmd_run)

    i = sub.add_parser("inspect", help="summarize a --dump-dir", description="Show the pass table and bounds "
                       "report of a dump folder, or the IR after one pass.")
    i.add_argument("dir")
    i.add_argument("--show", metavar="PASS", help="print the dumped IR after PASS")
    i.add_argument("--block", metavar="K", help="print block K (index or name): its MIP, dual functions and "
                   "certificate (needs certificates.json)")
    i.add_argument("--plot", metavar="OUT.png", help="with --block: plot the block's dual functions and its value "
                   "function along a direction of the right-hand side (matplotlib)")
    i.add_argument("--html", metavar="R.html", help="write the dump folder as one self-contained HTML report")
    i.set_defaults(fn=cmd_inspect)

    d = sub.add_parser("diff", help="diff two .tir dumps by stable op id",
                       description="Ops and values added, removed and changed between two .tir files. "
                                   "Exit 0 when they are the same, 1 when they differ, 2 on trouble.")
    d.add_argument("a")
    d.add_argument("b")
    d.set_defaults(fn=cmd_diff)

    f = sub.add_parser("fit-mip", help="train a tiny BNN exactly by MIP, against gradient training",
                       description="Fit an MLP BNN on a few digits per class with the training-mode MIP "
                                   "(HiGHS) and by straight-through gradient on the same examples; write "
                                   "model.onnx and report.json to --out.")
    f.add_argument("model", nargs="?", help="ONNX MLP whose layer widths to use (instead of --arch)")
    f.add_argument("--arch", metavar="64-16-10", help="layer widths (default 64-16-10)")
    f.add_argument("--data", default="digits", help="dataset (digits: sklearn's 8x8 digits)")
    f.add_argument("--per-class", type=int, default=5, metavar="K", help="training examples per class (default 5)")
    f.add_argument("--time-limit", type=float, default=60.0, metavar="S", help="HiGHS time limit in seconds "
                   "(default 60); Ctrl-C stops it early and keeps the incumbent")
    f.add_argument("--seed", type=int, default=0, help="seed of the example draw and the gradient baseline")
    f.add_argument("--out", default="tamec-fit-mip", metavar="DIR", help="output folder (default tamec-fit-mip)")
    f.add_argument("--warm-start", choices=["none", "gradient"], default="gradient",
                   help="gradient (default): give HiGHS the gradient-trained network as its first incumbent, "
                        "so the MIP can only improve its hinge loss; none: HiGHS starts from nothing (and "
                        "rarely beats tied scores within a minute)")
    f.add_argument("--quiet", action="store_true", help="no progress line (there is none when stderr is not a "
                   "terminal)")
    f.set_defaults(fn=cmd_fit_mip)
    v = sub.add_parser("verify", help="is the prediction constant over a ball around an input?",
                       description="Answer robust, counterexample (written and checked on the network) or "
                                   "unknown (limit hit, with the bound), with the inference MIP and HiGHS.")
    v.add_argument("model")
    v.add_argument("--input", required=True, metavar="X.npy", help="one input example")
    v.add_argument("--eps", type=float, required=True, help="radius (a count of bits for --norm bits)")
    v.add_argument("--norm", choices=["linf", "bits"], default="linf")
    v.add_argument("--label", type=int, help="the class to hold (default: the prediction on X)")
    v.add_argument("--time-limit", type=float, metavar="S", help="time budget of the whole verification (seconds; "
                   "each class's HiGHS solve gets what is left, classes reached with none left are unknown)")
    v.add_argument("--node-limit", type=int, metavar="N", help="HiGHS node limit per class")
    v.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a "
                   "terminal)")
    v.add_argument("--no-sample", action="store_true", help="skip the sampling search; answer from the MIP only")
    v.add_argument("--json", action="store_true", help="print the answer as JSON")
    v.add_argument("--counterexample-out", metavar="CEX.npy", help="write the counterexample here")
    v.set_defaults(fn=cmd_verify)

    rule_help = ("backward rule: lp-dual (default), bb-dual:K, lp-mid, bb-mid:K (the centre of the block's "
                 "relaxed interval, on the depth-K branch-and-bound leaf; what `tamec train` uses), or the "
                 "heuristics ste, ste-clip")
    fwd_help = ("surrogate (default for lp-mid, bb-mid:K): forward and loss through the rule's fixed surrogate "
                "network, whose conservative field the gradients are; sign-heuristic (default otherwise): the "
                "sign network forward, the rule only backward")
    eg = sub.add_parser("export-grad", help="write forward + loss + backward as one standard-ONNX model",
                        description="Write the gradient graph of MODEL: inputs the data, labels (int64) and "
                                    "every weight by its initializer name; outputs loss (mean softmax "
                                    "cross-entropy) and grad_<weight> for each. The rule's constants (the "
                                    "proven bounds of every threshold) are baked in.")
    eg.add_argument("model")
    eg.add_argument("--rule", default="lp-dual", metavar="lp-dual|bb-dual:K|lp-mid|bb-mid:K|ste|ste-clip",
                    help=rule_help)
    eg.add_argument("--forward", choices=["surrogate", "sign-heuristic"], help=fwd_help)
    eg.add_argument("-o", "--output", required=True, metavar="G.onnx")
    eg.add_argument("--input-bounds", metavar="LO:HI", help="input box for the bounds (default 0:1)")
    eg.set_defaults(fn=cmd_export_grad)

    gr = sub.add_parser("grad", help="loss and weight gradients of a batch, computed by the runtime",
                        description="Compute the mean softmax cross-entropy of MODEL on X with labels Y and "
                                    "its gradient w.r.t. every weight; write GRADS.npz with keys loss and "
                                    "each weight's initializer name.")
    gr.add_argument("model")
    gr.add_argument("--input", required=True, metavar="X.npy", help="a float32 batch [N, ...]")
    gr.add_argument("--labels", required=True, metavar="Y.npy", help="integer class indices [N]")
    gr.add_argument("--rule", default="lp-dual", metavar="lp-dual|bb-dual:K|lp-mid|bb-mid:K|ste|ste-clip",
                    help=rule_help)
    gr.add_argument("--forward", choices=["surrogate", "sign-heuristic"], help=fwd_help)
    gr.add_argument("-o", "--output", required=True, metavar="GRADS.npz")
    gr.add_argument("--input-bounds", metavar="LO:HI", help="input box for the bounds (default 0:1)")
    gr.set_defaults(fn=cmd_grad)

    t = sub.add_parser("train", help="train a BNN on a bundled dataset (default: digits_bnn.onnx on digits)",
                       description="Compile MODEL through the full pipeline (every block dualized and "
                                   "tame-checked), train it with the chosen backward rule, and write "
                                   "model.onnx, model.qonnx.onnx, metrics.json, curves.png and checkpoint/ "
                                   "to --out. The last line printed is test_accuracy=0.xxxx.")
    t.add_argument("model", nargs="?", help="ONNX file to train (default: the bundled digits_bnn.onnx, or "
                   "mnist_bnn.onnx for --data mnist5k)")
    t.add_argument("--data", metavar="NAME|FILE.npz", help="digits (default), mnist5k, mnist1d, or an .npz "
                   "with x_train, y_train, x_test, y_test")
    t.add_argument("--epochs", type=int, metavar="N", help="epochs (default 30)")
    t.add_argument("--batch", type=int, metavar="B", help="mini-batch size (default 64)")
    t.add_argument("--rule", metavar="bb-mid:K|lp-mid|lp-dual|bb-dual:K|ste|ste-clip",
                   help="backward rule of the thresholds (default bb-mid:5: the derivative of the centre of each "
                        "block's relaxed interval, the mean of its lower and upper dual bounds, on the depth-5 "
                        "branch-and-bound leaf; trained through its surrogate, see --forward). lp-dual and bb-dual:K "
                        "need --forward sign-heuristic and do not train well (descending the lower dual bound "
                        "shrinks the BatchNorm scales; see tamec/ops/rules.py); ste and ste-clip are heuristics "
                        "on the sign network, or the exact fields of the identity / hardtanh network with "
                        "--forward surrogate")
    t.add_argument("--forward", choices=["surrogate", "sign-heuristic"],
                   help="surrogate (default for the dual rules): forward and loss through the rule's fixed "
                        "surrogate network, whose conservative field the gradients are; sign-heuristic (default "
                        "for ste, ste-clip): the sign network forward, the rule only backward")
    t.add_argument("--optimizer", choices=["adam", "sgd", "bop"], help="default adam")
    t.add_argument("--lr", type=float, help="learning rate (default adam 0.01, sgd 0.1; bop: Adam's for the "
                   "real parameters)")
    t.add_argument("--seed", type=int, metavar="S", help="seed of the data order (default 0)")
    t.add_argument("--bop-gamma", type=float, metavar="G", help="Bop adaptivity rate (default 1e-4, Larq's)")
    t.add_argument("--bop-threshold", type=float, metavar="T", help="Bop flip threshold (default 1e-8, Larq's)")
    t.add_argument("--schedule", choices=["cosine", "constant"], help="learning-rate schedule (default cosine "
                   "decay to 0 over the run)")
    t.add_argument("--out", default="tamec-train", metavar="DIR", help="output folder (default ./tamec-train)")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint with every setting "
                   "(MODEL, --data, --epochs, --batch, --rule, --optimizer, --lr, --seed, ...) taken from it: the "
                   "same bits as an uninterrupted run; an option given that differs from the checkpoint's is refused")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--skip-certify", action="store_true", help="skip the full-pipeline compile (partition, "
                   "lower-mip, dualize, tame-check) before training, for repeated runs of a model already checked")
    t.set_defaults(fn=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _leave(args.fn(args))
    except TamecError as e:
        print(f"tamec: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file access the command did not wrap itself (e.g. a dump file on a full disk)
        from tamec.files import OUTPUT_ERRNOS, WRITE_ERRNOS, output_error

        if e.errno not in OUTPUT_ERRNOS:
            raise
        err = output_error(e) if e.errno in WRITE_ERRNOS else UsageError(
            f"cannot access {e.filename or 'a file'}: {e.strerror or e}", hint="check the path and its permissions")
        print(f"tamec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tamec: interrupted", file=sys.stderr)
        return _leave(130)


def _leave(code: int) -> int:
    """`code`, or exit at once when a HiGHS solve that ignored Ctrl-C is still running in a worker
    thread (tamec.solve): a normal exit would destroy its running C++ threads and abort."""
    solve = sys.modules.get("tamec.solve")
    if solve is not None and any(not done.is_set() for _, done in solve.ABANDONED):
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
