"""dualize: per block, dual function(s) of the block's value function and their certificate.

The pass itself comes later (issue 4, item 2). For now this module only exposes the public API
`tamec.passes.dualize.dual_function`, which builds an LP, branch-and-bound or Chvatal dual
function of one small MILP (see tamec/dual/function.py); `tamec.dual.certificate.certify`
checks it.
"""
from tamec.dual.function import DualFunction, dual_function

__all__ = ["DualFunction", "dual_function"]
