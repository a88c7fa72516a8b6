"""The report's charts as inline SVG, drawn by matplotlib (no pyplot, no global backend switch)."""
from __future__ import annotations

import io
import re

import numpy as np


def _svg(fig) -> str:
    """The figure as an <svg> element to inline: text kept as text (small), no XML prolog."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "tamec"}):  # deterministic ids
        fig.savefig(buf, format="svg")
    s = buf.getvalue()
    return s[s.index("<svg"):]


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def bounds_chart(report: list[dict]) -> str:
    """Per threshold layer: stable / unstable neurons and the largest big-M; interval and LP bars
    side by side when the bounds pass tightened by LP."""
    if not report:
        return ""
    names = [r["op"] for r in report]
    lp = "stable_tightened" in report[0]
    x = np.arange(len(names))
    fig = _figure(9, 2.8)
    a, b = fig.subplots(1, 2)
    if lp:
        w = 0.38
        a.bar(x - w / 2, [r["stable"] for r in report], w, label="stable (interval)", color="tab:blue")
        a.bar(x + w / 2, [r["stable_tightened"] for r in report], w, label="stable (LP)", color="tab:green")
        b.bar(x - w / 2, [r["max_big_m"] for r in report], w, label="interval", color="tab:blue")
        b.bar(x + w / 2, [r["max_big_m_tightened"] for r in report], w, label="LP", color="tab:green")
    else:
        a.bar(x, [r["stable"] for r in report], 0.6, label="stable", color="tab:blue")
        a.bar(x, [r["unstable"] for r in report], 0.6, bottom=[r["stable"] for r in report], label="unstable",
              color="tab:orange")
        b.bar(x, [r["max_big_m"] for r in report], 0.6, color="tab:blue")
    a.set_title("neurons per threshold layer", fontsize=9)
    b.set_title("largest big-M per layer", fontsize=9)
    for ax in (a, b):
        ax.set_xticks(x, names, fontsize=7, rotation=20 if len(names) > 4 else 0)
        ax.grid(axis="y", alpha=0.3)
    a.legend(fontsize=7)
    if lp:
        b.legend(fontsize=7)
    return _svg(fig)


def dual_chart(entry: dict) -> tuple[str, str | None]:
    """(svg, None) of a block's dual functions against its value function, as `tamec inspect
    --block K --plot` draws them; ("", why) when the block has nothing to plot."""
    from tamec.errors import UsageError
    from tamec.drivers.plot import block_figure

    try:
        fig, _ = block_figure(entry, keys=3, points=161)
    except UsageError as e:
        return "", e.message
    svg = _svg(fig)
    # one document holds many figures: keep their clip-path / marker ids apart
    tag = re.sub(r"\W", "_", str(entry.get("block")))
    return re.sub(r'(id="|url\(#|xlink:href="#)([A-Za-z])', rf"\1{tag}_\2", svg), None
