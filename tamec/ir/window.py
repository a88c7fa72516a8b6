"""ONNX sliding windows (Conv, MaxPool, AveragePool): output size and padding from auto_pad, pads,
strides, dilations and ceil_mode, computed once for every stage (evaluator, bounds, MIP lowering,
runtime plan, autograd, verifier)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Window:
    head: list[int]
    tail: list[int]
    extra: list[int]  # overhang past the padded input that ceil_mode windows reach
    out: list[int]
    strides: list[int]
    dilations: list[int]
    kernel: list[int]


def window(attrs: dict, spatial: tuple[int, ...], kernel: list[int], ceil_mode: bool = False) -> Window:
    """Output size and padding per ONNX (auto_pad, pads, strides, dilations, ceil_mode)."""
    n = len(spatial)
    strides = list(attrs.get("strides") or [1] * n)
    dil = list(attrs.get("dilations") or [1] * n)
    pads = list(attrs.get("pads") or [0] * (2 * n))
    auto = attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
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
    """`x` with the window's padding (and ceil_mode overhang) of `value` on its spatial axes."""
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
