"""The `tamec` command. Exit 0 on success; 2 on a user error, with one line and no traceback."""
from __future__ import annotations

import argparse
import json
import sys
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
    rows = [[r["op"], r["neurons"], r["stable"], r["unstable"], f"{r['max_big_m']:g}", r["can_tie"]] for r in report]
    return _table(rows, ["threshold layer", "neurons", "stable", "unstable", "max big-M", "can tie"])


def cmd_compile(a) -> int:
    import tamec

    model = a.model or tamec.default_model()
    m = tamec.compile(model, a.pipeline, a.input_bounds, a.dump_dir, print_after=a.print_after,
                      stop_after=a.stop_after, check=a.check)
    print(f"compiled {model}")
    print(pass_table(m.history))
    if m.reports.get("bounds"):
        print("\ninterval bounds (input box: " + (a.input_bounds or "domain, or [0,1] for real inputs") + ")")
        print(bounds_table(m.reports["bounds"]))
    if a.check:
        print(f"\ncheck: {a.check} probe inputs agree with the original model after every pass")
    if a.dump_dir:
        print(f"dumps in {a.dump_dir}/ (NN-<pass>.tir, NN-<pass>.onnx, stats.json)")
    return 0


def _load_array(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}", hint="pass a .npy file written by numpy.save") from None


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
        feeds[name] = _load_array(path)
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tamec.passmanager import DEFAULT_PIPELINE

    p = argparse.ArgumentParser(prog="tamec", description="compile, inspect and run binarized neural networks")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="import an ONNX model and run the pass pipeline",
                       description="Import MODEL (default: the bundled model) and run the passes, "
                                   "printing a per-pass table and the interval-bounds report.")
    c.add_argument("model", nargs="?", help="ONNX file (default: the bundled mlp_sign.onnx)")
    c.add_argument("--pipeline", help="comma-separated pass names (default: %s)" % ",".join(DEFAULT_PIPELINE))
    c.add_argument("--input-bounds", metavar="LO:HI", help="input box for the bounds pass (or name=LO:HI,...)")
    c.add_argument("--dump-dir", metavar="DIR", help="write NN-<pass>.tir, NN-<pass>.onnx and stats.json")
    c.add_argument("--print-after", metavar="PASS|all", help="print the IR after this pass (or all)")
    c.add_argument("--stop-after", metavar="PASS", help="stop the pipeline after this pass")
    c.add_argument("--check", type=int, default=0, metavar="N",
                   help="compare N probe inputs with the original model after every pass")
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
    i.set_defaults(fn=cmd_inspect)

    d = sub.add_parser("diff", help="diff two .tir dumps by stable op id",
                       description="Ops and values added, removed and changed between two .tir files.")
    d.add_argument("a")
    d.add_argument("b")
    d.set_defaults(fn=cmd_diff)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except TamecError as e:
        print(f"tamec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tamec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
