"""The ops tamec understands: standard ONNX ops it imports, QONNX/FINN custom ops, and its own.

tamec's own ops live in the ONNX domain `tamec` (so dumps open in Netron as custom ops):

- `tamec.Linear(x, W[, B])`: `y = x @ W^T + B`, W of shape (N, K) and B of shape (N,) constant.
  When x and W both have integer domains the product is computed exactly in int64.
- `tamec.Threshold(x)`: attributes `tau` (f64 tensor, scalar or one per channel along `axis`),
  `flip` (bool tensor like tau), `axis` (int), `lo`, `hi`, `tie` (floats). Elementwise:
  `y = hi if x > tau else lo if x < tau else tie`, with hi and lo swapped where `flip`.
  A NaN tau compares false both ways, so that channel is the constant `tie`; tau = +-inf gives a
  constant lo/hi. ONNX `Sign` is `Threshold(tau=0, lo=-1, hi=1, tie=0)`; BipolarQuant is the same
  with `tie=1`: the tie rule travels with every threshold.

QONNX ops are imported from any of their four domains and normalized to `QONNX_DOMAIN`.
"""
from __future__ import annotations

TAMEC_DOMAIN = "tamec"
QONNX_DOMAIN = "qonnx.custom_op.general"
QONNX_DOMAINS = ("onnx.brevitas", "finn", "finn.custom_op.general", "qonnx.custom_op.general")

# Standard ONNX ops the importer accepts (default domain).
STANDARD_OPS = frozenset("""
Gemm MatMul Conv BatchNormalization Add Sub Mul Div Pow Relu Clip HardSigmoid Sign Reshape Flatten
Transpose MaxPool AveragePool GlobalAveragePool Softmax LogSoftmax Identity Constant Where Greater
Less GreaterOrEqual LessOrEqual Equal Not And Or Concat Squeeze Unsqueeze Shape Gather Cast Neg Abs
Tanh Sigmoid Exp Log Sqrt Reciprocal Max Min Dropout ConstantOfShape Expand Slice Floor Ceil Round
Sum Mean ReduceMean ReduceSum ReduceMax Pad ArgMax Erf Softsign Softplus LeakyRelu Elu Range Size
CastLike OneHot ScatterElements ConvTranspose
""".split())  # the last three: tamec's own gradient graphs (tamec/export/grad.py) read back

QONNX_OPS = frozenset({"BipolarQuant", "Quant", "MultiThreshold", "Trunc"})
TAMEC_OPS = frozenset({"Linear", "Threshold"})

# Ops whose output is a quantizer's: constant folding leaves them to `binarize-weights`.
QUANTIZERS = frozenset({("tamec", "Threshold"), (QONNX_DOMAIN, "BipolarQuant"), (QONNX_DOMAIN, "Quant"),
                        (QONNX_DOMAIN, "MultiThreshold"), ("", "Sign")})


def normalize_domain(domain: str) -> str:
    """The domain tamec files an op under ('' for ai.onnx)."""
    if domain in ("", "ai.onnx"):
        return ""
    if domain in QONNX_DOMAINS:
        return QONNX_DOMAIN
    return domain


def is_supported(domain: str, op_type: str) -> bool:
    d = normalize_domain(domain)
    return (d == "" and op_type in STANDARD_OPS) or (d == QONNX_DOMAIN and op_type in QONNX_OPS) \
        or (d == TAMEC_DOMAIN and op_type in TAMEC_OPS)


def supported_summary() -> str:
    return ("standard: " + ", ".join(sorted(STANDARD_OPS)) + "; " + f"{QONNX_DOMAIN} (also "
            + ", ".join(QONNX_DOMAINS[:-1]) + "): " + ", ".join(sorted(QONNX_OPS))
            + f"; {TAMEC_DOMAIN}: " + ", ".join(sorted(TAMEC_OPS)))
