"""Running a property over generated models with a replayable seed, and the oracles it compares with."""
from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from tests.generated.strategies import FIXED_SEED, rotating_seed

SEEDS = {"fixed": FIXED_SEED, "rotating": rotating_seed()}


def run_property(prop, strategy, n: int, seed: int, name: str) -> None:
    """Check `prop(spec)` on `n` models drawn from `strategy` with hypothesis seeded by `seed`;
    a failure is shrunk to a minimal Spec and names the seed and the command that replays it."""

    @hypothesis_seed(seed)
    @settings(max_examples=n, deadline=None, database=None, print_blob=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(spec):
        prop(spec)

    try:
        check()
    except BaseException as e:
        which = "fixed" if seed == FIXED_SEED else "rotating"
        e.add_note(f"tamec harness seed {seed}: replay with TAMEC_HARNESS_SEED={seed} "
                   f"python -m pytest -q tests/generated -k '{name} and {which}'")
        raise


def onnxruntime_outputs(m: onnx.ModelProto, x: np.ndarray, extra=()) -> dict[str, np.ndarray]:
    """Every graph output (and the tensors `extra`) of `m` on the batch `x`, by onnxruntime."""
    from tests.test_reference_equality import reference_ort

    return reference_ort(m, x, list(extra), m.graph.input[0].name)[0]


def qonnx_outputs(m: onnx.ModelProto, x: np.ndarray, extra=()) -> dict[str, np.ndarray]:
    """The same by the QONNX executor (models with QONNX ops), on the whole batch at once."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    m2.graph.input[0].type.tensor_type.shape.dim[0].dim_value = len(x)  # the executor reads N as 0
    w = ModelWrapper(m2).transform(InferShapes())
    ctx = execute_onnx(w, {m.graph.input[0].name: x}, return_full_exec_context=True)
    return {k: ctx[k] for k in [o.name for o in m.graph.output] + list(extra)}


def oracle(m: onnx.ModelProto, x: np.ndarray, extra=()) -> dict[str, np.ndarray]:
    """onnxruntime, or the QONNX executor when `m` has ops outside the standard domain."""
    qonnx = any(n.domain not in ("", "ai.onnx") for n in m.graph.node)
    return (qonnx_outputs if qonnx else onnxruntime_outputs)(m, x, extra)
