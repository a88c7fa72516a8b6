"""`tamec train`: train a BNN from an ONNX file on a bundled dataset, on the CPU.

What a run does, in order (every check comes before any training step):
 1. checks the output folder is writable, loads the dataset (tamec.drivers.data), imports the model and
    checks the data's example shape against the model input and its labels against the model's
    output classes; with `--resume`, reads the checkpoint and refuses one from another model
    (SHA-256 of the source ONNX) or another run config; a damaged checkpoint (truncated, bad
    CRC, a missing or mistyped field, arrays that do not fit the model) is one InputError, and
    nothing is written before it is refused;
 2. compiles the model once, from that one parse: `canonicalize`, whose Module is the one trained,
    then the rest of the full pipeline (binarize-weights .. bounds, partition, lower-mip, dualize,
    tame-check) on a copy of it, so every block is dualized and tame-checked, and prints a
    one-line summary;
 3. builds the GradProgram (tamec.runtime.autograd) of that Module's graph with the chosen
    backward rule and trains: mini-batches from a seeded permutation per epoch, softmax
    cross-entropy, the optimizer of tamec.runtime.optim, the learning rate decayed by a cosine to
    0 over the run (or constant). The forward (`forward`): `surrogate` (default of the dual rules)
    runs every activation threshold as the rule's fixed surrogate (tamec/ops/rules.py
    fixed_surrogate_u), so the loss reported is the one whose conservative field the step
    follows; `sign-heuristic` (default of ste, ste-clip) runs the sign network and the rule only
    backward. BatchNorm: at every epoch start its statistics are set to those of the whole
    training set (GradProgram.calibrate_bn), the bounds are recomputed from them, and the epoch
    trains with BatchNorm in eval mode on them, so the bounds the rules read hold for what the
    epoch's first step evaluates (batch statistics fell outside them on models whose running
    statistics do not fit). BLAS runs on one thread (small GEMMs);
 4. after every epoch recalibrates the statistics and evaluates the BNN's (sign network's)
    training loss and accuracy and test accuracy, the surrogate's training loss and the gap
    between the two losses, writes the checkpoint atomically, and appends to metrics.json;
 5. at the end writes model.onnx (standard ops), model.qonnx.onnx (BipolarQuant form) and (after
    a full compile) certificates.json, the dualize and tame-check certificates of the trained
    weights (the passes after canonicalize run on the trained graph; nothing is parsed again),
    checks onnxruntime's predictions on the test set against the runtime's, draws curves.png,
    and prints the BNN's `test_accuracy=0.xxxx` as the last line.

Determinism and resume. One numpy Generator seeded with `seed` draws one permutation of the
training set at the start of every epoch; the last incomplete batch is dropped (BatchNorm needs
more than one example). The checkpoint stores the generator's state as of the start of the
current epoch, the step reached inside it, and the running loss/accuracy sums. A run stopped by
SIGINT (or SIGTERM) finishes the step in flight, writes a mid-epoch checkpoint and exits 130; a
killed run (SIGKILL, power loss) keeps the checkpoint of the last finished epoch. `--resume`
takes every setting from the checkpoint (MODEL if it is still there, data, epochs, batch, rule,
optimizer, lr, seed, Bop's rates, schedule) and refuses an option given on the command line that
differs from it (a different value would not continue the same run); it restores params,
BatchNorm state, optimizer state and generator, redraws the interrupted epoch's permutation, skips the steps already done and continues: the result is the same bits as an
uninterrupted run with the same seed (single-threaded or not, numpy and BLAS are deterministic
for the same shapes).

Backward rules (tamec/ops/rules.py has the formulas). The default is bb-mid:5, the derivative of
the centre of each block's relaxed interval on its depth-5 branch-and-bound leaf (the average of
the block's lower and upper LP dual bounds: a fixed Lipschitz surrogate); K = 5 was chosen among
3, 4, 5 by validation accuracy on the last 15 % of the training splits of digits and mnist5k
(bench/accuracy.py; K = 4 was within 0.02 points), in the sign-forward mode with batch-statistics
BatchNorm that preceded the surrogate default; it was not re-chosen. lp-dual and bb-dual:K have
no fixed surrogate (theirs depends on the sign of the upstream gradient), so they train only with
`--forward sign-heuristic`, and do not train well there: descending the lower (optimistic) dual bound pulls every
pre-activation towards its threshold and shrinks the BatchNorm scales to ~0 (the analysis is in
the tamec/ops/rules.py docstring; `python bench/accuracy.py` prints the numbers). ste and ste-clip are the
heuristics BinaryConnect / BinaryNet use.

Interval bounds of the threshold inputs depend on the parameters (binarized weights, BatchNorm
running statistics); the dual rules (lp-dual, bb-dual:K, lp-mid, bb-mid:K) read them. They are
recomputed from the parameters at the start of every epoch by an analysis call
(GradProgram.refresh_bounds: constant folding and the bounds analysis on the graph, no pass
re-run); a mid-epoch checkpoint keeps the epoch-start parameters and statistics so a resumed run
uses the same bounds. Within an epoch the parameters move and the bounds stay those of its start:
they are constants of the epoch's surrogate, proven for its first step only.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tamec.errors import InputError, TamecError, UsageError
from tamec.files import atomic_write, writable_folder
from tamec.runtime import checkpoint as ckpt

FULL_PIPELINE_EXTRA = ("partition", "lower-mip", "dualize", "tame-check")
SCHEDULES = ("cosine", "constant")
FORWARDS = ("surrogate", "sign-heuristic")
EVAL_BATCH = 1024


@dataclass
class TrainConfig:
    """Everything that decides the trained bits (the checkpoint refuses a resume that differs)."""

    model: str | None = None
    data: str = "digits"
    epochs: int = 30
    batch: int = 64
    rule: str = "bb-mid:5"  # chosen on validation (module doc); lp-dual does not train; ste-clip is a heuristic
    optimizer: str = "adam"
    lr: float | None = None
    seed: int = 0
    bop_gamma: float = 1e-4
    bop_threshold: float = 1e-8
    schedule: str = "cosine"
    # None: "surrogate" for the dual rules (forward and loss through the rule's fixed surrogate
    # network, the function whose field the rule is), "sign-heuristic" for ste and ste-clip (the
    # sign network forward, the rule only backward: a heuristic, as STE is)
    forward: str | None = None

    BITS = ("data", "batch", "rule", "optimizer", "lr", "seed", "bop_gamma", "bop_threshold", "schedule",
            "forward")
    # what `--resume` takes from the checkpoint: every setting (a given option that differs is refused)
    RESUMED = ("epochs",) + BITS

    def problems(self) -> list[str]:
        """What is wrong with this config's values and types (empty when it can run)."""
        def num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        def whole(v):
            return isinstance(v, int) and not isinstance(v, bool)

        bad = []
        checks = [("model", self.model is None or isinstance(self.model, str), "a file name"),
                  ("data", isinstance(self.data, str), "a dataset name or file"),
                  ("epochs", whole(self.epochs) and self.epochs >= 1, "an integer >= 1"),
                  ("batch", whole(self.batch) and self.batch >= 2, "an integer >= 2"),
                  ("rule", isinstance(self.rule, str), "a rule name"),
                  ("optimizer", isinstance(self.optimizer, str), "adam, sgd or bop"),
                  ("lr", self.lr is None or (num(self.lr) and self.lr > 0), "a number > 0"),
                  ("seed", whole(self.seed) and self.seed >= 0, "an integer >= 0"),
                  ("bop_gamma", num(self.bop_gamma) and self.bop_gamma >= 0, "a number >= 0"),
                  ("bop_threshold", num(self.bop_threshold) and self.bop_threshold >= 0, "a number >= 0"),
                  ("schedule", self.schedule in SCHEDULES, " or ".join(SCHEDULES)),
                  ("forward", self.forward in (None,) + FORWARDS, " or ".join(FORWARDS))]
        for name, ok, want in checks:
            if not ok:
                bad.append(f"{name} {getattr(self, name)!r} (want {want})")
        return bad


