"""The one error family a user of tamec can cause.

Every error names where it happened (file, node, op) and what to do about it, so the CLI can print
one line and exit 2 without a traceback.
"""
from __future__ import annotations


class TamecError(Exception):
    """Base of every error a user can cause: bad model, bad input, bad option."""

    def __init__(self, message: str, *, file: str | None = None, node: str | None = None,
                 op: str | None = None, hint: str | None = None):
        self.message, self.file, self.node, self.op, self.hint = message, file, node, op, hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file:
            where.append(f"file {self.file}")
        if self.node:
            where.append(f"node {self.node!r}")
        if self.op:
            where.append(f"op {self.op}")
        head = f"{', '.join(where)}: " if where else ""
        tail = f" ({self.hint})" if self.hint else ""
        return f"{head}{self.message}{tail}"

    def at(self, **where) -> "TamecError":
        """Fill in missing location fields (file, node, op) and re-render."""
        for k, v in where.items():
            if v and not getattr(self, k):
                setattr(self, k, v)
        self.args = (self._render(),)
        return self

    def __str__(self) -> str:
        return self.args[0] if self.args else self._render()


class ModelLoadError(TamecError):
    """The file is not a readable ONNX model (truncated, not protobuf, external data refused)."""


class UnsupportedModelError(TamecError):
    """The model uses ops or features tamec does not support; lists all of them at once."""


class ModelStructureError(TamecError):
    """The graph is malformed: cycles, dangling names, inconsistent shapes, absurd sizes."""


class VerificationError(TamecError):
    """An IR invariant failed after a pass (a bug in tamec or a broken model)."""


class PassError(TamecError):
    """A pass failed; names the pass and the op it was working on."""


class CheckMismatchError(TamecError):
    """`--check` found a pass whose output differs from the original model."""


class InputError(TamecError):
    """Bad inputs to run/session: wrong name, shape, dtype, or non-finite values."""


class UsageError(TamecError):
    """Bad command-line or API arguments."""


class OutputError(TamecError):
    """An output file or folder cannot be written (full disk, read-only or missing folder)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a long job (verify, fit-mip, LP tightening). Not a TamecError: nothing was
    wrong. `partial` holds what was decided before it (e.g. a VerifyResult with the classes
    settled so far, a FitReport with the incumbent and bound), which the CLI prints before
    exiting 130; it is a KeyboardInterrupt, so callers that do not look for it stop as usual."""

    def __init__(self, partial=None, message: str = "interrupted"):
        super().__init__(message)
        self.partial = partial
