"""The report as one HTML file: tables rendered here, graphs drawn by the inline script on demand.

Everything is inline (style, script, the data as JSON, charts as SVG), so the file opens from
disk with no network request. To stay quick on big models, a pass's graph is drawn only when its
section is opened, and each block's dual-function chart sits in a <template> until its section
is opened; constants are never drawn (their digests are in the op panel).
"""
from __future__ import annotations

import json
from html import escape
from importlib.resources import files

from tamec.drivers.report.charts import bounds_chart, dual_chart


def _e(x) -> str:
    return escape("" if x is None else str(x))


def _table(head: list[str], rows: list[list], cls: list[str] | None = None) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for k, r in enumerate(rows):
        c = f' class="{cls[k]}"' if cls and cls[k] else ""
        out.append(f"<tr{c}>" + "".join(f"<td>{x}</td>" for x in r) + "</tr>")
    return "".join(out) + "</tbody></table>"


def _pipeline(data: dict) -> str:
    rows, cls = [], []
    for p in data["passes"]:
        h = p["highlight"]
        ms = "" if p["seconds"] is None else f"{p['seconds'] * 1000:.1f}"
        link = f'<a href="#pass-{p["index"]}" data-open="{p["index"]}">{_e(p["name"])}</a>'
        rows.append([link, ms, "yes" if p["modified"] else "no", p["ops"],
                     f"+{len(h['added'])} -{len(h['removed'])} ~{len(h['changed'])}", _e(p["stats"]),
                     f'<span class="verdict">{_e(p["verdict"])}</span>'])
        cls.append("diverged" if p["verdict"] == "diverged" else "")
    return _table(["pass", "ms", "changed", "ops", "ops +/-/~", "statistics", "probe check"], rows, cls)


def _divergence(f: dict | None) -> str:
    if not f:
        return ""
    where = (f"first diverging tensor <code class=\"tensor\">%{_e(f['tensor'])}</code> ({_e(f.get('diff'))}), "
             f"produced by op <code>{_e(f['op'])}</code> ({_e(f.get('op_type'))}) from ONNX node(s) "
             f"{_e(', '.join(f.get('origin') or []) or '?')}" if f.get("tensor")
             else "no shared intermediate tensor diverges; only the outputs do")
    return (f'<div id="divergence" class="divergence"><b>--check diverged after pass '
            f'<a href="#pass-{f.get("index", "")}" data-open="{f.get("index", "")}">{_e(f["pass"])}</a></b>: '
            f"output %{_e(f['output'])} differs ({_e(f.get('output_diff'))}); {where}.</div>")


def _bounds(report: list[dict]) -> str:
    if not report:
        return ""
    lp = "stable_tightened" in report[0]
    if lp:
        head = ["threshold layer", "neurons", "stable (interval)", "stable (LP)", "max big-M (interval)",
                "max big-M (LP)", "can tie", "LPs", "LP s"]
        rows = [[_e(r["op"]), r["neurons"], r["stable"], r["stable_tightened"], f"{r['max_big_m']:g}",
                 f"{r['max_big_m_tightened']:g}", r["can_tie"], r.get("lps", ""), r.get("tighten_seconds", "")]
                for r in report]
    else:
        head = ["threshold layer", "neurons", "stable", "unstable", "max big-M", "can tie"]
        rows = [[_e(r["op"]), r["neurons"], r["stable"], r["unstable"], f"{r['max_big_m']:g}", r["can_tie"]]
                for r in report]
    title = "interval vs LP-tightened bounds" if lp else "interval bounds"
    return (f'<section id="bounds"><h2>Bounds per threshold layer ({title})</h2>{_table(head, rows)}'
            f'<div class="chart">{bounds_chart(report)}</div></section>')


def _kv(d: dict) -> str:
    return "<table class=\"kv\">" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in d.items()) + "</table>"


def _certificate(t: dict | None) -> str:
    if not t:
        return "<p>(no tame-check report: run the tame-check pass)</p>"
    comp = t.get("compactness", {})
    groups = comp.get("integer", []) + comp.get("pre_activation", [])
    proof = _table(["group", "kind", "size", "bounds", "source"],
                   [[_e(g["group"]), _e(g["kind"]), g["size"], f"[{g['lb']:g}, {g['ub']:g}]", _e(g["source"])]
                    for g in groups])
    disc = ", ".join(f"{x['op']} ({x['op_type']})" for x in t.get("discontinuous_ops", [])) or "none"
    pieces = t.get("nonsmooth_pieces", {})
    head = {"verdict": t["verdict"] + (f": {t['reason']}" if t.get("reason") else ""),
            "structure": t.get("structure"), "lipschitz": t.get("lipschitz"),
            "compact": comp.get("compact"), "rational data": t.get("rational_data"),
            "nonsmooth pieces": f"{pieces.get('total')} ({', '.join(f'{k}: {v}' for k, v in pieces.get('per_op_type', {}).items())})",
            "discontinuous ops": disc}
    return f'<div class="cert verdict-{_e(t["verdict"])}">{_kv(head)}<h5>compactness proof</h5>{proof}</div>'


