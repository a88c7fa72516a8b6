"""The self-contained HTML compile report (`tamec compile --report`, `tamec inspect DIR --html`).

collect.py reads a dump folder, layout.py places each pass's graph (networkx layers), charts.py
draws the charts (matplotlib SVG), page.py writes the page with report.css / report.js inline.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

from tamec.errors import CheckMismatchError, UsageError


def check_writable(out) -> Path:
    """The report path, refused early (before a long compile) when its folder does not exist."""
    path = Path(out)
    if not path.parent.is_dir():
        raise UsageError(f"cannot write the report {path}: folder {path.parent} does not exist",
                         hint="pick a path in an existing folder")
    return path


def write_report(dump_dir, out) -> dict:
    """Write the report of the dump folder `dump_dir` to `out`; returns {"path", "bytes", "passes"}."""
    from tamec.drivers.report.collect import collect
    from tamec.drivers.report.page import render

    path = check_writable(out)
    data = collect(dump_dir)
    html = render(data)
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write the report {path}: {e.strerror}", hint="pick a writable path") from None
    return {"path": str(path), "bytes": os.path.getsize(path), "passes": len(data["passes"])}


@contextmanager
def reporting(out, dump_dir=None):
    """Yield the folder a compile dumps into (`dump_dir`, else a temporary one) and write the
    report from it afterwards, also when `--check` stops the pipeline at a divergence."""
    check_writable(out)
    with (nullcontext(dump_dir) if dump_dir else tempfile.TemporaryDirectory(prefix="tamec-report-")) as d:
        try:
            yield d
        except CheckMismatchError as e:
            write_report(d, out)
            e.hint = f"{e.hint}; the report {out} shows the divergence"
            raise e.at()
        write_report(d, out)
