"""The ops tamec understands, each defined once (see tamec/ops/registry.py).

One module per op family: threshold (tamec.Threshold, Sign), linear (tamec.Linear, MatMul, Gemm),
conv (Conv and the window geometry pooling shares), batchnorm, pool, piecewise (Relu, Clip, Max,
...), qonnx (BipolarQuant, Quant, MultiThreshold, Trunc), arith, smooth, shape. tamec's own ops
live in the ONNX domain `tamec` (so dumps open in Netron as custom ops); QONNX ops are imported
from any of their four domains and filed under `QONNX_DOMAIN`. Every op set below is read off the
registry, so no stage keeps its own list.
"""
from __future__ import annotations

from tamec.ops import arith, batchnorm, conv, linear, piecewise, pool, qonnx, shape, smooth, threshold  # noqa: F401  (they register)
from tamec.ops.registry import REGISTRY, STAGES, OpDef, attach, get, has, hook, how

TAMEC_DOMAIN = threshold.TAMEC_DOMAIN
QONNX_DOMAIN = qonnx.QONNX_DOMAIN
QONNX_DOMAINS = ("onnx.brevitas", "finn", "finn.custom_op.general", "qonnx.custom_op.general")

STANDARD_OPS = frozenset(d.op_type for d in REGISTRY.values() if d.domain == "")
QONNX_OPS = frozenset(d.op_type for d in REGISTRY.values() if d.domain == QONNX_DOMAIN)
TAMEC_OPS = frozenset(d.op_type for d in REGISTRY.values() if d.domain == TAMEC_DOMAIN)

# Ops whose output is a quantizer's: constant folding leaves them to `binarize-weights`.
QUANTIZERS = frozenset({(TAMEC_DOMAIN, "Threshold"), (QONNX_DOMAIN, "BipolarQuant"), (QONNX_DOMAIN, "Quant"),
                        (QONNX_DOMAIN, "MultiThreshold"), ("", "Sign")})


def normalize_domain(domain: str) -> str:
    """The domain tamec files an op under ('' for ai.onnx)."""
    if domain in ("", "ai.onnx"):
        return ""
    if domain in QONNX_DOMAINS:
        return QONNX_DOMAIN
    return domain


def qualname(domain: str, op_type: str) -> str:
    """The registry key of an op as written in a file (any of its domains' spellings)."""
    d = normalize_domain(domain)
    return f"{d}.{op_type}" if d else op_type


def lookup(op) -> OpDef | None:
    """The registry entry of a graph-IR op (or anything with .domain and .op_type)."""
    return REGISTRY.get(qualname(op.domain, op.op_type))


def is_supported(domain: str, op_type: str) -> bool:
    return qualname(domain, op_type) in REGISTRY


def supported_summary() -> str:
    return ("standard: " + ", ".join(sorted(STANDARD_OPS)) + "; " + f"{QONNX_DOMAIN} (also "
            + ", ".join(QONNX_DOMAINS[:-1]) + "): " + ", ".join(sorted(QONNX_OPS))
            + f"; {TAMEC_DOMAIN}: " + ", ".join(sorted(TAMEC_OPS)))


def require(ops, stage: str, *, what: str, hint: str, accept=None) -> None:
    """Refuse, before `stage` starts, every op it has no implementation for (all at once).
    `accept(op)` may accept an op the registry has no hook for (a stage's generic path)."""
    from tamec.errors import UnsupportedModelError

    bad = [op for op in ops if not has(op.qualname, stage) and not (accept and accept(op))]
    if bad:
        names = ", ".join(sorted({op.qualname for op in bad}))
        first = bad[0]
        nodes = ", ".join(sorted({n for op in bad for n in (op.origin or (op.id,))})[:8])
        raise UnsupportedModelError(f"{what} has no implementation of {names} (ONNX node(s): {nodes})",
                                    node=first.id, op=first.qualname, hint=hint)


__all__ = ["OpDef", "REGISTRY", "STAGES", "QONNX_DOMAIN", "QONNX_DOMAINS", "QUANTIZERS", "QONNX_OPS",
           "STANDARD_OPS", "TAMEC_DOMAIN", "TAMEC_OPS", "attach", "get", "has", "hook", "how",
           "is_supported", "lookup", "normalize_domain", "qualname", "require", "supported_summary"]
