"""Gradient graphs: forward + softmax cross-entropy + backward of a GradProgram as ONE ONNX model.

`gradient_model(prog, rule)` writes default-domain ops only (opset 17), so onnxruntime runs it:
  inputs   the data input (the model's name, batch dim `N`), `labels` (int64 [N]), and every
           parameter by its initializer name (`prog.params`: latent weights as latents);
  outputs  `loss` (float32 scalar, mean over the batch) and `grad_<name>` for every parameter
           (the same shapes as the parameters).
It is the runtime's computation op for op (runtime/autograd.py, tamec/ops/rules.py), in the same
float32 formulas, so the two agree to rounding:
  - BatchNormalization in inference mode, its running statistics (`prog.state`) baked in;
  - each activation threshold's backward rule (lp-dual, bb-dual:K, lp-mid, bb-mid:K, ste,
    ste-clip; tamec/ops/rules.py) with its constants BAKED IN: the proven bounds
    [L, U] of its pre-activation (from the compiled model's `bounds` pass, as `prog` holds them
    now), turned into the rule's per-neuron windows and slopes; a gradient graph is only valid
    for the parameter values whose bounds it carries (re-export after `prog.refresh_bounds`);
  - weight quantizers: forward binarizes (Where), backward is the identity on the latent;
  - MaxPool routes to its Indices output (the first maximum in window order, like the runtime).
Labels are not range-checked inside the graph (ONNX has no assert): `tamec grad` and the runtime
check them.

`to_qonnx(graph)` writes a graph whose weight quantizers are QONNX BipolarQuant ops: tamec's own
ops lowered to standard ONNX, QONNX ops kept in `qonnx.custom_op.general` (GradProgram.export_qonnx).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tamec.errors import UnsupportedModelError
from tamec.ops import QONNX_DOMAIN
from tamec.ops import rules as R
from tamec.ops.threshold import ThresholdParams
from tamec.version import __version__

OPSET = 17  # ScatterElements(reduction="add") needs 16; ReduceMax keeps its axes attribute < 18
F32, F64, I64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64


class _G:
    """Nodes and initializers under construction, with fresh names."""

    def __init__(self, taken):
        self.nodes: list = []
        self.inits: list = []
        self.taken = set(taken)
        self.memo: dict = {}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}.{k}", k + 1
        self.taken.add(name)
        return name

    def const(self, base: str, a) -> str:
        a = np.asarray(a)
        key = (base, a.dtype.str, a.shape, a.tobytes()) if a.size <= 16 else None
        if key is not None and key in self.memo:  # one initializer per small constant
            return self.memo[key]
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(a, name))
        if key is not None:
            self.memo[key] = name
        return name

    def f32(self, base: str, a) -> str:
        return self.const(base, np.asarray(a, np.float32))

    def i64(self, base: str, a) -> str:
        return self.const(base, np.asarray(a, np.int64))

    def node(self, op_type: str, inputs: list, base: str, n_out: int = 1, out=None, **attrs):
        outs = [out] if out is not None else [self.fresh(f"{base}/{op_type}") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(f"{base}/{op_type}#node"),
                                           **attrs))
        return outs[0] if n_out == 1 else outs


def gradient_model(prog, rule=None, surrogate: bool = False) -> onnx.ModelProto:
    """forward + loss + backward of `prog` (with `rule`, default prog's) as one standard-ONNX model.
    `surrogate`: every activation threshold's forward is the rule's fixed surrogate
    (tamec/ops/rules.py `surrogate_u`; what `tamec train` trains by default), so `loss` is the
    surrogate network's loss and the gradients are its conservative field; else the sign forward."""

    spec = R.parse_rule(rule if rule is not None else prog.rule)
    b = _G(set(prog.slot_names) | set(prog.params) | {"labels", "loss"})
    name = {}  # slot -> ONNX tensor name of its forward value; parameters keep their names
    pslots = set(prog.param_slots.values())
    for s, n in enumerate(prog.slot_names):
        name[s] = b.fresh(n + "/q") if n in prog.params and s not in pslots else n
    for k, s in prog.param_slots.items():
        name[s] = k
    # constants: the template values that are not parameters, data or computed (state included)
    env = list(prog._template)
    for k, s in prog.state_slots.items():
        env[s] = prog.state[k]
    computed = {st.out for st in prog.steps} | set(prog.param_slots.values()) | {prog.in_slot}
    consts = {name[s]: v for s, v in enumerate(env) if v is not None and s not in computed}
    need = prog.need_params
    grads: dict[int, str] = {}

    def acc(slot: int, g: str) -> None:
        grads[slot] = g if slot not in grads else b.node("Add", [grads[slot], g], "grad")

    if surrogate and not spec.fixed_surrogate:
        raise UnsupportedModelError(f"rule {spec.name} has no fixed surrogate network to export",
                                    hint="use lp-mid, bb-mid:K, ste or ste-clip, or export the sign forward")
    emit = _Emitter(prog, b, name, spec, R)
    emit.surrogate = surrogate
    for st in prog.steps:
        emit.forward(st)
    logits = name[prog.out_slot]
    loss, dlogits = _loss(b, logits)
    grads[prog.out_slot] = dlogits
    for st in reversed(prog.steps):
        g = grads.get(st.out)
        if g is None or not need[st.out]:
            continue
        emit.backward(st, g, need, acc)

    outputs = [helper.make_tensor_value_info("loss", F32, [])]
    for k, s in prog.param_slots.items():
        shape = list(prog.params[k].shape)
        out = f"grad_{k}"
        if s in grads:
            g = grads[s]
            if tuple(prog.params[k].shape) != emit.shape_of_grad(s):
                g = b.node("Reshape", [g, b.i64("shape", shape)], "grad")
            b.node("Identity", [g], "grad", out=out)
        else:
            b.inits.append(numpy_helper.from_array(np.zeros(shape, np.float32), out + "/zero"))
            b.node("Identity", [out + "/zero"], "grad", out=out)
        outputs.append(helper.make_tensor_value_info(out, F32, shape))
    used = {i for nd in b.nodes for i in nd.input}
    b.inits += [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items() if k in used]
    inputs = [helper.make_tensor_value_info(prog.input_name, F32, ["N", *prog.sample_shape]),
              helper.make_tensor_value_info("labels", I64, ["N"])]
    inputs += [helper.make_tensor_value_info(k, F32, list(v.shape)) for k, v in prog.params.items()]
    graph = helper.make_graph(b.nodes, f"{prog.graph.name}-grad-{spec.name}", inputs, outputs, initializer=b.inits)
    graph.doc_string = (f"tamec gradient graph, rule {spec.name}, forward {'surrogate' if surrogate else 'sign'}: "
                        "loss = mean softmax cross-entropy; rule constants (bounds of each threshold's "
                        "pre-activation) baked in")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tamec",
                              producer_version=__version__)
    model.ir_version = 8
    return model


