"""Threshold family: `tamec.Threshold` (tamec's one binarizing op) and ONNX `Sign`.

`tamec.Threshold(x)` has attributes `tau` (f64 tensor: a scalar, one per channel along `axis`, or
per channel and beyond), `flip` (bool, like tau), `axis`, `lo`, `hi`, `tie`:
`y = hi if x > tau else lo if x < tau else tie`, hi and lo swapped where `flip`. A NaN tau compares
false both ways (the channel is the constant `tie`); tau = +-inf gives a constant lo/hi. ONNX
`Sign` is `Threshold(tau=0, lo=-1, hi=1, tie=0)`; BipolarQuant is the same with `tie=1`.
`ThresholdParams` is the one reading of these attributes that every stage uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tamec.errors import ModelStructureError
from tamec.ops.registry import STEP, define

TAMEC_DOMAIN = "tamec"


def align(a, ndim: int, axis: int) -> np.ndarray:
    """A scalar, per-channel or per-channel-and-beyond array, reshaped to broadcast against an
    `ndim` tensor whose channel dim is `axis`."""
    a = np.asarray(a)
    if a.size == 1:
        return a.reshape(())
    axis %= ndim
    if a.ndim == 1:
        return a.reshape((-1,) + (1,) * (ndim - axis - 1))
    return a.reshape(a.shape + (1,) * (ndim - axis - a.ndim))


@dataclass(frozen=True)
class ThresholdParams:
    """A Threshold's attributes, checked: tau (f64) and flip (bool, tau's shape) as stored."""

    tau: np.ndarray
    flip: np.ndarray
    axis: int
    lo: float
    hi: float
    tie: float

    @staticmethod
    def of(op) -> "ThresholdParams":
        a = op.attrs
        if "tau" not in a or "tie" not in a:
            raise ModelStructureError("Threshold needs attributes tau and tie", node=op.id, op=op.qualname,
                                      hint="the tie rule is explicit: write tie=0 for ONNX Sign, 1 for BipolarQuant")
        tau = np.asarray(a["tau"], np.float64)
        flip = np.asarray(a.get("flip", False), bool)
        if flip.size not in (1, tau.size):
            raise ModelStructureError(f"Threshold flip has {flip.size} entries, tau {tau.size}",
                                      node=op.id, op=op.qualname, hint="give one flip per tau, or one for all")
        flip = np.broadcast_to(flip.reshape(-1)[0] if flip.size == 1 else flip.reshape(tau.shape), tau.shape)
        return ThresholdParams(tau, flip, int(a.get("axis", 1)), float(a.get("lo", -1.0)),
                               float(a.get("hi", 1.0)), float(a["tie"]))

    def aligned(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """(tau, flip) broadcastable against an `ndim` tensor."""
        return align(self.tau, ndim, self.axis), align(self.flip, ndim, self.axis)

    def levels(self, flip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(value above tau, value below tau) where `flip` (lo and hi swapped where flipped)."""
        return np.where(flip, self.lo, self.hi), np.where(flip, self.hi, self.lo)

    def per_element(self, shape: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tau, above, below, tie), each broadcast to `shape` and flattened."""
        t, f = self.aligned(len(shape))
        tau = np.ascontiguousarray(np.broadcast_to(t, shape), np.float64).reshape(-1)
        up, down = self.levels(np.broadcast_to(f, shape).reshape(-1))
        return tau, up, down, np.full(tau.shape, self.tie)

    def per_channel(self, channels: int, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(tau, flip) with one entry per channel of axis 1 of a rank-`rank` input, or None when the
        threshold is not constant within a channel."""
        if rank < 2 or (self.tau.ndim > 1 and self.tau.size > 1):
            return None
        if self.tau.size > 1 and (self.tau.size != channels or self.axis % rank != 1):
            return None
        return (np.broadcast_to(self.tau.reshape(-1), (channels,)).astype(np.float64),
                np.broadcast_to(self.flip.reshape(-1), (channels,)).copy())

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The reference semantics, in float64 (float32 -> float64 is exact, so the compare with
        the f64 tau is the model's)."""
        t, f = self.aligned(x.ndim)
        xf = x.astype(np.float64, copy=False)
        up, down = self.levels(f)
        return np.broadcast_to(np.where(xf > t, up, np.where(xf < t, down, self.tie)), x.shape)

    def reachable(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interval of outputs for inputs in [lo, hi] (the levels each element can reach)."""
        t, f = self.aligned(lo.ndim)
        up, down = self.levels(f)
        with np.errstate(invalid="ignore"):
            can_up, can_dn = hi > t, lo < t
            can_tie = ~(lo > t) & ~(hi < t)
        inf = np.inf
        ylo = np.minimum(np.minimum(np.where(can_up, up, inf), np.where(can_dn, down, inf)),
                         np.where(can_tie, self.tie, inf))
        yhi = np.maximum(np.maximum(np.where(can_up, up, -inf), np.where(can_dn, down, -inf)),
                         np.where(can_tie, self.tie, -inf))
        return ylo, yhi


def _bounds_threshold(iv, op, ins):
    return ThresholdParams.of(op).reachable(*ins[0])


def _bounds_monotone(iv, op, ins):
    return iv.monotone(op)


define(TAMEC_DOMAIN, "Threshold", "threshold", STEP, arity=(1, 1), bounds=_bounds_threshold,
       attrs={"tau": ("tensor", None), "flip": ("tensor", False), "axis": ("int", 1), "lo": ("float", -1.0),
              "hi": ("float", 1.0), "tie": ("float", None)},
       doc="y = hi if x > tau, lo if x < tau, else tie (hi/lo swapped where flip)")
define("", "Sign", "threshold", STEP, bounds=_bounds_monotone, doc="Threshold(tau=0, lo=-1, hi=1, tie=0)")
