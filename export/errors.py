"""Errors raised by the export side (bundles, runtimes, parity checks).

`export` never imports `compress`, so it carries its own error type with the same
one-paragraph shape: what is wrong, where, and how to fix it.
"""

from __future__ import annotations


class ExplainedError(Exception):
    """An error explained in one paragraph: what is wrong, where, and how to fix it.

    The base of every error a user is meant to read, here and in `compress` (whose
    `EdgetierError` derives from it, since `compress` may import `export` but not the reverse).

    >>> print(ExplainedError("sha256 mismatch", where="runs/q/end/model.onnx", fix="re-export the bundle"))
    runs/q/end/model.onnx: sha256 mismatch. Fix: re-export the bundle.
    """

    def __init__(self, problem: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.problem = problem
        self.where = where
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.where}: {self.problem}" if self.where else self.problem
        text = text.rstrip(".") + "."
        if self.fix:
            text += f" Fix: {self.fix.rstrip('.')}."
        return text

    def __str__(self) -> str:
        return self.message


class ExportError(ExplainedError):
    """A problem with an artifact or its runtime."""


class BundleError(ExportError):
    """A bundle that is missing, incomplete, or whose files do not match their sha256."""


class ParityError(ExportError):
    """An exported model whose outputs differ from PyTorch beyond the stated tolerance."""
