// tamec report: draws a pass's graph when its section opens, shows an op on click, searches.
// Plain DOM and SVG, no library: the page must open from disk with no network request.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const W = 170, H = 44;  // node box (layout.py spaces centres 190 x 74 apart)
  const byIndex = new Map(DATA.passes.map((p) => [p.index, p]));
  const failed = DATA.failed;

  function el(tag, attrs, parent, ns) {
    const e = ns ? document.createElementNS(NS, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(tag, s, parent, cls) {
    const e = el(tag, cls ? { class: cls } : {}, parent);
    e.textContent = s;
    return e;
  }
  function cut(s, n) { return s.length > n ? s.slice(0, n - 1) + "\u2026" : s; }

  // the op ids a pass's diff line is about: "+ op ID ...", "~ op ID: ..."
  function linesFor(p, id) {
    const q = /^[A-Za-z0-9_.:\/\-]+$/.test(id) ? id : JSON.stringify(id);
    return p.diff.filter((l) => l.startsWith("+ op " + q + " ") || l.startsWith("~ op " + q + ":"));
  }

  function draw(section) {
    if (section.dataset.drawn) return;
    section.dataset.drawn = "1";
    const p = byIndex.get(Number(section.dataset.pass));
    const g = p.graph, box = section.querySelector(".graph");
    const added = new Set(p.highlight.added), changed = new Set(p.highlight.changed);
    const vchanged = new Set();
    for (const l of p.diff) {
      const m = /^~ value %(.+?): (shape|dtype|domain|const|bounds) /.exec(l);
      if (m) vchanged.add(m[1].startsWith('"') ? JSON.parse(m[1]) : m[1]);
    }
    let w = 0, h = 0;
    for (const n of g.nodes) { w = Math.max(w, n.x + W / 2 + 10); h = Math.max(h, n.y + H / 2 + 10); }
    const svg = el("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: "g" }, null, true);
    const pos = new Map(g.nodes.map((n) => [n.id, n]));
    for (const [a, b, v] of g.edges) {
      const s = pos.get(a), t = pos.get(b);
      if (!s || !t) continue;
      const y0 = s.y + H / 2, y1 = t.y - H / 2, dy = Math.max(20, (y1 - y0) / 2);
      const path = el("path", { d: `M${s.x},${y0} C${s.x},${y0 + dy} ${t.x},${y1 - dy} ${t.x},${y1}`,
        class: "edge" + (failed && failed.tensor === v && failed.pass === p.name ? " diverged" : "") }, svg, true);
      el("title", {}, path, true).textContent = "%" + v + "  " + (g.values[v] || "");
    }
    for (const n of g.nodes) {
      const cls = ["node", n.kind, "dom-" + n.dom];
      if (added.has(n.id)) cls.push("added");
      else if (changed.has(n.id)) cls.push("changed");
      else if (n.kind === "op" && n.outputs.some((o) => vchanged.has(o))) cls.push("vchanged");
      if (n.diverged) cls.push("diverged");
      const grp = el("g", { class: cls.join(" "), transform: `translate(${n.x - W / 2},${n.y - H / 2})` }, svg, true);
      grp.dataset.id = n.id;
      el("rect", { width: W, height: H, rx: n.kind === "op" ? 5 : 18 }, grp, true);
      const t1 = el("text", { x: W / 2, y: n.sub ? 15 : 19, class: "t1" }, grp, true);
      t1.textContent = cut(n.kind === "op" ? n.label : (n.kind === "input" ? "input %" : "output %") + n.label, 26);
      const t2 = el("text", { x: W / 2, y: n.sub ? 28 : 34, class: "t2" }, grp, true);
      t2.textContent = cut(n.kind === "op" ? n.id : (g.values[n.value] || "").split(" ").slice(0, 2).join(" "), 30);
      if (n.sub) { const t3 = el("text", { x: W / 2, y: 40, class: "t3" }, grp, true); t3.textContent = cut(n.sub, 32); }
      el("title", {}, grp, true).textContent = n.id;
      grp.addEventListener("click", () => select(section, n.id));
    }
    box.appendChild(svg);
  }

  function select(section, id) {
    draw(section);
    const p = byIndex.get(Number(section.dataset.pass));
    const n = p.graph.nodes.find((x) => x.id === id);
    section.querySelectorAll(".node.selected").forEach((e) => e.classList.remove("selected"));
    const grp = [...section.querySelectorAll(".node")].find((e) => e.dataset.id === id);
    if (grp) grp.classList.add("selected");
    const ins = section.querySelector(".inspector");
    ins.replaceChildren();
    if (!n) return;
    const vals = p.graph.values;
    if (n.kind !== "op") {
      text("h4", (n.kind === "input" ? "graph input %" : "graph output %") + n.label, ins);
      text("p", vals[n.value] || "", ins, "vtype");
      return;
    }
    const h = text("h4", n.type + "  ", ins);
    text("code", n.id, h, "opid");
    text("p", "domain of the output: " + n.dom, ins, "note");
    const rows = (title, obj) => {
      text("h5", title, ins);
      const t = el("table", { class: "kv " + title.split(" ")[0] }, ins);
      for (const [k, v] of obj) {
        const tr = el("tr", {}, t);
        text("th", k, tr);
        text("td", v, tr);
      }
    };
    rows("attributes", Object.entries(n.attrs).length ? Object.entries(n.attrs) : [["(none)", ""]]);
    rows("inputs", n.inputs.filter((v) => v).map((v) => ["%" + v, vals[v] || "(not a value of this graph)"]));
    rows("outputs", n.outputs.map((v) => ["%" + v, vals[v] || ""]));
    rows("provenance", [["ONNX node(s)", n.origin]]);
    const lines = linesFor(p, id);
    if (lines.length) { text("h5", "changed by this pass", ins); text("pre", lines.join("\n"), ins, "diff"); }
    if (failed && failed.pass === p.name && failed.op === id)
      text("p", "first diverging tensor %" + failed.tensor + " (" + failed.diff + ")", ins, "divergence");
  }

  function openPass(k, id) {
    const s = document.getElementById("pass-" + k);
    if (!s) return;
    s.open = true;
    draw(s);
    if (id !== undefined) select(s, id);
    const target = id !== undefined ? [...s.querySelectorAll(".node")].find((e) => e.dataset.id === id) : s;
    (target || s).scrollIntoView({ block: "center" });
  }

  // search: op ids, op types, ONNX node names (provenance) and value names, in every pass
  const index = [];
  for (const p of DATA.passes) {
    for (const n of p.graph.nodes) {
      if (n.kind === "op") index.push([p.index, n.id, `${n.id} ${n.type} ${n.origin} ${n.outputs.join(" ")}`.toLowerCase(),
        `${p.name}: op ${n.id} (${n.type}) <- ${n.origin}`]);
      else index.push([p.index, n.id, n.label.toLowerCase(), `${p.name}: ${n.kind} %${n.label}`]);
    }
    for (const v of Object.keys(p.graph.values)) {
      const prod = p.graph.nodes.find((n) => n.kind === "op" && n.inputs.includes(v));
      if (prod) index.push([p.index, prod.id, v.toLowerCase(), `${p.name}: value %${v} (read by ${prod.id})`]);
    }
  }
  const search = document.getElementById("search"), results = document.getElementById("results");
  search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    results.replaceChildren();
    if (!q) return;
    const hits = index.filter((e) => e[2].includes(q));
    for (const [k, id, , label] of hits.slice(0, 200)) {
      const li = el("li", { class: "hit" }, results);
      li.dataset.pass = k; li.dataset.node = id;
      li.textContent = `${String(k).padStart(2, "0")} ${label}`;
      li.addEventListener("click", () => openPass(k, id));
    }
    if (!hits.length) text("li", "no match", results, "none");
    else if (hits.length > 200) text("li", `${hits.length - 200} more`, results, "none");
  });

  document.querySelectorAll("details.pass").forEach((s) => s.addEventListener("toggle", () => { if (s.open) draw(s); }));
  document.querySelectorAll("details.block").forEach((s) => s.addEventListener("toggle", () => {
    const t = s.querySelector("template");
    if (s.open && t) t.replaceWith(t.content.cloneNode(true));  // charts drawn only when asked for
  }));
  document.querySelectorAll("[data-open]").forEach((a) => a.addEventListener("click", (ev) => {
    ev.preventDefault();
    openPass(Number(a.dataset.open));
  }));
  document.querySelectorAll("[data-block]").forEach((a) => a.addEventListener("click", (ev) => {
    ev.preventDefault();
    const s = document.getElementById("block-" + a.dataset.block);
    s.open = true;
    s.scrollIntoView();
  }));
  if (failed && failed.index !== "") openPass(failed.index, failed.op || undefined);
  document.body.dataset.ready = "1";
})();
