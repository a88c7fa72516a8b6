"""The package version (a module of its own, so that writers can stamp files without importing tamec's API)."""
__version__ = "0.1.0"