@dataclass
class TrainResult:
    """What `train` returns: final metrics, per-epoch history, the files written."""

    test_accuracy: float
    history: list[dict]
    out: Path
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


class _Stop:
    """SIGINT/SIGTERM while training: remember it, let the current step finish (a second signal
    interrupts at once)."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, the default behaviour stays
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _one_blas_thread():
    """Limit BLAS to one thread while training: the GEMMs of a mini-batch are small, and a second
    BLAS thread spinning on a busy machine made epochs 5-10x slower (measured on digits)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def check_data_vs_model(ds, graph, model_name: str):
    """Reshape the data to the model's input if only the layout differs; refuse shape, label and
    batch mismatches with errors that say what to do."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UsageError(f"training needs a model with one input and one output, {model_name} has "
                         f"{len(graph.inputs)} and {len(graph.outputs)}", file=model_name)
    xin, yout = graph.values[graph.inputs[0]], graph.values[graph.outputs[0]]
    shape = tuple(xin.shape or ())
    if not shape:
        raise UsageError(f"model input {xin.name!r} has no shape", file=model_name)
    if isinstance(shape[0], int) and shape[0] > 0:
        raise UsageError(f"model input {xin.name!r} has a fixed batch size {shape[0]}", file=model_name,
                         hint="export the model with a dynamic batch axis (torch.onnx.export(..., "
                              "dynamic_axes={'x': {0: 'N'}}))")
    want = tuple(shape[1:])
    if any(not isinstance(d, int) for d in want):
        raise UsageError(f"model input {xin.name!r} has symbolic non-batch dims {list(shape)}", file=model_name)
    have = tuple(ds.input_shape)
    if have != want:
        if math.prod(have) != math.prod(want):
            raise InputError(f"dataset {ds.name} has examples of shape {list(have)}, the model input "
                             f"{xin.name!r} wants {list(want)}", file=model_name,
                             hint="pick the model for this dataset (e.g. mnist_bnn.onnx for mnist5k)")
        ds.x_train = ds.x_train.reshape((-1,) + want)
        ds.x_test = ds.x_test.reshape((-1,) + want)
        ds.input_shape = want
    oshape = tuple(yout.shape or ())
    n_out = oshape[-1] if oshape and isinstance(oshape[-1], int) else None
    if n_out is None or len(oshape) != 2:
        raise UsageError(f"model output {yout.name!r} of shape {list(oshape)} is not (batch, classes)",
                         file=model_name)
    top = int(max(ds.y_train.max(), ds.y_test.max()))
    low = int(min(ds.y_train.min(), ds.y_test.min()))
    if low < 0 or top >= n_out:
        raise InputError(f"dataset {ds.name} has labels in [{low}, {top}], the model has {n_out} output "
                         f"classes", file=model_name, hint=f"labels must lie in [0, {n_out - 1}]")
    return n_out


def compile_summary(m, seconds: float) -> str:
    """One line: blocks, dual functions, tame-check verdicts of the full-pipeline compile."""
    st = {r.name: r.stats for r in m.history}
    part, dual, tame = st.get("partition", {}), st.get("dualize", {}), st.get("tame-check", {})
    structures = ", ".join(f"{k} {v}" for k, v in sorted(tame.get("structures", {}).items()))
    not_nice = tame.get("not_nice") or []
    verdict = f"{tame.get('nice', 0)}/{tame.get('blocks', 0)} nice ({structures})"
    if not_nice:
        verdict += f"; not nice: {', '.join(map(str, not_nice))}"
    return (f"compiled: {part.get('blocks', 0)} blocks ({part.get('binarized', 0)} binarized + head), "
            f"dualized ({dual.get('neurons', 0)} neurons, {dual.get('keys', 0)} dual keys), "
            f"tame-check {verdict} in {seconds:.1f} s")


def _eval(prog, params, x, y) -> tuple[float, np.ndarray]:
    preds = np.empty(len(x), np.int64)
    for i in range(0, len(x), EVAL_BATCH):
        preds[i:i + EVAL_BATCH] = np.argmax(prog.forward(x[i:i + EVAL_BATCH], params, train=False), axis=1)
    return float(np.mean(preds == y)), preds


def _signs(params, binary) -> dict[str, np.ndarray]:
    return {n: np.where(params[n] >= 0, 1, -1).astype(np.int8) for n in sorted(binary)}  # 0 -> +1


def _write_json(path: Path, doc) -> None:
    text = json.dumps(doc, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def lr_at(cfg: TrainConfig, base: float, step: int, total: int) -> float:
    """The learning rate of global step `step` of `total`: constant, or cosine decay to 0."""
    if cfg.schedule == "constant" or total <= 0:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


def _resolve_model(model, data: str) -> str:
    if model is None:  # the bundled model of the dataset (tamec.drivers.data.TRAIN_MODELS), else digits_bnn
        from tamec.drivers.data import default_train_model

        return default_train_model(data)
    if not Path(model).is_file():
        raise UsageError(f"no model file {model}", hint="pass an ONNX file, or no MODEL for the bundled digits_bnn.onnx")
    return str(model)


def _damaged(path, why: str) -> InputError:
    return InputError(f"damaged checkpoint: {why}", file=str(path), hint="delete the checkpoint folder to start over")


def saved_config(doc: dict, path) -> TrainConfig:
    """The run config a checkpoint's meta holds, checked field by field (InputError if damaged)."""
    saved = doc.get("config")
    if not isinstance(saved, dict):
        raise _damaged(path, "no run config in its metadata")
    saved = {"forward": None, **saved}  # checkpoints written before --forward existed
    missing = [k for k in ("model",) + TrainConfig.RESUMED if k not in saved]
    if missing:
        raise _damaged(path, f"its run config lacks {', '.join(missing)}")
    cfg = TrainConfig(**{k: saved[k] for k in ("model",) + TrainConfig.RESUMED})
    if cfg.problems():
        raise _damaged(path, "its run config has " + "; ".join(cfg.problems()))
    return cfg


