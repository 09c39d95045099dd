"""snip: connection sensitivity |g ⊙ w| checked against autograd by hand, the mask held through training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

import compress
from compress.core.errors import EdgetierError
from compress.core.train import TrainSpec, fit
from compress.datasets import Dataset, Split
from compress.prune.snip import SnipConfig


def _blobs(n: int = 64) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    split = Split(x, y)
    return Dataset("blobs", split, split, split, split, input_shape=(6,), num_classes=3, labels=("a", "b", "c"))


def test_sensitivity_is_gradient_times_weight_on_the_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    data = _blobs()
    reference = copy.deepcopy(model)
    # the whole train split in one batch: the mean loss does not depend on the sampling order
    F.cross_entropy(reference(torch.from_numpy(data.train.x)), torch.from_numpy(data.train.y)).backward()
    scores = torch.cat([(m.weight.grad * m.weight).abs().detach().flatten() for m in (reference[0], reference[2])])
    result = compress.apply(model, SnipConfig(ratio=0.75, batch_size=64), data=data)
    kept = torch.cat([(m.weight != 0).flatten() for m in (model[0], model[2])])
    assert int((~kept).sum()) == round(0.75 * len(kept))
    # the pruned connections are the least sensitive ones (a small margin for summation order)
    assert float(scores[~kept].max()) <= float(scores[kept].min()) + 1e-7
    assert result.report["sparsity"] == pytest.approx(0.75, abs=1 / len(kept))


def test_the_mask_holds_through_training_and_batchnorm_is_untouched(small, few_digits) -> None:
    model = small()
    stats = model.stem.bn.running_mean.clone()
    result = compress.apply(model, SnipConfig(ratio=0.9, batches=2, batch_size=64), data=few_digits)
    assert torch.equal(model.stem.bn.running_mean, stats)  # scored on a copy in train mode
    masks = result.state["masks"]
    fit(model, few_digits.train, TrainSpec(epochs=1, lr=0.01), hooks=result.hooks)
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight.detach()
        assert bool((weight[~mask] == 0).all()) and bool((weight[mask] != 0).all())
    assert "onnxruntime latency does not drop" in result.report["note"]


def test_snip_needs_data_and_a_valid_ratio(small) -> None:
    with pytest.raises(EdgetierError, match="snip scores connections by gradients on train batches, but no data"):
        compress.apply(small(), SnipConfig(ratio=0.5))
    with pytest.raises(ValidationError, match="ratio must be strictly between 0 and 1"):
        SnipConfig(ratio=1.0)
    with pytest.raises(EdgetierError, match="'conv0' matches no module"):
        SnipConfig(ratio=0.5, targets=("conv0",)).check_model(small(), None)
