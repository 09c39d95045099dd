"""One trial: build a candidate, train it briefly (the proxy), score it on the validation split.

A plain top-level function of plain inputs so that Ray can ship it to a worker. A trial gives
bit-identical weights and accuracy in this process or on any Ray worker because everything that
could differ between the two is fixed here:

- the seed comes from the architecture and the search seed, never from the order trials ran in;
- the arrays are copied to canonical C strides. Our datasets' ``(N, 1, L)`` arrays have a size-1
  channel axis whose stride is 4 bytes, not ``L * 4``; torch keeps such strides through indexing,
  and conv1d then takes another kernel path whose float rounding differs (weights differed after one
  epoch). Ray's object store hands a worker canonical strides, so without the copy the same trial
  trained differently in a worker than here;
- torch runs on one thread in both (a Ray worker has one CPU per trial), since reductions split
  across threads may round differently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from compress.core.train import TrainSpec, evaluate, fit
from compress.nas.arch import Arch, arch_key, build_arch

Split = tuple[np.ndarray, np.ndarray]
THREADS = 1  # torch threads of every trial, wherever it runs


def canonical(split: Split) -> Split:
    """Copies of `split` with canonical C strides (what a Ray worker receives), see the module docstring.

    >>> x = np.lib.stride_tricks.as_strided(np.zeros((4, 40), "float32"), (4, 1, 40), (160, 4, 4))
    >>> canonical((x, np.zeros(4)))[0].strides  # the size-1 axis had a 4-byte stride
    (160, 160, 4)
    """
    return np.array(split[0], order="C", copy=True), np.array(split[1], order="C", copy=True)


@contextmanager
def fixed_threads(threads: int = THREADS) -> Iterator[None]:
    """Run torch on `threads` threads inside the block, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def trial_seed(search_seed: int, arch: Arch) -> int:
    """A seed fixed by the search seed and the architecture alone.

    >>> trial_seed(0, {"family": "resnet1d", "stem": 8, "stages": []}) == trial_seed(0, {"family": "resnet1d",
    ...     "stem": 8, "stages": []})
    True
    """
    digest = hashlib.sha256(json.dumps([search_seed, arch_key(arch)]).encode()).hexdigest()
    return int(digest[:8], 16) % (2**31)


def train_candidate(arch: Arch, train: Split, proxy: dict[str, Any], *, seed: int, input_shape: tuple[int, ...],
                    num_classes: int) -> torch.nn.Module:
    """The candidate initialised from `seed` and trained `proxy["epochs"]` epochs on `train`: the same
    weights, bit for bit, in any process (see the module docstring)."""
    model = build_arch(arch, input_shape=input_shape, num_classes=num_classes, seed=seed)
    spec = TrainSpec(epochs=proxy["epochs"], lr=proxy["lr"], batch_size=proxy["batch_size"],
                     schedule=proxy.get("schedule", "constant"))
    with fixed_threads():
        fit(model, canonical(train), spec, seed=seed)
    return model


def run_trial(arch: Arch, train: Split, val: Split, proxy: dict[str, Any], *, seed: int,
              input_shape: tuple[int, ...], num_classes: int) -> float:
    """Validation accuracy of `arch` after the proxy training."""
    model = train_candidate(arch, train, proxy, seed=seed, input_shape=input_shape, num_classes=num_classes)
    with fixed_threads():
        return evaluate(model, canonical(val))
