"""The `nas` stage's configuration: the search space, the strategy, the budget, the proxy training
and where trials run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compress.core.config import TechniqueConfig
from compress.core.errors import EdgetierError

if TYPE_CHECKING:
    from torch import nn

    from compress.targets import Target


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SpaceSpec(_Strict):
    """Choices per stage (three stages; the stem takes the first stage's width).

    A stage's width is ``width_mult · width`` rounded up to the target's ``channel_multiple``;
    its blocks' inner width is ``expansion`` times that.
    """

    family: Literal["resnet1d", "resnet2d"] = Field("resnet1d", description="reference model family")
    width: int = Field(32, ge=1, description="base width that the multipliers scale")
    depth: tuple[int, ...] = Field((1, 2), description="blocks per stage, choices")
    width_mult: tuple[float, ...] = Field((0.25, 0.5, 0.75, 1.0), description="stage width multipliers, choices")
    kernel: tuple[int, ...] = Field((3, 5, 7), description="kernel sizes per stage, choices (odd)")
    expansion: tuple[float, ...] = Field((0.5, 1.0), description="inner width of a block / its output width, choices")

    @field_validator("depth", "width_mult", "kernel", "expansion")
    @classmethod
    def _choices(cls, values: tuple, info) -> tuple:  # noqa: ANN001 - pydantic's ValidationInfo
        if not values:
            raise ValueError(f"the search space is empty: `{info.field_name}` has no choices; give at least one, "
                             f"e.g. {info.field_name}: {list(cls.model_fields[info.field_name].default)}")
        if any(v <= 0 for v in values):
            raise ValueError(f"`{info.field_name}` choices must be > 0, got {list(values)}")
        if info.field_name == "kernel" and any(k % 2 == 0 for k in values):
            raise ValueError(f"kernel sizes must be odd (same padding keeps the length), got {list(values)}")
        return tuple(sorted(set(values)))


class Budget(_Strict):
    """Limits a candidate must meet before it is trained. `max_kb` defaults to the target's storage."""

    max_kb: float | None = Field(None, gt=0, description="weight bytes / 1024 (params × bytes per weight)")
    max_latency_ms: float | None = Field(None, gt=0, description="estimated latency on the target (roofline)")
    max_macs: int | None = Field(None, gt=0, description="multiply-accumulates of one inference")
    precision: Literal["fp32", "int8"] = Field("fp32", description="weights stored and computed at this precision")


class ProxySpec(_Strict):
    """The short training that scores a candidate: `epochs` on the first `samples` of the train split."""

    epochs: int = Field(3, ge=1, le=10_000)
    samples: int | None = Field(2000, ge=1, description="train samples used (None: all)")
    lr: float = Field(3e-3, gt=0, le=10)
    batch_size: int = Field(128, ge=1, le=65_536)
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="learning-rate schedule of the proxy training (cosine: a short run still converges)")


class NASConfig(TechniqueConfig):
    """Hardware-aware architecture search with NNI strategies.

    >>> NASConfig(strategy="random", trials=4).space.family
    'resnet1d'
    """

    kind: Literal["nas"] = "nas"
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    strategy: Literal["random", "evolution", "spos"] = Field(
        "evolution", description="random / evolution: NNI's Random / RegularizedEvolution, each candidate trained "
                                 "by the proxy; spos: single-path one-shot (compress/nas/oneshot.py), a weight-sharing "
                                 "supernet trained once, then evolution scoring candidates with inherited weights")
    trials: int = Field(20, ge=1, le=10_000, description="candidates trained (spos: scored; rejected ones do not count)")
    population: int = Field(8, ge=2, le=10_000, description="evolution: population size (first ones random)")
    sample_size: int = Field(4, ge=1, le=10_000, description="evolution: tournament size")
    mutation_prob: float = Field(0.3, gt=0, le=1, description="evolution: chance to resample each choice")
    batch: int = Field(4, ge=1, le=1024, description="trials per generation: run together, in parallel on Ray; results "
                                             "reach the strategy in submission order, so the search does not "
                                             "depend on the number of workers")
    budget: Budget = Field(default_factory=Budget)
    proxy: ProxySpec = Field(default_factory=ProxySpec)
    finalists: int = Field(1, ge=1, le=100, description="the best candidates by proxy accuracy retrained on the whole "
                                                "train split for `final_epochs` and compared on validation; the "
                                                "most accurate is chosen (a short proxy ranks near-ties noisily)")
    final_epochs: int | None = Field(None, ge=1, le=10_000, description="epochs of the finalists' training (default: the "
                                                             "proxy's), same lr, batch size and schedule")
    supernet_epochs: int = Field(6, ge=1, le=10_000, description="spos: epochs of supernet training (proxy samples, lr, "
                                                       "batch size); spos runs in-process, whatever `executor`")
    executor: Literal["inprocess", "ray"] = Field("inprocess", description="where trials train")
    address: str | None = Field(None, description="ray: an existing cluster ('auto', 'ray://host:10001'); "
                                                  "None starts a local instance")
    workers: int = Field(2, ge=1, le=1024, description="ray: CPUs of the local instance (one trial per CPU)")

    def check_target(self, target: Target) -> None:
        if self.budget.precision not in target.compute.throughput_gmacs:
            raise EdgetierError(f"budget.precision {self.budget.precision!r} is not a precision target "
                                f"{target.name!r} runs", where="with.budget.precision",
                                fix=f"use one of {', '.join(target.supported_precisions)}")

    def check_model(self, model: nn.Module, target: Target | None) -> None:
        """The smallest candidate must meet the budget, else no search can succeed."""
        from compress.nas.costs import CostModel, smallest_arch

        shape, classes = getattr(model, "input_shape", None), getattr(model, "num_classes", None)
        if shape is None or classes is None:
            return  # a factory model: checked in apply, where the data gives the shapes
        multiple = target.channel_multiple if target else 1
        CostModel(self.budget, target, input_shape=tuple(shape), num_classes=int(classes)).check_reachable(
            smallest_arch(self.space, channel_multiple=multiple))
