"""Model adapters: how to feed any `nn.Module` and which of its outputs is the prediction.

One frozen spec, read by training, calibration, parity, export, the manifest and the runtime,
so nothing else special-cases Hugging Face or tuple-returning models:

- `inputs`: one `InputSpec` per forward argument — name, dtype, shape with named dynamic axes
  (`("batch", "sequence")` for token ids, `("batch", 3, 32, 32)` for images);
- `output`: which output is the prediction — the tensor itself, a tuple index, a dict key or a
  Hugging Face `ModelOutput` field (`logits`, `last_hidden_state`, ...), optionally pooled over
  the sequence (`pooling: mean` uses the attention mask, `cls` takes position 0) — or, in the
  Python API only, a callable `(outputs, inputs) -> tensor`.

Batches with several inputs travel as numpy *record arrays* (one field per input, see
`ModelAdapter.records`), so a `Dataset` split keeps one `x` that slices, shuffles and counts
like any array; `ModelAdapter.tensors` turns any batch into the inputs `call` takes.

>>> import torch
>>> class TwoIn(nn.Module):
...     def forward(self, input_ids, attention_mask):
...         return {"last_hidden_state": input_ids.float().unsqueeze(-1).repeat(1, 1, 2)}
>>> ids = torch.tensor([[1, 2, 9]]); mask = torch.tensor([[1, 1, 0]])
>>> adapter = ModelAdapter.from_model(TwoIn(), {"input_ids": ids, "attention_mask": mask})
>>> [(i.name, i.dtype, i.shape) for i in adapter.inputs]
[('input_ids', 'int64', ('batch', 'sequence')), ('attention_mask', 'int64', ('batch', 'sequence'))]
>>> adapter.output.select, adapter.output.pooling
('last_hidden_state', 'mean')
>>> adapter.call(TwoIn(), {"input_ids": ids, "attention_mask": mask}).tolist()  # the padded 9 is ignored
[[1.5, 1.5]]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema
from torch import nn

from compress.core.errors import EdgetierError

__all__ = ["AdaptedModule", "AdapterError", "InputSpec", "ModelAdapter", "OutputSpec"]

DTYPES = ("float32", "float16", "int64", "int32", "bool")
_TORCH = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
          "bool": torch.bool}
# Output keys tried, in order, when the spec does not say which output is the prediction.
_DEFAULT_KEYS = ("logits", "last_hidden_state", "pooler_output")
_MASK_NAMES = ("attention_mask",)

Inputs = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


class AdapterError(EdgetierError):
    """A model whose inputs or outputs do not match its adapter spec."""


class InputSpec(BaseModel):
    """One forward argument: its name, dtype and shape; a string in `shape` names a dynamic axis.

    >>> InputSpec(name="input_ids", dtype="int64", shape=("batch", "sequence")).dynamic_axes()
    {0: 'batch', 1: 'sequence'}
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    dtype: Literal["float32", "float16", "int64", "int32", "bool"] = "float32"
    shape: tuple[int | str, ...] = ("batch",)

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's entry: fixed sizes as numbers, dynamic ones as null plus their axis names."""
        return {"name": self.name, "dtype": self.dtype,
                "shape": [None if isinstance(d, str) else d for d in self.shape],
                "dynamic_axes": {str(i): d for i, d in self.dynamic_axes().items()}}


