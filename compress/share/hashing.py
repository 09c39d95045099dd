"""`hash_share`: HashedNets (Chen et al., ICML 2015) — virtual weights drawn from a few real ones.

A hashed layer has K real weights ("buckets"). Its virtual weight at flat index i is
`xi(i) * w[h(i)]`: `h` picks a bucket and the sign hash `xi` in {-1, +1} makes colliding
weights unbiased. The paper uses xxHash; here both come from one hash built from integer ops
that export to ONNX as they are (Range, Mul, Mod, GreaterOrEqual):

    x = a*i + b  (seeded, x < p/2)     z = x*x mod p  (p = 2**31 - 1)
    h(i) = z mod K                     xi(i) = -1 if z > p/2 else +1

A linear hash (a*i + b) mod p mod K alone would make collisions depend only on i - j: for
some offsets d, *every* weight would share its bucket with the one d further on, tying whole
rows or kernels together. Squaring breaks that (z_{i+d} - z_i depends on i), and since every x
is below p/2, distinct i give distinct z. The file holds the K buckets plus seven integers;
onnxruntime folds the virtual weight when the session starts. Gradients reach the buckets
through the gather (each gets the signed sum of its virtual weights' gradients), so the layer
trains like any other.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.selectors import select
from compress.core.technique import BaseTechnique, Result
from compress.share.layers import (
    SharedLayer,
    check_not_shared_twice,
    layer_to_restore,
    replace_layer,
    shareable_layers,
)
from compress.share.packing import in_graph
from compress.targets import Target

PRIME = 2**31 - 1
WHERE = "hash_share"


class HashedLayer(SharedLayer):
    """A Conv/Linear whose `numel` virtual weights share `buckets` real ones through a seeded hash.

    >>> layer = HashedLayer(nn.Linear(16, 8), buckets=16, seed=0)
    >>> layer.buckets.shape, layer.weight.shape
    (torch.Size([16]), torch.Size([8, 16]))
    """

    technique = "hash_share"

    def __init__(self, layer: nn.Module, *, buckets: int, seed: int) -> None:
        super().__init__(layer)
        numel = int(np.prod(self.weight_shape))
        if 8 * numel >= PRIME:
            raise EdgetierError(f"a layer of {numel} weights is too large to hash with p = 2**31 - 1", where=WHERE,
                                fix="leave this layer out (`ignore`)")
        rng = np.random.default_rng(seed)
        a = int(rng.integers(1, PRIME // (4 * numel)))  # a*numel + b < p/2: x*x < 2**62, no int64 overflow
        b = int(rng.integers(0, PRIME // 4))
        # Every integer the graph needs lives in this buffer, not in Python literals: torch.onnx writes
        # each literal as a Constant node named after the module path (~140 bytes, more than the
        # hash costs), while a buffer element folds into a short-named scalar initializer. Layout:
        # the Range that yields x = a*i + b (start b, limit b + a*numel, step a), the all-ones mask
        # of the export fold barrier (see `packing.in_graph`), p, K, and the sign threshold p // 2.
        params = [b, b + a * numel, a, -1, PRIME, buckets, PRIME // 2]
        self.register_buffer("hash_params", torch.tensor(params, dtype=torch.int64, device=layer.weight.device))
        self.buckets = nn.Parameter(torch.zeros(buckets, dtype=layer.weight.dtype, device=layer.weight.device))

    def signed_buckets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bucket h(i) (int64) of every virtual weight, and where its sign xi(i) is -1 (bool)."""
        p = self.hash_params  # indexed one by one: each index folds into a scalar initializer at export
        start, limit, step, ones, prime, k, half = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
        # a Range whose start comes from the barrier: never stored as a numel-long constant
        x = torch.arange(in_graph(start, ones), limit, step, dtype=torch.int64, device=p.device)
        z = torch.remainder(x * x, prime)
        return torch.remainder(z, k), z > half

    def hashes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bucket h(i) and sign xi(i) in {-1, +1} (the buckets' dtype) of every virtual weight."""
        bucket, negative = self.signed_buckets()
        return bucket, 1 - 2 * negative.to(self.buckets.dtype)

    def dense_weight(self) -> torch.Tensor:
        bucket, negative = self.signed_buckets()
        value = self.buckets[bucket]
        return torch.where(negative, -value, value).view(self.weight_shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.buckets.numel()} buckets"


def hash_layer(layer: nn.Module, *, compression: float, init: Literal["dense", "scratch"],
               seed: int) -> tuple[HashedLayer, dict[str, Any]]:
    """`layer` hashed into `round(compression * numel)` buckets, and what was decided (for the report).

    `dense`: each bucket is the mean of the sign-corrected dense weights hashed into it (the
    least-squares fit of the dense layer); `scratch`: PyTorch's default Conv/Linear init,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for the buckets and the bias.

    >>> shared, info = hash_layer(nn.Linear(32, 8), compression=0.25, init="dense", seed=0)
    >>> info["buckets"], info["virtual_weights"]
    (64, 256)
    """
    weight = layer.weight.detach()
    numel = weight.numel()
    shared = HashedLayer(layer, buckets=max(1, round(compression * numel)), seed=seed)
    with torch.no_grad():
        bucket, sign = shared.hashes()
        if init == "dense":
            k = shared.buckets.numel()
            signed = (sign * weight.reshape(-1)).double()
            sums = torch.zeros(k, dtype=torch.float64, device=signed.device).index_add_(0, bucket, signed)
            counts = torch.bincount(bucket, minlength=k).double()
            shared.buckets.copy_(torch.where(counts > 0, sums / counts.clamp(min=1), 0.0))
        else:
            bound = 1 / math.sqrt(numel // weight.shape[0])
            generator = torch.Generator().manual_seed(seed)
            shared.buckets.copy_(torch.rand(shared.buckets.shape, generator=generator) * 2 * bound - bound)
            if shared.bias is not None:
                shared.bias.copy_(torch.rand(shared.bias.shape, generator=generator) * 2 * bound - bound)
        rebuilt = shared.dense_weight()
        norm = float(weight.norm())
        error = float((rebuilt - weight).norm()) / norm if norm else 0.0
    info = {"type": shared.source_type, "shape": list(shared.weight_shape), "virtual_weights": numel,
            "buckets": shared.buckets.numel(), "compression": shared.buckets.numel() / numel, "init": init,
            "seed": seed, "relative_error": error if init == "dense" else None}
    return shared, info


def _fraction(value: float, what: str) -> float:
    if not 0 < value <= 1:
        raise ValueError(f"{what} is K real weights / virtual weights and must lie in (0, 1], got {value}")
    return value


class HashShareConfig(TechniqueConfig):
    """HashedNets weight sharing of Conv/Linear layers; train with the stage's `train` block.

    >>> HashShareConfig(compression=0.25, layers={"re:.*fc": 0.5}).layers
    {'re:.*fc': 0.5}
    >>> HashShareConfig(compression=0)
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for HashShareConfig
    ...
    """

    kind: Literal["hash_share"] = "hash_share"
    compression: float = Field(0.125, description="real weights K / virtual weights, in (0, 1]")
    layers: dict[str, float] = Field(default_factory=dict, description="selector -> compression for the layers it "
                                     "matches (among the selected ones; later entries win)")
    init: Literal["dense", "scratch"] = Field("dense", description="buckets from the dense weights (mean of the "
                                              "sign-corrected weights per bucket) or a fresh random init")

    @field_validator("compression")
    @classmethod
    def _compression(cls, value: float) -> float:
        return _fraction(value, "compression")

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: dict[str, float]) -> dict[str, float]:
        for selector, fraction in value.items():
            _fraction(fraction, f"layers[{selector!r}]")
        return value

    def check_model(self, model: nn.Module, target: Target | None) -> None:
        self.plan(model)

    def shared_layers(self, model: nn.Module) -> set[str]:
        """The layers this stage hashes."""
        return set(self.plan(model))

    def check_after(self, earlier: list[TechniqueConfig], model: nn.Module) -> None:
        check_not_shared_twice(self, earlier, model, where=WHERE)

    def plan(self, model: nn.Module) -> dict[str, tuple[nn.Module, float]]:
        """The layers to hash and each one's compression."""
        layers = shareable_layers(model, self.targets, self.ignore, kind="hash_share", where=WHERE)
        chosen = {name: (layer, self.compression) for name, layer in layers.items()}
        for selector, fraction in self.layers.items():
            found = select(model, [selector], where=f"{WHERE}: layers")  # a selector matching no module: error
            hit = [name for name in found if name in chosen]
            if not hit:
                raise EdgetierError(f"layers selector {selector!r} matches none of the layers being hashed "
                                    f"({', '.join(list(chosen)[:5])}, ...)", where=f"{WHERE}: layers",
                                    fix="name a selected Conv/Linear layer, or add it to `targets`")
            for name in hit:
                chosen[name] = (chosen[name][0], fraction)
        return chosen


class HashShare(BaseTechnique):
    """Replace the selected layers by `HashedLayer` s (in place; the model is returned too)."""

    config_type = HashShareConfig
    config: HashShareConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        report: dict[str, Any] = {}
        for name, (layer, fraction) in self.config.plan(model).items():
            shared, report[name] = hash_layer(layer, compression=fraction, init=self.config.init,
                                              seed=_layer_seed(ctx.seed, name))
            replace_layer(model, name, shared)
        real = sum(r["buckets"] for r in report.values())
        virtual = sum(r["virtual_weights"] for r in report.values())
        summary = {"layers_hashed": len(report), "init": self.config.init, "real_weights": real,
                   "virtual_weights": virtual, "compression": real / virtual if virtual else 1.0,
                   "artifact": "fp32 buckets + 7 hash integers per layer; virtual weights rebuilt in the graph "
                               "(Range, Mul, Mod, Gather) and folded by onnxruntime when the session starts",
                   "layers": report}
        state = {"layers": {n: {"buckets": r["buckets"], "seed": r["seed"], "shape": r["shape"]}
                            for n, r in report.items()}}
        return Result(model, summary, state=state)

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        for name, info in state["layers"].items():
            layer = layer_to_restore(model, name, info["shape"], what="hashed", where=WHERE)
            replace_layer(model, name, HashedLayer(layer, buckets=info["buckets"], seed=info["seed"]))
        return Result(model, {"layers_hashed": len(state["layers"])})


def _layer_seed(seed: int, name: str) -> int:
    # Independent hashes per layer, stable across processes (unlike hash(name)).
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**32)
