"""Frontends: model files in, graph IR out."""
