"""tamec: a compiler and CPU runtime for binarized neural networks.

    import tamec
    m = tamec.compile("models/mlp_sign.onnx", check=16)   # graph IR after the default pipeline
    y = tamec.Session("models/mlp_sign.onnx").run(None, {"x": x})
"""
from tamec.api import Session, compile, default_model, load, parse_bounds
from tamec.errors import TamecError
from tamec.module import Module

__all__ = ["Module", "Session", "TamecError", "compile", "default_model", "load", "parse_bounds"]
from tamec.version import __version__  # noqa: E402
