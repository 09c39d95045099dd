"""Transformer-aware structured pruning: whole attention heads and MLP hidden channels.

Which layers of a transformer may lose channels follows from its block structure, read off
torch-pruning's dependency graph rather than from layer names:

- an **attention group** holds the query / key / value projections of one attention module
  (found by their attributes: `query`/`key`/`value` as in BERT, `q_proj`/`k_proj`/`v_proj` as in
  ViT, or one fused `qkv`); it loses whole heads (`prune_num_heads=True, prune_head_dims=False`),
  q, k, v and the output projection's inputs together;
- an **MLP group** is one Linear whose outputs feed only other layers' inputs (the block's
  `intermediate.dense` / `fc1` → `output.dense` / `fc2`); it loses hidden channels;
- everything else — the residual stream (tied to embeddings, every LayerNorm and every block's
  output projection), the pooler and the classifier — keeps its width. Pruning "all linear layers"
  of a BERT therefore never touches `output.dense` or `pooler.dense` outputs.

After pruning, each attention module's head count (`num_attention_heads` / `num_heads`,
`all_head_size`) is set from its new projection width, and the model's `config` records the new
`num_attention_heads`, `head_dim` and `intermediate_size` when every layer agrees (they do: each
layer loses the same share), so a Hugging Face model whose attention reads `config.head_dim`
(ViT) reloads with `from_pretrained`. A BERT computes its head size as hidden / heads, which no
longer holds: it reloads from the unpruned config plus the recorded pruning (`restore`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from compress.core.errors import EdgetierError
from compress.prune.graph import IMPORTANCE, ROOT_TYPES

# (query, key, value) attribute names of the attention modules we know, separate projections first
QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))
HEAD_COUNT = ("num_attention_heads", "num_heads")
HEAD_SIZE = ("attention_head_size", "head_dim")


@dataclass(frozen=True)
class Attention:
    """One attention module: its projections (q, k, v — or the fused qkv alone) and head size."""

    module: nn.Module
    projections: tuple[nn.Linear, ...]
    head_size: int

    @property
    def heads(self) -> int:
        per_head = self.head_size * (3 if len(self.projections) == 1 else 1)
        return self.projections[0].out_features // per_head


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def find_attention(model: nn.Module) -> list[Attention]:
    """The attention modules of `model` whose heads can be pruned whole.

    >>> from compress.models.transformer import Attention as ZooAttention
    >>> [a.heads for a in find_attention(nn.Sequential(ZooAttention(16, 4)))]
    [4]
    """
    found = []
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            continue  # torch-pruning 1.6 skips it silently when given num_heads (see graph.attention_heads)
        count = _int_attr(module, HEAD_COUNT)
        if count is None:
            continue
        for names in QKV_NAMES:
            layers = [getattr(module, n, None) for n in names]
            if all(isinstance(layer, nn.Linear) for layer in layers):
                size = _int_attr(module, HEAD_SIZE) or layers[0].out_features // count
                found.append(Attention(module, tuple(layers), size))
                break
        else:
            qkv = getattr(module, "qkv", None)
            if isinstance(qkv, nn.Linear):
                found.append(Attention(module, (qkv,), qkv.out_features // (3 * count)))
    return found


def no_attention_error(model: nn.Module, *, where: str) -> EdgetierError:
    return EdgetierError(
        f"`heads` asks to prune attention heads, but {type(model).__name__} has no attention module whose "
        "heads can be found (a module with a head count `num_attention_heads` / `num_heads` and query, key, value "
        "Linear layers named query/key/value, q_proj/k_proj/v_proj, or one fused qkv)", where=where,
        fix="remove `heads` (prune channels with `ratio` or MLP channels with `mlp`), or name the attention "
            "module's attributes as above")


@dataclass(frozen=True)
class Blocks:
    """The prunable structure of a model: attention modules and MLP hidden layers, by name."""

    attention: list[Attention]
    mlp: list[nn.Module]
    readers: list[nn.Module]  # layers whose inputs are the heads (BERT's attention.output.dense, ViT's o_proj)
    # the layers reading each attention module's heads / each MLP hidden layer's channels (keyed by the
    # attention module / the hidden layer): what `compress.prune.activation` scores them by
    consumers: dict[nn.Module, list[nn.Module]] = field(default_factory=dict)


def block_structure(graph: tp.DependencyGraph, model: nn.Module, attention: list[Attention],
                    keep: list[nn.Module]) -> Blocks:
    """Classify torch-pruning's channel groups (see the module doc); layers in `keep` (the
    classifier, ignored layers) never lose outputs."""
    projections = {p for a in attention for p in a.projections}
    registered = set(model.modules())  # torch-pruning also lists functional ops (GELU, add) as modules
    mlp, readers = [], []
    consumers_of: dict[nn.Module, list[nn.Module]] = {}
    for group in graph.get_all_groups(ignored_layers=keep, root_module_types=ROOT_TYPES):
        outs = [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)]
        ins = [dep.target.module for dep, _ in group if graph.is_in_channel_pruning_fn(dep.handler)]
        consumers = [m for m in ins if isinstance(m, ROOT_TYPES)]
        if any(m in projections for m in outs):  # an attention group: whole heads, read per module below
            continue
        producers = [m for m in outs if m in registered or isinstance(m, torch.Tensor)]
        # one Linear/Conv producing channels that only other layers' inputs read: a block's hidden layer.
        # Anything else in the group (a norm, an embedding, a parameter, a second producer through a
        # residual add) marks the residual stream, whose width every block shares.
        if len(producers) == 1 and isinstance(producers[0], ROOT_TYPES) and consumers:
            mlp.append(producers[0])
            consumers_of[producers[0]] = consumers
    # the layers reading each attention module's heads, asked of the graph per module: the groups
    # `get_all_groups` yields depend on which layer it happens to visit first, and on some runs one
    # layer's attention group came out under another root and its reader went missing (measured on a
    # 2-layer BERT: 1 run in 8 left a layer's heads unscored and unpruned)
    for a in attention:
        value = a.projections[-1]  # v, or the fused qkv: its outputs are what the reader takes in
        group = graph.get_pruning_group(value, tp.prune_linear_out_channels, idxs=list(range(value.out_features)))
        reading = list(dict.fromkeys(dep.target.module for dep, _ in group
                                     if graph.is_in_channel_pruning_fn(dep.handler)
                                     and isinstance(dep.target.module, ROOT_TYPES)
                                     and dep.target.module not in projections))
        readers.extend(reading)
        consumers_of[a.module] = reading
    return Blocks(attention, mlp, readers, consumers_of)


def build_block_pruner(model: nn.Module, inputs: Any, *, heads: float | None, mlp: float | None, importance: str,
                       steps: int, keep: list[nn.Module], where: str) -> tuple[tp.pruner.MetaPruner, Blocks]:
    """A torch-pruning pruner that removes `heads` of every attention module's heads (whole heads)
    and `mlp` of every MLP hidden layer's channels, and nothing else."""
    attention = find_attention(model)
    if heads and not attention:
        raise no_attention_error(model, where=where)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
        blocks = block_structure(graph, model, attention, keep)
        if mlp and not blocks.mlp:
            raise EdgetierError(f"`mlp` asks to prune MLP hidden channels, but {type(model).__name__} has no layer "
                                "whose outputs feed only another layer's inputs", where=where,
                                fix="remove `mlp`, or prune channels with `ratio`")
        num_heads = {p: a.heads for a in attention for p in a.projections}
        ratios: dict[nn.Module, float] = {}
        head_ratios: dict[nn.Module, float] = {}
        if heads:
            for a in attention:
                if math.ceil(heads * a.heads) >= a.heads:
                    raise EdgetierError(f"removing {heads:.0%} of the heads would remove all {a.heads} heads of an "
                                        "attention module", where=where, fix="lower `heads`")
            # torch-pruning only reaches the head step of a group with a channel ratio above 0; with
            # prune_head_dims=False that ratio removes nothing by itself
            ratios.update(dict.fromkeys(num_heads, heads))
            head_ratios.update(dict.fromkeys(num_heads, heads))
        if mlp:
            ratios.update(dict.fromkeys(blocks.mlp, mlp))
        # torch-pruning roots an attention group at the layer reading the heads: ignoring it would
        # skip the heads. Its own outputs (the residual stream) stay, as their group has no ratio.
        prunable = set(ratios) | (set(blocks.readers) if heads else set())
        ignored = [m for m in model.modules() if isinstance(m, ROOT_TYPES) and m not in prunable]
        pruner = tp.pruner.MetaPruner(
            model, inputs, importance=IMPORTANCE[importance](), pruning_ratio=0.0, pruning_ratio_dict=ratios,
            iterative_steps=steps, ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True,
            prune_head_dims=False, head_pruning_ratio_dict=head_ratios)
    return pruner, blocks


