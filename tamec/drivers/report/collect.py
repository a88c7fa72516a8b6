"""What the HTML report shows, read from a dump folder (`tamec compile --dump-dir`).

The dumps are the one source: `stats.json` (pass records, reports, a `--check` failure),
`NN-<pass>.tir` (the graph after each pass, large constants already elided as digests),
`NN-<pass>.mip.tir` and `certificates.json` (the MIP stage). Graphs are read with
`tamec.ir.diff.snapshot_text` and compared with `diff_snapshots`, the code behind `tamec diff`,
so the report highlights exactly what `tamec diff` prints on the same two dumps.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from tamec.errors import UsageError
from tamec.ir.diff import diff_snapshots, snapshot_text
from tamec.drivers.report.layout import layered_layout

_DUMP = re.compile(r"(\d+)-(.+)\.tir\Z")
_LONG = 240  # attribute / constant strings longer than this are cut in the page (the .tir has them whole)


def dumps(d: Path) -> list[tuple[int, str, Path]]:
    """(index, pass name, path) of every graph dump, in pipeline order."""
    out = []
    for p in d.glob("*.tir"):
        m = _DUMP.match(p.name)
        if m and not p.name.endswith(".mip.tir"):
            out.append((int(m.group(1)), m.group(2), p))
    return sorted(out)


def _cut(s: str | None) -> str | None:
    if s is None or len(s) <= _LONG:
        return s
    return s[:_LONG] + f"... ({len(s)} characters; full text in the .tir dump)"


def _domain_class(domain: str) -> str:
    """The colour class of a value's domain: real, bipolar, ternary or integer (int[...], bin01)."""
    return domain if domain in ("real", "bipolar", "ternary") else "integer"


def _value_text(v: dict) -> str:
    s = f"{v['dtype']}{v['shape']} {v['domain']}"
    if v.get("bounds"):
        s += f" {v['bounds']}"
    if v.get("const") is not None:
        s += f" = {_cut(v['const'])}"
    return s


def _threshold_label(attrs: dict) -> str:
    """tau, flip and tie of a Threshold, short enough for a node (digests print as n=...)."""
    def short(s: str) -> str:
        s = s.split(">", 1)[-1] if s.startswith("tensor<") else s
        m = re.match(r"<sha256:\w+ n=(\d+) min=(\S+) max=([^>]+)>", s)  # an elided tensor: its range
        if m:
            return f"[{m.group(2)}..{m.group(3)}]"
        return s if len(s) <= 18 else s[:15] + "..."
    return " ".join(f"{k}={short(attrs[k])}" for k in ("tau", "flip", "tie") if k in attrs)


def graph_data(snap, failed: dict | None = None) -> dict:
    """One pass's graph for the page: ops with attributes, value types and provenance; graph inputs
    and outputs as value nodes; constants elided from the drawing (listed in the op's panel);
    top-to-bottom positions from `layered_layout`."""
    producer = {o: i for i, op in snap.ops.items() for o in op["outputs"]}
    consts = {n for n, v in snap.values.items() if v.get("const") is not None}
    inputs = [n for n in json.loads(_names(snap.header.get("inputs", "[]")))]
    outputs = [n for n in json.loads(_names(snap.header.get("outputs", "[]")))]
    nodes, edges = [], []
    for n in inputs:
        nodes.append({"id": "in:" + n, "kind": "input", "label": n, "dom": _domain_class(snap.values[n]["domain"]),
                      "value": n})
    for i, op in snap.ops.items():
        outs = op["outputs"]
        dom = _domain_class(snap.values[outs[0]]["domain"]) if outs and outs[0] in snap.values else "real"
        node = {"id": i, "kind": "op", "type": op["type"], "label": op["type"].removeprefix("tamec."), "dom": dom,
                "inputs": op["inputs"], "outputs": outs, "origin": op["origin"],
                "attrs": {k: _cut(v) for k, v in op["attrs"].items()}}
        if op["type"] == "tamec.Threshold":
            node["sub"] = _threshold_label(op["attrs"])
        nodes.append(node)
        for v in op["inputs"]:
            if v in consts or v not in snap.values:
                continue
            src = producer.get(v, "in:" + v)
            edges.append([src, i, v])
    for n in outputs:
        nodes.append({"id": "out:" + n, "kind": "output", "label": n,
                      "dom": _domain_class(snap.values.get(n, {"domain": "real"})["domain"]), "value": n})
        edges.append([producer.get(n, "in:" + n), "out:" + n, n])
    ids = {n["id"] for n in nodes}
    edges = [e for e in edges if e[0] in ids]
    pos = layered_layout([n["id"] for n in nodes], [(a, b) for a, b, _ in edges])
    for n in nodes:
        n["x"], n["y"] = pos[n["id"]]
    if failed and failed.get("op") in snap.ops:
        next(n for n in nodes if n["id"] == failed["op"])["diverged"] = True
    used = {v for op in snap.ops.values() for v in op["inputs"] + op["outputs"]} | set(inputs) | set(outputs)
    values = {n: _value_text(v) for n, v in snap.values.items() if n in used}
    return {"nodes": nodes, "edges": edges, "values": values}


def _names(header_list: str) -> str:
    """`[%x, %"a b"]` (a printed name list) as a JSON list of bare names."""
    inner = header_list.strip()[1:-1].strip()
    if not inner:
        return "[]"
    out = []
    for part in re.findall(r'%"(?:[^"\\]|\\.)*"|%[^,\s]+', inner):
        out.append(json.loads(part[1:]) if part[1] == '"' else part[1:])
    return json.dumps(out)