def check_meta(doc: dict, path, epochs: int, steps: int) -> None:
    """The loop state of a checkpoint's meta: epoch, step, RNG state, running sums, history, each of
    the type and range the loop reads (InputError naming the first that is not)."""
    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool)

    epoch, step = doc.get("epoch"), doc.get("step")
    if not (whole(epoch) and 0 <= epoch <= epochs):
        raise _damaged(path, f"epoch {epoch!r} is not an integer in [0, {epochs}]")
    if not (whole(step) and 0 <= step < max(steps, 1)) or (epoch == epochs and step):
        raise _damaged(path, f"step {step!r} is not an integer in [0, {steps}) (0 after the last epoch)")
    try:
        np.random.default_rng().bit_generator.state = doc.get("rng_state")
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise _damaged(path, f"its rng_state is not a numpy generator state ({type(e).__name__}: {e})") from None
    sums = doc.get("sums")
    if not (isinstance(sums, dict) and isinstance(sums.get("loss"), (int, float)) and whole(sums.get("correct"))
            and whole(sums.get("seen"))):
        raise _damaged(path, f"its running sums {sums!r} are not {{loss, correct, seen}} numbers")
    history = doc.get("history")
    keys = ("epoch", "loss", "batch_accuracy", "train_accuracy", "test_accuracy", "seconds")
    if not (isinstance(history, list) and len(history) == epoch and all(
            isinstance(h, dict) and all(isinstance(h.get(k), (int, float)) for k in keys)
            and isinstance(h.get("flipped"), dict) for h in history)):
        raise _damaged(path, f"its history is not {epoch} epoch record(s) of {', '.join(keys)}, flipped")


