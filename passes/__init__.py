"""tamec's passes, one module each; `REGISTRY` maps each kebab-case name to its Pass class."""
