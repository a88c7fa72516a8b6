"""Property tests on generated networks: folding is exact and bounds are sound, everywhere."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import tamec
from tamec.evaluator import Evaluator
from tamec.ir.graph import BIPOLAR
from tamec.passmanager import PassContext, run_pipeline
from tests.helpers import all_bipolar, model, ort_run


def two_layer(seed: int, k: int, n: int, exact_ties: bool):
    """x (bipolar k) -> [+-1 MatMul -> BN -> Sign] -> [+-1 MatMul -> Add bias -> Mul -> Sign] -> y."""
    rng = np.random.default_rng(seed)
    w1 = rng.choice([-1.0, 1.0], (k, n)).astype(np.float32)
    w2 = rng.choice([-1.0, 1.0], (n, n)).astype(np.float32)
    if exact_ties:  # integer means, unit scales: the BN output is exactly 0 at s = mean
        g = rng.choice([-1.0, 1.0, 0.5, -2.0, 0.0], n).astype(np.float32)
        mean = rng.integers(-k, k + 1, n).astype(np.float32)
        beta = np.zeros(n, np.float32)
        var = np.full(n, 1 - 1e-5, np.float32)
    else:
        g = rng.normal(0, 1, n).astype(np.float32)
        mean = rng.normal(0, 2, n).astype(np.float32)
        beta = rng.normal(0, 1, n).astype(np.float32)
        var = rng.uniform(0.3, 3, n).astype(np.float32)
    bias = rng.integers(-3, 4, n).astype(np.float32)
    scale = rng.choice([-1.5, 1.0, 2.0], n).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["s1"], name="mm1"),
             helper.make_node("BatchNormalization", ["s1", "g", "b", "m", "v"], ["z1"], name="bn"),
             helper.make_node("Sign", ["z1"], ["h"], name="sign1"),
             helper.make_node("MatMul", ["h", "w2"], ["s2"], name="mm2"),
             helper.make_node("Add", ["s2", "bias"], ["z2"], name="add"),
             helper.make_node("Mul", ["z2", "scale"], ["z3"], name="mul"),
             helper.make_node("Sign", ["z3"], ["y"], name="sign2")]
    return model(nodes, [("x", ["N", k])], [("y", ["N", n])],
                 {"w1": w1, "w2": w2, "g": g, "b": beta, "m": mean, "v": var, "bias": bias, "scale": scale})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), k=st.integers(1, 8), n=st.integers(1, 6), ties=st.booleans())
def test_fold_exact_and_bounds_sound(seed, k, n, ties):
    """On every input of {-1,+1}^k: the folded graph equals onnxruntime bit for bit (ternary
    hidden layer included), and every tensor lies within its interval bounds."""
    m = two_layer(seed, k, n, ties)
    mod = tamec.load(m)
    mod.graph.values["x"].domain = BIPOLAR
    mod = run_pipeline(mod, None, ctx=PassContext(input_bounds={"*": (-1, 1)}))
    ops = [op.qualname for op in mod.graph.ops()]
    assert "BatchNormalization" not in ops and "Add" not in ops and "Mul" not in ops
    x = all_bipolar(k)
    ref = ort_run(m, {"x": x})[0]
    vals = Evaluator(mod.graph).run({"x": x}, keep_all=True)
    assert np.array_equal(vals["y"], ref)
    for name, v in mod.graph.values.items():
        if v.bounds is not None and name in vals:
            assert np.all(vals[name] >= v.bounds[0]) and np.all(vals[name] <= v.bounds[1]), name
