"""Every file tamec writes imports back into tamec and runs to the same outputs (issue 10, failure 3).

Writers: the NN-<pass>.onnx dumps of `tamec compile --dump-dir` (tamec-domain ops from canonicalize
on), the standard-ops export (`to_onnx(standard=True)`), `to_qonnx`, a trained model's
`export_onnx` / `export_qonnx` (what `tamec train` writes as model.onnx and model.qonnx.onnx) and
the gradient graphs of `tamec export-grad`. Each file is written, imported with tamec, run on probe
inputs (half of them exact corner points of the input box) and compared with the original: bit for
bit on binary tensors, 1e-5 on real ones; a standard-ONNX file also with onnxruntime on itself.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import tamec
from tamec.evaluator import Evaluator
from tamec.export.grad import gradient_model, to_qonnx
from tamec.export.onnx import to_onnx
from tamec.ir.graph import BIPOLAR, REAL, TERNARY, Domain, Graph, Op, Value
from tamec.verifier import verify_graph
from tamec.ops import TAMEC_DOMAIN
from tamec.passmanager import PassContext, Probe
from tamec.runtime.autograd import GradProgram
from tests.conftest import MODELS, TFC, all_models
from tests.helpers import ort_run

PIPELINE = "canonicalize,binarize-weights,fold-thresholds,bounds,partition,lower-mip"
DUMPS = ["00-import", *(f"{k:02d}-{p}" for k, p in enumerate(PIPELINE.split(","), 1))]


def probes(path) -> list[dict[str, np.ndarray]]:
    """4 probe batches over the input box, the first and third exact corner points (as --check)."""
    return Probe(tamec.load(path), 4, PassContext()).batches


def reference(path, feeds) -> list[list[np.ndarray]]:
    """The original model's outputs: the reference evaluator on its fresh import."""
    g = tamec.load(path).graph
    ev = Evaluator(g)
    return [[ev.run(f)[o] for o in g.outputs] for f in feeds]


def assert_same(got: list, want: list, what: str) -> None:
    """Equal outputs: bit for bit for integer-valued (binary) tensors, else within 1e-5."""
    assert len(got) == len(want), what
    for k, (a, b) in enumerate(zip(got, want)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, f"{what}: output {k} shape {a.shape} vs {b.shape}"
        if Domain.of_array(b).is_integer and Domain.of_array(a).is_integer:
            np.testing.assert_array_equal(a, b, err_msg=f"{what}: output {k}")
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"{what}: output {k}")


def run_session(model, feeds, engine="numba") -> list[list[np.ndarray]]:
    s = tamec.Session(model, engine=engine)
    return [s.run(None, f) for f in feeds]


def save(model: onnx.ModelProto, path: Path) -> str:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def n_ops(g: Graph, qualname: str) -> int:
    return sum(op.qualname == qualname for op in g.ops())


# -- the model sweep ----------------------------------------------------------------------------------

def _slow_dumps(params: list) -> list:
    """mnist_bnn's seven dumps take ~8 s (digits_bnn is the same architecture, narrower): slow."""
    return [pytest.param(*p.values, id=p.id, marks=(*p.marks, pytest.mark.slow)) if p.id == "mnist_bnn" else p
            for p in params]


@pytest.mark.parametrize("path", _slow_dumps(all_models()))
def test_pass_dumps_import_back(path, tmp_path):
    """Every NN-<pass>.onnx of `tamec compile --dump-dir` (tamec.Linear/Threshold after canonicalize,
    bounds and blocks after bounds/partition; the MIP passes after lower-mip dump the same graph)
    imports as is (the evaluator gives the original's outputs) and runs through `tamec run`'s
    pipeline to the same outputs; so does the standard-ops export of every stage's graph."""
    feeds = probes(path)
    want = reference(path, feeds)
    tamec.compile(path, PIPELINE, dump_dir=tmp_path, out=io.StringIO())
    files = sorted(tmp_path.glob("*.onnx"))
    assert [f.stem for f in files] == DUMPS
    assert any(n.domain == TAMEC_DOMAIN for n in onnx.load(str(files[-1])).graph.node)
    for f in files:
        g = tamec.load(f).graph
        ev = Evaluator(g)
        assert_same([[ev.run(x)[o] for o in g.outputs] for x in feeds], want, f"{f.name} imported")
        assert_same(run_session(str(f), feeds), want, f"{f.name} run")
        # the standard form of every stage, too: onnxruntime and tamec on it agree with the original
        std = to_onnx(g, standard=True)
        assert_same([ort_run(std, x) for x in feeds], want, f"{f.name} standard: onnxruntime")
        assert_same(run_session(save(std, tmp_path / "std.onnx"), feeds), want, f"{f.name} standard: tamec")


