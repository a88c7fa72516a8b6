"""Exporters: graph IR to ONNX (and later MIP IR to MPS/LP, certificates to JSON)."""
