"""Checkpoint files named in a recipe: a regular file that loads as a weights-only state dict.

A recipe is a file someone may have sent you: `checkpoint: /etc/passwd` or `../../x` must fail
at `edgetier validate` with one paragraph, not as an unpickling traceback after training.
Paths are resolved relative to the recipe's folder (as every path in a recipe is).
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from compress.core.errors import EdgetierError, RecipeError

MAX_CHECKPOINT_BYTES = 2 << 30  # 2 GiB: far above any edge model, far below what would stall validate


def load_state_dict_file(path: Path, *, where: str, error: type[EdgetierError] = RecipeError) -> dict[str, Any]:
    """The state dict in `path`, refusing anything that is not a regular file holding name -> tensor.

    A file with a `{"state_dict": {...}}` wrapper (what training scripts often save) is unwrapped.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d) / "w.pt"
    ...     torch.save({"weight": torch.zeros(2)}, p)
    ...     sorted(load_state_dict_file(p, where="model.checkpoint"))
    ['weight']
    >>> load_state_dict_file(pathlib.Path("/dev/null"), where="model.checkpoint")
    Traceback (most recent call last):
    ...
    compress.core.errors.RecipeError: model.checkpoint: '/dev/null' is not a regular file (a device, folder or pipe). Fix: ...
    """
    fix = "give the path of a state_dict saved with torch.save(model.state_dict(), path), relative to the recipe file"
    try:
        info = path.stat()
    except OSError:
        raise error(f"checkpoint {str(path)!r} does not exist", where=where, fix=fix + ", or remove the key") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{str(path)!r} is not a regular file (a device, folder or pipe)", where=where, fix=fix)
    if info.st_size > MAX_CHECKPOINT_BYTES:
        raise error(f"checkpoint {str(path)!r} is {info.st_size:,} bytes, more than the "
                    f"{MAX_CHECKPOINT_BYTES:,} allowed", where=where, fix=fix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors of every kind: the file is not a checkpoint
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise error(f"{str(path)!r} is not a weights-only torch checkpoint ({type(exc).__name__}: {first})",
                    where=where, fix=fix) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise error(f"{str(path)!r} does not hold a state dict (a mapping of parameter names to tensors)",
                    where=where, fix=fix)
    return dict(state)