class OutputSpec(BaseModel):
    """Which output is the prediction.

    `select`: None = the output itself (a tensor), an int = a tuple index, a str = a dict key or a
    `ModelOutput` field. `pooling` reduces a `[batch, sequence, features]` output to `[batch,
    features]`: `mean` over the positions where `mask_input` is 1, `cls` at position 0.
    `normalize` divides the prediction by its L2 norm (sentence-embedding models do this).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    select: int | str | None = None
    pooling: Literal["none", "mean", "cls"] = "none"
    mask_input: str = "attention_mask"
    normalize: bool = False
    # Python API only: a callable cannot come from YAML, so it has no place in the recipe's JSON schema
    fn: SkipJsonSchema[Callable[[Any, Mapping[str, torch.Tensor]], torch.Tensor] | None] = Field(None, exclude=True)

    @field_validator("fn")
    @classmethod
    def _callable(cls, value: Any) -> Any:
        if value is not None and not callable(value):
            raise ValueError("fn must be a callable (outputs, inputs) -> tensor")
        return value

    def describe(self) -> str:
        if self.fn is not None:
            return f"callable {getattr(self.fn, '__name__', repr(self.fn))}"
        what = "the output" if self.select is None else (
            f"output[{self.select}]" if isinstance(self.select, int) else f"output.{self.select}")
        return what + ("" if self.pooling == "none" else f", {self.pooling}-pooled") + (
            ", L2-normalized" if self.normalize else "")


class ModelAdapter(BaseModel):
    """How to feed a model (`inputs`) and read its prediction (`output`); see the module doc."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: tuple[InputSpec, ...] = Field(min_length=1)
    output: OutputSpec = Field(default_factory=OutputSpec)

    @field_validator("inputs")
    @classmethod
    def _unique(cls, value: tuple[InputSpec, ...]) -> tuple[InputSpec, ...]:
        names = [i.name for i in value]
        if len(set(names)) != len(names):
            raise ValueError(f"input names must be unique, got {names}")
        return value

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]

    # ---- building one -------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: Inputs, *, output: OutputSpec | None = None,
                   inputs: Sequence[InputSpec] | None = None) -> ModelAdapter:
        """Infer the spec from one forward pass on `example_inputs` (a tensor, tuple or name -> tensor).

        Input names come from the dict keys, else the forward's parameter names; dim 0 is the
        dynamic `batch` axis, and dim 1 of 2-D integer inputs the dynamic `sequence` axis. The
        prediction is the output tensor, or `logits`, else `last_hidden_state` (mean-pooled with
        the attention mask when there is one), else `pooler_output`, else tuple item 0.

        >>> ModelAdapter.from_model(nn.Linear(4, 2), torch.zeros(1, 4)).inputs[0]
        InputSpec(name='input', dtype='float32', shape=('batch', 4))
        """
        named = _named(model, example_inputs)
        if inputs is None:
            inputs = [_infer_input(name, t) for name, t in named.items()]
        adapter = cls(inputs=tuple(inputs), output=output or OutputSpec())
        adapter.check_inputs(model)
        with torch.no_grad():
            was = model.training
            model.eval()
            try:
                raw = adapter.forward(model, named)
            finally:
                model.train(was)
        if output is None:
            adapter = adapter.model_copy(update={"output": _default_output(raw, named)})
        adapter.read(raw, named)  # fails now, with the real output type, rather than mid-export
        return adapter

    # ---- feeding ------------------------------------------------------------------------------
    def check_inputs(self, model: nn.Module) -> None:
        """Raise `AdapterError` when the spec's input names cannot be passed to `model.forward`."""
        params = _forward_params(model)
        if params is None:
            return
        positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in params.values())
        if _by_keyword(params, self.names):
            return
        if len(self.inputs) > 1 and not varargs and len(positional) < len(self.inputs):
            raise AdapterError(
                f"the input spec lists {self.names}, but {type(model).__name__}.forward takes "
                f"({', '.join(params)})",
                where=f"{type(model).__name__}.forward",
                fix="name the inputs after the forward's parameters (or give them in its positional order)")

    def tensors(self, batch: Any) -> dict[str, torch.Tensor]:
        """Name -> tensor for a batch given as a record array, an array, a tensor, a tuple or a dict."""
        if isinstance(batch, np.ndarray) and batch.dtype.names:
            batch = {n: np.ascontiguousarray(batch[n]) for n in batch.dtype.names}
        if isinstance(batch, Mapping):
            missing = [n for n in self.names if n not in batch]
            if missing:
                raise AdapterError(f"the batch has {sorted(batch)} but the model's input spec needs {missing}",
                                   fix="give every input named in the spec (or fix the spec's names)")
            return {n: _tensor(batch[n], spec.dtype) for n, spec in zip(self.names, self.inputs, strict=True)}
        items = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        if len(items) != len(self.inputs):
            raise AdapterError(f"{len(items)} inputs given but the model's input spec lists {self.names}",
                               fix="pass one array per input, or a dict keyed by input name")
        return {s.name: _tensor(t, s.dtype) for s, t in zip(self.inputs, items, strict=True)}

    def records(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """A record array with one field per input: the `x` of a multi-input dataset split.

        >>> a = ModelAdapter(inputs=(InputSpec(name="ids", dtype="int64", shape=("batch", "sequence")),
        ...                          InputSpec(name="mask", dtype="int64", shape=("batch", "sequence"))))
        >>> r = a.records({"ids": np.ones((3, 5)), "mask": np.zeros((3, 5))})
        >>> len(r), r["ids"].shape, r[:2]["mask"].dtype
        (3, (3, 5), dtype('int64'))
        """
        first = np.asarray(arrays[self.names[0]])
        fields = [(s.name, s.dtype, np.asarray(arrays[s.name]).shape[1:]) for s in self.inputs]
        out = np.empty(len(first), dtype=fields)
        for s in self.inputs:
            out[s.name] = np.asarray(arrays[s.name]).astype(s.dtype, copy=False)
        return out

    def forward(self, model: nn.Module, inputs: Inputs) -> Any:
        """The model's raw output for `inputs` (by keyword when the forward names them, else by position)."""
        named = self.tensors(inputs) if not _is_tensor_dict(inputs) else dict(inputs)
        params = _forward_params(model)
        try:
            if params is not None and _by_keyword(params, self.names) and len(self.inputs) > 1:
                return model(**named)
            return model(*named.values())
        except TypeError as err:
            if "argument" not in str(err):
                raise
            raise AdapterError(
                f"{type(model).__name__}.forward does not accept the inputs {self.names} ({err})",
                where=f"{type(model).__name__}.forward",
                fix="make the input spec's names and order match the forward's parameters") from None

    # ---- reading ------------------------------------------------------------------------------
    def read(self, raw: Any, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The prediction tensor in a raw model output (see `OutputSpec`)."""
        out = self.output
        if out.fn is not None:
            pred = out.fn(raw, inputs)
        else:
            pred = _select(raw, out.select)
            if out.pooling != "none":
                pred = _pool(pred, out.pooling, inputs.get(out.mask_input), out.mask_input)
        if not isinstance(pred, torch.Tensor):
            raise AdapterError(
                f"the prediction ({out.describe()}) is a {_type_name(pred)}, not a tensor",
                fix=_fix_for(raw))
        if out.normalize:
            pred = torch.nn.functional.normalize(pred, dim=-1)
        return pred

    def call(self, model: nn.Module, inputs: Inputs) -> torch.Tensor:
        """Run `model` on `inputs` and return its prediction tensor.

        >>> ModelAdapter.from_model(nn.Linear(4, 2), torch.zeros(1, 4)).call(nn.Linear(4, 2), torch.zeros(3, 4)).shape
        torch.Size([3, 2])
        """
        named = self.tensors(inputs) if not _is_tensor_dict(inputs) else dict(inputs)
        return self.read(self.forward(model, named), named)

    def module(self, model: nn.Module) -> AdaptedModule:
        """`model` as a module whose forward takes the inputs positionally and returns the prediction:
        what torch.onnx and litert-torch trace, and what parity compares."""
        return AdaptedModule(model, self)

    # ---- describing ---------------------------------------------------------------------------
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx `dynamic_axes` for the inputs (the output gets `batch` on dim 0)."""
        return {i.name: i.dynamic_axes() for i in self.inputs if i.dynamic_axes()}

    def to_manifest(self) -> list[dict[str, Any]]:
        return [i.to_manifest() for i in self.inputs]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (a callable output is recorded by name only; it cannot be re-created)."""
        data = self.model_dump(mode="json")
        if self.output.fn is not None:
            data["output"]["fn"] = self.output.describe()
        return data


class AdaptedModule(nn.Module):
    """A model plus its adapter: forward(*inputs in spec order) -> prediction tensor."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter) -> None:
        super().__init__()
        self.model = model
        self.adapter = adapter

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.adapter.names, inputs, strict=True))
        return self.adapter.read(self.adapter.forward(self.model, named), named)