@pytest.mark.parametrize("path", all_models())
def test_standard_and_qonnx_exports_round_trip(path, tmp_path):
    """to_onnx(standard=True) and to_qonnx of the compiled graph: onnxruntime on the file and tamec
    on its re-import both give the original's outputs, and canonicalize reads every lowered
    Threshold back as one Threshold (the compiled re-import has the original's Linear/Threshold ops)."""
    feeds = probes(path)
    want = reference(path, feeds)
    g = tamec.compile(path).graph
    for name, model in (("standard", to_onnx(g, standard=True)), ("qonnx", to_qonnx(g))):
        f = save(model, tmp_path / f"{name}.onnx")
        assert all(n.domain == "" for n in model.graph.node), name  # the compiled graph has no QONNX op
        assert_same([ort_run(model, x) for x in feeds], want, f"{name}: onnxruntime")
        assert_same(run_session(f, feeds), want, f"{name}: tamec")
        back = tamec.compile(f).graph
        for op in ("tamec.Threshold", "tamec.Linear"):
            assert n_ops(back, op) == n_ops(g, op), f"{name}: {op}"


@pytest.mark.parametrize("path", all_models())
def test_trained_model_exports_round_trip(path, tmp_path):
    """What `tamec train` writes for a model with changed weights, export_onnx (model.onnx) and
    export_qonnx (model.qonnx.onnx, BipolarQuant weights), imports into tamec and gives the
    training program's forward; onnxruntime agrees on the standard one."""
    prog = GradProgram.from_model(str(path))
    rng = np.random.default_rng(6)
    params = {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in prog.params.items()}
    feeds = probes(path)
    want = [[prog.forward(x[prog.input_name], params)] for x in feeds]
    assert not all(np.array_equal(w[0], prog.forward(x[prog.input_name])) for w, x in zip(want, feeds))
    std = prog.export_onnx(params)
    q = prog.export_qonnx(params)
    assert any(n.op_type == "BipolarQuant" for n in q.graph.node)
    assert_same([ort_run(std, x) for x in feeds], want, "model.onnx: onnxruntime")
    for name, model in (("model", std), ("model.qonnx", q)):
        f = save(model, tmp_path / f"{name}.onnx")
        assert_same(run_session(f, feeds), want, f"{name}: tamec")


@pytest.mark.parametrize("engine", ["reference", "numba"])
@pytest.mark.parametrize("path", all_models())
def test_gradient_graph_round_trips(path, engine, tmp_path, request):
    """A gradient graph of `tamec export-grad` (OneHot, ScatterElements, ConvTranspose included)
    imports into tamec and gives the runtime's loss and gradients, as onnxruntime does on it."""
    prog = GradProgram.from_model(str(path))
    m = gradient_model(prog, prog.rule)
    f = save(m, tmp_path / "grad.onnx")
    rng = np.random.default_rng(1)
    sess = tamec.Session(f, engine=engine)
    names = [o.name for o in sess.get_outputs()]
    for x in probes(path)[:2]:
        x = x[prog.input_name]
        y = rng.integers(0, 10, len(x)).astype(np.int64)
        loss, grads, _ = prog.loss_and_grads(x, y)
        # TFC_1W1A: 1e-5 of its largest gradient, the tolerance tests/test_grad.py gives it
        scale = max(1.0, *(float(np.abs(g).max()) for g in grads.values())) if path == TFC else 1.0
        want = [np.float32(loss)] + [grads[k] for k in prog.params]
        feed = {prog.input_name: x, "labels": y, **prog.params}
        got = sess.run(None, feed)
        assert names == ["loss"] + [f"grad_{k}" for k in prog.params]
        for a, b, c, n in zip(got, ort_run(m, feed), want, names):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{n} vs onnxruntime")
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{n} vs the runtime")
        assert any(np.any(g != 0) for g in got[1:]), "all gradients zero: the comparison proves nothing"


# -- the train round trip -----------------------------------------------------------------------------

