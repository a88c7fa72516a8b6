"""GradProgram: forward and backward passes over a model's training graph, on a tape.

The training graph is the model after `canonicalize` (no threshold folding: BatchNormalization
stays trainable and every activation Threshold keeps its real pre-activation). Its interval bounds
come from running `binarize-weights` and `bounds` on it; the backward rules read them.

Parameters, keyed by the ORIGINAL ONNX initializer name: the weight and bias of every Linear/Conv
(a bias written as a separate `Add` right after one counts), and the scale and B of every
BatchNormalization. A weight the model computes through a quantizer (Sign, BipolarQuant, Threshold
of an initializer) is keyed by the latent initializer and holds the latent real tensor; a weight
stored as +-1 is a latent too, initialized at its +-1 values and binarized with sign (+1 at 0). The
forward binarizes latents with the model's own tie rule; the backward of a weight quantizer is the
identity on the latent (BinaryConnect: the gradient w.r.t. the latent is the gradient w.r.t. the
binarized weight; -1 where a quantizer flips). `binary` names those latents.

Backward, op by op (documented selections at kinks):
  Linear/Conv          exact (float32 BLAS; binary operands give exact integer sums in float32).
  BatchNormalization   eval: the affine map with the running statistics; train: batch statistics
                       as torch (biased variance to normalize, unbiased for the running update,
                       running = momentum * running + (1 - momentum) * batch, ONNX's momentum).
  Threshold            activation: the backward rule (tamec/ops/rules.py); on a latent weight:
                       identity (above).
  Add/Sub/Mul/Div      exact, with broadcasting.      Relu        1 where x > 0 (0 at 0).
  Clip                 1 on the closed window.        MaxPool     to the first maximal element
                                                                  in window order (as PyTorch).
  Reshape/Flatten/Transpose/Identity/Dropout (inference)/Neg: exact.
Loss: softmax cross-entropy with integer labels, mean over the batch.

The batch dimension is free: a model exported with a fixed batch (Brevitas' TFC has [1, ...] and
a `Reshape` to [1, -1]) runs any batch size, its batch-keeping reshapes following along.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from tamec.errors import InputError, UnsupportedModelError, UsageError
from tamec.ir.graph import Domain, Graph, Op
from tamec.ops import REGISTRY, attach, has, hook, require
from tamec.ops.conv import offsets, pad_spatial, window
from tamec.ops.threshold import ThresholdParams
from tamec.runtime import rules as R

WEIGHT_CHAIN = frozenset({"tamec.Threshold", "Transpose", "Reshape", "Identity", "Flatten"})
AFFINE_CHAIN = frozenset({"BatchNormalization", "Add", "Sub", "Mul", "Div", "Identity"})
PARAM_POS = {"tamec.Linear": (1, 2), "Conv": (1, 2), "BatchNormalization": (1, 2)}


# -- small helpers ---------------------------------------------------------------------------------

def _unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum `g` down to `shape` (the reverse of numpy broadcasting)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


def _acc(gs: list, i: int, v: np.ndarray) -> None:
    gs[i] = v if gs[i] is None else gs[i] + v


def _threshold_levels(op: Op, full_shape: tuple, batch: bool):
    """Per-element (tau f64, up, down, tie f32) of a Threshold over a tensor of `full_shape`
    (batch dim included when `batch`), flattened without the batch dim."""
    target = (1,) + tuple(full_shape[1:]) if batch else tuple(full_shape)
    return ThresholdParams.of(op).per_element(target)


def _lattice(dom: Domain):
    """(origin, step) of an integer domain, else None."""
    vals = dom.finite_values() if dom.is_integer else None
    if vals is None or len(vals) == 0:
        return None
    step = float(dom.step) if dom.kind == "int" else (float(vals[1] - vals[0]) if len(vals) > 1 else 1.0)
    return float(vals[0]), step


class _Ctx:
    """What one forward run needs besides the values: mode, surrogate patterns, new BN state."""

    __slots__ = ("train", "surrogate", "new_state", "batch", "calibrate")

    def __init__(self, train: bool, surrogate: dict | None, batch: int, calibrate: bool = False):
        self.train, self.surrogate, self.new_state, self.batch = train, surrogate, {}, batch
        self.calibrate = calibrate


@dataclass
class Step:
    """One op of the tape: `kind`, input/output slots, constants in `info`, and two closures:
    fwd(env, ctx) -> saved and bwd(g, saved, gs, need) (accumulates into gs for needed inputs)."""

    kind: str
    op: Op | None
    ins: list[int]
    out: int
    info: dict = field(default_factory=dict)
    fwd: object = None
    bwd: object = None


@dataclass
class ThresholdInfo:
    """An activation threshold: its op, per-element constants and the bounds of its input."""

    op: Op
    sample_shape: tuple
    tau: np.ndarray
    up: np.ndarray
    down: np.ndarray
    tie: np.ndarray
    lo: np.ndarray  # bounds of the input x (float64, per element), -inf/inf when unknown
    hi: np.ndarray
    lattice: tuple | None = None
    coef: dict = field(default_factory=dict)
    table: dict | None = None  # the certified s-range pieces from the plan (use_plan), else None
    fallback: object = None  # the heuristic Rule of a refused block, when the user named one
    source: dict = field(default_factory=dict)  # where the rule comes from (block, certificate, reasons)

    @property
    def d(self) -> np.ndarray:
        return self.up.astype(np.float64) - self.down.astype(np.float64)

    @property
    def L(self) -> np.ndarray:
        return self.lo - self.tau

    @property
    def U(self) -> np.ndarray:
        return self.hi - self.tau


# -- the program -------------------------------------------------------------------------------------

class GradProgram:
    """Forward, loss and gradients of a model's training graph with a chosen backward rule.

    `params` (float32, by initializer name), `binary` (latent weight names), `state` (BN running
    statistics by initializer name), `rule` (the rule's name). See the module docstring."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.state: dict[str, np.ndarray] = {}
        self.binary: frozenset[str] = frozenset()
        self.rule = "lp-dual"
        self.thresholds: dict[str, ThresholdInfo] = {}

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model, rule="lp-dual", input_bounds=None) -> "GradProgram":
        """Parse `model` (path, ModelProto or bytes) once, canonicalize it and build the tape."""
        import tamec
        from tamec.api import parse_bounds
        from tamec.passmanager import PassContext, run_pipeline

        R.parse_rule(rule)  # a bad rule fails before the parse
        proto = _load_proto(model)
        module = tamec.load(proto if proto is not None else model)
        if isinstance(model, (str, os.PathLike)):
            module.source = str(model)
        ctx = PassContext(input_bounds=parse_bounds(input_bounds))
        module = run_pipeline(module, ["canonicalize"], ctx=ctx)
        return cls.from_module(module, proto, rule=rule, input_bounds=input_bounds)

    @classmethod
    def from_module(cls, module, proto, rule="lp-dual", input_bounds=None) -> "GradProgram":
        """The tape of a canonicalized Module (`tamec train` compiles the model once and trains
        that Module's graph); `proto` is the parsed ONNX model, for the initializer names."""
        from tamec.api import parse_bounds
        from tamec.passmanager import PassContext

        rspec = R.parse_rule(rule)
        self = cls()
        self.source = module.source
        self.module = module
        self.graph: Graph = module.graph
        self.ctx = PassContext(input_bounds=parse_bounds(input_bounds))
        self._inits = _initializers(proto)
        self._build()
        self.refresh_bounds()
        self.set_rule(rspec)
        return self

    def _build(self) -> None:
        g = self.graph
        require(g.ops(), "backward", what="the backward pass", hint=_backward_hint())
        if len(g.inputs) != 1 or len(g.outputs) != 1:
            raise UnsupportedModelError(f"training needs one data input and one output, the model has inputs "
                                        f"{g.inputs} and outputs {g.outputs}", file=self.source,
                                        hint="export a classifier x -> logits")
        self.input_name, self.output_name = g.inputs[0], g.outputs[0]
        vin = g.values[self.input_name]
        if vin.dtype != "float32" or not vin.shape:
            raise UnsupportedModelError(f"input {self.input_name!r} is {vin.dtype} {vin.shape}", file=self.source,
                                        hint="training needs a float32 input with a batch dimension")
        self.sample_shape = tuple(vin.shape[1:])
        self.static_batch = vin.shape[0] if isinstance(vin.shape[0], int) else None
        ops = g.ops()
        self._slot: dict[str, int] = {}
        self.slot_names: list[str] = []
        template: list = []

        def slot(name: str, value=None) -> int:
            if name not in self._slot:
                self._slot[name] = len(self.slot_names)
                self.slot_names.append(name)
                template.append(value)
            return self._slot[name]

        slot(self.input_name)
        self._data_values = {self.input_name}  # values computed from the data input
        for op in ops:
            if any(i in self._data_values for i in op.inputs if i):
                self._data_values.update(o for o in op.outputs if o)
        if self.output_name not in self._data_values:
            raise UnsupportedModelError(f"output {self.output_name!r} does not depend on the input "
                                        f"{self.input_name!r}", file=self.source,
                                        hint="training needs logits computed from the data input")
        params, roots, binary = self._find_params(ops)
        self.param_slots: dict[str, int] = {}
        for key, arr in params.items():
            self.params[key] = np.array(arr, np.float32)
            self.param_slots[key] = slot(_param_slot_name(key, g, roots))
        steps: list[Step] = []
        for root, (key, transform, binarize) in roots.items():
            if transform is None and not binarize:
                self._slot[root] = self.param_slots[key]  # the compiled constant is the parameter
                continue
            src = self.param_slots[key]
            if transform is not None:
                dst = slot(root) if not binarize else slot(root + "/unbinarized")
                steps.append(_prep_transform(transform, src, dst, g.values[root].shape))
                src = dst
            if binarize:
                steps.append(_prep_binarize(src, slot(root)))
        self.binary = frozenset(binary)
        self.state_slots: dict[str, int] = {}
        unsupported = []
        for op in ops:
            for i in op.inputs:
                if i and i not in self._slot:
                    c = g.const(i)
                    if c is None:
                        raise UnsupportedModelError(f"value {i!r} has no producer", node=op.id, op=op.qualname)
                    slot(i, np.asarray(c))
            if op.qualname == "BatchNormalization":
                for i in op.inputs[3:5]:
                    name = self._state_name(i)
                    self.state.setdefault(name, np.array(g.const(i), np.float32))
                    self.state_slots[name] = self._slot[i]
            for o in op.outputs[1:]:
                if o and (g.users(o) or o in g.outputs):
                    unsupported.append(f"{op.id} ({op.qualname}: second output used)")
            out = slot(op.outputs[0])
            try:
                steps.append(self._step(op, [self._slot[i] if i else -1 for i in op.inputs], out))
            except _Unsupported as e:
                unsupported.append(f"{op.id} ({op.qualname}{': ' + str(e) if str(e) else ''})")
        if unsupported:
            raise UnsupportedModelError("the backward pass does not support " + "; ".join(unsupported),
                                        file=self.source, node=unsupported[0].split(" ")[0],
                                        hint=_backward_hint())
        self.steps = steps
        self._template = template
        self.n_slots = len(self.slot_names)
        self.in_slot = self._slot[self.input_name]
        self.out_slot = self._slot[self.output_name]
        # which slots depend on parameters / on the data input: the backward visits only those
        self.need_params = [False] * self.n_slots
        self.need_input = [False] * self.n_slots
        for s in self.param_slots.values():
            self.need_params[s] = self.need_input[s] = True
        self.need_input[self.in_slot] = True
        for st in steps:
            ins = [i for i in st.ins if i >= 0]
            self.need_params[st.out] = any(self.need_params[i] for i in ins)
            self.need_input[st.out] = any(self.need_input[i] for i in ins)
        for st in steps:
            if st.kind == "threshold":
                self.thresholds[st.op.id] = st.info["t"]

    def _state_name(self, value: str) -> str:
        key, _ = self._resolve(value, self.graph.const(value))
        return key

    def _resolve(self, root: str, arr: np.ndarray):
        """(initializer name, transform) of a compiled constant: the same tensor, its transpose
        (canonicalize's `.T` copies) or a reshape of it; (root, None) when none matches."""
        inits = self._inits
        if root in inits and inits[root].shape == arr.shape:
            return root, None
        for n in sorted(inits, key=len, reverse=True):
            if not root.startswith(n + "."):
                continue
            a = inits[n]
            if a.shape == arr.shape and np.array_equal(a, arr):
                return n, None
            if a.ndim == 2 and a.T.shape == arr.shape and np.array_equal(a.T, arr):
                return n, "transpose"
            if a.size == arr.size and np.array_equal(a.reshape(arr.shape), arr):
                return n, "reshape"
        return root, None

    def _find_params(self, ops):
        """Parameters (key -> initial value), compiled roots (root -> (key, transform, binarize)),
        binary keys."""
        g = self.graph
        slots = []
        for op in ops:
            pos = PARAM_POS.get(op.qualname, ())
            slots += [(op, p) for p in pos if p < len(op.inputs) and op.inputs[p]]
            if op.qualname == "Add":  # a bias written as its own Add after Linear/Conv (tf2onnx)
                for k in (0, 1):
                    other = g.producer(op.inputs[1 - k])
                    if g.const(op.inputs[k]) is not None and other is not None and \
                            other.qualname in ("tamec.Linear", "Conv"):
                        slots.append((op, k))
        params, roots, binary = {}, {}, set()
        for op, p in slots:
            cur, quantized = op.inputs[p], False
            while g.const(cur) is None:
                prod = g.producer(cur)
                if prod is None or prod.qualname not in WEIGHT_CHAIN or \
                        any(g.const(i) is None for i in prod.inputs[1:] if i):
                    cur = None
                    break
                quantized |= prod.qualname == "tamec.Threshold"
                cur = prod.inputs[0]
            if cur is None or cur in roots:
                if cur is not None and quantized:
                    binary.add(roots[cur][0])
                continue
            arr = g.const(cur)
            if arr.dtype.kind != "f":
                continue
            key, transform = self._resolve(cur, arr)
            stored_binary = (not quantized and p == 1 and op.qualname in ("tamec.Linear", "Conv")
                             and arr.size > 0 and bool(np.all(np.abs(arr) == 1)))
            roots[cur] = (key, transform, stored_binary)
            if key not in params:
                params[key] = self._inits[key] if key in self._inits else arr
            if quantized or stored_binary:
                binary.add(key)
        return params, roots, binary

    def _step(self, op: Op, ins: list[int], out: int) -> Step:
        build = hook(op.qualname, "backward")
        if build is None:
            raise _Unsupported("")
        return build(self, op, ins, out)

    # -- rules and bounds --------------------------------------------------------------------------
    def set_rule(self, rule) -> None:
        """Use `rule` (a name or Rule) for every activation threshold."""
        spec = R.parse_rule(rule)
        self.rule = spec.name
        self.rule_spec = spec
        for t in self.thresholds.values():
            t.coef = R.coefficients(spec, t.L, t.U, t.d, R.shift_lattice(t.lattice, t.tau))
        if getattr(self, "plan", None) is not None:
            self._plan_rules(spec)

    # the rule lookup from the plan pass (passes/plan.py): slopes read from certified duals
    def use_plan(self, plan, fallback=None) -> None:
        """Read every activation threshold's dual rule from `plan` (a compiled Module or its
        `reports["plan"]`): the pieces of its block's certified s-range duals, applied to the
        block's folded pre-activation z = (x - beta) / alpha (alpha, beta of the elementwise chain
        z -> x at the current parameters, frozen with the plan). A block whose certificate fails
        gets no dual rule: UsageError naming it, unless `fallback` names a heuristic (ste, ste-clip)
        to use there instead."""
        if hasattr(plan, "reports"):
            plan = plan.reports.get("plan")
        if not isinstance(plan, dict) or "blocks" not in plan:
            raise UsageError("no plan to read the rules from", hint="compile through dualize, tame-check and plan")
        fb = None if fallback is None else R.parse_rule(fallback)
        if fb is not None and fb.from_dual:
            raise UsageError(f"fallback {fb.name} is a dual rule", hint="name a heuristic: ste or ste-clip")
        index = {o: (b, th) for b in plan["blocks"] for th in b["thresholds"] for o in th["origin"]}
        self.plan_map = {}
        for t in self.thresholds.values():
            hit = next((index[o] for o in t.op.origin if o in index), None)
            if hit is None:
                raise UsageError(f"threshold {t.op.id} is not in the plan", file=self.source, node=t.op.id,
                                 hint="compile the same model through the plan pass")
            block, th = hit
            if not block["certified"] and fb is None:
                raise UsageError(f"block {block['block']} (threshold {t.op.id}) has no certified dual: "
                                 f"{'; '.join(block['reasons'])}; training refuses a dual rule there",
                                 file=self.source, node=t.op.id,
                                 hint="fix the model or its bounds, or name a heuristic fallback "
                                      "(fallback='ste-clip')")
            size = int(np.prod(t.sample_shape))
            if th["neurons"] != size:
                raise UnsupportedModelError(f"threshold {t.op.id}: the plan has {th['neurons']} neurons, the "
                                            f"training graph {size}", file=self.source, node=t.op.id)
            alpha, beta = self._affine_chain(th["input"], t.op.inputs[0], t.sample_shape)
            self.plan_map[t.op.id] = (block, th, alpha, beta)
        self.plan, self.fallback = plan, fb
        self._plan_rules(self.rule_spec)

    def _affine_chain(self, z_name: str, x_name: str, sample: tuple):
        """(alpha, beta) per sample element with x = alpha z + beta along the elementwise ops
        (eval BatchNormalization, Add/Sub/Mul/Div by a constant, Identity) from z to x."""
        g, env = self.graph, self._prep_env()
        chain, cur = [], x_name
        while cur != z_name:
            op = g.producer(cur)
            if op is None or op.qualname not in AFFINE_CHAIN:
                raise UnsupportedModelError(f"cannot relate the training threshold input {x_name!r} to the "
                                            f"certified pre-activation {z_name!r}", file=self.source,
                                            node=None if op is None else op.id,
                                            hint="the plan's rules need an elementwise affine chain between them")
            data = [i for i in op.inputs if i in self._data_values]
            chain.append((op, data[0]))
            cur = data[0]
        n = int(np.prod(sample))
        a, b = np.ones(n), np.zeros(n)

        def per_elem(v):
            v = np.asarray(v, np.float64)
            if op.qualname == "BatchNormalization" and len(sample) > 1:
                v = v.reshape((-1,) + (1,) * (len(sample) - 1))
            return np.broadcast_to(v, (1,) + tuple(sample) if v.ndim > len(sample) else tuple(sample)).reshape(-1)

        for op, d in reversed(chain):
            val = [None if i in self._data_values or not i else env[self._slot[i]] for i in op.inputs]
            if op.qualname == "BatchNormalization":
                eps = float(op.attrs.get("epsilon", 1e-5))
                ns = per_elem(val[1]) / np.sqrt(per_elem(val[4]) + eps)
                a, b = a * ns, (b - per_elem(val[3])) * ns + per_elem(val[2])
            elif op.qualname in ("Add", "Sub"):
                c = per_elem(val[1] if op.inputs[0] == d else val[0])
                sign = -1.0 if op.qualname == "Sub" and op.inputs[1] == d else 1.0
                a, b = sign * a, sign * b + (c if op.qualname == "Add" or op.inputs[1] == d else -c)
            elif op.qualname in ("Mul", "Div"):
                if op.qualname == "Div" and op.inputs[1] == d:
                    raise UnsupportedModelError(f"{op.id}: a division by the pre-activation is not affine",
                                                file=self.source, node=op.id)
                c = per_elem(val[1] if op.inputs[0] == d else val[0])
                c = 1.0 / c if op.qualname == "Div" else c
                a, b = a * c, b * c
        return a, b

    def _plan_rules(self, spec) -> None:
        """Fill each threshold's `table` (certified pieces of `spec` at its depth) or its fallback."""
        for t in self.thresholds.values():
            block, th, alpha, beta = self.plan_map[t.op.id]
            t.source = {"block": block["block"], "certificate": block["certificate"],
                        "certified": block["certified"], "reasons": list(block["reasons"])}
            t.table = t.fallback = None
            if not spec.from_dual:
                continue
            if not block["certified"]:
                t.fallback = self.fallback
                t.coef = R.coefficients(t.fallback, t.L, t.U, t.d)
                continue
            key_of = np.asarray(th["key_of"], np.int64)
            with np.errstate(divide="ignore"):
                live = (alpha != 0) & np.isfinite(alpha)
            key_of = np.where(live, key_of, -1)  # alpha = 0: a constant neuron, field 0
            tab = R.plan_tables(spec, block["keys"], key_of)
            lat_o, lat_st = np.zeros(key_of.size), np.zeros(key_of.size)
            for j in np.flatnonzero(key_of >= 0):
                lat = block["keys"][key_of[j]]["key"]["lattice"]
                if lat is not None:
                    lat_o[j], lat_st[j] = lat["origin"], lat["step"]
            safe = np.where(live, alpha, 1.0)
            t.table = {**tab, "a": np.where(live, 1.0 / safe, 0.0), "c0": np.where(live, -beta / safe, 0.0),
                       "lat_o": lat_o, "lat_st": lat_st, "tau": np.asarray(th["tau"], np.float64)}

    def rule_table(self) -> list[dict]:
        """The backward rule of every activation threshold (one block each) and the proven bounds
        it reads: what `str(prog)` prints and `tamec train` records in metrics.json."""
        spec = R.parse_rule(self.rule)
        kind = {"lp-dual": "LP-relaxation dual of the block", "lp-mid": "centre of the LP relaxation",
                "bb-dual": f"B&B dual, active leaf at depth {spec.depth}",
                "bb-mid": f"centre of the depth-{spec.depth} B&B leaf's relaxation"}.get(spec.kind, "heuristic")
        rows = []
        for t in self.thresholds.values():
            L, U = t.L, t.U
            with np.errstate(invalid="ignore"):
                stable = (L >= 0) | (U <= 0)
                unbounded = ~np.isfinite(L) | ~np.isfinite(U)
            live = ~stable & ~unbounded
            rows.append({"op": t.op.id, "origin": list(t.op.origin), "neurons": int(L.size), "rule": self.rule,
                         "derived_from": kind, "stable": int(stable.sum()), "unbounded": int(unbounded.sum()),
                         "min_abs_L": float(np.abs(L[live]).min()) if live.any() else None,
                         "max_U": float(U[live].max()) if live.any() else None, **_cite(t, spec)})
        return rows

    def __str__(self) -> str:
        head = f"GradProgram {self.source or '<model>'}: rule {self.rule}, {len(self.params)} weights"
        lines = [f"  {r['op']} ({', '.join(r['origin'])}): {r['neurons']} neurons, {r['stable']} stable, "
                 f"{r['unbounded']} unbounded, {r['derived_from']}; rule from {r['rule_source']}"
                 + (f" [{r['certificate']}]" if r["certificate"] else "") for r in self.rule_table()]
        return "\n".join([head] + lines)

    def refresh_bounds(self, params=None) -> None:
        """Recompute the interval bounds of every threshold input for `params` (binarized weights,
        BN running statistics from `state`), with the input box given at from_model. An analysis
        call (constant folding, then the bounds analysis `propagate`) on a copy of the training
        graph: no pass is re-run and nothing is compiled again."""
        from tamec.passes.bounds import propagate
        from tamec.rewrite import fold_constants

        g = self.graph_with(params)
        fold_constants(g, quantizers=True)  # weight quantizers -> +-1 constants, so the bounds see the binary weights
        propagate(g, self.ctx)
        self.train_graph = g
        for t in self.thresholds.values():
            v = g.values.get(t.op.inputs[0])
            size = int(np.prod(t.sample_shape))
            if v is not None and v.bounds is not None:
                t.lo = np.broadcast_to(np.asarray(v.bounds[0], np.float64), t.sample_shape).reshape(-1).copy()
                t.hi = np.broadcast_to(np.asarray(v.bounds[1], np.float64), t.sample_shape).reshape(-1).copy()
            else:
                t.lo, t.hi = np.full(size, -np.inf), np.full(size, np.inf)
            t.lattice = _lattice(v.domain) if v is not None else None
        if hasattr(self, "rule_spec"):
            self.set_rule(self.rule_spec)

    def graph_with(self, params=None) -> Graph:
        """A copy of the training graph holding `params` (latent weights as latents, stored-binary
        weights binarized) and the BN running statistics of `state`."""
        env = self._prep_env(params)
        g = self.graph.copy()
        names = set(self._slot) - {self.input_name}
        for name in names:
            v = g.values.get(name)
            if v is None or v.const is None:
                continue
            val = env[self._slot[name]]
            if val is None or val is v.const:
                continue
            a = np.array(val, dtype=v.const.dtype).reshape(v.const.shape)
            a.flags.writeable = False
            v.const = a
            v.domain = Domain.of_array(a)
        return g

    def _prep_env(self, params=None) -> list:
        """The slot values with parameters, prep steps (transforms, binarization) and state."""
        env = list(self._template)
        for k, v in self._check_params(params).items():
            env[self.param_slots[k]] = v
        for k, s in self.state_slots.items():
            env[s] = self.state[k]
        ctx = _Ctx(False, None, 1)
        for st in self.steps:
            if st.kind.startswith("prep-"):
                st.fwd(env, ctx)
        return env

    # -- running -------------------------------------------------------------------------------------
    def _check_params(self, params) -> dict:
        if params is None:
            return self.params
        out = dict(self.params)
        for k, v in params.items():
            ref = self.params.get(k)
            if ref is None:
                raise UsageError(f"unknown parameter {k!r}", hint="parameters: " + ", ".join(self.params))
            a = np.asarray(v, np.float32)
            if a.shape != ref.shape:
                raise UsageError(f"parameter {k!r} has shape {list(a.shape)}, the model wants {list(ref.shape)}")
            out[k] = a
        return out

    def check_input(self, x) -> np.ndarray:
        """x as the model wants it (float32, the model's sample shape, finite), else InputError."""
        n = self.input_name
        if not isinstance(x, np.ndarray):
            raise InputError(f"input {n!r} must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise InputError(f"input {n!r} has dtype {x.dtype.name}, the model wants float32",
                             hint="convert it yourself, e.g. x.astype(np.float32)")
        if x.ndim != 1 + len(self.sample_shape) or x.shape[0] < 1 or any(
                isinstance(d, int) and d != s for d, s in zip(self.sample_shape, x.shape[1:])):
            raise InputError(f"input {n!r} has shape {list(x.shape)}, the model wants "
                             f"{['N', *self.sample_shape]}")
        if not np.all(np.isfinite(x)):
            raise InputError(f"input {n!r} holds NaN or infinite values", hint="feed finite values")
        return np.ascontiguousarray(x)

    def check_labels(self, labels, n: int, classes: int) -> np.ndarray:
        """labels as int64 class indices of shape (n,), else InputError."""
        if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
            raise InputError("labels must be a numpy array of integer class indices",
                             hint="e.g. np.array([3, 1, 4], dtype=np.int64)")
        if labels.shape != (n,):
            raise InputError(f"labels have shape {list(labels.shape)}, the batch wants [{n}]")
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise InputError(f"labels must lie in [0, {classes - 1}], got {labels.min()}..{labels.max()}",
                             hint=f"the model has {classes} classes")
        return labels.astype(np.int64, copy=False)

    def calibrate_bn(self, x, params=None, surrogate=None) -> None:
        """Set every BatchNorm's running statistics to the statistics of the whole batch `x` (the
        training set), each layer normalized by its own: then eval-mode BN on x reproduces the
        batch-statistics forward of x, and the bounds computed from `state` (refresh_bounds) hold
        for every pre-activation that training with eval-mode BN evaluates at these params."""
        self._run(x, params, True, surrogate, calibrate=True)

    def _run(self, x, params, train: bool, surrogate=None, calibrate: bool = False):
        x = self.check_input(x)
        if surrogate is not None:
            surrogate = self._surrogate_patterns(surrogate)
        env = list(self._template)
        env[self.in_slot] = x
        for k, v in self._check_params(params).items():
            env[self.param_slots[k]] = v
        for k, s in self.state_slots.items():
            env[s] = self.state[k]
        ctx = _Ctx(bool(train), surrogate, x.shape[0], calibrate)
        saved = [st.fwd(env, ctx) for st in self.steps]
        if ctx.new_state:
            self.state.update(ctx.new_state)
        return env, saved

    def forward(self, x, params=None, train=False, surrogate=None) -> np.ndarray:
        """Logits (float32). train=True: BN uses batch statistics and updates `state`. `surrogate`:
        as in `vjp`."""
        env, _ = self._run(x, params, train, surrogate)
        return env[self.out_slot]

    def _surrogate_patterns(self, surrogate) -> dict:
        spec = self.rule_spec
        if getattr(self, "plan", None) is not None:  # the closed-form surrogate is not the plan tables' one
            raise UsageError(f"rule {self.rule} is read from the plan: its surrogate is "
                             "tamec.runtime.rules.table_surrogate, not the closed-form one",
                             hint="call vjp(surrogate=...) on a program without use_plan, or use table_surrogate")
        if surrogate is True:
            if not spec.fixed_surrogate:
                raise UsageError(f"the surrogate of {self.rule} depends on the sign of the upstream gradient",
                                 hint="pass {threshold op id: sign of c} instead of True")
            return {k: 1.0 for k in self.thresholds}
        return surrogate

    def _backward(self, env, saved, dy, wrt_input: bool):
        need = self.need_input if wrt_input else self.need_params
        gs = [None] * self.n_slots
        gs[self.out_slot] = dy
        for st, sv in zip(reversed(self.steps), reversed(saved)):
            g = gs[st.out]
            if g is None or not need[st.out]:
                continue
            st.bwd(g, sv, gs, need)
            gs[st.out] = None  # free as we go
        grads = {}
        for k, s in self.param_slots.items():
            g = gs[s]
            # contiguous: a MatMul weight's gradient comes back transposed, the optimizers need C order
            grads[k] = np.zeros_like(self.params[k]) if g is None else np.ascontiguousarray(g, np.float32).reshape(
                self.params[k].shape)
        return grads, gs[self.in_slot]

    def vjp(self, x, dy, params=None, train=False, wrt_input=True, surrogate=None):
        """(logits, parameter grads, input grad) of sum(dy * logits). `surrogate` switches the
        forward of activation thresholds to the Lipschitz surrogate whose gradient the rule is: for
        lp-dual / bb-dual:K a dict mapping threshold op ids to the fixed sign
        (+1/-1, per element or scalar) of c = d g, those thresholds then output the relaxed primal
        down + d u*(s) (rules.relaxed_u); for lp-mid / bb-mid:K `True` (every threshold) or a dict
        of op ids (values ignored), which output down + d (u_min + u_max) / 2 (rules.centre_u); for
        ste / ste-clip `True`: the identity / hardtanh surrogate (rules.fixed_surrogate_u)."""
        env, saved = self._run(x, params, train, surrogate)
        y = env[self.out_slot]
        dy = np.ascontiguousarray(np.broadcast_to(np.asarray(dy, np.float32), y.shape))
        grads, gx = self._backward(env, saved, dy, wrt_input)
        if wrt_input and gx is None:
            gx = np.zeros_like(env[self.in_slot])
        return y, grads, gx

    def loss_and_grads(self, x, labels, params=None, train=False, surrogate=None):
        """(mean softmax cross-entropy, grads by parameter name, logits). `surrogate=True`: of the
        rule's fixed surrogate network (what `tamec train` trains by default; the grads are then the
        conservative field of the returned loss); None: of the sign network (for dual rules the
        grads are then a heuristic, see tamec/ops/rules.py)."""
        env, saved = self._run(x, params, train, surrogate)
        logits = env[self.out_slot]
        if logits.ndim != 2:
            raise UnsupportedModelError(f"the output {self.output_name!r} has shape {list(logits.shape)}",
                                        hint="the loss needs logits of shape [N, classes]")
        labels = self.check_labels(labels, logits.shape[0], logits.shape[1])
        loss, dlogits = softmax_cross_entropy(logits, labels)
        grads, _ = self._backward(env, saved, dlogits, False)
        return loss, grads, logits

    # -- export ------------------------------------------------------------------------------------
    def export_onnx(self, params=None):
        """The model with `params` as standard ONNX: weights binarized (+-1 initializers), BN with
        the running statistics of `state`; onnxruntime runs it."""
        from tamec.export.onnx import to_onnx
        from tamec.module import Module
        from tamec.passmanager import get_pass

        m = Module(self.graph_with(params), source=self.source, properties=self.module.properties)
        m = get_pass("binarize-weights").run(m, self.ctx).module
        return to_onnx(m.graph, standard=True)

    def export_qonnx(self, params=None):
        """The model with `params` in QONNX form: every binary weight is BipolarQuant(latent, s)
        (domain qonnx.custom_op.general), sign activations with +1 at 0 are BipolarQuant too, the
        rest standard ONNX. Runs in the qonnx executor. Weights of a Sign (0 at 0) quantizer whose
        latent is exactly 0 cannot be written so: UsageError."""
        from tamec.export.grad import to_qonnx

        return to_qonnx(self.qonnx_graph(params))

    def qonnx_graph(self, params=None) -> Graph:
        """The training graph with `params`, weight quantizers (and sign activations that are +1 at
        0) written as QONNX BipolarQuant ops; the graph `export_qonnx` writes."""
        from tamec.ir.graph import Value
        from tamec.ops import QONNX_DOMAIN

        env = self._prep_env(params)
        g = self.graph_with(params)
        g.opset.setdefault(QONNX_DOMAIN, 1)

        def scale_const(s: float) -> str:
            name = g.fresh_name(f"bipolar_scale_{s:g}")
            g.add_const(name, np.asarray([s], np.float32))
            return name

        def bipolar(op: Op, exact_zero_ok: bool) -> str | None:
            """The BipolarQuant scale of a threshold that equals one, else None."""
            a = op.attrs
            tau = np.asarray(a["tau"], np.float64)
            flip = np.asarray(a.get("flip", False), bool)
            hi, lo, tie = float(a.get("hi", 1.0)), float(a.get("lo", -1.0)), float(a["tie"])
            if np.any(tau != 0) or np.any(flip) or not (hi > 0 and lo == -hi):
                return None
            if tie != hi and not exact_zero_ok:
                return None
            return scale_const(hi)

        for op in list(g.ops()):
            if op.qualname != "tamec.Threshold":
                continue
            weight = op.inputs[0] not in self._data_values
            if weight:
                w = g.const(op.inputs[0])
                no_zero = w is None or not np.any(w == 0)
                s = bipolar(op, no_zero)
                if s is None:
                    raise UsageError(f"weight quantizer {op.id} has no BipolarQuant form (tau {op.attrs['tau']}, "
                                     f"tie {op.attrs['tie']})", node=op.id, op=op.qualname,
                                     hint="export_onnx writes it in standard ONNX")
            else:
                s = bipolar(op, False)
                if s is None:
                    continue  # stays a standard-ONNX threshold
            g.remove_op(op.id, drop_outputs=False)
            g.add_op(Op(op.id, "BipolarQuant", [op.inputs[0], s], list(op.outputs), {}, QONNX_DOMAIN, op.origin))
        for st in self.steps:  # weights stored as +-1: BipolarQuant of the latent
            if st.kind != "prep-binarize":
                continue
            root = self.slot_names[st.out]
            latent = g.fresh_name(root + ".latent")
            g.add_const(latent, np.asarray(env[st.ins[0]], np.float32))
            q = g.fresh_name(root + ".q")
            v = g.values[root]
            g.add_value(Value(q, v.shape, v.dtype, v.domain))
            g.add_op(Op(g.fresh_name(root + "/BipolarQuant"), "BipolarQuant", [latent, scale_const(1.0)], [q], {},
                        QONNX_DOMAIN, ()))
            g.replace_all_uses(root, q)
        g.prune()
        return g


