"""`partition`: a recipe stage that plans where to cut the variant's model between tiers (the run report shows it).

The stage leaves the model unchanged. It exports the model as it stands at this point of the
recipe to a temporary fp32 ONNX file, plans the cut (DADS) over `tiers`, and reports the plan
next to the extremes. Split bundles are written from a finished run with
`edgetier partition RUN_DIR --out DIR` (the cut then applies to the exported file itself).

A tier name means the variant's own target when the variant is on that tier, else the shipped
reference target of the tier (edge: jetson_orin_nano, cloud: cloud_gpu); a target name means
that target.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.technique import BaseTechnique, Result
from compress.targets import load_target
from compress.targets.schema import Target

DEFAULT_TARGET = {"end": "rpi4", "edge": "jetson_orin_nano", "cloud": "cloud_gpu"}


class PartitionConfig(TechniqueConfig):
    """Plan a partition of the model over `tiers` (device first).

    >>> PartitionConfig(tiers=("end", "cloud"), crossing_dtype="int8").to_dict()["crossing_dtype"]
    'int8'
    """

    kind: Literal["partition"] = "partition"
    tiers: tuple[str, ...] = Field(default=("end", "cloud"), min_length=2, description="tiers or target names")
    objective: Literal["latency"] = "latency"
    crossing_dtype: Literal["fp32", "fp16", "int8"] = "fp32"
    bandwidth_mbps: float | None = Field(default=None, gt=0, le=1_000_000, description="override the first link's bandwidth")
    rtt_ms: float | None = Field(default=None, ge=0, le=600_000, description="override the first link's round trip")


class Partition(BaseTechnique):
    config_type = PartitionConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        from compress.partition.plan import plan_partition
        from export.onnx import export_onnx

        cfg = self.config
        assert isinstance(cfg, PartitionConfig)
        targets = [_target(t, ctx.target) for t in cfg.tiers]
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model.eval(), tuple(ctx.example_inputs), Path(tmp) / "model.onnx")
            plan = plan_partition(path, targets, crossing_dtype=cfg.crossing_dtype, bandwidth_mbps=cfg.bandwidth_mbps,
                                  rtt_ms=cfg.rtt_ms)
        summary = plan.to_dict()
        summary["model"] = "the variant's model at this stage (fp32 ONNX)"
        extremes = ", ".join(f"{k} {v.total_ms:.3f} ms" for k, v in plan.extremes.items())
        note = (f"partition plan over {' -> '.join(t.name for t in targets)} ({cfg.crossing_dtype} crossing): "
                f"{plan.verdict()}; best {plan.best.total_ms:.3f} ms, {extremes}")
        return Result(model, {"plan": summary, "note": note, "table": plan.render()})


def _target(token: str, own: Target | None) -> Target:
    if token in DEFAULT_TARGET:
        return own if own is not None and own.tier == token else load_target(DEFAULT_TARGET[token])
    return load_target(token)
