"""`feature_distill`: match the teacher's representation — the prediction (a pooled sentence
embedding, logits, ...) and optionally chosen intermediate layers — with no labels.

Like `distill` it changes no weights itself; it hands the training loop a loss hook, so it works
in the pipeline's trainer and in a user's own loop (`loss = hooks.loss(model, batch, outputs,
None)` for an embedding model without labels). The prediction is read with the model adapter
(`compress.core.adapter`): by default `logits`, else `last_hidden_state` mean-pooled with the
attention mask, else the output tensor itself.

Intermediate layers are given as `student` / `teacher` module names. When their widths differ, a
learned linear map (student width → teacher width, along the one dimension whose sizes differ) is
fitted jointly: it lives outside the model, so the exported model and its parameter count stay
the student's own, and the hook trains it with its own Adam optimizer in `after_step` (the
caller's optimizer, built for the model, never sees it). Token features are compared only where
the attention mask is 1. The teacher is a private frozen copy, as in `distill`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from compress.core.adapter import ModelAdapter, OutputSpec
from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.technique import BaseTechnique, Hooks, HookSet, Result
from compress.distill.technique import frozen_teacher

WHERE = "feature_distill"


class LayerPair(BaseModel):
    """One intermediate layer of the student matched to one of the teacher (same name by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    student: str
    teacher: str | None = Field(None, description="the teacher's module; default: the student's name")
    weight: float = Field(1.0, gt=0)

    @property
    def teacher_name(self) -> str:
        return self.teacher or self.student


class FeatureDistillConfig(TechniqueConfig):
    """Feature / hidden-state distillation settings.

    >>> FeatureDistillConfig(loss="cosine", layers=[{"student": "encoder.layer.1"}]).layers[0].teacher_name
    'encoder.layer.1'
    """

    kind: Literal["feature_distill"] = "feature_distill"
    loss: Literal["cosine", "mse"] = Field("cosine", description="1 - cosine similarity, or mean squared error")
    output_weight: float = Field(1.0, ge=0, le=1000, description="weight of the prediction term (0: intermediate layers only)")
    output: OutputSpec | None = Field(None, description="which output is the representation; default: the model "
                                      "adapter's choice (logits, else last_hidden_state mean-pooled)")
    layers: tuple[LayerPair, ...] = Field((), description="intermediate layers to match, student → teacher")
    adapter_lr: float = Field(1e-3, gt=0, le=10, description="learning rate of the linear maps between layer widths")
    teacher_checkpoint: str | None = Field(None, description="state_dict of the cloud architecture to distill from")

    @model_validator(mode="after")
    def _something(self) -> FeatureDistillConfig:
        if self.output_weight == 0 and not self.layers:
            raise ValueError("output_weight 0 and no layers leave nothing to distill")
        return self

    def check_model(self, model: nn.Module, target: Any) -> None:
        _modules(model, [p.student for p in self.layers], "student")


def _modules(model: nn.Module, names: list[str], who: str) -> list[nn.Module]:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        near = ", ".join(n for n in list(modules)[1:12])
        raise EdgetierError(f"the {who} {type(model).__name__} has no module {missing[0]!r}", where=f"{WHERE}.layers",
                            fix=f"name a module of the {who} (e.g. {near}, ...)")
    return [modules[n] for n in names]


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, *, dim: int = -1,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 − cosine along `dim` (or the MSE), averaged over every other position (where `mask` is 1).

    >>> a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> float(feature_loss(a, 2 * a, "cosine")), float(feature_loss(a, a, "mse"))
    (0.0, 0.0)
    """
    if kind == "cosine":
        per = 1 - F.cosine_similarity(student, teacher, dim=dim)
    else:
        per = (student - teacher).pow(2).mean(dim=dim)
    if mask is not None and mask.shape == per.shape:
        weights = mask.to(per.dtype)
        return (per * weights).sum() / weights.sum().clamp_min(1)
    return per.mean()


def _tensor(output: Any) -> torch.Tensor:
    """A module's output as one tensor (Hugging Face layers return tuples)."""
    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise EdgetierError(f"a distilled layer returns a {type(output).__name__}, not a tensor",
                            where=f"{WHERE}.layers", fix="name a module whose output is a tensor (or a tuple of them)")
    return output


class Projection(nn.Module):
    """A linear map along one dimension of a feature: student width → teacher width."""

    def __init__(self, dim: int, width_in: int, width_out: int) -> None:
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(width_in, width_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.movedim(self.dim, -1)).movedim(-1, self.dim)


class Capture:
    """Forward hooks that keep named modules' latest outputs. A forward pre-hook on the root
    re-attaches them before every forward, so a layer replaced by a later stage (QAT swaps
    Linear for QuantLinear) is still captured under its name."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.model, self.names = model, names
        self.outputs: dict[str, torch.Tensor] = {}
        self._hooked: dict[str, tuple[nn.Module, Any]] = {}
        self._attach()
        self._root = model.register_forward_pre_hook(lambda *_: self._attach())

    def _attach(self) -> None:
        modules = dict(self.model.named_modules())
        for name in self.names:
            module = modules.get(name)
            if module is None or (name in self._hooked and self._hooked[name][0] is module):
                continue
            if name in self._hooked:
                self._hooked[name][1].remove()
            self._hooked[name] = (module, module.register_forward_hook(self._keep(name)))

    def _keep(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.outputs[name] = _tensor(output)
        return hook

    def take(self, name: str) -> torch.Tensor:
        if name not in self.outputs:
            raise EdgetierError(f"layer {name!r} did not run in the last forward pass", where=f"{WHERE}.layers",
                                fix="name a module on the forward path")
        return self.outputs.pop(name)


class FeatureDistill(BaseTechnique):
    config_type = FeatureDistillConfig
    config: FeatureDistillConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        hooks, report = self._hooks(model, ctx)
        return Result(model, report, hooks=hooks, state={})

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        return Result(model, hooks=self._hooks(model, ctx)[0], state=state)

    def _teacher(self, ctx: Context) -> nn.Module:
        return frozen_teacher(ctx, self.config.teacher_checkpoint, kind="feature_distill", where=WHERE)

    def _hooks(self, model: nn.Module, ctx: Context) -> tuple[HookSet, dict[str, Any]]:
        cfg = self.config
        teacher = self._teacher(ctx)
        if not ctx.example_inputs:
            raise EdgetierError("feature_distill runs the models once to size its layer maps and needs example "
                                "inputs", where=WHERE, fix="pass example_inputs=(...) to compress.apply")
        adapter = ModelAdapter.from_model(teacher, tuple(ctx.example_inputs), output=cfg.output)
        _modules(model, [p.student for p in cfg.layers], "student")
        _modules(teacher, [p.teacher_name for p in cfg.layers], "teacher")
        students = Capture(model, [p.student for p in cfg.layers])
        teachers = Capture(teacher, [p.teacher_name for p in cfg.layers])
        example = adapter.tensors(tuple(ctx.example_inputs))
        with torch.no_grad():
            was = model.training
            s_pred = adapter.read(adapter.forward(model.eval(), example), example)
            model.train(was)
            t_pred = adapter.call(teacher, example)
        if s_pred.shape != t_pred.shape:
            raise EdgetierError(f"the student's prediction has shape {tuple(s_pred.shape)} and the teacher's "
                                f"{tuple(t_pred.shape)} ({adapter.output.describe()})", where=f"{WHERE}.output",
                                fix="distill an output of equal width, or set output_weight: 0 and match "
                                    "intermediate layers through `layers`")
        projections = nn.ModuleDict()
        dims: dict[str, int] = {}
        for i, pair in enumerate(cfg.layers):
            s, t = students.take(pair.student), teachers.take(pair.teacher_name)
            differ = [d for d in range(s.dim()) if s.shape[d] != t.shape[d]] if s.dim() == t.dim() else None
            if differ is None or len(differ) > 1:
                raise EdgetierError(f"layer {pair.student!r} of the student has shape {tuple(s.shape)} and "
                                    f"{pair.teacher_name!r} of the teacher {tuple(t.shape)}: a linear map joins "
                                    "features that differ in one dimension only", where=f"{WHERE}.layers[{i}]",
                                    fix="pair layers at the same resolution / sequence length")
            dims[pair.student] = differ[0] if differ else s.dim() - 1
            if differ:
                projections[str(i)] = Projection(differ[0], s.shape[differ[0]], t.shape[differ[0]])
        optimizer = torch.optim.Adam(projections.parameters(), lr=cfg.adapter_lr) if len(projections) else None

        def loss(student: nn.Module, inputs: Any, outputs: Any, targets: Any) -> torch.Tensor:
            named = adapter.tensors(inputs) if not isinstance(inputs, Mapping) else dict(inputs)
            teacher.eval()  # the teacher never trains, whatever mode the caller left it in
            with torch.no_grad():
                t_out = adapter.call(teacher, named)
            total = cfg.output_weight * feature_loss(adapter.read(outputs, named), t_out, cfg.loss) \
                if cfg.output_weight else torch.zeros(())
            mask = named.get(adapter.output.mask_input)
            for i, pair in enumerate(cfg.layers):
                s = students.take(pair.student)
                t = teachers.take(pair.teacher_name)
                if str(i) in projections:
                    s = projections[str(i)](s)
                token_mask = mask if mask is not None and s.dim() == 3 and s.shape[:2] == mask.shape else None
                total = total + pair.weight * feature_loss(s, t, cfg.loss, dim=dims[pair.student], mask=token_mask)
            return total

        def after_step(_model: nn.Module) -> None:
            if optimizer is not None:  # the layer maps' gradients came from the caller's backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        hooks = HookSet([Hooks(loss=loss, after_step=after_step)])
        hooks_report = {"loss": cfg.loss, "output": adapter.output.describe(), "output_weight": cfg.output_weight,
                        "layers": [{"student": p.student, "teacher": p.teacher_name,
                                    "map": list(projections[str(i)].linear.weight.shape[::-1])
                                    if str(i) in projections else None} for i, p in enumerate(cfg.layers)],
                        "teacher": cfg.teacher_checkpoint or "cloud model"}
        self.projections = projections  # reachable for inspection and tests
        return hooks, hooks_report
