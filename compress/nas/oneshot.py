"""`strategy: spos` — single-path one-shot NAS (Guo et al. 2019), implemented here.

Why not NNI's one-shot strategies: NNI 3.0's `RandomOneShot` (its SPOS) and `DARTS` run with a
2-D space, but have no one-shot version of `MutableConv1d` (only Conv2d / BatchNorm2d / Linear),
so on our resnet1d space (the one the benchmark needs) they stop with
``TypeError: Module `conv` of type `MutableConv1d` has dangling mutables and is not supported.
Please implement its one-shot version and register it into `mutation_hooks`.`` They also need a
Lightning evaluator and write checkpoints under ``~/nni-experiments``.

How it works, for both families:

1. **Supernet**: the largest architecture of the space; a candidate is a single path through it —
   the first ``depth`` blocks of each stage, the first ``width``/``mid`` channels of every conv and
   BatchNorm, the centre ``k`` taps of every kernel (weight sharing by slicing).
2. **Training with uniform path sampling**: every step trains one architecture drawn uniformly
   among those within the budget (BatchNorm uses batch statistics while training).
3. **Search**: NNI's regularized evolution over the same `SearchSpace` (over-budget samples rejected
   before scoring). A candidate is scored without training: its weights are inherited from the
   supernet, its BatchNorm statistics recomputed on a few train batches (as SPOS does), then it is
   evaluated on the validation split. The chosen candidate, with its inherited weights, is the
   stage's model; the stage's ``train:`` block then trains it on the whole train split.

The supernet is not journaled: `--resume` retrains it (deterministically, from the seed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.core.context import Progress, SilentProgress
from compress.core.train import evaluate
from compress.nas.arch import FAMILIES, Arch, SearchedResNet, build_arch
from compress.nas.config import NASConfig, SpaceSpec
from compress.nas.costs import DIMS, STAGES, CostModel, arch_from_sample
from compress.nas.search import SearchOutcome, best_candidate, run_search
from compress.nas.trial import Split, canonical, fixed_threads

BN_SAMPLES = 1024  # train samples that recompute a candidate's BatchNorm statistics


def largest_arch(spec: SpaceSpec, *, channel_multiple: int = 1) -> Arch:
    """Every choice at its largest: the supernet that every candidate is a path through."""
    sample = {f"stage{i}_{d}": max(getattr(spec, d)) for i in range(1, STAGES + 1) for d in DIMS}
    return arch_from_sample(spec, sample, channel_multiple=channel_multiple)


def _crop(weight: torch.Tensor, c_out: int, c_in: int, kernel: int) -> torch.Tensor:
    """The first `c_out` x `c_in` filters, each cut to its centre `kernel` taps (per spatial axis)."""
    w = weight[:c_out, :c_in]
    off = (w.shape[2] - kernel) // 2
    for axis in range(2, w.dim()):
        w = w.narrow(axis, off, kernel)
    return w


class Supernet(nn.Module):
    """The largest `SearchedResNet` of the space, run along the path of any smaller architecture.

    >>> spec = SpaceSpec(width=8, depth=(1, 2), width_mult=(0.5, 1.0), kernel=(3, 5), expansion=(1.0,))
    >>> net = Supernet(spec, input_shape=(1, 40), num_classes=10, seed=0)
    >>> small = arch_from_sample(spec, {f"stage{i}_{d}": min(getattr(spec, d)) for i in (1, 2, 3) for d in DIMS})
    >>> tuple(net(torch.zeros(2, 1, 40), small).shape), tuple(net.extract(small).layer1[0].conv1.weight.shape)
    ((2, 10), (4, 4, 3))
    """

    def __init__(self, spec: SpaceSpec, *, input_shape: tuple[int, ...], num_classes: int, seed: int,
                 channel_multiple: int = 1) -> None:
        super().__init__()
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.family = FAMILIES[spec.family]
        self.big = build_arch(largest_arch(spec, channel_multiple=channel_multiple), input_shape=self.input_shape,
                              num_classes=num_classes, seed=seed)

    def _conv(self, conv: nn.Module, x: torch.Tensor, c_out: int, kernel: int, stride: int) -> torch.Tensor:
        fn = F.conv1d if self.family["dims"] == 1 else F.conv2d
        return fn(x, _crop(conv.weight, c_out, x.shape[1], kernel), stride=stride, padding=kernel // 2)

    @staticmethod
    def _bn(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]  # batch statistics: shared running statistics would mix every width's
        return F.batch_norm(x, None, None, bn.weight[:c], bn.bias[:c], training=True)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        big = self.big
        h = F.relu(self._bn(big.stem.bn, self._conv(big.stem.conv, x, arch["stem"], self.family["stem_kernel"], 1)))
        for i, (stage, stride) in enumerate(zip(arch["stages"], self.family["strides"], strict=True), start=1):
            width, mid, kernel = stage["width"], stage["mid"], stage["kernel"]
            for b in range(stage["depth"]):
                block, s = getattr(big, f"layer{i}")[b], stride if b == 0 else 1
                out = F.relu(self._bn(block.bn1, self._conv(block.conv1, h, mid, kernel, s)))
                out = self._bn(block.bn2, self._conv(block.conv2, out, width, kernel, 1))
                shortcut = h
                if s != 1 or h.shape[1] != width:  # as `Block`; the largest block has this shortcut too
                    shortcut = self._bn(block.shortcut.bn, self._conv(block.shortcut.conv, h, width, 1, s))
                h = F.relu(out + shortcut)
        h = big.head.flatten(big.head.pool(h))
        return F.linear(h, big.head.fc.weight[:, :h.shape[1]], big.head.fc.bias)

    @torch.no_grad()
    def extract(self, arch: Arch) -> SearchedResNet:
        """The plain model of `arch` with the supernet's weights along its path (BatchNorm statistics unset)."""
        model = build_arch(arch, input_shape=self.input_shape, num_classes=self.num_classes, seed=0)
        for name, module in model.named_modules():
            source = self.big.get_submodule(name)
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                module.weight.copy_(_crop(source.weight, *module.weight.shape[:2], module.kernel_size[0]))
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.weight.copy_(source.weight[:module.num_features])
                module.bias.copy_(source.bias[:module.num_features])
            elif isinstance(module, nn.Linear):
                module.weight.copy_(source.weight[:, :module.in_features])
                module.bias.copy_(source.bias)
        return model