def check_arrays(path, got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    """`got` (from a checkpoint) has exactly the names, shapes and kinds of `want` (this run's)."""
    unknown, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    if unknown or missing:
        raise _damaged(path, f"its {what} do not match the model: "
                             + "; ".join(([f"unknown {', '.join(unknown)}"] if unknown else [])
                                         + ([f"missing {', '.join(missing)}"] if missing else [])))
    for n in sorted(want):
        a, b = np.asarray(got[n]), np.asarray(want[n])
        if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
            raise _damaged(path, f"{what[:-1] if what.endswith('s') else what} {n!r} is {a.dtype} {list(a.shape)}, "
                                 f"this run's is {b.dtype} {list(b.shape)}")


def _check_resume(doc: dict, cfg: TrainConfig, sha: str, explicit: set[str], model: str, path) -> TrainConfig:
    """The config to continue: every setting from the checkpoint. An option given on the command
    line that differs from the checkpoint's is refused (it would not be the same run)."""
    if doc.get("model_sha256") != sha:
        raise UsageError(f"the checkpoint was made from another model ({doc['config'].get('model')}, "
                         f"sha256 {str(doc.get('model_sha256'))[:12]}), not {model} (sha256 {sha[:12]})",
                         file=model, hint="resume with the same MODEL, or start a new run without --resume "
                                          "or with another --out")
    saved = saved_config(doc, path)
    for k in TrainConfig.RESUMED:
        if k in explicit and getattr(cfg, k) != getattr(saved, k):
            raise UsageError(f"--{k.replace('_', '-')} {getattr(cfg, k)} differs from the checkpoint's "
                             f"{getattr(saved, k)}", hint=f"drop --{k.replace('_', '-')}: --resume continues the run "
                                                          "with the checkpoint's settings; or start a new run")
    saved.model = model
    return saved


def train(cfg: TrainConfig, out="tamec-train", resume: bool = False, progress: bool = True,
          explicit: frozenset[str] = frozenset(), stdout=None, full_compile: bool = True) -> TrainResult:
    """Run the training job `cfg` writing into `out` (see the module docstring). `full_compile=False`
    skips step 2 (benchmarks that train one model many times)."""
    import tamec
    from tamec.api import parse_bounds
    from tamec.drivers.data import load_dataset
    from tamec.passmanager import DEFAULT_PIPELINE, PassContext, run_pipeline
    from tamec.runtime.autograd import _load_proto

    say = (lambda s: print(s, file=stdout or sys.stdout, flush=True))
    if cfg.problems():
        raise UsageError("bad training options: " + "; ".join(cfg.problems()))
    out = writable_folder(out)
    ck_dir = out / "checkpoint"
    ck_file = ck_dir / ckpt.FILE
    groups, doc = ckpt.load(ck_dir) if resume else (None, None)
    model, data = cfg.model, cfg.data
    if resume:  # without MODEL: the checkpoint's model if it is still there, else its dataset's bundled one
        saved = saved_config(doc, ck_file)
        data = cfg.data if "data" in explicit else saved.data
        if model is None and Path(saved.model).is_file():
            model = saved.model
    model = _resolve_model(model, data)
    cfg.model = model
    sha = ckpt.model_hash(model)
    if resume:
        cfg = _check_resume(doc, cfg, sha, set(explicit), model, ck_file)
    from tamec.runtime.autograd import GradProgram
    from tamec.runtime.optim import make_optimizer
    from tamec.runtime.rules import parse_rule

    spec = parse_rule(cfg.rule)  # a bad --rule fails here, before the compile
    dual = spec.from_dual
    forward = resolve_forward(cfg)
    surrogate = True if forward == "surrogate" else None
    if cfg.schedule not in SCHEDULES:
        raise UsageError(f"unknown --schedule {cfg.schedule!r}", hint="use " + " or ".join(SCHEDULES))
    ds = load_dataset(cfg.data)
    # one parse and one compile: the Module that is canonicalized is the one trained, and the
    # rest of the pipeline (dualize, tame-check) certifies a copy of that same Module
    proto = _load_proto(model)
    module = tamec.load(proto if proto is not None else model)
    module.source = str(model)
    n_out = check_data_vs_model(ds, module.graph, model)
    if len(ds.x_train) < cfg.batch:
        raise UsageError(f"--batch {cfg.batch} is larger than the training set ({len(ds.x_train)})")
    ctx = PassContext(input_bounds=parse_bounds({"*": ds.input_box}))
    t0 = time.perf_counter()
    module = run_pipeline(module, [DEFAULT_PIPELINE[0]], ctx=ctx)
    compile_s = time.perf_counter() - t0
    if full_compile:
        t0 = time.perf_counter()
        full = run_pipeline(module.copy(), list(DEFAULT_PIPELINE[1:]) + list(FULL_PIPELINE_EXTRA), ctx=ctx)
        compile_s += time.perf_counter() - t0
        say(compile_summary(full, compile_s))
        not_nice = {r.name: r.stats for r in full.history}.get("tame-check", {}).get("not_nice")
        if not_nice and dual:
            # a dual-derived field is only promised on tame blocks; the heuristics promise nothing
            raise UsageError(f"rule {cfg.rule} needs every block nice, the tame-check rejects {not_nice}",
                             file=str(model), hint="fix the model (see `tamec compile --pipeline ...,tame-check`) "
                                                   "or train with a named heuristic: --rule ste-clip")
    say(f"data: {ds.describe()} ({ds.split or 'as stored'}); input box {list(ds.input_box)}")

    prog = GradProgram.from_module(module, proto, rule=cfg.rule, input_bounds=ds.input_box)
    params = {n: np.ascontiguousarray(p, dtype=np.float32) for n, p in prog.params.items()}
    binary = frozenset(prog.binary)
    hyper = {"gamma": cfg.bop_gamma, "threshold": cfg.bop_threshold} if cfg.optimizer == "bop" else {}
    opt = make_optimizer(cfg.optimizer, params, binary, cfg.lr, **hyper)
    base_lr = opt.lr
    rng = np.random.default_rng(cfg.seed)
    history: list[dict] = []
    epoch0, step0, sums = 0, 0, {"loss": 0.0, "correct": 0, "seen": 0}
    start_signs = _signs(params, binary)
    n = len(ds.x_train)
    steps = n // cfg.batch  # the last incomplete batch is dropped
    if resume:
        check_meta(doc, ck_file, cfg.epochs, steps)
        extra = groups.get("extra", {})
        mid = doc["step"] > 0 and dual  # a mid-epoch checkpoint of a dual rule keeps the epoch-start bounds
        for what, got, want in (("params", groups.get("params", {}), params),
                                ("BatchNorm statistics", groups.get("state", {}), prog.state),
                                ("optimizer state arrays", groups.get("opt", {}), opt.state_arrays()),
                                ("extra arrays", extra,
                                 {**{f"sign/{k}": v for k, v in start_signs.items()},
                                  **({f"bparam/{k}": v for k, v in params.items()} if mid else {}),
                                  **({f"bstate/{k}": v for k, v in prog.state.items()} if mid else {})})):
            check_arrays(ck_file, got, want, what)
        for name, a in groups["params"].items():
            params[name][...] = a
        for name, a in groups.get("state", {}).items():
            prog.state[name][...] = a
        opt.load_state(groups["opt"])
        start_signs = {k[len("sign/"):]: a for k, a in extra.items() if k.startswith("sign/")}
        rng.bit_generator.state = doc["rng_state"]
        epoch0, step0, sums, history = doc["epoch"], doc["step"], doc["sums"], doc["history"]
        say(f"resumed from {ck_dir} at epoch {epoch0 + (1 if step0 else 0)}, step {step0}")
    elif ckpt.exists(ck_dir):
        say(f"note: starting a new run; the checkpoint in {ck_dir} will be replaced (use --resume to continue it)")
    say(f"training: rule {cfg.rule}, forward {forward}, optimizer {json.dumps(opt.config())}, {cfg.epochs} epochs of {steps} "
        f"steps (batch {cfg.batch}), seed {cfg.seed}")
    config_doc = dict(asdict(cfg), lr=opt.lr, optimizer_config=opt.config(), model_sha256=sha,
                      data_split=ds.split, input_box=list(ds.input_box), classes=n_out,
                      train_examples=n, test_examples=len(ds.x_test), steps_per_epoch=steps,
                      forward_mode=forward, forward_is=FORWARD_IS[forward],
                      batchnorm="eval mode during each epoch, statistics of the whole training set (calibrated at "
                                "every epoch start; the bounds the rules read are computed from them)")

    def save(epoch, step, rng_state, sums, signs, bounds_at=None):
        extra = {f"sign/{k}": v for k, v in signs.items()}
        if bounds_at is not None:
            extra.update({f"bparam/{k}": v for k, v in bounds_at[0].items()})
            extra.update({f"bstate/{k}": v for k, v in bounds_at[1].items()})
        meta = {"epoch": epoch, "step": step, "rng_state": rng_state, "sums": sums, "history": history,
                "config": dict(asdict(cfg)), "model_sha256": sha, "global_step": epoch * steps + step}
        ckpt.save(ck_dir, {"params": params, "state": dict(prog.state), "opt": opt.state_arrays(),
                           "extra": extra}, meta)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs * steps, initial=min(epoch0 * steps + step0, cfg.epochs * steps),
                   unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)
    wall0 = time.perf_counter()
    last_test = history[-1]["test_accuracy"] if history else float("nan")
    try:
        with _Stop() as stop, _one_blas_thread():
            for epoch in range(epoch0, cfg.epochs):
                rng_state = rng.bit_generator.state
                perm = rng.permutation(n)
                first = step0 if epoch == epoch0 else 0
                if first == 0:
                    sums = {"loss": 0.0, "correct": 0, "seen": 0}
                    start_signs = _signs(params, binary)
                    # BN statistics the bounds cover: the training set's, fixed for the epoch. The
                    # surrogate forward of the calibration reads bounds: those of the saved state
                    # first, so a resumed run calibrates with the same ones
                    if dual:
                        prog.refresh_bounds(params)
                    prog.calibrate_bn(ds.x_train, params, surrogate)
                    if dual:
                        prog.refresh_bounds(params)
                        bounds_at = ({k: v.copy() for k, v in params.items()},
                                     {k: v.copy() for k, v in prog.state.items()})
                elif dual:  # resumed mid-epoch: the bounds of the epoch start
                    bounds_at = ({k[len("bparam/"):]: v for k, v in groups["extra"].items() if k.startswith("bparam/")},
                                 {k[len("bstate/"):]: v for k, v in groups["extra"].items() if k.startswith("bstate/")})
                    now = {k: v.copy() for k, v in prog.state.items()}
                    prog.state.update({k: v.copy() for k, v in bounds_at[1].items()})
                    prog.refresh_bounds(bounds_at[0])
                    prog.state.update(now)
                if bar is not None:
                    bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
                t_ep = time.perf_counter()
                for k in range(first, steps):
                    idx = perm[k * cfg.batch:(k + 1) * cfg.batch]
                    xb, yb = ds.x_train[idx], ds.y_train[idx]
                    loss, grads, logits = prog.loss_and_grads(xb, yb, params, train=False, surrogate=surrogate)
                    if not math.isfinite(loss):
                        raise TamecError(f"the loss became {loss} at epoch {epoch + 1}, step {k + 1}",
                                         hint="lower --lr")
                    opt.set_lr(lr_at(cfg, base_lr, epoch * steps + k, cfg.epochs * steps))
                    opt.step(params, grads)
                    sums["loss"] += float(loss) * len(idx)
                    sums["correct"] += int(np.sum(np.argmax(logits, axis=1) == yb))
                    sums["seen"] += len(idx)
                    if bar is not None:
                        bar.update(1)
                        if k % 5 == 0 or k == steps - 1:
                            bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.4f}",
                                            acc=f"{sums['correct'] / sums['seen']:.4f}",
                                            test=f"{last_test:.4f}", refresh=False)
                    if stop.requested and k < steps - 1:
                        save(epoch, k + 1, rng_state, sums, start_signs, bounds_at if dual else None)
                        if bar is not None:
                            bar.close()
                        say(f"interrupted at epoch {epoch + 1}, step {k + 1}/{steps}: checkpoint written to "
                            f"{ck_dir}; continue with --resume")
                        raise KeyboardInterrupt
                train_s = time.perf_counter() - t_ep
                t_ev = time.perf_counter()
                prog.calibrate_bn(ds.x_train, params, surrogate)  # the statistics of the params evaluated
                ev = _epoch_eval(prog, params, ds, surrogate)
                train_acc, last_test = ev["bnn_train_accuracy"], ev["test_accuracy"]
                eval_s = time.perf_counter() - t_ev
                end_signs = _signs(params, binary)
                flipped = {b: float(np.mean(end_signs[b] != start_signs[b])) for b in end_signs}
                history.append({"epoch": epoch + 1, "loss": sums["loss"] / max(sums["seen"], 1),
                                "batch_accuracy": sums["correct"] / max(sums["seen"], 1),
                                "train_accuracy": train_acc, "test_accuracy": last_test, **ev,
                                "flipped": flipped, "seconds": train_s, "eval_seconds": eval_s})
                save(epoch + 1, 0, rng.bit_generator.state, {"loss": 0.0, "correct": 0, "seen": 0}, end_signs)
                _write_json(out / "metrics.json", {"config": config_doc, "epochs": history,
                                                   "compile_seconds": compile_s, "finished": False})
                line = (f"epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['loss']:.4f} ({forward}), BNN loss "
                        f"{ev['bnn_train_loss']:.4f} (gap {ev['surrogate_bnn_gap']:+.4f}), BNN train "
                        f"{train_acc:.4f}, test {last_test:.4f}, flipped "
                        f"{100 * np.mean(list(flipped.values()) or [0]):.2f} %, {train_s:.2f} s")
                if bar is not None:
                    bar.write(line, file=stdout or sys.stdout)
                else:
                    say(line)
                if stop.requested and epoch + 1 < cfg.epochs:
                    if bar is not None:
                        bar.close()
                    say(f"interrupted after epoch {epoch + 1}: checkpoint written to {ck_dir}; continue with --resume")
                    raise KeyboardInterrupt
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - wall0
    certify = (lambda m: run_pipeline(m, list(DEFAULT_PIPELINE[1:]) + list(FULL_PIPELINE_EXTRA), ctx=ctx)) \
        if full_compile else None
    return _finish(prog, params, ds, out, history, config_doc, compile_s, wall, say, certify)


