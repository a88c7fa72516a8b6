"""The op registry's coverage: every supported op x every stage is implemented there or refused at
compile time by name, never reached and failed inside a stage.

    python tests/test_registry.py      # prints the op x stage table that the README carries
"""
from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.backend.test.loader import load_model_tests

import tamec
import tamec.evaluator  # noqa: F401  the stages attach their hooks when imported
import tamec.export.onnx
import tamec.lower.inference
import tamec.runtime.autograd
import tamec.runtime.plan
import tamec.verifier  # noqa: F401
from tamec import ops
from tamec.errors import TamecError, UnsupportedModelError
from tamec.export.onnx import to_onnx
from tamec.lower.inference import partition
from tamec.runtime.autograd import GradProgram

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("evaluate", "bounds", "tame-check", "lower-mip", "runtime", "backward", "export")
# the stages that may refuse an op (evaluate, bounds, tame-check and runtime handle every op)
REFUSING = ("lower-mip", "backward", "export")


def table() -> str:
    """The op x stage table (markdown), straight from the registry."""
    rows = ["| op | family | " + " | ".join(STAGES) + " |", "|---|---|" + "---|" * len(STAGES)]
    for q in sorted(ops.REGISTRY, key=lambda q: (ops.REGISTRY[q].family, q)):
        d = ops.REGISTRY[q]
        rows.append(f"| `{q}` | {d.family} | " + " | ".join(ops.how(q, s) for s in STAGES) + " |")
    return "\n".join(rows)


def test_every_op_has_every_stage():
    """Each op says, for every stage, how it is handled (refused counts), and evaluate, bounds,
    tame-check and runtime handle every op the importer accepts."""
    for q in ops.REGISTRY:
        for s in STAGES:
            assert ops.how(q, s), (q, s)
        for s in ("evaluate", "runtime", "verify"):
            assert ops.has(q, s), f"{q} has no {s} hook"
        assert ops.REGISTRY[q].tame in ops.registry.TAME_CLASSES


def test_readme_carries_the_table():
    """The README's coverage table is the registry's (regenerate with python tests/test_registry.py)."""
    assert table() in (ROOT / "README.md").read_text()


def test_supported_sets_are_the_registry():
    """The importer's op sets are read off the registry: nothing is accepted that no stage knows."""
    assert {ops.qualname(d.domain, d.op_type) for d in ops.REGISTRY.values()} == set(ops.REGISTRY)
    assert ops.STANDARD_OPS | {f"{ops.QONNX_DOMAIN}.{t}" for t in ops.QONNX_OPS} \
        | {f"tamec.{t}" for t in ops.TAMEC_OPS} == set(ops.REGISTRY)


@lru_cache(maxsize=None)
def _node_models() -> dict[str, onnx.ModelProto]:
    """One onnx node-test model per standard op (whose graph is that single op; float input first)."""
    out: dict[str, tuple] = {}
    for case in load_model_tests(kind="node"):
        if case.model is None and not case.model_dir:
            continue
        try:
            m = case.model if case.model is not None else onnx.load(str(Path(case.model_dir) / "model.onnx"))
        except Exception:  # noqa: BLE001  a test without a model file
            continue
        nodes = m.graph.node
        if len(nodes) == 1 and nodes[0].domain in ("", "ai.onnx") and nodes[0].op_type in ops.STANDARD_OPS:
            t = nodes[0].op_type
            float_in = m.graph.input and m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            if t not in out or (float_in and not out[t][1]):
                out[t] = (m, bool(float_in))
    return {t: m for t, (m, _) in out.items()}


def _qonnx_model(op_type: str) -> onnx.ModelProto:
    q = ops.QONNX_DOMAIN
    inits = {"BipolarQuant": [np.float32(1)], "Quant": [np.float32(0.5), np.float32(0), np.float32(4)],
             "MultiThreshold": [np.zeros((4, 1), np.float32)],
             "Trunc": [np.float32(1), np.float32(0), np.float32(8), np.float32(4)]}[op_type]
    names = [f"p{k}" for k in range(len(inits))]
    node = helper.make_node(op_type, ["x", *names], ["y"], domain=q, name=op_type.lower())
    g = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
                          [onnx.numpy_helper.from_array(np.asarray(a), n) for a, n in zip(inits, names)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(q, 1)])
    m.ir_version = 8
    return m


def _cases():
    for q in sorted(ops.REGISTRY):
        d = ops.REGISTRY[q]
        if d.domain == "tamec":
            continue  # tamec's own ops are made by passes: the bundled-model tests run them everywhere
        for s in REFUSING:
            yield pytest.param(q, s, id=f"{q}-{s}")


def _stage_graph(model: onnx.ModelProto, stage: str):
    """The graph the stage starts from (what the passes before it left)."""
    if stage == "lower-mip":
        return tamec.compile(model, pipeline=["canonicalize", "binarize-weights", "fold-thresholds", "bounds"]).graph
    if stage == "backward":
        return tamec.compile(model, pipeline=["canonicalize"]).graph
    return tamec.load(model).graph


def _run_stage(model: onnx.ModelProto, graph, stage: str) -> None:
    if stage == "lower-mip":
        partition(graph)
    elif stage == "backward":
        GradProgram.from_model(model)
    else:
        to_onnx(graph, standard=True)


@pytest.mark.parametrize("q,stage", list(_cases()))
def test_stage_implements_or_refuses_by_name(q, stage):
    """On a one-op model of `q`, the stage refuses with 'no implementation of <op>' exactly when
    the registry says refused and the op reaches it; otherwise it runs or raises another named
    TamecError (never a raw exception)."""
    d = ops.REGISTRY[q]
    model = _qonnx_model(d.op_type) if d.domain == ops.QONNX_DOMAIN else _node_models().get(d.op_type)
    if model is None:
        pytest.skip(f"onnx ships no single-op float node test for {q}")
    try:
        graph = _stage_graph(model, stage)
    except TamecError:
        pytest.skip("the node test's model is outside what the importer accepts (its own tests cover it)")
    reaches = any(op.qualname == q for op in graph.ops())
    refused = ops.how(q, stage) == "refused"
    if stage == "export":
        refused = refused and d.domain != ""  # standard ops are written as they are
    try:
        _run_stage(model, graph, stage)
        said = None
    except TamecError as e:
        said = str(e)
    named = said is not None and "has no implementation of" in said and q in said
    assert named == (refused and reaches), said


if __name__ == "__main__":
    print(table())
    sys.exit(0)
