"""Bundled ONNX models (package data); models/README.md says where each comes from."""
