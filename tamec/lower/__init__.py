"""Lowering the compiled graph IR to the MIP IR: `inference` (weights fixed, inputs free in their
box; the feasible set is the set of (input, activations, output) the network computes) and
`training` (weights free, data fixed)."""
