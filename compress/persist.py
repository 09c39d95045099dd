"""`compress.save` / `compress.load`: a compressed model as weights + the techniques' restore state.

`torch.save(model)` pickles code and fails on QAT layers; here nothing is pickled. `compress.apply`
records on the model each technique it applied (its config as JSON and the `Result.state` that
`Technique.restore` rebuilds it from — the same mechanism as a recipe run's `--resume`); `save`
writes those plus `state_dict()` with `torch.save` of plain values and tensors only, and `load`
reads it with `weights_only=True`, replays the restores on the *base* model you pass (pruned
channel counts, QAT layers, codebooks, exits), then loads the weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.registry import build, config_class

__all__ = ["applied", "load", "record", "save"]

FORMAT = "edgetier-compressed/1"
_ATTR = "_edgetier_applied"


def applied(model: nn.Module) -> list[dict[str, Any]]:
    """What `compress.apply` recorded on `model`, oldest first."""
    return list(getattr(model, _ATTR, []))


def record(earlier: list[dict[str, Any]], after: nn.Module, config: TechniqueConfig, state: dict[str, Any]) -> None:
    """Remember on `after` the `earlier` techniques plus `config`, applied with restore `state`."""
    # a plain attribute, not a buffer: it must not enter state_dict; deepcopy carries it along
    object.__setattr__(after, _ATTR, [*earlier, {"kind": config.kind, "config": config.to_dict(), "state": state}])


def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write `model`'s weights and the restore state of every technique `compress.apply` gave it.

    >>> import tempfile, pathlib, torch
    >>> from compress.prune.unstructured import UnstructuredPruneConfig
    >>> import compress
    >>> net = lambda: torch.nn.Sequential(torch.nn.Linear(8, 2))
    >>> base = net()
    >>> pruned, _ = compress.apply(net(), UnstructuredPruneConfig(ratio=0.5))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = save(pruned, pathlib.Path(d) / "m.pt")
    ...     back = load(p, base)
    >>> torch.equal(back[0].weight, pruned[0].weight)
    True
    """
    path = Path(path)
    payload = {"format": FORMAT, "applied": applied(model), "state_dict": model.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    try:  # refuse now what load could not read back (a state holding something other than values/tensors)
        torch.load(tmp, weights_only=True)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        raise EdgetierError(f"the model's compression state cannot be saved without pickling ({err})",
                            where=str(path), fix="report this technique: its restore state must be plain data") \
            from None
    tmp.replace(path)
    return path


def load(path: str | os.PathLike[str], base_model: nn.Module, *, example_inputs: tuple[torch.Tensor, ...] = (),
         ) -> nn.Module:
    """`base_model` (the architecture before compression, fresh) with the saved compression replayed
    and the saved weights loaded."""
    path = Path(path)
    if not path.is_file():
        raise EdgetierError("saved model not found", where=str(path), fix="check the path given to compress.save")
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as err:
        raise EdgetierError(f"not a file written by compress.save ({str(err).splitlines()[0]})", where=str(path),
                            fix="save with compress.save(model, path); pickled models are never loaded") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgetierError("not a file written by compress.save", where=str(path),
                            fix="save with compress.save(model, path)")
    if not example_inputs and hasattr(base_model, "example_inputs"):
        example_inputs = tuple(base_model.example_inputs())
    model = base_model
    for entry in payload["applied"]:
        config = config_class(entry["kind"]).from_dict(entry["config"])
        restored = build(config).restore(model, entry["state"], Context(example_inputs=example_inputs))
        record(applied(model), restored.model, config, entry["state"])
        model = restored.model
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise EdgetierError(f"the saved weights do not fit the model ({str(err).strip().splitlines()[0]})",
                            where=str(path), fix="pass the same base architecture the model was compressed from") \
            from None
    return model
