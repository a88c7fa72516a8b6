"""The unit every pass takes and returns: the graph IR plus what the pipeline learned about it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tamec.ir.graph import Graph


@dataclass
class PassRecord:
    """What one pass did: its name, wall time, whether it changed the IR, and its statistics."""

    name: str
    seconds: float
    modified: bool
    stats: dict[str, Any]
    op_counts: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Module:
    """A model under compilation. `properties` are the facts passes have established (e.g.
    "canonical", "bounded"); `reports` hold per-pass tables a user reads (e.g. the bounds
    report); `mip` is the MIP IR once lowered."""

    graph: Graph
    source: str | None = None
    properties: frozenset[str] = frozenset()
    history: list[PassRecord] = field(default_factory=list)
    reports: dict[str, Any] = field(default_factory=dict)
    mip: Any = None

    def copy(self) -> "Module":
        return dataclasses.replace(self, graph=self.graph.copy(), history=list(self.history),
                                   reports=dict(self.reports), mip=None if self.mip is None else self.mip.copy())
