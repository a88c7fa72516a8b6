"""Top-to-bottom positions for a graph, from networkx's layering.

Why not graphviz: `dot` would be a system dependency (apt in CI, a fallback when missing) for
graphs that are, in tamec, short chains of a few dozen ops: constants are values, not nodes,
so even CNV has under a hundred. A layered drawing is enough: each node sits on the row of its
topological generation (the longest path from a source; `networkx.topological_generations`),
rows are centred, and nodes keep the printer's stable order within a row. Nothing else is laid
out here: edges are drawn as curves between rows by the page's script.
"""
from __future__ import annotations

import networkx as nx

DX, DY = 190, 74  # pixels between node centres in a row, and between rows


def layered_layout(nodes: list[str], edges: list[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """Node -> (x, y) in pixels, y growing downwards with the generation, x >= 0."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)  # insertion order = print order, kept within each generation
    g.add_edges_from(edges)
    order = {n: k for k, n in enumerate(nodes)}
    rows = [sorted(gen, key=order.__getitem__) for gen in nx.topological_generations(g)]
    width = max((len(r) for r in rows), default=1)
    pos = {}
    for y, row in enumerate(rows):
        left = (width - len(row)) / 2  # centre each row under the widest
        for x, n in enumerate(row):
            pos[n] = (int((left + x) * DX + DX / 2), int(y * DY + DY / 2))
    return pos