def _sample_feasible(spec: SpaceSpec, cost: CostModel, rng: np.random.RandomState, multiple: int) -> Arch:
    """Uniform over the space, restricted to the budget by rejection (check_reachable ran before)."""
    while True:
        sample = {f"stage{i}_{d}": getattr(spec, d)[rng.randint(len(getattr(spec, d)))]
                  for i in range(1, STAGES + 1) for d in DIMS}
        arch = arch_from_sample(spec, sample, channel_multiple=multiple)
        if cost(arch).feasible:
            return arch


def train_supernet(net: Supernet, train: Split, config: NASConfig, cost: CostModel, *, seed: int,
                   channel_multiple: int, progress: Progress) -> None:
    """`config.supernet_epochs` epochs; every step trains one uniformly sampled feasible path."""
    torch.manual_seed(seed)
    generator, rng = torch.Generator().manual_seed(seed), np.random.RandomState(seed)
    xs, ys = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    optimizer = torch.optim.Adam(net.parameters(), lr=config.proxy.lr)
    size = config.proxy.batch_size
    task = progress.task("nas: supernet", total=config.supernet_epochs)
    net.train()
    for _ in range(config.supernet_epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), size):
            idx = order[start:start + size]
            arch = _sample_feasible(config.space, cost, rng, channel_multiple)
            loss = F.cross_entropy(net(xs[idx], arch), ys[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        progress.advance(task)
    progress.done(task)
    net.eval()


class SupernetExecutor:
    """Scores candidates with inherited weights (see the module docstring) instead of training them."""

    def __init__(self, net: Supernet, train: Split, val: Split) -> None:
        self.net, self.calib, self.val = net, torch.from_numpy(train[0][:BN_SAMPLES]), val

    @torch.no_grad()
    def model(self, arch: Arch) -> SearchedResNet:
        """The candidate with inherited weights and BatchNorm statistics recomputed on train batches."""
        model = self.net.extract(arch)
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.reset_running_stats()
                bn.momentum = None  # a plain average over the calibration batches
        model.train()
        for start in range(0, len(self.calib), 256):
            model(self.calib[start:start + 256])
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.momentum = 0.1  # torch's default, for the training that follows
        return model.eval()

    def map(self, jobs: list[tuple[Arch, int]], on_done: Any) -> list[float]:
        out = []
        for i, (arch, _) in enumerate(jobs):
            out.append(evaluate(self.model(arch), self.val))
            on_done(i, out[-1])
        return out

    def close(self) -> None:
        pass


def run_spos(config: NASConfig, cost: CostModel, *, train: Split, val: Split, seed: int, channel_multiple: int,
             progress: Progress | None = None) -> SearchOutcome:
    """Train the supernet, then evolve over it; `outcome.model` is the chosen candidate (inherited weights)."""
    progress = progress or SilentProgress()
    train, val = canonical(train), canonical(val)
    with fixed_threads():
        net = Supernet(config.space, input_shape=cost.input_shape, num_classes=cost.num_classes, seed=seed,
                       channel_multiple=channel_multiple)
        train_supernet(net, train, config, cost, seed=seed, channel_multiple=channel_multiple, progress=progress)
        runner = SupernetExecutor(net, train, val)
        outcome = run_search(config, cost, train=train, val=val, seed=seed, channel_multiple=channel_multiple,
                             journal_path=None, fingerprint="spos", runner=runner, progress=progress)
        if outcome.trained:
            outcome.model = runner.model(outcome.trained[best_candidate(outcome.trained)]["arch"])
    return outcome
