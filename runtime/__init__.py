"""tamec's CPU runtime (Numba kernels, plan executor, backward rules); reads a compiled Module."""
