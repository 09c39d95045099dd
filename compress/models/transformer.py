"""A small pre-norm transformer classifier over patches of 1-D (C, L) or 2-D (C, H, W) inputs."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from compress.core.errors import EdgetierError

from .base import ReferenceModel, check_input_shape, positive_int, stage_blocks


class PatchEmbed(nn.Module):
    """Patches → tokens: ``proj`` (a conv with stride = kernel = patch) plus a learned ``pos``.

    Output is (B, tokens, dim), so the stem's output is already what ``layer1`` and any early
    exit after the stem consume.
    """

    def __init__(self, input_shape: tuple[int, ...], dim: int, patch: int) -> None:
        super().__init__()
        conv = nn.Conv1d if len(input_shape) == 2 else nn.Conv2d
        self.proj = conv(input_shape[0], dim, patch, stride=patch)
        tokens = 1
        for size in input_shape[1:]:
            tokens *= size // patch
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)  # as in ViT: small, so patches dominate at first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` Linear, written out with plain ops.

    ``unbind(0)`` and ``reshape(B, N, -1)`` (not ``qkv[0]``, not a fixed head size) keep the
    graph traceable by torch-pruning, which shrinks ``qkv`` per head (the caller then sets
    ``num_heads``). ``scale`` stays at the unpruned head size, as in torch-pruning's ViT recipe,
    so pruning does not also rescale every attention logit.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


class EncoderBlock(nn.Module):
    """Pre-norm: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        # ReLU rather than GELU: every int8 and microcontroller runtime on the target list has it.
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(dim, hidden), act=nn.ReLU(),
                                             fc2=nn.Linear(hidden, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenHead(nn.Module):
    """Mean over tokens, ``norm`` (LayerNorm), ``fc`` (Linear to the classes)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x.mean(dim=1)))


class Transformer(ReferenceModel):
    """``stem`` = `PatchEmbed`, ``layer1..3`` = `EncoderBlock` s, ``head`` = `TokenHead`."""

    feature_layout = "tokens"

    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int, dim: int, heads: int,
                 hidden: int, patch: int, blocks: tuple[int, int, int]) -> None:
        super().__init__(input_shape, num_classes)
        self.stem = PatchEmbed(input_shape, dim, patch)
        self.layer1 = nn.Sequential(*(EncoderBlock(dim, heads, hidden) for _ in range(blocks[0])))
        self.layer2 = nn.Sequential(*(EncoderBlock(dim, heads, hidden) for _ in range(blocks[1])))
        self.layer3 = nn.Sequential(*(EncoderBlock(dim, heads, hidden) for _ in range(blocks[2])))
        self.head = TokenHead(dim, num_classes)


def transformer(*, input_shape: tuple[int, ...], num_classes: int, dim: int = 64, heads: int = 4,
                mlp_ratio: float = 2, patch: int | None = None,
                blocks: tuple[int, int, int] = (1, 1, 1)) -> Transformer:
    """Transformer classifier for (C, L) or (C, H, W) inputs; ``patch`` defaults to 4 (1-D) or 2 (2-D).

    Each stage holds ``blocks[i]`` encoder blocks of width ``dim`` with ``heads`` heads and an
    MLP of ``mlp_ratio · dim`` hidden units. ``patch`` must divide every spatial size.

    >>> model = transformer(input_shape=(1, 8, 8), num_classes=10, dim=16)
    >>> tuple(model(*model.example_inputs(2)).shape), model.stem.pos.shape[1]
    ((2, 10), 16)
    """
    where = "model 'transformer'"
    input_shape = check_input_shape(input_shape, (2, 3), where, "the transformer takes (channels, length) or "
                                    "(channels, height, width), e.g. (1, 40) or (1, 8, 8)")
    dim, heads = positive_int(dim, "dim", where), positive_int(heads, "heads", where)
    if dim % heads:
        raise EdgetierError(f"dim {dim} is not divisible by heads {heads}", where=where,
                            fix="choose dim as a multiple of heads, e.g. dim 64 with 4 heads")
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or int(mlp_ratio * dim) < 1:
        raise EdgetierError(f"mlp_ratio is {mlp_ratio!r}", where=where, fix="give mlp_ratio as a number > 0, e.g. 2")
    if patch is None:
        patch = 4 if len(input_shape) == 2 else 2
    patch = positive_int(patch, "patch", where)
    spatial = input_shape[1:]
    if any(size % patch for size in spatial):
        fitting = [p for p in range(1, min(spatial) + 1) if all(s % p == 0 for s in spatial)]
        raise EdgetierError(f"patch {patch} does not divide the input's spatial size {spatial}", where=where,
                            fix=f"use a patch that does, one of {fitting}")
    return Transformer(input_shape=input_shape, num_classes=positive_int(num_classes, "num_classes", where),
                       dim=dim, heads=heads, hidden=int(mlp_ratio * dim), patch=patch,
                       blocks=stage_blocks(blocks, where))
