"""tamec's CPU runtime (Numba kernels, plan executor, backward rules); reads a compiled Module.

Forward: `tamec.runtime.plan.compile_plan(graph)` builds the execution plan `tamec.Session` runs
(bits.py: packing and popcount; simd.py: the GEMM micro-kernels; kernels.py: the Numba kernels).
Importing this package does not load Numba; its modules do.
"""