def test_tamec_train_then_tamec_run_on_both_models(tmp_path, capsys):
    """One cheap `tamec train` epoch on digits, then `tamec run` on model.onnx and model.qonnx.onnx
    (corner points of the input box and real test images) gives onnxruntime's outputs on model.onnx,
    the model whose agreement with the trained runtime `tamec train` checks; `tamec compile` takes
    both down to the MIP."""
    from tamec.cli import main
    from tamec.drivers.data import load_dataset

    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--batch", "256", "--rule", "ste", "--skip-certify",
                 "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["onnxruntime_agrees"]
    model = onnx.load(str(out / "model.onnx"))
    name = model.graph.input[0].name
    x = np.concatenate([*(f[name] for f in probes(MODELS / "digits_bnn.onnx")), load_dataset("digits").x_test[:16]])
    np.save(tmp_path / "x.npy", x)
    (want,) = ort_run(model, {name: x})
    for f in ("model.onnx", "model.qonnx.onnx"):
        y = tmp_path / f"{f}.y.npy"
        assert main(["run", str(out / f), "--input", str(tmp_path / "x.npy"), "--output", str(y)]) == 0, f
        np.testing.assert_allclose(np.load(y), want, rtol=1e-5, atol=1e-5, err_msg=f)
        assert main(["compile", str(out / f), "--pipeline", PIPELINE]) == 0, f  # down to the MIP
    capsys.readouterr()


# -- the rules behind it ---------------------------------------------------------------------------

def _threshold_graph(tau, flip, x_domain=REAL, y_domain=TERNARY, tie=0.0) -> Graph:
    """x (N, C) -> one tamec.Threshold, verified."""
    g = Graph("t", {"": 13, TAMEC_DOMAIN: 1})
    c = len(tau)
    g.add_value(Value("x", ("N", c), "float32", x_domain))
    g.add_value(Value("y", ("N", c), "float32", y_domain))
    g.inputs, g.outputs = ["x"], ["y"]
    g.add_op(Op("t", "Threshold", ["x"], ["y"], {"tau": np.asarray(tau, np.float64), "flip": np.asarray(flip),
                                                  "axis": 1, "lo": -1.0, "hi": 1.0, "tie": tie}, TAMEC_DOMAIN))
    verify_graph(g)
    return g


def test_per_channel_flip_threshold_reads_back_as_itself(tmp_path):
    """A Threshold with mixed flip and a NaN and an infinite tau, exported in standard form
    (per-channel Where constants, a tie branch), re-imports to one Threshold with the same tau,
    flip, levels and tie, and computes what the original and onnxruntime compute, ties (x exactly
    tau) included."""
    tau, flip = [0.5, -1.0, 2.0, np.nan, -np.inf], [False, True, False, True, False]
    g = _threshold_graph(tau, flip)
    m = to_onnx(g, standard=True)
    back = tamec.compile(save(m, tmp_path / "t.onnx"), "canonicalize").graph
    (op,) = back.ops()
    assert op.qualname == "tamec.Threshold" and op.inputs == ["x"]
    a = op.attrs
    assert np.array_equal(a["tau"], tau, equal_nan=True) and np.array_equal(a["flip"], flip)
    assert (a["lo"], a["hi"], a["tie"]) == (-1.0, 1.0, 0.0) and back.values["y"].domain == TERNARY
    x = np.array([[0.5, -1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, -1.0], [1.0, -2.0, 3.0, -1.0, 7.0]], np.float32)
    want = Evaluator(g).run({"x": x})["y"]
    np.testing.assert_array_equal(Evaluator(back).run({"x": x})["y"], want)
    np.testing.assert_array_equal(ort_run(m, {"x": x})[0], want)
    assert set(np.unique(want)) == {-1.0, 0.0, 1.0}


def test_threshold_whose_tie_is_unreachable_exports_a_file_tamec_verifies(tmp_path):
    """x on the odd lattice never equals tau = 0, so the verified output is bipolar although the tie
    is 0: the standard export writes no tie branch (whose 0 would contradict the declared bipolar
    output on re-import), and the file imports, verifies and computes the original's bits."""
    g = _threshold_graph([0.0, 0.0], [False, True], x_domain=Domain.integer(-5, 5, 2), y_domain=BIPOLAR)
    m = to_onnx(g, standard=True)
    assert not any(n.op_type == "Less" for n in m.graph.node)
    f = save(m, tmp_path / "t.onnx")
    back = tamec.load(f)
    verify_graph(back.graph)
    x = np.array([[-5, 5], [1, -1], [-3, 3]], np.float32)
    want = Evaluator(g).run({"x": x})["y"]
    np.testing.assert_array_equal(ort_run(m, {"x": x})[0], want)
    assert_same(run_session(f, [{"x": x}]), [[want]], "re-import")
    assert back.graph.values["y"].domain == BIPOLAR