def sync_heads(model: nn.Module, mlp: list[str]) -> dict[str, Any]:
    """Set every attention module's head count from its (pruned) projections, and the model's
    config where all layers agree (`mlp`: names of the MLP hidden layers); returns what the config
    now says."""
    attention = find_attention(model)
    for a in attention:
        for name in HEAD_COUNT:
            if isinstance(getattr(a.module, name, None), int):
                setattr(a.module, name, a.heads)
        if isinstance(getattr(a.module, "all_head_size", None), int):
            a.module.all_head_size = a.heads * a.head_size
    # a Hugging Face model's config, or that of the model inside an adapter (a recipe's `model: {hf}`)
    config = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)
    updates: dict[str, Any] = {}
    if attention and len({a.heads for a in attention}) == 1 and len({a.head_size for a in attention}) == 1:
        updates.update(num_attention_heads=attention[0].heads, head_dim=attention[0].head_size)
    modules = dict(model.named_modules())
    widths = {modules[name].out_features for name in mlp if isinstance(modules.get(name), nn.Linear)}
    if len(widths) == 1 and config is not None and hasattr(config, "intermediate_size"):
        updates["intermediate_size"] = widths.pop()
    if config is not None and hasattr(config, "num_attention_heads"):
        for key, value in updates.items():
            setattr(config, key, value)
    return updates
