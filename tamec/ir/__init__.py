"""tamec's intermediate representations: the tensor graph IR (graph.py) and its text form."""
from tamec.ir.graph import BIN01, BIPOLAR, REAL, TERNARY, Domain, Graph, Op, Value

__all__ = ["Domain", "Graph", "Op", "Value", "REAL", "BIPOLAR", "TERNARY", "BIN01"]
