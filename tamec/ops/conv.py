"""Conv family: ONNX `Conv`, and the one window geometry (auto_pad, pads, strides, dilations,
ceil_mode) that convolution and pooling share in every stage."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tamec.ops.linear import split_weight_bounds
from tamec.ops.registry import PL, define


@dataclass
class Window:
    head: list[int]
    tail: list[int]
    extra: list[int]  # overhang past the padded input that ceil_mode windows reach
    out: list[int]
    strides: list[int]
    dilations: list[int]
    kernel: list[int]

    @property
    def pads(self) -> list[int]:
        """Explicit ONNX pads (begins, then ends) equivalent to this window's padding."""
        return list(self.head) + [t + e for t, e in zip(self.tail, self.extra)]


def _attr_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def window(attrs: dict, spatial: tuple[int, ...], kernel: list[int], ceil_mode: bool = False) -> Window:
    """Output size and padding per ONNX (auto_pad, pads, strides, dilations, ceil_mode)."""
    n = len(spatial)
    strides = list(attrs.get("strides") or [1] * n)
    dil = list(attrs.get("dilations") or [1] * n)
    pads = list(attrs.get("pads") or [0] * (2 * n))
    auto = _attr_str(attrs.get("auto_pad", "NOTSET"))
    head, tail, out = [], [], []
    for i, (size, k, s, d) in enumerate(zip(spatial, kernel, strides, dil)):
        ext = (k - 1) * d + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-size // s)
            total = max(0, (o - 1) * s + ext - size)
            h = total // 2 if auto == "SAME_UPPER" else total - total // 2
            head.append(h), tail.append(total - h), out.append(o)
        elif auto == "VALID":
            head.append(0), tail.append(0), out.append((size - ext) // s + 1)
        else:
            h, t = pads[i], pads[i + n]
            span = size + h + t - ext
            o = (-(-span // s) if ceil_mode else span // s) + 1
            if ceil_mode and (o - 1) * s >= size + h:
                o -= 1  # no window starts in the right padding (onnxruntime; ONNX shape inference differs)
            head.append(h), tail.append(t), out.append(o)
    if any(o <= 0 for o in out):
        raise ValueError(f"window {kernel} does not fit input {spatial} with pads {head}+{tail}")
    extra = [max(0, (o - 1) * s + (k - 1) * d + 1 - (size + h + t))
             for o, s, k, d, size, h, t in zip(out, strides, kernel, dil, spatial, head, tail)]
    return Window(head, tail, extra, out, strides, dil, list(kernel))


def pad_spatial(x: np.ndarray, w: Window, value, lead: int = 2) -> np.ndarray:
    widths = [(0, 0)] * lead + [(h, t + e) for h, t, e in zip(w.head, w.tail, w.extra)]
    if not any(a or b for a, b in widths):
        return x
    return np.pad(x, widths, constant_values=value)


def offsets(xp: np.ndarray, w: Window, lead: int = 2):
    """For each kernel offset, the strided view of padded `xp` that offset reads: (..., *out)."""
    for kidx in np.ndindex(*w.kernel):
        sl = tuple(slice(k * d, k * d + (o - 1) * s + 1, s)
                   for k, d, o, s in zip(kidx, w.dilations, w.out, w.strides))
        yield kidx, xp[(slice(None),) * lead + sl]


def conv(x: np.ndarray, wt: np.ndarray, attrs: dict) -> np.ndarray:
    """Grouped N-d convolution of `x` (N, C, *S) with `wt` (M, C/group, *K), no bias, in x's dtype."""
    group = int(attrs.get("group", 1))
    kshape = list(attrs.get("kernel_shape") or wt.shape[2:])
    n, c = x.shape[:2]
    m, cg = wt.shape[:2]
    if c != cg * group or m % group:
        raise ValueError(f"input has {c} channels, weight {wt.shape} with group={group} needs {cg * group}")
    win = window(attrs, x.shape[2:], kshape)
    # channels first, so each offset's slice reshapes to one (G, Cg, N*P) operand
    xp = pad_spatial(x.swapaxes(0, 1), win, 0)
    wg = wt.reshape(group, m // group, cg, *kshape)
    p = math.prod(win.out)
    acc = None
    for kidx, xs in offsets(xp, win):
        term = np.matmul(wg[(...,) + kidx], xs.reshape(group, cg, n * p))
        acc = term if acc is None else np.add(acc, term, out=acc)
    return acc.reshape(m, n, *win.out).swapaxes(0, 1)


def _bounds_conv(iv, op, ins):
    return split_weight_bounds(iv, op, ins, lambda x, w: conv(x, w, op.attrs),
                               lambda b, nd: b.reshape((-1,) + (1,) * (nd - 2)))


define("", "Conv", "conv", PL, bounds=_bounds_conv, doc="N-d grouped convolution, every auto_pad")
# the backward of Conv in tamec's own gradient graphs (tamec/export/grad.py), which must read back
define("", "ConvTranspose", "conv", PL)
