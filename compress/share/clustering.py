"""`cluster`: k-means weight sharing with a trainable codebook (Deep Compression; TF-MOT style).

Each selected layer's weights are clustered — per layer, or per output channel — into
`clusters` centroids. The layer becomes a `ClusteredLayer`: a fp32 codebook (the trainable
parameters) and one code per weight (fixed), packed 8 / 4 / 2 / 1 bits each. Its forward
gathers the codebook by the codes; the gather's backward adds up the gradients of all the
weights that share a centroid, which is the centroid update Han et al. describe. Nothing has
to be called in the training loop for that, so the stage's hooks are empty.

With `preserve_sparsity`, code 0 means an exact zero that is not trained, so zeros left by
pruning stay zeros; the other `clusters - 1` codes are clustered over the non-zero weights.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.technique import BaseTechnique, Result
from compress.share.kmeans import kmeans_1d, nearest
from compress.share.layers import (
    SharedLayer,
    check_not_shared_twice,
    layer_to_restore,
    replace_layer,
    shareable_layers,
)
from compress.share.packing import code_bits, pack_codes, packed_size, unpack_codes
from compress.targets import Target

WHERE = "cluster"


class ClusteredLayer(SharedLayer):
    """A Conv/Linear whose weight is `codebook[group, code]`; groups are the layer or its output channels.

    >>> layer = ClusteredLayer(nn.Linear(4, 3), clusters=4, granularity="layer")
    >>> layer.codebook.shape, layer.codes.dtype, layer.codes.numel()
    (torch.Size([1, 4]), torch.uint8, 3)
    """

    technique = "cluster"

    def __init__(self, layer: nn.Module, *, clusters: int, granularity: Literal["layer", "channel"],
                 preserve_sparsity: bool = False) -> None:
        super().__init__(layer)
        self.clusters = clusters
        self.granularity = granularity
        self.preserve_sparsity = preserve_sparsity
        self.bits = code_bits(clusters)
        numel = int(np.prod(self.weight_shape))
        self.groups = self.weight_shape[0] if granularity == "channel" else 1
        self.group_size = numel // self.groups
        trained = clusters - 1 if preserve_sparsity else clusters
        weight = layer.weight
        self.codebook = nn.Parameter(torch.zeros(self.groups, trained, dtype=weight.dtype, device=weight.device))
        self.register_buffer("codes", torch.zeros(packed_size(numel, self.bits), dtype=torch.uint8,
                                                  device=weight.device))

    def dense_weight(self) -> torch.Tensor:
        codes = unpack_codes(self.codes, self.groups * self.group_size, self.bits)
        book = self.codebook
        if self.preserve_sparsity:  # code 0 is a constant zero: never trained, never anything but 0
            book = torch.cat([book.new_zeros(self.groups, 1), book], dim=1)
        if self.groups == 1:  # one Gather, the smallest graph
            return book.reshape(-1).index_select(0, codes).view(self.weight_shape)
        return torch.gather(book, 1, codes.view(self.groups, self.group_size)).view(self.weight_shape)

    def extra_repr(self) -> str:
        sparse = ", zeros kept" if self.preserve_sparsity else ""
        return f"{super().extra_repr()}, {self.clusters} clusters per {self.granularity} ({self.bits}-bit codes{sparse})"


def cluster_layer(layer: nn.Module, *, clusters: int, granularity: Literal["layer", "channel"],
                  init: Literal["linear", "density", "kmeans++"], preserve_sparsity: bool, iterations: int,
                  seed: int) -> tuple[ClusteredLayer, dict[str, Any]]:
    """`layer` clustered, and what was decided for it (for the report).

    >>> torch.manual_seed(0) and None
    >>> shared, info = cluster_layer(nn.Linear(8, 4), clusters=4, granularity="layer", init="linear",
    ...                              preserve_sparsity=False, iterations=20, seed=0)
    >>> len(torch.unique(shared.weight)), info["bits"]
    (4, 2)
    """
    shared = ClusteredLayer(layer, clusters=clusters, granularity=granularity, preserve_sparsity=preserve_sparsity)
    weights = layer.weight.detach().cpu().to(torch.float64).numpy().reshape(shared.groups, shared.group_size)
    books = np.zeros((shared.groups, shared.codebook.shape[1]))
    codes = np.zeros(weights.shape, dtype=np.int64)
    for g, row in enumerate(weights):
        keep = row != 0 if preserve_sparsity else np.ones(row.shape, dtype=bool)
        values = row[keep]
        books[g] = kmeans_1d(values, books.shape[1], init=init, iterations=iterations, seed=seed + g)
        codes[g, keep] = nearest(values, books[g]) + (1 if preserve_sparsity else 0)
    with torch.no_grad():
        shared.codebook.copy_(torch.from_numpy(books))
        shared.codes.copy_(pack_codes(torch.from_numpy(codes), shared.bits))
        rebuilt = shared.dense_weight().to(torch.float64).cpu().numpy().reshape(weights.shape)
    norm = float(np.linalg.norm(weights))
    info = {"type": shared.source_type, "shape": list(shared.weight_shape), "clusters": clusters,
            "granularity": granularity, "bits": shared.bits, "weights": int(weights.size),
            "zeros": int((weights == 0).sum()),
            "distinct_values": int(max(len(np.unique(r)) for r in rebuilt)),
            "relative_error": float(np.linalg.norm(rebuilt - weights) / norm) if norm else 0.0,
            "bytes": int(shared.codes.numel() + shared.codebook.numel() * shared.codebook.element_size()),
            "dense_bytes": int(weights.size * layer.weight.element_size())}
    return shared, info


class ClusterConfig(TechniqueConfig):
    """k-means weight sharing of Conv/Linear layers; fine-tune the centroids with the stage's `train`.

    >>> ClusterConfig(clusters=16, granularity="channel").to_dict()["granularity"]
    'channel'
    >>> ClusterConfig(clusters=1)
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for ClusterConfig
    ...
    """

    kind: Literal["cluster"] = "cluster"
    clusters: int = Field(16, ge=2, le=256, description="centroids per group (2..256); codes take 1, 2, 4 or 8 bits")
    granularity: Literal["layer", "channel"] = Field("layer", description="one codebook per layer or per output channel")
    init: Literal["linear", "density", "kmeans++"] = Field(
        "linear", description="centroid initialization (Han et al.: linear keeps the large weights best)")
    preserve_sparsity: bool = Field(False, description="zeros keep a fixed zero code (one of the `clusters`), "
                                    "so clustering after pruning keeps the model sparse")
    iterations: int = Field(30, ge=0, le=1000, description="k-means (Lloyd) iterations per group")

    def check_model(self, model: nn.Module, target: Target | None) -> None:
        layers = shareable_layers(model, self.targets, self.ignore, kind="cluster", where=WHERE)
        small = {}
        for name, layer in layers.items():
            size = layer.weight.numel() // (layer.weight.shape[0] if self.granularity == "channel" else 1)
            if size < self.clusters:
                small[name] = size
        if small:
            names = ", ".join(f"{n} ({s})" for n, s in small.items())
            raise EdgetierError(f"{self.clusters} clusters per {self.granularity} is more than the weights to cluster "
                                f"in {names}", where=WHERE,
                                fix="use fewer `clusters`, `granularity: layer`, or add these layers to `ignore`")

    def shared_layers(self, model: nn.Module) -> set[str]:
        """The layers this stage clusters."""
        return set(shareable_layers(model, self.targets, self.ignore, kind="cluster", where=WHERE))

    def check_after(self, earlier: list[TechniqueConfig], model: nn.Module) -> None:
        check_not_shared_twice(self, earlier, model, where=WHERE)


class Cluster(BaseTechnique):
    """Replace the selected layers by `ClusteredLayer` s (in place; the model is returned too)."""

    config_type = ClusterConfig
    config: ClusterConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        cfg = self.config
        cfg.check_model(model, ctx.target)  # the Python API path does not run the recipe's checks
        layers = shareable_layers(model, cfg.targets, cfg.ignore, kind="cluster", where=WHERE)
        report: dict[str, Any] = {}
        task = ctx.progress.task("cluster: k-means", total=len(layers))
        for name, layer in layers.items():
            shared, report[name] = cluster_layer(layer, clusters=cfg.clusters, granularity=cfg.granularity,
                                                 init=cfg.init, preserve_sparsity=cfg.preserve_sparsity,
                                                 iterations=cfg.iterations, seed=ctx.seed)
            replace_layer(model, name, shared)
            ctx.progress.advance(task)
        ctx.progress.done(task)
        stored = sum(r["bytes"] for r in report.values())
        dense = sum(r["dense_bytes"] for r in report.values())
        summary = {"layers_clustered": len(report), "clusters": cfg.clusters, "granularity": cfg.granularity,
                   "init": cfg.init, "preserve_sparsity": cfg.preserve_sparsity, "code_bits": code_bits(cfg.clusters),
                   "weight_bytes": stored, "dense_weight_bytes": dense,
                   "artifact": "fp32 codebooks + packed codes; the dense weights are rebuilt in the graph "
                               "(GatherElements) and folded by onnxruntime when the session starts",
                   "layers": report}
        return Result(model, summary, state=_state(cfg, report))

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        for name, info in state["layers"].items():
            layer = layer_to_restore(model, name, info["shape"], what="clustered", where=WHERE)
            replace_layer(model, name, ClusteredLayer(layer, clusters=info["clusters"],
                                                      granularity=info["granularity"],
                                                      preserve_sparsity=info["preserve_sparsity"]))
        return Result(model, {"layers_clustered": len(state["layers"])})


def _state(cfg: ClusterConfig, report: dict[str, Any]) -> dict[str, Any]:
    layers = {}
    for name, info in report.items():
        layers[name] = {"clusters": cfg.clusters, "granularity": cfg.granularity,
                        "preserve_sparsity": cfg.preserve_sparsity, "shape": info["shape"]}
    return {"layers": layers}