def resolve_forward(cfg: TrainConfig) -> str:
    """The forward mode of `cfg` (see TrainConfig.forward); UsageError when the rule has none."""
    from tamec.runtime.rules import parse_rule

    spec = parse_rule(cfg.rule)
    forward = cfg.forward or ("surrogate" if spec.from_dual else "sign-heuristic")
    if forward == "surrogate" and not spec.fixed_surrogate:
        raise UsageError(f"rule {spec.name} has no fixed surrogate network to train: its surrogate depends on "
                         "the sign of the upstream gradient",
                         hint="train lp-mid or bb-mid:K (the default), or name the heuristic: --forward sign-heuristic")
    return forward


FORWARD_IS = {"surrogate": "forward and loss through the rule's fixed surrogate network (each threshold replaced by "
                           "the surrogate of tamec/ops/rules.py): the gradients are the conservative field of the "
                           "reported loss",
              "sign-heuristic": "forward and loss through the sign network, the rule only backward: a heuristic "
                                "(the gradients are not the field of the reported loss)"}


def _epoch_eval(prog, params, ds, surrogate) -> dict:
    """The BNN's (sign network's) train loss and accuracy and test accuracy, the trained
    surrogate's train loss and the gap between the two losses, all at the epoch-end params."""
    from tamec.runtime.autograd import softmax_cross_entropy

    def loss_acc(x, y, sur):
        logits = np.concatenate([prog.forward(x[i:i + EVAL_BATCH], params, surrogate=sur)
                                 for i in range(0, len(x), EVAL_BATCH)])
        return softmax_cross_entropy(logits, y)[0], float(np.mean(np.argmax(logits, axis=1) == y))

    bnn_loss, bnn_acc = loss_acc(ds.x_train, ds.y_train, None)
    sur_loss, sur_acc = loss_acc(ds.x_train, ds.y_train, surrogate) if surrogate else (bnn_loss, bnn_acc)
    test_acc = loss_acc(ds.x_test, ds.y_test, None)[1]
    return {"bnn_train_loss": bnn_loss, "bnn_train_accuracy": bnn_acc, "surrogate_train_loss": sur_loss,
            "surrogate_train_accuracy": sur_acc, "surrogate_bnn_gap": sur_loss - bnn_loss,
            "test_accuracy": test_acc}