def _cite(t: ThresholdInfo, spec) -> dict:
    """Where threshold `t`'s rule comes from: `rule_source`, the `certificate` it cites (None
    when no plan was read), the plan `block`, and why a refused block fell back."""
    if not spec.from_dual:
        return {"rule_source": f"heuristic {spec.name}", "certificate": None, "block": t.source.get("block")}
    if not t.source:
        return {"rule_source": "closed form from the bounds (no plan read: not the certified dual)",
                "certificate": None, "block": None}
    if t.fallback is not None:
        return {"rule_source": f"heuristic fallback {t.fallback.name} (block refused: "
                               f"{'; '.join(t.source['reasons'])})", "certificate": None, "block": t.source["block"]}
    return {"rule_source": f"certified s-range dual, depth {spec.leaf_depth}", "certificate": t.source["certificate"],
            "block": t.source["block"]}


def rule_certificates(prog: GradProgram) -> list[dict]:
    """Per activation threshold: the block, the rule, where it comes from and the certificate it
    cites (JSON-ready; what `tamec train` can write to metrics.json)."""
    return [{"op": t.op.id, "rule": prog.rule, **_cite(t, prog.rule_spec),
             "certified": t.source.get("certified"), "reasons": t.source.get("reasons", [])}
            for t in prog.thresholds.values()]


