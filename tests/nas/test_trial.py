"""One trial gives bit-identical weights and accuracy wherever it runs: in this process with our
datasets' arrays as they are, or in a Ray worker, which receives canonical copies of them."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from compress.nas.config import SpaceSpec
from compress.nas.costs import arch_from_sample
from compress.nas.trial import run_trial, train_candidate, trial_seed

PROXY = {"epochs": 1, "lr": 3e-3, "batch_size": 64}
SHAPE, CLASSES = (1, 40), 10


def _data() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """MNIST-1D-shaped arrays laid out like `compress.datasets` returns them: (N, 1, 40) whose size-1
    channel axis has a 4-byte stride (torch keeps it through indexing; conv1d then rounds differently)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=640)
    x = (rng.normal(size=(10, 40))[y] + 0.5 * rng.normal(size=(640, 40))).astype("float32")  # a template per class
    x = np.lib.stride_tricks.as_strided(x, shape=(640, 1, 40), strides=(160, 4, 4))
    return (x[:512], y[:512]), (x[512:], y[512:])


def _arch() -> dict:
    sample = {f"stage{i}_{d}": v for i in (1, 2, 3)
              for d, v in (("depth", 1), ("width_mult", 0.5), ("kernel", 5), ("expansion", 1.0))}
    return arch_from_sample(SpaceSpec(width=16), sample, channel_multiple=8)


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for tensor in model.state_dict().values():
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_a_trial_does_not_depend_on_the_arrays_layout_or_the_thread_count() -> None:
    train, _ = _data()
    arch = _arch()
    common = {"seed": trial_seed(0, arch), "input_shape": SHAPE, "num_classes": CLASSES}
    strided = _digest(train_candidate(arch, train, PROXY, **common))
    copied = (train[0].copy(), train[1].copy())  # canonical strides, as Ray's object store returns them
    assert copied[0].strides == (160, 160, 4)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _digest(train_candidate(arch, copied, PROXY, **common)) == strided
    finally:
        torch.set_num_threads(previous)
    assert torch.get_num_threads() == previous  # a trial restores the caller's thread count


def test_one_trial_in_a_ray_worker_returns_the_in_process_accuracy() -> None:
    """~15 s (a local 1-CPU Ray instance starts in ~12 s on two shared cores): in the default suite, as
    the one fast guard that a Ray worker trains exactly as this process does."""
    import ray

    train, val = _data()
    arch = _arch()
    kwargs = {"seed": trial_seed(0, arch), "input_shape": SHAPE, "num_classes": CLASSES}
    here = run_trial(arch, train, val, PROXY, **kwargs)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        there = ray.get(ray.remote(num_cpus=1)(run_trial).remote(arch, ray.put(train), ray.put(val), PROXY, **kwargs))
    finally:
        ray.shutdown()
    assert 0.1 < here < 1  # it trained (chance is 0.1) ...
    assert there == here  # ... and exactly as in a worker: no tolerance, the trial is bit-identical