def test_where_quantizer_with_nan_threshold_keeps_onnx_semantics():
    """Where(x >= t, 1, -1) with a NaN in t is -1 there for every x (NaN compares false); the
    Where rule must not turn it into a Threshold, whose NaN tau gives its tie value (here +1)."""
    from onnx import helper

    from tests.helpers import model

    nodes = [helper.make_node("GreaterOrEqual", ["x", "t"], ["c"]), helper.make_node("Where", ["c", "one", "neg"], ["y"])]
    m = model(nodes, [("x", ["N", 2])], [("y", ["N", 2])],
              {"t": np.array([0.0, np.nan], np.float32), "one": np.float32(1.0), "neg": np.float32(-1.0)}, opset=13)
    x = np.array([[0.0, 0.0], [-1.0, 5.0], [1.0, -5.0]], np.float32)
    (want,) = ort_run(m, {"x": x})
    assert np.array_equal(want[:, 1], [-1, -1, -1])
    np.testing.assert_array_equal(tamec.Session(m).run(None, {"x": x})[0], want)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("shape", [("N", 3), ("N", 2, 3)], ids=["gemm", "matmul"])
def test_integer_linear_standard_form_declares_its_intermediates(shape, bias, tmp_path):
    """A Linear on an int32 input is lowered through float64 (Cast, Gemm or MatMul + Add, Cast
    back): the file declares the integer domain of each intermediate, so the re-import verifies
    the declared integer output and computes the original's integers, as onnxruntime does."""
    g = Graph("t", {"": 13, TAMEC_DOMAIN: 1})
    g.add_value(Value("x", shape, "int32", Domain.integer(-3, 3)))
    g.add_const("w", np.array([[1, -1, 1], [-1, -1, 1]], np.float32), BIPOLAR)
    if bias:
        g.add_const("b", np.array([1.0, -2.0], np.float32))
    g.add_value(Value("y", shape[:-1] + (2,), "float32", Domain.integer(-11, 11)))
    g.inputs, g.outputs = ["x"], ["y"]
    g.add_op(Op("l", "Linear", ["x", "w"] + (["b"] if bias else []), ["y"], {}, TAMEC_DOMAIN))
    verify_graph(g)
    m = to_onnx(g, standard=True)
    f = save(m, tmp_path / "l.onnx")
    x = np.random.default_rng(0).integers(-3, 4, (5, *shape[1:])).astype(np.int32)
    x[0] = 3  # a corner: every product at its bound
    want = Evaluator(g).run({"x": x})["y"]
    np.testing.assert_array_equal(ort_run(m, {"x": x})[0], want)
    assert_same(run_session(f, [{"x": x}]), [[want]], "re-import")
    assert tamec.load(f).graph.values["y"].domain == Domain.integer(-11, 11)


def test_declared_domain_the_ops_contradict_is_dropped_on_import():
    """A file whose `domain=` doc strings claim what its ops cannot give (Sign declared bipolar,
    but Sign(0) = 0: an edited file, or one from an older tamec) imports as if it declared
    nothing, instead of failing the verifier, and computes onnxruntime's values, zeros included."""
    from onnx import helper

    from tests.helpers import model

    m = model([helper.make_node("Sign", ["x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
              [("x", ["N", 3])], [("y", ["N", 3])])
    m.graph.value_info.append(helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, ["N", 3]))
    m.graph.value_info[0].doc_string = "domain=bipolar"
    g = tamec.load(m).graph
    verify_graph(g)
    assert g.values["s"].domain != BIPOLAR
    x = np.array([[0.0, -2.0, 3.0], [1.0, 0.0, -0.0]], np.float32)
    np.testing.assert_array_equal(tamec.Session(m).run(None, {"x": x})[0], ort_run(m, {"x": x})[0])
    # a claim the ops prove stays: Sign of a bipolar-declared input is bipolar
    m.graph.input[0].doc_string = "domain=bipolar"
    assert tamec.load(m).graph.values["s"].domain == BIPOLAR
