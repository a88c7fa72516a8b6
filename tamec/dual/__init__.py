"""Dual functions of small MILPs (LP, branch-and-bound, Chvatal/Gomory) and their certificates.

Public entry point: `tamec.passes.dualize.dual_function` (re-exported from `tamec.dual.function`).
"""
