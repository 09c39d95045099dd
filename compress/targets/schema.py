"""What a hardware target is: frozen, validated data read from `hw_targets/*.yaml`.

A target describes one device class in the end / edge / cloud hierarchy: the runtime it executes
(`onnxruntime` or `litert`), its memory and storage budgets, its sustained throughput per
numeric precision, the link to the tier above it, the parity tolerance its exports must meet and
the datasheet every figure comes from. Techniques read capabilities from here; they never branch
on a device name.

Units are spelled out in the field names (`_kb`, `_gmacs`, `_gbs`, `_mbps`, `_ms`) so a YAML
file can be checked by eye against a datasheet: kb = 1024 bytes, GB/s = 1e9 bytes/s,
Mbit/s = 1e6 bits/s, GMAC/s = 1e9 multiply-accumulates per second.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Precision = Literal["fp32", "fp16", "int8", "int4"]
Tier = Literal["end", "edge", "cloud"]
Runtime = Literal["onnxruntime", "litert"]
ExportFormat = Literal["onnx", "tflite"]

# Ordering shared by the schema (a link must point up), the loader (listing order) and callers.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")
TIERS: tuple[str, ...] = ("end", "edge", "cloud")
TIER_RANK: dict[str, int] = {tier: rank for rank, tier in enumerate(TIERS)}
EXPORT_FORMAT: dict[str, str] = {"onnxruntime": "onnx", "litert": "tflite"}

_NAME_PATTERN = r"^[a-z0-9][a-z0-9_]*$"


class _Frozen(BaseModel):
    # strict: a YAML `ram_kb: yes` or `ram_kb: "512"` is a mistake to report, not a value to coerce.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Memory(_Frozen):
    """Budgets the model must fit, in KiB."""

    ram_kb: int = Field(gt=0, description="RAM available to the model: activations + runtime arena")
    storage_kb: int = Field(gt=0, description="storage budget for the model file")


class Compute(_Frozen):
    """Sustained compute figures for the roofline estimate in :mod:`compress.targets.latency`."""

    throughput_gmacs: dict[Precision, Annotated[float, Field(gt=0)]] = Field(
        description="peak multiply-accumulates per second, in 1e9 MAC/s, per supported precision",
    )
    memory_bandwidth_gbs: float = Field(gt=0, description="bytes per second to weights and activations, 1e9 B/s")
    efficiency: float = Field(gt=0, le=1, description="fraction of peak a real small CNN reaches")
    overhead_ms: float = Field(ge=0, description="fixed per-inference runtime overhead")

    @field_validator("throughput_gmacs")
    @classmethod
    def _not_empty(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError(f"list at least one precision with its throughput, from {', '.join(PRECISIONS)}")
        return value


class Link(_Frozen):
    """The network link from this target to the next tier up."""

    to: Literal["edge", "cloud"]
    technology: str = Field(min_length=1, description="e.g. 'Wi-Fi 5 (802.11ac)', '5G NR sub-6 GHz'")
    bandwidth_mbps: float = Field(gt=0, description="sustained application throughput, 1e6 bit/s")
    rtt_ms: float = Field(ge=0, description="round-trip time to the next tier")


class Tolerance(_Frozen):
    """How close an exported model must stay to PyTorch to pass verification."""

    atol: float = Field(ge=0, description="absolute tolerance on float outputs")
    rtol: float = Field(ge=0, description="relative tolerance on float outputs")
    quantized_top1_agreement: float = Field(
        gt=0, le=1, description="minimum share of samples whose int8 top-1 class matches PyTorch"
    )


class Source(_Frozen):
    """Where the figures come from, so each one can be checked."""

    datasheet: str = Field(min_length=1, description="title, publisher and where it is published")
    notes: str = Field(min_length=1, description="which figure comes from where; what is derived or estimated")


class Target(_Frozen):
    """One hardware target.

    >>> from compress.targets import load_target
    >>> t = load_target("stm32h7")
    >>> t.tier, t.runtime, t.export_format, t.supported_precisions
    ('end', 'litert', 'tflite', ('fp32', 'int8'))
    """

    schema_version: Literal[1]
    name: str = Field(pattern=_NAME_PATTERN, description="equals the file stem")
    display_name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    tier: Tier
    runtime: Runtime
    export_format: ExportFormat
    memory: Memory
    compute: Compute
    channel_multiple: int = Field(ge=1, description="channel counts that map well to the vector width")
    # validate_default: an omitted link must still reach the check that end/edge targets have one.
    link: Link | None = Field(default=None, validate_default=True)
    tolerance: Tolerance
    source: Source

    # Field validators (not one model validator) so that each error carries the key path of the
    # field at fault; `info.data` holds the fields declared above, when they validated.
    @field_validator("export_format")
    @classmethod
    def _format_matches_runtime(cls, value: str, info: ValidationInfo) -> str:
        runtime = info.data.get("runtime")
        if runtime is not None and EXPORT_FORMAT[runtime] != value:
            raise ValueError(
                f"runtime {runtime!r} runs {EXPORT_FORMAT[runtime]!r} files, not {value!r}; "
                f"set export_format: {EXPORT_FORMAT[runtime]}"
            )
        return value

    @field_validator("link")
    @classmethod
    def _link_points_up(cls, value: Link | None, info: ValidationInfo) -> Link | None:
        tier = info.data.get("tier")
        if tier is None:
            return value
        if tier == "cloud":
            if value is not None:
                raise ValueError("a cloud target is the top tier and has no link; remove the link")
            return value
        if value is None:
            raise ValueError(f"an {tier} target needs a link to the tier above it (to, technology, bandwidth_mbps, rtt_ms)")
        if TIER_RANK[value.to] <= TIER_RANK[tier]:
            raise ValueError(f"link.to must be a higher tier than {tier!r}, got {value.to!r}")
        return value

    @property
    def supported_precisions(self) -> tuple[str, ...]:
        """The precisions this target runs, in the order fp32, fp16, int8, int4."""
        return tuple(p for p in PRECISIONS if p in self.compute.throughput_gmacs)