def _blocks(blocks: list[dict]) -> str:
    if not blocks:
        return ""
    head = ["block", "kind", "vars", "continuous", "binary", "integer", "rows", "big-M rows", "max M", "big-M source",
            "verdict"]
    rows = [[f'<a href="#block-{k}" data-block="{k}">{_e(b["block"])}</a>', _e(b["sizes"].get("kind")),
             b["sizes"].get("vars"), b["sizes"].get("continuous"), b["sizes"].get("binary"), b["sizes"].get("integer"),
             b["sizes"].get("rows"), b["sizes"].get("big_m_rows"), f"{b['sizes'].get('max_m', 0):g}",
             _e(", ".join(b["big_m_sources"]) or b["sizes"].get("big_m_source") or "-"),
             _e((b["tame"] or {}).get("verdict", "-"))] for k, b in enumerate(blocks)]
    out = [f'<section id="mip"><h2>MIP stage: {len(blocks)} blocks</h2>{_table(head, rows)}']
    for k, b in enumerate(blocks):
        svg, why = dual_chart(b["entry"]) if b["entry"] else ("", "no certificates.json entry (run dualize)")
        chart = f"<template>{svg}</template>" if svg else f"<p class=\"note\">no dual-function plot: {_e(why)}</p>"
        dual = _kv({k2: json.dumps(v) if isinstance(v, (dict, list)) else v for k2, v in b["dual"].items()}) \
            if b["dual"] else "<p>(no dualize report: run the dualize pass)</p>"
        out.append(f'<details class="block" id="block-{k}"><summary>block {_e(b["block"])} '
                   f'({_e(b["sizes"].get("kind"))}, {b["sizes"].get("vars")} vars, {b["sizes"].get("rows")} rows)'
                   f'</summary><h4>tame-check certificate</h4>{_certificate(b["tame"])}'
                   f'<h4>dual functions</h4>{dual}<div class="chart dual">{chart}</div>'
                   f'<details class="miptext"><summary>MIP text</summary><pre>{_e(chr(10).join(b["mip_text"]))}</pre>'
                   f"</details></details>")
    return "".join(out) + "</section>"


def _passes(data: dict) -> str:
    out = ['<section id="passes"><h2>Passes</h2>'
           '<p class="note">Open a pass to draw its graph (top to bottom; colour = domain of the op\'s output: '
           '<span class="sw dom-real">real</span> <span class="sw dom-bipolar">bipolar</span> '
           '<span class="sw dom-ternary">ternary</span> <span class="sw dom-integer">integer</span>; outline: '
           '<span class="sw added">added</span> <span class="sw changed">changed</span> '
           '<span class="sw vchanged">output value changed</span> <span class="sw diverged">diverged</span>). '
           'Click an op for its attributes, value types and ONNX provenance.</p>']
    prev = None
    for p in data["passes"]:
        h = p["highlight"]
        removed = "".join(f"<li>{_e(i)}</li>" for i in h["removed"])
        diff_head = (f"tamec diff {_e(prev)} {_e(p['file'])}" if prev else "the imported graph (nothing to compare)")
        diff = _e("\n".join(p["diff"])) if p["diff"] else ("no differences" if prev else "")
        out.append(
            f'<details class="pass" id="pass-{p["index"]}" data-pass="{p["index"]}"><summary>'
            f'<b>{p["index"]:02d} {_e(p["name"])}</b> <span class="meta">{p["ops"]} ops, '
            f'+{len(h["added"])} -{len(h["removed"])} ~{len(h["changed"])}, check: {_e(p["verdict"])}</span>'
            f'</summary><div class="passbody"><div class="graph"></div><div class="side">'
            f'<div class="inspector"><p class="note">Click an op.</p></div>'
            f'<h4>diff: {diff_head}</h4>'
            + (f'<p>removed ops:</p><ul class="removed">{removed}</ul>' if removed else "")
            + f'<pre class="diff">{diff}</pre></div></div></details>')
        prev = p["file"]
    return "".join(out) + "</section>"


def render(data: dict) -> str:
    """The whole page for `collect(dump_dir)`."""
    res = files("tamec.drivers.report")
    css, js = (res / "report.css").read_text(), (res / "report.js").read_text()
    if data["failed"]:
        data["failed"]["index"] = next((p["index"] for p in data["passes"] if p["verdict"] == "diverged"), "")
    # the script needs the graphs, diffs and the failure only; blocks go in as HTML
    payload = {"passes": [{k: p[k] for k in ("index", "name", "graph", "diff", "highlight")} for p in data["passes"]],
               "failed": data["failed"]}
    blob = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    title = f"tamec report: {data['source'] or data['dir']}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{css}</style></head><body>'
            f'<header><h1>{_e(title)}</h1><input id="search" type="search" placeholder="search op, ONNX node or value '
            f'across passes" autocomplete="off"><ol id="results"></ol></header><main>'
            f'{_divergence(data["failed"])}<section id="pipeline"><h2>Pipeline</h2>{_pipeline(data)}</section>'
            f'{_bounds(data["bounds"])}{_passes(data)}{_blocks(data["blocks"])}</main>'
            f'<script id="data" type="application/json">{blob}</script><script>{js}</script></body></html>')
