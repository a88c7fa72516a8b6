"""`fit_mip`: train a tiny BNN exactly with the training-mode MIP, against gradient training.

Data: sklearn's bundled 8x8 digits (no download), pixels scaled to [0, 1] by /16, split once by
`train_test_split(test_size=0.3, stratify=y, random_state=0)` (1257 train / 540 test). From the
train split `per_class` examples of each class are drawn with `numpy.random.default_rng(seed)`;
both methods fit exactly those examples, and "train accuracy" is measured on them, "test
accuracy" on the whole test split. Predictions are the argmax of the integer class scores, ties
to the lowest class index (numpy's and onnxruntime's argmax), for both methods alike.

The fitted model is written as standard ONNX (opset 13): x in [0, 1] -> Sub 0.5 ->
Where(GreaterOrEqual(., 0), 1, -1) -> MatMul(+-1) -> Sub tau -> Where(GreaterOrEqual(., 0), 1, -1)
-> ... -> MatMul(+-1) -> logits. It is run by onnxruntime and by `tamec.Session`, which must agree
with each other and with the numpy forward pass the MIP encodes, or the fit is refused.

The gradient baseline trains the same network (sign activations with ties to +1, integer
thresholds, no bias on the scores) in numpy: latent real weights and thresholds, sign in the
forward pass, the straight-through hardtanh estimator backward (gradient passed where
|pre-activation / sqrt(fan-in)| <= 1, and where |latent weight| <= 1), Adam, softmax
cross-entropy on scores / sqrt(fan-in). Its real thresholds t deploy as tau = ceil(t), which
decides every integer pre-activation the same way.
"""
from __future__ import annotations

import json
import math
import numbers
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tamec.errors import CheckMismatchError, UsageError
from tamec.lower.training import binarize_inputs, decode_weights, encode_solution, forward, hinge, lower_training

DATASETS = ("digits",)
SPLIT = "sklearn train_test_split(test_size=0.3, stratify=y, random_state=0)"

Params = list[tuple[np.ndarray, "np.ndarray | None"]]


@dataclass
class FitReport:
    """What `fit_mip` did: solver outcome, both methods' accuracies, where the files went."""

    arch: list[int]
    data: str
    per_class: int
    seed: int
    time_limit: float
    examples: dict
    mip: dict
    gradient: dict
    model_path: str | None = None
    report_path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def solved(self) -> bool:
        """True when the solver returned a network (optimal, or the incumbent at a limit)."""
        return self.mip.get("train_acc") is not None

    def to_json(self) -> dict:
        return asdict(self)


def parse_arch(spec) -> list[int]:
    """`"64-16-10"` or a sequence of ints -> [64, 16, 10]; at least an input and an output width."""
    try:
        arch = [int(s) for s in (spec.split("-") if isinstance(spec, str) else spec)]
    except (TypeError, ValueError):
        raise UsageError(f"bad architecture {spec!r}", hint="write the layer widths as 64-16-10") from None
    if len(arch) < 2:
        raise UsageError(f"architecture {spec!r} has a single layer", hint="give input, hidden and output widths, "
                         "e.g. 64-16-10")
    if min(arch) < 1:
        raise UsageError(f"architecture {spec!r} has a width < 1", hint="every layer needs at least one neuron")
    return arch


def arch_from_model(model) -> list[int]:
    """Layer widths of a plain MLP: the chain of `tamec.Linear` ops of the compiled model."""
    import tamec

    g = tamec.compile(model).graph
    passive = {"tamec.Threshold", "Add", "Sub", "Mul", "Div", "Neg", "BatchNormalization", "Flatten", "Reshape",
               "Identity", "Softmax", "LogSoftmax"}
    bad = sorted({op.qualname for op in g.ops() if op.qualname != "tamec.Linear" and op.qualname not in passive})
    linears = [op for op in g.ops() if op.qualname == "tamec.Linear"]
    if bad or not linears or len(g.inputs) != 1 or len(g.outputs) != 1:
        why = f"ops {', '.join(bad)}" if bad else f"{len(linears)} Linear layers, {len(g.inputs)} inputs"
        raise UsageError(f"{model} is not a plain MLP ({why})", file=str(model),
                         hint="fit-mip takes a fully connected sign network; or give --arch instead")
    arch = []
    for k, op in enumerate(linears):
        W = g.const(op.inputs[1])
        if W is None or W.ndim != 2:
            raise UsageError(f"{model}: Linear {op.id} has no constant 2-D weight", file=str(model), node=op.id)
        if k == 0:
            arch.append(int(W.shape[1]))
        elif W.shape[1] != arch[-1] or _upstream_linear(g, op.inputs[0]) is not linears[k - 1]:
            raise UsageError(f"{model}: Linear {op.id} does not follow the previous layer", file=str(model),
                             node=op.id, hint="fit-mip takes a chain of fully connected layers")
        arch.append(int(W.shape[0]))
    return arch