def _finish(prog, params, ds, out: Path, history, config_doc, compile_s, wall, say, certify=None) -> TrainResult:
    """Export ONNX and QONNX, check onnxruntime against the runtime, write metrics and curves."""
    import onnx

    test_acc, preds = _eval(prog, params, ds.x_test, ds.y_test)
    files = {"model": str(out / "model.onnx"), "qonnx": str(out / "model.qonnx.onnx"),
             "metrics": str(out / "metrics.json"), "curves": str(out / "curves.png"),
             "checkpoint": str(out / "checkpoint" / ckpt.FILE)}
    if certify is not None:  # the certificates of the trained weights, next to the model
        files["certificates"] = str(out / "certificates.json")
        _write_certificates(prog, params, certify, files["certificates"])
    for key, model in (("model", prog.export_onnx(params)), ("qonnx", prog.export_qonnx(params))):
        data = model.SerializeToString()
        atomic_write(files[key], lambda f: f.write(data))
    ort_acc, agree = onnxruntime_accuracy(files["model"], ds.x_test, ds.y_test, preds)
    metrics = {"config": config_doc, "epochs": history, "test_accuracy": test_acc,
               "onnxruntime_test_accuracy": ort_acc, "onnxruntime_agrees": agree,
               "backward": prog.rule_table(), "compile_seconds": compile_s, "train_seconds": sum(h["seconds"] for h in history),
               "wall_seconds": wall, "finished": True, "files": files}
    _write_json(out / "metrics.json", metrics)
    try:
        plot_curves(history, files["curves"])
    except Exception as e:  # noqa: BLE001  a plot must not lose a finished training run
        say(f"note: curves.png not written: {e}")
    say(f"wrote {files['model']} (onnxruntime test accuracy {ort_acc:.4f}"
        + (", same predictions" if agree else ", DIFFERENT predictions from the runtime") + f"), "
        f"{files['qonnx']}, {files['metrics']}, {files['curves']}, {files['checkpoint']}")
    say(f"test_accuracy={test_acc:.4f}")
    return TrainResult(test_acc, history, out, files, metrics)