def _backward_hint() -> str:
    return ("the backward pass supports " + ", ".join(q for q in sorted(REGISTRY) if has(q, "backward"))
            + " (Conv and MaxPool in 2-D); train a model made of these ops")


class _Unsupported(Exception):
    pass


def _param_slot_name(key: str, g: Graph, roots: dict) -> str:
    """The slot name of a parameter: its key, unless the graph uses that name for another tensor
    (a computed value, or the binarized copy of the parameter itself)."""
    if key not in g.values or roots.get(key) == (key, None, False):
        return key
    return "param:" + key


def _load_proto(model):
    """The ModelProto of `model` (path, bytes or ModelProto), parsed once; None when unreadable
    (tamec.load then reports it in its own words)."""
    import onnx

    try:
        if isinstance(model, onnx.ModelProto):
            return model
        if isinstance(model, (bytes, bytearray)):
            return onnx.load_from_string(bytes(model))
        return onnx.load(str(model))
    except Exception:  # noqa: BLE001
        return None


def _initializers(proto) -> dict[str, np.ndarray]:
    """The original model's initializers, by name (from its parsed ModelProto)."""
    from onnx import numpy_helper

    out = {}
    for t in proto.graph.initializer if proto is not None else ():
        try:
            out[t.name] = numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001
            continue
    return out


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """(mean cross-entropy, its gradient w.r.t. the logits), float32."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(s[:, 0].astype(np.float64)) - z[rows, labels]))
    p = e / s
    p[rows, labels] -= 1.0
    p *= np.float32(1.0 / n)
    return loss, p


# -- step builders ---------------------------------------------------------------------------------

def _prep_transform(transform: str, src: int, dst: int, shape) -> Step:
    shape = tuple(shape)
    if transform == "transpose":
        def fwd(env, ctx):
            env[dst] = env[src].T
        def bwd(g, sv, gs, need):  # noqa: E306
            _acc(gs, src, g.T)
    else:
        def fwd(env, ctx):
            env[dst] = env[src].reshape(shape)
        def bwd(g, sv, gs, need):  # noqa: E306
            _acc(gs, src, g)  # reshaped to the parameter's shape at the end
    return Step("prep-" + transform, None, [src], dst, {"shape": shape}, fwd, bwd)


def _prep_binarize(src: int, dst: int) -> Step:
    """A weight stored as +-1, trained as a latent: sign with +1 at 0; backward the identity."""
    def fwd(env, ctx):
        w = env[src]
        out = np.empty(w.size, np.float32)
        R.binarize_scalar(np.ascontiguousarray(w).reshape(-1), 0.0, np.float32(1), np.float32(-1), np.float32(1), out)
        env[dst] = out.reshape(w.shape)

    def bwd(g, sv, gs, need):
        _acc(gs, src, g)

    return Step("prep-binarize", None, [src], dst, {"tau": 0.0, "up": 1.0, "down": -1.0, "tie": 1.0}, fwd, bwd)


def _linear(prog, op, ins, out):
    ix, iw = ins[0], ins[1]
    ib = ins[2] if len(ins) > 2 else -1

    def fwd(env, ctx):
        x, w = env[ix], env[iw]
        x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
        y = x2 @ w.T
        if ib >= 0:
            y += env[ib]
        env[out] = y.reshape(x.shape[:-1] + (w.shape[0],)) if x.ndim != 2 else y
        return x2, w, x.shape

    def bwd(g, sv, gs, need):
        x2, w, xshape = sv
        g2 = g.reshape(-1, g.shape[-1]) if g.ndim != 2 else g
        if need[ix]:
            _acc(gs, ix, (g2 @ w).reshape(xshape))
        if need[iw]:
            _acc(gs, iw, g2.T @ x2)
        if ib >= 0 and need[ib]:
            _acc(gs, ib, g2.sum(axis=0))

    return Step("linear", op, ins, out, {}, fwd, bwd)


def _conv(prog, op, ins, out):

    ix, iw = ins[0], ins[1]
    ib = ins[2] if len(ins) > 2 else -1
    if int(op.attrs.get("group", 1)) != 1:
        raise _Unsupported("group > 1")
    wshape = prog.graph.values[op.inputs[1]].shape
    if wshape is None or len(wshape) != 4:
        raise _Unsupported("2-D convolutions only")
    kshape = list(op.attrs.get("kernel_shape") or wshape[2:])
    cache = {}

    def win_of(spatial):
        w = cache.get(spatial)
        if w is None:
            w = cache[spatial] = window(op.attrs, spatial, kshape)
        return w

    def fwd(env, ctx):
        x, w = env[ix], env[iw]
        n, c, h, wd = x.shape
        m = w.shape[0]
        win = win_of((h, wd))
        (ph, pw), (th, tw) = win.head, [t + e for t, e in zip(win.tail, win.extra)]
        xp = np.pad(x, ((0, 0), (0, 0), (ph, th), (pw, tw))) if ph or pw or th or tw else x
        (ho, wo), (sh, sw), (dh, dw) = win.out, win.strides, win.dilations
        kh, kw = kshape
        cols = np.empty((c, kh, kw, n, ho, wo), np.float32)
        xt = xp.transpose(1, 0, 2, 3)
        for i in range(kh):
            for j in range(kw):
                cols[:, i, j] = xt[:, :, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]
        cm = cols.reshape(c * kh * kw, n * ho * wo)
        y = (w.reshape(m, -1) @ cm).reshape(m, n, ho, wo).transpose(1, 0, 2, 3)
        y = np.ascontiguousarray(y)
        if ib >= 0:
            y += env[ib].reshape(1, m, 1, 1)
        env[out] = y
        return cm, w, x.shape, xp.shape, win

    def bwd(g, sv, gs, need):
        cm, w, xshape, pshape, win = sv
        n, c, h, wd = xshape
        m = w.shape[0]
        (ho, wo), (sh, sw), (dh, dw) = win.out, win.strides, win.dilations
        kh, kw = kshape
        gm = np.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(m, n * ho * wo)
        if need[iw]:
            _acc(gs, iw, (gm @ cm.T).reshape(w.shape))
        if ib >= 0 and need[ib]:
            _acc(gs, ib, g.sum(axis=(0, 2, 3)))
        if need[ix]:
            gc = (w.reshape(m, -1).T @ gm).reshape(c, kh, kw, n, ho, wo)
            dxp = np.zeros((c, n) + tuple(pshape[2:]), np.float32)
            for i in range(kh):
                for j in range(kw):
                    dxp[:, :, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw] += gc[:, i, j]
            ph, pw = win.head
            _acc(gs, ix, np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + wd].transpose(1, 0, 2, 3)))

    return Step("conv", op, ins, out, {"kernel": kshape, "window": win_of}, fwd, bwd)


@njit(cache=True)
def _bn_train_fwd(x, scale, b, eps, xhat, y):
    """Batch statistics of x (N, C) with float64 sums; writes xhat and y; returns mean, var, inv."""
    n, c = x.shape
    mean = np.zeros(c)
    var = np.zeros(c)
    for i in range(n):
        for j in range(c):
            mean[j] += x[i, j]
    mean /= n
    for i in range(n):
        for j in range(c):
            d = x[i, j] - mean[j]
            var[j] += d * d
    var /= n
    inv = (1.0 / np.sqrt(var.astype(np.float32) + eps)).astype(np.float32)
    m32 = mean.astype(np.float32)
    for i in range(n):
        for j in range(c):
            h = (x[i, j] - m32[j]) * inv[j]
            xhat[i, j] = h
            y[i, j] = h * scale[j] + b[j]
    return m32, var.astype(np.float32), inv


@njit(cache=True)
def _bn_train_bwd(g, xhat, scale, inv, gx, need_x):
    """Sums of g and g * xhat per channel (float64); gx when need_x."""
    n, c = g.shape
    gsum = np.zeros(c)
    gxs = np.zeros(c)
    for i in range(n):
        for j in range(c):
            gsum[j] += g[i, j]
            gxs[j] += g[i, j] * xhat[i, j]
    if need_x:
        k = scale * inv
        a = (gsum / n).astype(np.float32)
        bb = (gxs / n).astype(np.float32)
        for i in range(n):
            for j in range(c):
                gx[i, j] = k[j] * (g[i, j] - a[j] - xhat[i, j] * bb[j])
    return gsum.astype(np.float32), gxs.astype(np.float32)


@njit(cache=True)
def _affine_fwd(x, a, b, y):
    n, c = x.shape
    for i in range(n):
        for j in range(c):
            y[i, j] = x[i, j] * a[j] + b[j]


@njit(cache=True)
def _bn_eval_bwd(g, x, mean, ns, gx, need_x):
    """sum(g), sum(g * (x - mean)) per channel (float64); gx = g * ns when need_x."""
    n, c = g.shape
    gsum = np.zeros(c)
    gxm = np.zeros(c)
    for i in range(n):
        for j in range(c):
            gv = g[i, j]
            gsum[j] += gv
            gxm[j] += gv * (x[i, j] - mean[j])
            if need_x:
                gx[i, j] = gv * ns[j]
    return gsum.astype(np.float32), gxm.astype(np.float32)


def _batchnorm(prog, op, ins, out):
    ix, isc, ib, im, iv = ins[:5]
    if int(op.attrs.get("training_mode", 0)):
        raise _Unsupported("training_mode=1 in the model")
    eps = np.float32(op.attrs.get("epsilon", 1e-5))
    mom = float(op.attrs.get("momentum", 0.9))
    mean_name = prog._state_name(op.inputs[3])
    var_name = prog._state_name(op.inputs[4])
    scale_shape = prog.graph.values[op.inputs[1]].shape
    if scale_shape is not None and len(scale_shape) > 1:
        raise _Unsupported("per-activation (spatial=0) parameters")
    m32, om32 = np.float32(mom), np.float32(1 - mom)

    def fwd(env, ctx):
        x, scale, b = env[ix], env[isc], env[ib]
        flat = x.ndim == 2
        sh = (1, -1) + (1,) * (x.ndim - 2)
        if not ctx.train:
            mean, var = env[im], env[iv]
            inv = np.float32(1) / np.sqrt(var + eps)  # the evaluator's formula, in float32
            ns = inv * scale
            nb = b - mean * ns
            if flat:
                y = np.empty(x.shape, np.float32)
                _affine_fwd(np.ascontiguousarray(x), ns, nb, y)
            else:
                y = x * ns.reshape(sh) + nb.reshape(sh)
            env[out] = y
            return False, x, mean, inv, ns
        cnt = x.size // x.shape[1]
        if flat:
            x = np.ascontiguousarray(x)
            xhat = np.empty(x.shape, np.float32)
            y = np.empty(x.shape, np.float32)
            mean, var, inv = _bn_train_fwd(x, scale, b, eps, xhat, y)
        else:
            axes = (0,) + tuple(range(2, x.ndim))
            mean = x.mean(axis=axes, dtype=np.float64).astype(np.float32)
            xc = x - mean.reshape(sh)
            var = np.mean(np.square(xc, dtype=np.float64), axis=axes).astype(np.float32)
            inv = np.float32(1) / np.sqrt(var + eps)
            xhat = xc * inv.reshape(sh)
            y = xhat * scale.reshape(sh) + b.reshape(sh)
        env[out] = y
        unbiased = var * np.float32(cnt / max(cnt - 1, 1))  # torch's running variance is unbiased
        if ctx.calibrate:  # the statistics of this batch become the running ones (calibrate_bn)
            ctx.new_state[mean_name], ctx.new_state[var_name] = mean.astype(np.float32), var.astype(np.float32)
        else:
            ctx.new_state[mean_name] = m32 * env[im] + om32 * mean
            ctx.new_state[var_name] = m32 * env[iv] + om32 * unbiased
        return True, xhat, inv, scale, cnt

    def bwd(g, sv, gs, need):
        nx = need[ix]
        if g.ndim == 2:
            g = np.ascontiguousarray(g, np.float32)
            gx = np.empty(g.shape, np.float32) if nx else np.empty((0, 0), np.float32)
            if not sv[0]:
                _, x, mean, inv, ns = sv
                gsum, gxm = _bn_eval_bwd(g, np.ascontiguousarray(x), mean, ns, gx, nx)
                gsc = gxm * inv
            else:
                _, xhat, inv, scale, cnt = sv
                gsum, gsc = _bn_train_bwd(g, xhat, scale, inv, gx, nx)
        else:
            axes = (0,) + tuple(range(2, g.ndim))
            sh = (1, -1) + (1,) * (g.ndim - 2)
            gsum = g.sum(axis=axes)
            if not sv[0]:
                _, x, mean, inv, ns = sv
                gsc = (g * (x - mean.reshape(sh))).sum(axis=axes) * inv
                gx = g * ns.reshape(sh) if nx else None
            else:
                _, xhat, inv, scale, cnt = sv
                gsc = (g * xhat).sum(axis=axes)
                if nx:
                    k = (scale * inv).reshape(sh)
                    gx = k * (g - (gsum.reshape(sh) + xhat * gsc.reshape(sh)) / np.float32(cnt))
        if need[isc]:
            _acc(gs, isc, gsc)
        if need[ib]:
            _acc(gs, ib, gsum)
        if nx:
            _acc(gs, ix, gx)

    return Step("batchnorm", op, ins, out, {"eps": float(eps), "momentum": mom, "mean": mean_name,
                                              "var": var_name}, fwd, bwd)


def _threshold(prog, op, ins, out):
    """An activation threshold (data behind it): the backward rule; on a weight: a quantizer."""
    g = prog.graph
    if "tau" not in op.attrs or "tie" not in op.attrs:
        raise _Unsupported("Threshold without tau/tie")
    st = Step("threshold", op, ins, out)
    if op.inputs[0] not in prog._data_values:
        _make_weight_threshold(st)
        return st
    shape = g.values[op.inputs[0]].shape
    if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape[1:]):
        raise _Unsupported(f"activation of unknown per-sample shape {shape}")
    tau, up, down, tie = _threshold_levels(op, shape, batch=True)
    t = ThresholdInfo(op, tuple(shape[1:]), tau, up.astype(np.float32), down.astype(np.float32),
                      tie.astype(np.float32), np.full(tau.shape, -np.inf), np.full(tau.shape, np.inf))
    st.info["t"] = t
    ix = ins[0]

    def fwd(env, ctx):
        x = env[ix]
        n = x.shape[0]
        x2 = np.ascontiguousarray(x, np.float32).reshape(n, -1)
        sur = ctx.surrogate.get(op.id) if ctx.surrogate else None
        if sur is not None:
            co = t.coef
            s = x2.astype(np.float64) - t.tau
            spec = prog.rule_spec
            u = R.fixed_surrogate_u(spec, s, co) if spec.fixed_surrogate else \
                R.surrogate_u(spec, s, co["LK"], co["UK"], np.broadcast_to(sur, s.shape))
            env[out] = (t.down + t.d * u).astype(np.float32).reshape(x.shape)
            return x2
        y = np.empty(x2.shape, np.float32)
        R.threshold_forward(x2, t.tau, t.up, t.down, t.tie, y)
        env[out] = y.reshape(x.shape)
        return x2

    def bwd(gr, x2, gs, need):
        if need[ix]:
            g2 = np.ascontiguousarray(gr, np.float32).reshape(x2.shape)
            if t.table is not None:  # the certified pieces the plan read from dualize
                dx = R.table_backward(prog.rule_spec, x2, g2, t.table)
            else:
                dx = R.backward(t.fallback or prog.rule_spec, x2, g2, t.tau, t.coef)
            _acc(gs, ix, dx.reshape(gr.shape))

    st.fwd, st.bwd = fwd, bwd
    return st


def _make_weight_threshold(st: Step) -> None:
    """Turn a threshold step into a weight quantizer: binarize; backward identity (x sign(d))."""
    op = st.op
    ix, out = st.ins[0], st.out
    a = op.attrs
    tau = np.asarray(a["tau"], np.float64)
    flip = np.asarray(a.get("flip", False), bool)
    lo, hi, tie = float(a.get("lo", -1.0)), float(a.get("hi", 1.0)), float(a["tie"])
    scalar = tau.size == 1 and flip.size == 1
    st.kind = "wthreshold"
    st.info = {"scalar": scalar}

    def levels(w):
        t, up, down, tie_e = _threshold_levels(op, w.shape, batch=False)
        return t.reshape(w.shape), up.reshape(w.shape), down.reshape(w.shape)

    if scalar:
        f = bool(flip.reshape(-1)[0])
        t0 = float(tau.reshape(-1)[0])
        up, down = (lo, hi) if f else (hi, lo)
        sign = np.float32(np.sign(up - down))

        def fwd(env, ctx):
            w = np.ascontiguousarray(env[ix], np.float32)
            o = np.empty(w.size, np.float32)
            R.binarize_scalar(w.reshape(-1), t0, np.float32(up), np.float32(down), np.float32(tie), o)
            env[out] = o.reshape(w.shape)

        def bwd(g, sv, gs, need):
            if need[ix]:
                _acc(gs, ix, g if sign == 1 else g * sign)
    else:
        def fwd(env, ctx):
            w = env[ix]
            t, up_e, down_e = levels(w)
            wd = w.astype(np.float64)
            env[out] = np.where(wd > t, up_e, np.where(wd < t, down_e, tie)).astype(np.float32)

        def bwd(g, sv, gs, need):
            if need[ix]:
                t, up_e, down_e = levels(g)
                _acc(gs, ix, g * np.sign(up_e - down_e).astype(np.float32))

    st.fwd, st.bwd = fwd, bwd


def _binary(kind):
    def build(prog, op, ins, out):
        ia, ib = ins[0], ins[1]
        if ia < 0 or ib < 0:
            raise _Unsupported("missing operand")

        def fwd(env, ctx):
            a, b = env[ia], env[ib]
            if kind == "add":
                y = a + b
            elif kind == "sub":
                y = a - b
            elif kind == "mul":
                y = a * b
            else:
                y = a / b
            env[out] = y
            return a, b

        def bwd(g, sv, gs, need):
            a, b = sv
            if need[ia]:
                ga = g if kind in ("add", "sub") else (g * b if kind == "mul" else g / b)
                _acc(gs, ia, _unbroadcast(ga, np.shape(a)))
            if need[ib]:
                if kind == "add":
                    gb = g
                elif kind == "sub":
                    gb = -g
                elif kind == "mul":
                    gb = g * a
                else:
                    gb = -g * a / (b * b)
                _acc(gs, ib, _unbroadcast(gb, np.shape(b)))

        return Step(kind, op, ins, out, {}, fwd, bwd)
    return build


def _reshape(prog, op, ins, out):
    g = prog.graph
    target = g.const(op.inputs[1]) if len(op.inputs) > 1 else None
    if target is None:
        raise _Unsupported("shape is not a constant")
    target = [int(t) for t in np.asarray(target).reshape(-1)]
    allowzero = int(op.attrs.get("allowzero", 0))
    vin = g.values[op.inputs[0]].shape
    static_batch = vin[0] if vin and isinstance(vin[0], int) else None
    keeps_batch = bool(target) and static_batch is not None and target[0] == static_batch \
        and op.inputs[0] in prog._data_values
    ix = ins[0]

    def fwd(env, ctx):
        x = env[ix]
        t = list(target)
        if not allowzero:
            t = [x.shape[k] if d == 0 and k < x.ndim else d for k, d in enumerate(t)]
        if keeps_batch:
            t[0] = x.shape[0]
        env[out] = x.reshape(t)
        return x.shape

    def bwd(gr, xshape, gs, need):
        if need[ix]:
            _acc(gs, ix, gr.reshape(xshape))

    return Step("reshape", op, ins, out, {"target": target, "keeps_batch": keeps_batch,
                                          "allowzero": allowzero}, fwd, bwd)


def _flatten(prog, op, ins, out):
    axis = int(op.attrs.get("axis", 1))
    ix = ins[0]

    def fwd(env, ctx):
        x = env[ix]
        a = axis % x.ndim if x.ndim else 0
        env[out] = x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), -1)
        return x.shape

    def bwd(gr, xshape, gs, need):
        if need[ix]:
            _acc(gs, ix, gr.reshape(xshape))

    return Step("flatten", op, ins, out, {"axis": axis}, fwd, bwd)


def _transpose(prog, op, ins, out):
    perm = op.attrs.get("perm")
    ix = ins[0]

    def fwd(env, ctx):
        x = env[ix]
        p = list(perm) if perm is not None else list(range(x.ndim))[::-1]
        env[out] = x.transpose(p)
        return p

    def bwd(gr, p, gs, need):
        if need[ix]:
            _acc(gs, ix, gr.transpose(np.argsort(p)))

    return Step("transpose", op, ins, out, {"perm": perm}, fwd, bwd)


def _identity(prog, op, ins, out):
    ix = ins[0]

    def fwd(env, ctx):
        env[out] = env[ix]

    def bwd(gr, sv, gs, need):
        if need[ix]:
            _acc(gs, ix, gr)

    return Step("identity", op, ins[:1], out, {}, fwd, bwd)


def _neg(prog, op, ins, out):
    ix = ins[0]

    def fwd(env, ctx):
        env[out] = -env[ix]

    def bwd(gr, sv, gs, need):
        if need[ix]:
            _acc(gs, ix, -gr)

    return Step("neg", op, ins, out, {}, fwd, bwd)


def _relu(prog, op, ins, out):
    ix = ins[0]

    def fwd(env, ctx):
        x = env[ix]
        env[out] = np.maximum(x, np.float32(0))
        return x

    def bwd(gr, x, gs, need):
        if need[ix]:
            _acc(gs, ix, gr * (x > 0))

    return Step("relu", op, ins, out, {}, fwd, bwd)


def _clip(prog, op, ins, out):
    g = prog.graph
    lo = op.attrs.get("min", -np.inf)
    hi = op.attrs.get("max", np.inf)
    if len(op.inputs) > 1 and op.inputs[1]:
        c = g.const(op.inputs[1])
        if c is None:
            raise _Unsupported("non-constant min")
        lo = float(c)
    if len(op.inputs) > 2 and op.inputs[2]:
        c = g.const(op.inputs[2])
        if c is None:
            raise _Unsupported("non-constant max")
        hi = float(c)
    lo32, hi32 = np.float32(lo), np.float32(hi)
    ix = ins[0]

    def fwd(env, ctx):
        x = env[ix]
        env[out] = np.minimum(np.maximum(x, lo32), hi32)
        return x

    def bwd(gr, x, gs, need):
        if need[ix]:
            _acc(gs, ix, gr * ((x >= lo32) & (x <= hi32)))

    return Step("clip", op, ins[:1], out, {"min": float(lo), "max": float(hi)}, fwd, bwd)


def _maxpool(prog, op, ins, out):

    kshape = list(op.attrs["kernel_shape"])
    if len(kshape) != 2:
        raise _Unsupported("2-D pooling only")
    if int(op.attrs.get("storage_order", 0)):
        raise _Unsupported("storage_order=1")
    ceil = bool(op.attrs.get("ceil_mode", 0))
    ix = ins[0]

    def fwd(env, ctx):
        x = env[ix]
        win = window(op.attrs, x.shape[2:], kshape, ceil)
        xp = pad_spatial(x, win, -np.inf)
        y = arg = None
        for k, (_, xs) in enumerate(offsets(xp, win)):
            if y is None:
                y = xs.copy()
                arg = np.zeros(y.shape, np.int32)  # window index: windows may exceed 127 taps
            else:
                m = xs > y  # strict: ties stay with the first maximum in window order
                np.copyto(y, xs, where=m)
                arg[m] = k
        env[out] = y
        return arg, x.shape, xp.shape, win

    def bwd(gr, sv, gs, need):
        if not need[ix]:
            return
        arg, xshape, pshape, win = sv
        dxp = np.zeros(pshape, np.float32)
        for k, (_, view) in enumerate(offsets(dxp, win)):
            view += np.where(arg == k, gr, np.float32(0))
        h, w = win.head
        _acc(gs, ix, np.ascontiguousarray(dxp[:, :, h:h + xshape[2], w:w + xshape[3]]))

    return Step("maxpool", op, ins, out, {"kernel": kshape, "ceil": ceil}, fwd, bwd)


# The backward stage of the op registry: forward + vector-Jacobian product per op; the Threshold's
# backward is the chosen rule's (tamec/ops/rules.py).
for _q, _build in {
    "tamec.Linear": _linear, "Conv": _conv, "BatchNormalization": _batchnorm, "Add": _binary("add"),
    "Sub": _binary("sub"), "Mul": _binary("mul"), "Div": _binary("div"), "Reshape": _reshape,
    "Flatten": _flatten, "Transpose": _transpose, "Identity": _identity, "Dropout": _identity, "Neg": _neg,
    "Relu": _relu, "Clip": _clip, "MaxPool": _maxpool,
}.items():
    attach("backward", [_q], _build, how="vjp")
attach("backward", ["tamec.Threshold"], _threshold, how="the --rule (tamec/ops/rules.py)")