def _loss(b: _G, logits: str):
    """Mean softmax cross-entropy of `logits` against the graph input `labels`, and d loss/d logits."""
    m = b.node("ReduceMax", [logits], "loss", axes=[1], keepdims=1)
    z = b.node("Sub", [logits, m], "loss")
    e = b.node("Exp", [z], "loss")
    s = b.node("ReduceSum", [e, b.i64("axis1", [1])], "loss", keepdims=1)
    depth = b.node("Gather", [b.node("Shape", [logits], "loss"), b.i64("one", 1)], "loss", axis=0)
    onehot = b.node("OneHot", ["labels", depth, b.f32("onehot_values", [0.0, 1.0])], "loss", axis=-1)
    picked = b.node("ReduceSum", [b.node("Mul", [z, onehot], "loss"), b.i64("axis1", [1])], "loss", keepdims=1)
    per = b.node("Sub", [b.node("Log", [s], "loss"), picked], "loss")
    b.node("ReduceMean", [per], "loss", out="loss", keepdims=0)
    n = b.node("Cast", [b.node("Gather", [b.node("Shape", [logits], "loss"), b.i64("zero", 0)], "loss", axis=0)],
               "loss", to=F32)
    p = b.node("Div", [e, s], "loss")
    d = b.node("Sub", [p, onehot], "loss")
    return "loss", b.node("Mul", [d, b.node("Reciprocal", [n], "loss")], "loss")