def _write_certificates(prog, params, certify, path) -> None:
    """Run the certifying passes (binarize-weights .. tame-check) on the trained graph (no parse)
    and write their per-block certificates as `tamec compile --dump-dir` does."""
    from tamec.module import Module
    from tamec.passmanager import certificate_entries

    try:
        m = certify(Module(prog.graph_with(params), source=prog.source, properties=prog.module.properties))
        doc = certificate_entries(m)
    except TamecError as e:  # the trained model is still written; the file says why it has no certificate
        doc = [{"error": str(e)}]
    text = json.dumps(doc, indent=1, default=_json_default) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def onnxruntime_accuracy(path, x, y, preds) -> tuple[float, bool]:
    """Test accuracy of model file `path` under onnxruntime, and whether its predictions equal `preds`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    got = np.concatenate([np.argmax(sess.run(None, {name: x[i:i + EVAL_BATCH]})[0], axis=1)
                          for i in range(0, len(x), EVAL_BATCH)])
    return float(np.mean(got == y)), bool(np.array_equal(got, preds))


def plot_curves(history: list[dict], path) -> None:
    """curves.png: loss, train/test accuracy, and the fraction of binary weights flipped per
    epoch and block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(ep, [h["loss"] for h in history], "o-")
    ax[0].set(title="training loss (softmax cross-entropy)", xlabel="epoch")
    ax[1].plot(ep, [h["train_accuracy"] for h in history], "o-", label="train")
    ax[1].plot(ep, [h["test_accuracy"] for h in history], "s-", label="test")
    ax[1].set(title="accuracy", xlabel="epoch")
    ax[1].legend()
    blocks = sorted({b for h in history for b in h["flipped"]})
    for b in blocks:
        ax[2].plot(ep, [max(h["flipped"].get(b, 0.0), 1e-6) for h in history], "o-", label=b)
    ax[2].set(title="binary weights flipped per epoch", xlabel="epoch", yscale="log")
    if blocks:
        ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