def _upstream_linear(g, value: str):
    """The Linear op `value` is computed from through elementwise ops, or None."""
    p = g.producer(value)
    while p is not None and p.qualname != "tamec.Linear":
        p = g.producer(p.inputs[0])
    return p


def load_data(data: str = "digits") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test) of the named dataset with the documented fixed split."""
    if data not in DATASETS:
        raise UsageError(f"unknown dataset {data!r}", hint="datasets: " + ", ".join(DATASETS))
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise UsageError("the digits data come from scikit-learn, which is not installed",
                         hint="pip install scikit-learn") from None
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return tuple(train_test_split(x, d.target.astype(np.int64), test_size=0.3, stratify=d.target, random_state=0))


def pick_per_class(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of each class, drawn without replacement, class by class."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    if per_class < 1 or per_class > counts.min():
        raise UsageError(f"per-class {per_class}", hint=f"pick between 1 and {counts.min()} examples per class")
    return np.concatenate([np.sort(rng.choice(np.flatnonzero(y == c), per_class, replace=False)) for c in classes])


def train_gradient(arch: list[int], x: np.ndarray, y: np.ndarray, *, seed: int = 0, epochs: int = 400,
                   lr: float = 0.01) -> Params:
    """The same BNN trained by straight-through gradient descent (full batch, Adam); the module doc."""
    rng = np.random.default_rng(seed)
    h0 = binarize_inputs(x).astype(np.float64)
    L, E = len(arch) - 1, h0.shape[0]
    scale = [math.sqrt(k) for k in arch[:-1]]
    W = [rng.uniform(-1, 1, (arch[l + 1], arch[l])) for l in range(L)]
    t = [np.zeros(arch[l + 1]) for l in range(L - 1)]
    params = W + t
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    onehot = np.eye(arch[-1])[y]
    b1, b2 = 0.9, 0.999
    for step in range(1, epochs + 1):
        h, cache = h0, []
        for l in range(L):
            Wb = np.where(W[l] >= 0, 1.0, -1.0)
            z = h @ Wb.T
            a = (z - t[l]) / scale[l] if l < L - 1 else z / scale[l]
            cache.append((h, Wb, a))
            h = np.where(a >= 0, 1.0, -1.0)
        p = np.exp(a - a.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        da = (p - onehot) / E
        grads_W, grads_t = [None] * L, [None] * (L - 1)
        for l in reversed(range(L)):
            hp, Wb, a = cache[l]
            if l < L - 1:
                da = da * (np.abs(a) <= 1)  # hardtanh straight-through
                grads_t[l] = -da.sum(0) / scale[l]
            dz = da / scale[l]
            grads_W[l] = (dz.T @ hp) * (np.abs(W[l]) <= 1)
            da = dz @ Wb
        for k, g in enumerate(grads_W + grads_t):
            m1[k] = b1 * m1[k] + (1 - b1) * g
            m2[k] = b2 * m2[k] + (1 - b2) * g * g
            params[k] -= lr * (m1[k] / (1 - b1 ** step)) / (np.sqrt(m2[k] / (1 - b2 ** step)) + 1e-8)
        for l in range(L):
            np.clip(W[l], -1, 1, out=W[l])
    out = []
    for l in range(L):
        tau = None
        if l < L - 1:
            tau = np.clip(np.ceil(t[l]), -arch[l], arch[l] + 1).astype(np.int64)
        out.append((np.where(W[l] >= 0, 1, -1).astype(np.int64), tau))
    return out


def to_onnx(params: Params, name: str = "tamec_fit_mip"):
    """The network of `params` as a standard-ONNX (opset 13) model x[N, n0] -> logits[N, nL]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    inits = {"half": f32(0.5), "zero": f32(0.0), "one": f32(1.0), "minus_one": f32(-1.0)}
    nodes = []

    def binarize(src: str, tag: str) -> str:
        # +1 where src >= 0 (ties to +1), -1 elsewhere
        nodes.append(helper.make_node("GreaterOrEqual", [src, "zero"], [f"{tag}_ge"], name=f"{tag}/GreaterOrEqual"))
        nodes.append(helper.make_node("Where", [f"{tag}_ge", "one", "minus_one"], [tag], name=f"{tag}/Where"))
        return tag

    nodes.append(helper.make_node("Sub", ["x", "half"], ["x_centered"], name="input/Sub"))
    h = binarize("x_centered", "h0")
    L = len(params)
    for l, (W, tau) in enumerate(params, start=1):
        inits[f"W{l}"] = f32(np.asarray(W).T)
        out = "logits" if l == L else f"z{l}"
        nodes.append(helper.make_node("MatMul", [h, f"W{l}"], [out], name=f"fc{l}/MatMul"))
        if l < L:
            inits[f"tau{l}"] = f32(tau)
            nodes.append(helper.make_node("Sub", [out, f"tau{l}"], [f"s{l}"], name=f"fc{l}/Sub"))
            h = binarize(f"s{l}", f"h{l}")
    n0, nL = int(params[0][0].shape[1]), int(params[-1][0].shape[0])
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n0])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", nL])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tamec fit-mip")
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def run_both(path: str, x: np.ndarray) -> np.ndarray:
    """Logits of the ONNX file on x from onnxruntime and tamec.Session, which must be equal."""
    import onnxruntime as ort

    import tamec

    x = np.ascontiguousarray(x, np.float32)
    (ref,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = tamec.Session(path).run(None, {"x": x})
    if not np.array_equal(ref, got):
        raise CheckMismatchError(f"tamec.Session and onnxruntime disagree on {int((ref != got).any(1).sum())} of "
                                 f"{len(x)} inputs", file=path, hint="this is a bug in tamec; please report it")
    return ref


def _out_dir(out_dir) -> Path | None:
    if out_dir is None:
        return None
    p = Path(out_dir)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".tamec-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to {p}: {e.strerror or e}", hint="pick a writable output folder") from None
    return p