class _Emitter:
    """The ONNX form of each tape step's forward and backward."""

    def __init__(self, prog, b: _G, name: dict, spec, R):
        self.prog, self.b, self.name, self.spec, self.R = prog, b, name, spec, R
        self.saved: dict[int, dict] = {}
        g = prog.graph
        self.vshape = {}
        for s, n in enumerate(prog.slot_names):
            v = g.values.get(n)
            self.vshape[s] = None if v is None or v.shape is None else tuple(v.shape)
        for k, s in prog.param_slots.items():
            self.vshape[s] = tuple(prog.params[k].shape)
        self.vshape[prog.in_slot] = ("N", *prog.sample_shape)

    def shape_of_grad(self, s):
        return self.vshape.get(s)

    def _unsupported(self, st, why: str):
        op = st.op
        raise UnsupportedModelError(f"gradient graph export: {why}", node=op.id if op else st.kind,
                                    op=op.qualname if op else st.kind, hint="use `tamec grad` (the runtime) instead")

    # -- forward -------------------------------------------------------------------------------
    def forward(self, st) -> None:
        b, n = self.b, self.name
        ins = [n[i] if i >= 0 else "" for i in st.ins]
        out = n[st.out]
        base = st.op.id if st.op is not None else out
        k = st.kind
        if k == "prep-transpose":
            b.node("Transpose", ins, base, out=out, perm=[1, 0])
        elif k == "prep-reshape":
            b.node("Reshape", [ins[0], b.i64("shape", list(st.info["shape"]))], base, out=out)
        elif k == "prep-binarize":
            neg = b.node("Less", [ins[0], b.f32("zero", 0.0)], base)
            b.node("Where", [neg, b.f32("minus_one", -1.0), b.f32("one", 1.0)], base, out=out)
        elif k == "wthreshold":
            self._threshold_fwd(st, ins[0], out, base, self.vshape[st.ins[0]], batch=False)
        elif k == "threshold" and self.surrogate:
            self._surrogate_fwd(st, ins[0], out, base)
        elif k == "threshold":
            self._threshold_fwd(st, ins[0], out, base, ("N", *st.info["t"].sample_shape), batch=True)
        elif k == "linear":
            if len(self.vshape[st.ins[0]] or ()) != 2:
                self._unsupported(st, "Linear on inputs that are not 2-D")
            b.node("Gemm", ins, base, out=out, transB=1)
        elif k == "conv":
            self.saved[st.out] = a = self._conv_attrs(st)
            b.node("Conv", [i for i in ins if i], base, out=out, **{k: v for k, v in a.items() if k[0] != "_"})
        elif k == "batchnorm":
            self._bn_fwd(st, ins, out, base)
        elif k in ("add", "sub", "mul", "div"):
            b.node(k.capitalize(), ins, base, out=out)
        elif k == "reshape":
            t = list(st.info["target"])
            if st.info["allowzero"] and 0 in t:
                self._unsupported(st, "Reshape with allowzero=1 and a 0 in the shape")
            if st.info["keeps_batch"]:
                t[0] = 0  # copy the batch dim: any batch size runs
            b.node("Reshape", [ins[0], b.i64("shape", t)], base, out=out)
        elif k == "flatten":
            b.node("Flatten", ins[:1], base, out=out, axis=st.info["axis"])
        elif k == "transpose":
            perm = st.info["perm"]
            b.node("Transpose", ins[:1], base, out=out, **({"perm": list(perm)} if perm is not None else {}))
        elif k == "identity":
            b.node("Identity", ins[:1], base, out=out)
        elif k == "neg":
            b.node("Neg", ins[:1], base, out=out)
        elif k == "relu":
            b.node("Relu", ins[:1], base, out=out)
        elif k == "clip":
            b.node("Clip", [ins[0], b.f32("min", st.info["min"]), b.f32("max", st.info["max"])], base, out=out)
        elif k == "maxpool":
            attrs = {a: v for a, v in st.op.attrs.items() if a in ("kernel_shape", "strides", "pads", "dilations",
                                                                  "ceil_mode", "auto_pad")}
            idx = b.fresh(out + "/indices")
            b.nodes.append(helper.make_node("MaxPool", ins[:1], [out, idx], name=b.fresh(base + "/MaxPool#node"),
                                            **attrs))
            self.saved[st.out] = {"indices": idx}
        else:
            self._unsupported(st, f"no ONNX form for step {k}")

    def _surrogate_fwd(self, st, x, out, base) -> None:
        """y = down + d u(s), s = x - tau, with u the rule's surrogate in the clip form of
        R.surrogate_constants (float64, as the runtime computes it)."""
        b = self.b
        t = st.info["t"]
        cshape = (1, *t.sample_shape)
        sc = self.R.surrogate_constants(self.spec, t.coef)
        c = {k: b.const(f"{base}/{k}", np.asarray(v, np.float64).reshape(cshape))
             for k, v in sc.items() if k not in ("cmin", "cmax")}
        zero, one, half = b.const("f64_cmin", np.float64(sc["cmin"])), b.const("f64_cmax", np.float64(sc["cmax"])), \
            b.const("f64_half", np.float64(0.5))
        xd, tc = b.node("Cast", [x], base, to=F64), b.const(f"{base}/tau", t.tau.reshape(cshape))
        self.saved[st.out] = {"xd": xd, "tau": tc}  # what the rule's backward reads
        s = b.node("Sub", [xd, tc], base)
        up = b.node("Add", [b.node("Mul", [s, c["a_up"]], base), c["b_up"]], base)
        dn = b.node("Add", [b.node("Mul", [s, c["a_dn"]], base), c["b_dn"]], base)
        up, dn = (b.node("Clip", [v, zero, one], base) for v in (up, dn))
        u = b.node("Mul", [b.node("Add", [up, dn], base), half], base)
        u = b.node("Min", [b.node("Max", [u, c["lo"]], base), c["hi"]], base)
        y = b.node("Add", [b.node("Mul", [u, b.const(f"{base}/d", t.d.reshape(cshape))], base),
                           b.const(f"{base}/down", t.down.astype(np.float64).reshape(cshape))], base)
        b.node("Cast", [y], base, out=out, to=F32)

    def _threshold_fwd(self, st, x, out, base, shape, batch: bool) -> None:
        b = self.b
        if batch:
            t = st.info["t"]
            cshape = (1, *t.sample_shape)
            tau, up, down, tie = t.tau.reshape(cshape), t.up.reshape(cshape), t.down.reshape(cshape), \
                t.tie.reshape(cshape)
        else:

            if shape is None or not all(isinstance(d, int) for d in shape):
                self._unsupported(st, "weight quantizer of unknown shape")
            tau, up, down, tie = (a.reshape(shape) for a in ThresholdParams.of(st.op).per_element(shape))
            up, down, tie = (a.astype(np.float32) for a in (up, down, tie))
        xd = b.node("Cast", [x], base, to=F64)  # compare in float64 against the f64 tau (tamec.Threshold)
        tc = b.const(f"{base}/tau", tau)
        gt = b.node("Greater", [xd, tc], base)
        lt = b.node("Less", [xd, tc], base)
        low = b.node("Where", [lt, b.f32(f"{base}/down", down), b.f32(f"{base}/tie", tie)], base)
        b.node("Where", [gt, b.f32(f"{base}/up", up), low], base, out=out)
        self.saved[st.out] = {"xd": xd, "tau": tc}

    def _conv_attrs(self, st) -> dict:
        shape = self.vshape[st.ins[0]]
        if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
            self._unsupported(st, "Conv input of unknown spatial shape")
        win = st.info["window"](tuple(shape[2:]))
        if any(win.extra):
            self._unsupported(st, "Conv windows past the padding")
        return {"kernel_shape": list(st.info["kernel"]), "strides": list(win.strides),
                "dilations": list(win.dilations), "pads": list(win.head) + list(win.tail),
                "_win": win, "_spatial": tuple(shape[2:])}

    def _bn_fwd(self, st, ins, out, base) -> None:
        b, prog = self.b, self.prog
        x, scale, bias = ins[0], ins[1], ins[2]
        mean = prog.state[st.info["mean"]]
        var = prog.state[st.info["var"]]
        eps = np.float32(st.info["eps"])
        inv = np.float32(1) / np.sqrt(var + eps)  # the runtime's float32 formula, computed once
        rank = len(self.vshape[st.ins[0]] or (0, 0))
        sh = [1, -1] + [1] * (rank - 2)
        inv_c = b.f32(f"{base}/inv_std", inv)
        mean_c = b.f32(f"{base}/mean", mean)
        ns = b.node("Mul", [inv_c, scale], base)
        nb = b.node("Sub", [bias, b.node("Mul", [mean_c, ns], base)], base)
        shp = b.i64("bn_shape", sh)
        ns_b = b.node("Reshape", [ns, shp], base)
        nb_b = b.node("Reshape", [nb, shp], base)
        b.node("Add", [b.node("Mul", [x, ns_b], base), nb_b], base, out=out)
        self.saved[st.out] = {"ns_b": ns_b, "inv": inv_c, "mean_b": b.node("Reshape", [mean_c, shp], base),
                              "axes": [0] + list(range(2, rank))}

    # -- backward ------------------------------------------------------------------------------
    def backward(self, st, g: str, need, acc) -> None:
        b, n = self.b, self.name
        ins = st.ins
        base = "grad/" + (st.op.id if st.op is not None else n[st.out])
        k = st.kind
        sv = self.saved.get(st.out, {})
        if k == "prep-transpose":
            acc(ins[0], b.node("Transpose", [g], base, perm=[1, 0]))
        elif k in ("prep-reshape", "prep-binarize"):
            acc(ins[0], g)  # reshaped to the parameter's shape at the output
        elif k == "wthreshold":
            shape = self.vshape[ins[0]]

            _, up, down, _ = ThresholdParams.of(st.op).per_element(shape)
            sign = np.sign(up - down)
            acc(ins[0], g if np.all(sign == 1) else b.node("Mul", [g, b.f32(base + "/sign", sign.reshape(shape))], base))
        elif k == "threshold":
            if need[ins[0]]:
                acc(ins[0], self._rule(st, g, sv, base))
        elif k == "linear":
            x, w = n[ins[0]], n[ins[1]]
            if need[ins[0]]:
                acc(ins[0], b.node("MatMul", [g, w], base))
            if need[ins[1]]:
                acc(ins[1], b.node("Gemm", [g, x], base, transA=1))
            if len(ins) > 2 and ins[2] >= 0 and need[ins[2]]:
                acc(ins[2], b.node("ReduceSum", [g, b.i64("axis0", [0])], base, keepdims=0))
        elif k == "conv":
            self._conv_bwd(st, g, need, acc, base, sv)
        elif k == "batchnorm":
            axes = b.i64("bn_axes", sv["axes"])
            if need[ins[1]]:
                xm = b.node("Sub", [n[ins[0]], sv["mean_b"]], base)
                s = b.node("ReduceSum", [b.node("Mul", [g, xm], base), axes], base, keepdims=0)
                acc(ins[1], b.node("Mul", [s, sv["inv"]], base))
            if need[ins[2]]:
                acc(ins[2], b.node("ReduceSum", [g, axes], base, keepdims=0))
            if need[ins[0]]:
                acc(ins[0], b.node("Mul", [g, sv["ns_b"]], base))
        elif k in ("add", "sub", "mul", "div"):
            a_, c_ = n[ins[0]], n[ins[1]]
            out_shape = self.vshape.get(st.out)
            for pos, i in enumerate(ins[:2]):
                if not need[i]:
                    continue
                if k == "add" or (k == "sub" and pos == 0):
                    gi = g
                elif k == "sub":
                    gi = b.node("Neg", [g], base)
                elif k == "mul":
                    gi = b.node("Mul", [g, c_ if pos == 0 else a_], base)
                elif pos == 0:
                    gi = b.node("Div", [g, c_], base)
                else:
                    q = b.node("Div", [b.node("Mul", [g, a_], base), b.node("Mul", [c_, c_], base)], base)
                    gi = b.node("Neg", [q], base)
                acc(i, self._unbroadcast(st, gi, self.vshape.get(i), out_shape, base))
        elif k in ("reshape", "flatten"):
            acc(ins[0], b.node("Reshape", [g, b.node("Shape", [n[ins[0]]], base)], base))
        elif k == "transpose":
            perm = st.info["perm"]
            rank = len(self.vshape[ins[0]] or ())
            perm = list(perm) if perm is not None else list(range(rank))[::-1]
            acc(ins[0], b.node("Transpose", [g], base, perm=[int(p) for p in np.argsort(perm)]))
        elif k == "identity":
            acc(ins[0], g)
        elif k == "neg":
            acc(ins[0], b.node("Neg", [g], base))
        elif k == "relu":
            m = b.node("Cast", [b.node("Greater", [n[ins[0]], b.f32("zero", 0.0)], base)], base, to=F32)
            acc(ins[0], b.node("Mul", [g, m], base))
        elif k == "clip":
            x = n[ins[0]]
            inside = b.node("And", [b.node("GreaterOrEqual", [x, b.f32("min", st.info["min"])], base),
                                    b.node("LessOrEqual", [x, b.f32("max", st.info["max"])], base)], base)
            acc(ins[0], b.node("Mul", [g, b.node("Cast", [inside], base, to=F32)], base))
        elif k == "maxpool":
            x = n[ins[0]]
            flat = b.i64("flat", [-1])
            xf = b.node("Reshape", [x, flat], base)
            zeros = b.node("Mul", [xf, b.f32("zero", 0.0)], base)  # finite x: a zero per element
            scat = b.node("ScatterElements", [zeros, b.node("Reshape", [sv["indices"], flat], base),
                                              b.node("Reshape", [g, flat], base)], base, axis=0, reduction="add")
            acc(ins[0], b.node("Reshape", [scat, b.node("Shape", [x], base)], base))
        else:
            self._unsupported(st, f"no ONNX backward for step {k}")

    def _rule(self, st, g: str, sv: dict, base: str) -> str:
        b, R, spec = self.b, self.R, self.spec
        t = st.info["t"]

        co = R.coefficients(spec, t.L, t.U, t.d, R.shift_lattice(t.lattice, t.tau))
        cshape = (1, *t.sample_shape)
        s = b.node("Sub", [sv["xd"], sv["tau"]], base)  # float64, as the runtime kernel
        if not spec.from_dual:
            term = b.node("Mul", [g, b.f32(base + "/half", co["half"].reshape(cshape))], base)
            if spec.kind == "ste":
                return term
            win = b.node("LessOrEqual", [b.node("Abs", [s], base), b.const(base + "/one", np.float64(1.0))], base)
            return b.node("Where", [win, term, b.f32("zero", 0.0)], base)
        zero64 = b.const("zero64", np.float64(0.0))
        if spec.midpoint:  # g (kneg [lwin <= s < 0] + kpos [0 < s <= uwin] + kmid [s = 0]), as _mid_backward
            neg = b.node("And", [b.node("Less", [s, zero64], base),
                                 b.node("GreaterOrEqual", [s, b.const(base + "/lwin", co["lwin"].reshape(cshape))],
                                        base)], base)
            pos = b.node("And", [b.node("Greater", [s, zero64], base),
                                 b.node("LessOrEqual", [s, b.const(base + "/uwin", co["uwin"].reshape(cshape))],
                                        base)], base)
            at0 = b.node("Equal", [s, zero64], base)
            terms = [b.node("Mul", [b.f32(base + "/" + k, co[k].reshape(cshape)), b.node("Cast", [m], base, to=F32)],
                            base) for k, m in (("kneg", neg), ("kpos", pos), ("kmid", at0))]
            return b.node("Mul", [g, b.node("Add", [b.node("Add", terms[:2], base), terms[2]], base)], base)
        zero = b.f32("zero", 0.0)
        c = b.node("Mul", [g, b.f32(base + "/sgn", co["sgn"].reshape(cshape))], base)
        neg = b.node("And", [b.node("And", [b.node("Less", [s, zero64], base), b.node("Less", [c, zero], base)], base),
                             b.node("GreaterOrEqual", [s, b.const(base + "/lwin", co["lwin"].reshape(cshape))], base)],
                     base)
        pos = b.node("And", [b.node("And", [b.node("Greater", [s, zero64], base),
                                             b.node("Greater", [c, zero], base)], base),
                             b.node("LessOrEqual", [s, b.const(base + "/uwin", co["uwin"].reshape(cshape))], base)],
                     base)
        kn = b.node("Mul", [b.f32(base + "/kneg", co["kneg"].reshape(cshape)), b.node("Cast", [neg], base, to=F32)], base)
        kp = b.node("Mul", [b.f32(base + "/kpos", co["kpos"].reshape(cshape)), b.node("Cast", [pos], base, to=F32)], base)
        return b.node("Mul", [g, b.node("Add", [kn, kp], base)], base)

    def _unbroadcast(self, st, g: str, shape, out_shape, base: str) -> str:
        """Sum g (of out_shape) down to `shape` (static shapes; 'N' is the batch)."""
        b = self.b
        if shape is None or out_shape is None:
            self._unsupported(st, "broadcast with unknown shapes")
        if tuple(shape) == tuple(out_shape):
            return g
        lead = len(out_shape) - len(shape)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(shape) if d == 1 and out_shape[lead + i] != 1]
        if axes:
            g = b.node("ReduceSum", [g, b.i64("axes", axes)], base, keepdims=1)
        if any(not isinstance(d, int) for d in shape):
            return g if lead == 0 else self._unsupported(st, "broadcast of a batched operand")
        return b.node("Reshape", [g, b.i64("shape", list(shape))], base)

    def _conv_bwd(self, st, g: str, need, acc, base: str, a: dict) -> None:
        b, n = self.b, self.name
        ins = st.ins
        win, (h, w) = a["_win"], a["_spatial"]
        kh, kw = a["kernel_shape"]
        (sh, sw), (dh, dw) = a["strides"], a["dilations"]
        x, wt = n[ins[0]], n[ins[1]]
        if need[ins[0]]:
            ho, wo = win.out
            full = [sh * (ho - 1) + (kh - 1) * dh + 1 - win.head[0] - win.tail[0],
                    sw * (wo - 1) + (kw - 1) * dw + 1 - win.head[1] - win.tail[1]]
            outpad = [h - full[0], w - full[1]]
            acc(ins[0], b.node("ConvTranspose", [g, wt], base, kernel_shape=[kh, kw], strides=[sh, sw],
                               dilations=[dh, dw], pads=a["pads"], output_padding=outpad))
        if need[ins[1]]:
            xt = b.node("Transpose", [x], base, perm=[1, 0, 2, 3])
            gt = b.node("Transpose", [g], base, perm=[1, 0, 2, 3])
            o = b.node("Conv", [xt, gt], base, strides=[dh, dw], dilations=[sh, sw], pads=a["pads"])
            o = b.node("Slice", [o, b.i64("starts", [0, 0]), b.i64("ends", [kh, kw]), b.i64("axes", [2, 3])], base)
            acc(ins[1], b.node("Transpose", [o], base, perm=[1, 0, 2, 3]))
        if len(ins) > 2 and ins[2] >= 0 and need[ins[2]]:
            acc(ins[2], b.node("ReduceSum", [g, b.i64("axes", [0, 2, 3])], base, keepdims=0))


# -- QONNX form of a trained model ------------------------------------------------------------------

def to_qonnx(graph) -> onnx.ModelProto:
    """`graph` with tamec's ops lowered to standard ONNX and QONNX ops kept in their domain."""
    from tamec.export.onnx import to_onnx

    g = graph.copy()
    g.opset[""] = max(g.opset.get("", 13), 11)
    model = to_onnx(g, standard=True, keep_domains={QONNX_DOMAIN})
    model.ir_version = max(model.ir_version, 7)
    return model
