"""What edgetier reports, as typed records that serialize to the `report.json` of every bundle.

Every number in a `ModelReport` is measured on the exported artifact (see `compress.deploy`)
except `macs` (counted on the PyTorch model that was exported) and `estimated_latency_ms`
(the target's roofline). `StageReport` records what each stage did, with per-layer decisions
(kept channels, bits, clusters, ...) under `layers`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StageReport:
    """One stage of one variant: what it decided and, when it trained, how it ended.

    >>> StageReport("quantize", "ptq_int8", {"per_channel": True}).to_dict()["summary"]
    {'per_channel': True}
    """

    stage: str
    kind: str
    summary: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)
    val_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageReport:
        return cls(**data)


@dataclass(frozen=True)
class ModelReport:
    """One exported model, measured. `bytes` is the model file on disk and `compressed_bytes` the
    same file after DEFLATE (storage when shipped compressed); `accuracy` is the exported file's, run in its runtime on the test split; `latency_ms` is the median batch-1 latency on
    this host with `latency_threads` threads."""

    name: str
    target: str
    tier: str
    runtime: str
    format: str
    precision: str
    bytes: int
    compressed_bytes: int
    params: int
    torch_params: int
    nonzero_params: int
    macs: int
    accuracy: float
    torch_accuracy: float
    latency_ms: float
    latency_p90_ms: float
    latency_threads: int
    estimated_latency_ms: float | None
    parity: dict[str, Any]
    stages: tuple[StageReport, ...] = ()
    notes: tuple[str, ...] = ()
    exits: dict[str, Any] | None = None  # early-exit policy measurements (compress.deploy_exits)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [s.to_dict() for s in self.stages]
        data["notes"] = list(self.notes)
        return data


def bundle_figures(stages: list[StageReport]) -> tuple[dict[str, Path], list[StageReport]]:
    """The figures the stages drew (`summary["figures"]`: `{label: path to a PNG/SVG}`), named for
    the bundle as `<stage>-<label>`, and the stages with those bundle names in place of the paths
    (a bundle's report must not point outside the bundle). Missing files are left out.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     png = Path(d) / "p.png"; _ = png.write_bytes(b"png")
    ...     files, stages = bundle_figures([StageReport("mp", "mixed_precision", {"figures": {"pareto.png": str(png)}})])
    >>> list(files), stages[0].summary["figures"]
    (['mp-pareto.png'], {'pareto.png': 'mp-pareto.png'})
    """
    files: dict[str, Path] = {}
    renamed: list[StageReport] = []
    for stage in stages:
        figures = stage.summary.get("figures")
        if not figures:
            renamed.append(stage)
            continue
        names = {}
        for label, path in figures.items():
            if Path(path).is_file():
                names[label] = f"{stage.stage}-{label}"
                files[names[label]] = Path(path)
        renamed.append(replace(stage, summary={**stage.summary, "figures": names}))
    return files, renamed