# ---- helpers ------------------------------------------------------------------------------------
def _is_tensor_dict(x: Any) -> bool:
    return isinstance(x, Mapping) and all(isinstance(v, torch.Tensor) for v in x.values())


def _tensor(x: Any, dtype: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(_TORCH[dtype]) if t.dtype != _TORCH[dtype] else t


def _forward_params(model: nn.Module) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # builtins / C-extension forwards have no signature
        return None


def _by_keyword(params: Mapping[str, inspect.Parameter], names: Sequence[str]) -> bool:
    return all(n in params and params[n].kind != inspect.Parameter.POSITIONAL_ONLY for n in names)


def _named(model: nn.Module, example: Inputs) -> dict[str, torch.Tensor]:
    if isinstance(example, Mapping):
        return dict(example)
    items = list(example) if isinstance(example, (tuple, list)) else [example]
    if not all(isinstance(t, torch.Tensor) for t in items):
        raise AdapterError(f"example inputs must be tensors, got {[_type_name(t) for t in items]}",
                           fix="pass a tensor, a tuple of tensors or a dict of name -> tensor")
    params = _forward_params(model) or {}
    positional = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(items) == 1:
        return {"input": items[0]}  # the name one-input bundles have always used
    if len(positional) >= len(items):
        return dict(zip(positional, items, strict=False))
    return {f"input_{i}": t for i, t in enumerate(items)}


def _infer_input(name: str, t: torch.Tensor) -> InputSpec:
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise AdapterError(f"input '{name}' has dtype {dtype}; supported: {', '.join(DTYPES)}",
                           fix="cast the example input (float32 for features, int64 for token ids)")
    shape: list[int | str] = ["batch", *t.shape[1:]]
    if t.dim() == 2 and not t.dtype.is_floating_point:
        shape[1] = "sequence"
    return InputSpec(name=name, dtype=dtype, shape=tuple(shape))  # type: ignore[arg-type]


def _keys(raw: Any) -> list[str]:
    if isinstance(raw, Mapping):
        return [k for k, v in raw.items() if v is not None]
    return []


def _default_output(raw: Any, inputs: Mapping[str, torch.Tensor]) -> OutputSpec:
    if isinstance(raw, torch.Tensor):
        return OutputSpec()
    keys = _keys(raw)
    for key in _DEFAULT_KEYS:
        if key in keys:
            value = raw[key]
            if key == "last_hidden_state" and isinstance(value, torch.Tensor) and value.dim() == 3:
                mask = next((m for m in _MASK_NAMES if m in inputs), None)
                return OutputSpec(select=key, pooling="mean" if mask else "cls", mask_input=mask or "attention_mask")
            return OutputSpec(select=key)
    if isinstance(raw, (tuple, list)) and raw and isinstance(raw[0], torch.Tensor):
        return OutputSpec(select=0)
    raise AdapterError(f"cannot tell which output of the model is the prediction: it returns {_describe(raw)}",
                       fix=_fix_for(raw))


def _select(raw: Any, select: int | str | None) -> Any:
    if select is None:
        return raw
    if isinstance(select, int):
        if isinstance(raw, (tuple, list)) and -len(raw) <= select < len(raw):
            return raw[select]
    elif isinstance(raw, Mapping) and raw.get(select) is not None:
        return raw[select]
    elif not isinstance(raw, (Mapping, tuple, list, torch.Tensor)) and isinstance(getattr(raw, select, None),
                                                                                 torch.Tensor):
        return getattr(raw, select)
    raise AdapterError(f"the model's output has no {select!r}: it returns {_describe(raw)}", fix=_fix_for(raw))


def _pool(hidden: Any, how: str, mask: torch.Tensor | None, mask_name: str) -> torch.Tensor:
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise AdapterError(f"{how} pooling needs a [batch, sequence, features] tensor, got {_describe(hidden)}",
                           fix="select the per-token output (e.g. last_hidden_state), or use pooling: none")
    if how == "cls":
        return hidden[:, 0]
    if mask is None:
        return hidden.mean(1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    # clamp: an all-padding row gives zeros, not NaN
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _type_name(x: Any) -> str:
    return type(x).__name__


def _describe(raw: Any) -> str:
    if isinstance(raw, torch.Tensor):
        return f"a tensor of shape {list(raw.shape)}"
    keys = _keys(raw)
    if keys:
        return f"a {_type_name(raw)} with fields {keys}"
    if isinstance(raw, (tuple, list)):
        return f"a {_type_name(raw)} of {[_type_name(v) for v in raw]}"
    return f"a {_type_name(raw)}"


def _fix_for(raw: Any) -> str:
    keys = _keys(raw)
    if keys:
        return (f"say which field is the prediction: `output: {keys[0]}` in the recipe, or "
                f"OutputSpec(select={keys[0]!r}) in Python (add `pooling: mean` for per-token outputs)")
    if isinstance(raw, (tuple, list)):
        return "say which item is the prediction: `output: 0` in the recipe, or OutputSpec(select=0) in Python"
    return ("return a tensor, tuple or dict from forward, or pass OutputSpec(fn=lambda out, inputs: ...) "
            "that reads the prediction")
