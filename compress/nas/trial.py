"""One trial: build a candidate, train it briefly (the proxy), score it on the validation split.

A plain top-level function of plain inputs so that Ray can ship it to a worker. Its seed comes
from the architecture and the search seed, never from the order trials ran in, so a trial gives
the same accuracy in-process or on any Ray worker.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch

from compress.core.train import TrainSpec, evaluate, fit
from compress.nas.arch import Arch, arch_key, build_arch

Split = tuple[np.ndarray, np.ndarray]


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
    """The candidate initialised from `seed` and trained `proxy["epochs"]` epochs on `train`."""
    model = build_arch(arch, input_shape=input_shape, num_classes=num_classes, seed=seed)
    spec = TrainSpec(epochs=proxy["epochs"], lr=proxy["lr"], batch_size=proxy["batch_size"])
    fit(model, train, spec, seed=seed)
    return model


def run_trial(arch: Arch, train: Split, val: Split, proxy: dict[str, Any], *, seed: int,
              input_shape: tuple[int, ...], num_classes: int, threads: int | None = None) -> float:
    """Validation accuracy of `arch` after the proxy training."""
    if threads is not None:
        torch.set_num_threads(threads)  # a Ray worker: one trial per CPU, not every trial on every core
    model = train_candidate(arch, train, proxy, seed=seed, input_shape=input_shape, num_classes=num_classes)
    return evaluate(model, val)