def _acc(scores: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, 1) == y))


def fit_mip(arch, data: str = "digits", per_class: int = 5, time_limit: float = 60, seed: int = 0,
            out_dir=None, *, margin: float = 1.0, epochs: int = 400, warm_start: str = "gradient",
            progress: bool = True) -> FitReport:
    """Fit `arch` on `per_class` digits per class by the training MIP (HiGHS, `time_limit` seconds)
    and by gradient; write model.onnx and report.json to `out_dir` (if given); see the module doc.
    `warm_start="gradient"` hands HiGHS the gradient-trained network as its first incumbent (the
    MIP is then built without symmetry breaking, so that network is feasible): the MIP can only
    improve its training hinge loss; the default, since from no start HiGHS rarely finds a network
    better than tied scores within a minute. `progress` shows the incumbent and bound on stderr
    (a terminal only). Ctrl-C stops HiGHS: the incumbent is decoded and written as at a time
    limit, then `tamec.errors.Interrupted` is raised with this report as its `partial`."""
    import sys

    from tqdm import tqdm

    from tamec.errors import Interrupted
    from tamec.solve import solve

    arch = parse_arch(arch)
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise UsageError(f"per-class {per_class!r}", hint="give at least 1 example per class")
    if isinstance(time_limit, bool) or not isinstance(time_limit, numbers.Real) or not 0 < time_limit < math.inf:
        raise UsageError(f"time limit {time_limit!r}", hint="give a positive number of seconds")
    out = _out_dir(out_dir)
    xtr_all, xte, ytr_all, yte = load_data(data)
    n_in, n_cls = int(xtr_all.shape[1]), int(ytr_all.max()) + 1
    if arch[0] != n_in or arch[-1] != n_cls:
        raise UsageError(f"architecture {'-'.join(map(str, arch))} does not fit {data}: {n_in} inputs, {n_cls} classes",
                         hint=f"use {n_in}-...-{n_cls}")
    idx = pick_per_class(ytr_all, int(per_class), seed)
    x, y = xtr_all[idx], ytr_all[idx]
    notes = []

    if warm_start not in ("none", "gradient"):
        raise UsageError(f"warm start {warm_start!r}", hint="use none or gradient")
    t0 = time.perf_counter()
    gparams = train_gradient(arch, x, y, seed=seed, epochs=epochs)
    gsec = time.perf_counter() - t0
    t0 = time.perf_counter()
    mod, layout = lower_training(arch, x, y, margin=margin, symmetry_breaking=warm_start == "none")
    milp = mod.assemble()
    build = time.perf_counter() - t0
    start = encode_solution(layout, milp, gparams) if warm_start == "gradient" else None
    bar = tqdm(total=round(float(time_limit)), desc="fit-mip", unit="s", file=sys.stderr, leave=False,
               disable=None if progress else True, bar_format="{desc}: {n}/{total} s |{bar}| {postfix}")

    def show(pr) -> None:
        bar.n = min(round(pr.seconds), bar.total)
        bar.set_postfix_str(f"incumbent {_fmt(pr.primal)}, bound {_fmt(pr.dual)}, {pr.nodes} nodes")

    try:
        sol = solve(milp, time_limit=float(time_limit), start=start, progress=show)
    finally:
        bar.close()
    if sol.interrupted:
        notes.append(f"interrupted (Ctrl-C) after {sol.seconds:.1f} s of solving: the incumbent is used"
                     + ("" if sol.x is not None else ", and there was none"))
    n_int = int(milp.integrality.sum())
    mip = sol.to_json() | {"warm_start": warm_start, "build_seconds": build, "variables": int(milp.shape[1]),
                           "integer_variables": n_int,
                           "rows": int(milp.shape[0]), "margin": margin, "train_acc": None, "test_acc": None}
    model_path = None
    if sol.x is None:
        old = out is not None and (out / "model.onnx").exists()
        stale = " (the model.onnx already there is from an earlier run)" if old else ""
        notes.append(f"no solution within the time limit ({time_limit:g} s, solver status {sol.status}): "
                     f"no model written{stale}")
    else:
        if sol.status in ("limit", "interrupted"):
            notes.append(f"solver stopped at its limit: the best incumbent is used (gap {_fmt(sol.gap)})")
        params = decode_weights(layout, milp, sol.x)
        hidden, scores = forward(params, x)
        mip["objective_recomputed"] = float(hinge(scores, y, margin).sum())
        if mip["objective_recomputed"] >= len(y) * margin - 1e-9:
            notes.append("the MIP's network puts no training example ahead of every other class by the margin "
                         "(the solver found nothing better than tied scores within the limit)")
        if abs(mip["objective_recomputed"] - sol.objective) > 1e-6 * max(1.0, abs(sol.objective)):
            notes.append(f"the hinge loss of the decoded network ({mip['objective_recomputed']:g}) differs from the "
                         f"solver's objective ({sol.objective:g}): solver tolerance")
        with tempfile.TemporaryDirectory() as tmp:
            path = (out or Path(tmp)) / "model.onnx"
            try:
                path.write_bytes(to_onnx(params).SerializeToString())
            except OSError as e:
                raise UsageError(f"cannot write {path}: {e.strerror}", hint="pick a writable output folder") from None
            logits_tr, logits_te = run_both(str(path), x), run_both(str(path), xte)
        if not (np.array_equal(logits_tr, scores) and np.array_equal(logits_te, forward(params, xte)[1])):
            raise CheckMismatchError("the exported model does not compute the network the MIP found",
                                     hint="this is a bug in tamec.drivers.fit.to_onnx; please report it")
        mip["train_acc"], mip["test_acc"] = _acc(logits_tr, y), _acc(logits_te, yte)
        mip["weights"] = [{"W": W.tolist(), "tau": None if tau is None else tau.tolist()} for W, tau in params]
        model_path = str(path) if out else None

    gscores = forward(gparams, x)[1]
    gradient = {"method": "straight-through (hardtanh) + Adam, cross-entropy", "epochs": epochs, "seconds": gsec,
                "train_acc": _acc(gscores, y), "test_acc": _acc(forward(gparams, xte)[1], yte),
                "hinge": float(hinge(gscores, y, margin).sum())}
    rep = FitReport(arch, data, int(per_class), int(seed), float(time_limit),
                    {"train": int(len(y)), "test": int(len(yte)), "split": SPLIT, "train_indices": idx.tolist()},
                    mip, gradient, model_path, None, notes)
    if out is not None:
        rep.report_path = str(out / "report.json")
        try:
            (out / "report.json").write_text(json.dumps(rep.to_json(), indent=2) + "\n")
        except OSError as e:
            raise UsageError(f"cannot write {rep.report_path}: {e.strerror}",
                             hint="pick a writable output folder") from None
    if sol.interrupted:
        raise Interrupted(rep)
    return rep


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3g}"