def _strip(snap) -> None:
    """Value and op-input names without the printer's `%` (and quotes), as the graph holds them."""
    def bare(n: str) -> str:
        if n.startswith("%"):
            n = n[1:]
        return json.loads(n) if n.startswith('"') else n
    snap.values = {bare(n): v for n, v in snap.values.items()}
    for op in snap.ops.values():
        op["inputs"] = [bare(n) for n in op["inputs"]]
        op["outputs"] = [bare(n) for n in op["outputs"]]


def key_stats(stats: dict) -> str:
    """A pass's scalar statistics as `k=v` (nested tables are shown in their own sections)."""
    parts = []
    for k, v in stats.items():
        if k in ("check_batches", "check_failed"):
            continue
        if isinstance(v, bool) or (isinstance(v, (int, float)) and v):
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        elif isinstance(v, dict) and v and all(isinstance(x, (int, float)) for x in v.values()):
            parts.append(f"{k}=" + ",".join(f"{a}:{b}" for a, b in v.items()))
    return " ".join(parts)


def collect(dump_dir) -> dict:
    """Everything the page shows, as JSON-ready data (charts are added by `tamec.drivers.report.page`)."""
    d = Path(dump_dir)
    stats_file = d / "stats.json"
    if not stats_file.is_file():
        raise UsageError(f"{d} has no stats.json", hint="make one with `tamec compile MODEL --dump-dir DIR`")
    stats = json.loads(stats_file.read_text())
    records = stats.get("passes", [])
    found = dumps(d)
    if not found:
        raise UsageError(f"{d} has no NN-<pass>.tir dumps", hint="make them with `tamec compile MODEL --dump-dir DIR`")
    by_name = {r["name"]: r for r in records}
    failed = next((r["stats"]["check_failed"] for r in records if "check_failed" in r.get("stats", {})), None)
    checked = any("check_batches" in r.get("stats", {}) for r in records) or failed is not None
    passes, prev = [], None
    for k, name, path in found:
        snap = snapshot_text(path.read_text())
        if prev is None:
            lines, ops = [], {"removed": [], "added": [], "changed": []}
        else:
            lines, ops = diff_snapshots(prev, snap)
        prev, snap = snap, copy.deepcopy(snap)  # the diff reads printed names, the drawing bare ones
        _strip(snap)
        rec = by_name.get(name, {})
        st = rec.get("stats", {})
        if name == "import":
            verdict = "reference" if checked else "not checked"
        elif "check_failed" in st:
            verdict = "diverged"
        elif "check_batches" in st:
            verdict = f"ok ({st['check_batches']} batch{'es' if st['check_batches'] != 1 else ''})"
        else:
            verdict = "not checked"
        mip = Path(str(path)[:-4] + ".mip.tir")
        passes.append({"index": k, "name": name, "file": path.name, "seconds": rec.get("seconds"),
                       "modified": rec.get("modified"), "ops": sum(rec.get("op_counts", {}).values()),
                       "op_counts": rec.get("op_counts", {}), "stats": key_stats(st), "verdict": verdict,
                       "graph": graph_data(snap, st.get("check_failed")), "diff": lines,
                       "highlight": ops, "mip": mip.name if mip.is_file() else None})
    reports = stats.get("reports", {})
    certs_file = d / "certificates.json"
    return {"source": stats.get("source"), "dir": str(d), "passes": passes, "failed": failed,
            "bounds": reports.get("bounds") or [], "blocks": _blocks(d, passes, reports, certs_file)}


def _blocks(d: Path, passes: list[dict], reports: dict, certs_file: Path) -> list[dict]:
    """The MIP stage per block: sizes and big-M sources (lower-mip), its MIP text, the tame-check
    certificate and the dualize summary; the raw certificates.json entry is kept for the plots."""
    lowered = reports.get("lower-mip") or []
    if not lowered:
        return []
    mip_dumps = [p["mip"] for p in passes if p["mip"]]
    text = (d / mip_dumps[-1]).read_text().splitlines() if mip_dumps else []
    certs = {e["block"]: e for e in json.loads(certs_file.read_text())} if certs_file.is_file() else {}
    tame = {r["block"]: r for r in reports.get("tame-check") or []}
    out = []
    for b in lowered:
        name = b["block"]
        head = next((i for i, ln in enumerate(text) if ln.startswith((f"  block {name} ", f'  block "{name}" '))), None)
        lines = []
        if head is not None:
            end = next((i for i in range(head + 1, len(text)) if text[i] == "  }"), len(text) - 1)
            lines = [ln.strip() for ln in text[head:end + 1]]
        sources = sorted({m.group(1) for ln in lines for m in [re.search(r"\bbig_m=(\S+)", ln)] if m})
        out.append({"block": name, "sizes": b, "big_m_sources": sources, "mip_text": lines,
                    "tame": tame.get(name), "dual": _dual_summary(certs.get(name, {}).get("dualize")),
                    "entry": certs.get(name)})
    return out


def _dual_summary(rep: dict | None) -> dict | None:
    """The dualize report without its per-key problems and pieces (those feed the plots only)."""
    if not rep:
        return None
    keep = ("neurons", "unstable", "pool_elements", "unique_keys", "methods", "bb_depth", "summary", "exact", "reason")
    out = {k: rep[k] for k in keep if k in rep}
    if isinstance(rep.get("stable"), dict):
        out["stable"] = rep["stable"]
    return out
