"""Augmented crops of offline images (compress/datasets/augmented.py): never the evaluation photos,
deterministic, normalized, varied, mixed."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("skimage")

from compress.datasets.augmented import TRAINING_IMAGES, augmented_crops, load_image  # noqa: E402
from compress.datasets.photos import EVALUATION_PHOTOS  # noqa: E402


def test_training_images_load_offline_and_exclude_the_evaluation_photos():
    assert not set(TRAINING_IMAGES) & set(EVALUATION_PHOTOS)
    for name in TRAINING_IMAGES:
        image = load_image(name)
        assert image.shape[0] == 3 and min(image.shape[1:]) >= 128 and 0.0 <= image.min() and image.max() <= 1.0
    with pytest.raises(ValueError, match="evaluation photos"):
        load_image("skimage:chelsea.png")


def test_crops_are_deterministic_normalized_and_varied():
    def batch(seed: int, **kwargs) -> torch.Tensor:
        return augmented_crops(8, size=24, generator=torch.Generator().manual_seed(seed), stats="inception", **kwargs)

    x = batch(0)
    assert x.shape == (8, 3, 24, 24) and x.dtype == torch.float32
    assert torch.equal(x, batch(0)) and not torch.equal(x, batch(1))
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0  # (x - 127) / 128 of pixels in [0, 255]
    assert len({x[i].numpy().tobytes() for i in range(8)}) == 8
    # without jitter or mixing a crop of one flat-coloured image is that colour everywhere
    flat = augmented_crops(4, images=("skimage:phantom.png",), size=8, scale=(0.0001, 0.0001), jitter=0.0, mix=False,
                           generator=torch.Generator().manual_seed(0), stats="inception")
    assert float((flat - flat.mean((2, 3), keepdim=True)).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="scale"):
        augmented_crops(2, scale=(0.5, 0.2))


def test_mixing_blends_crops_of_the_batch():
    g = torch.Generator().manual_seed(2)
    plain = augmented_crops(16, size=16, generator=g, mix=False)
    g = torch.Generator().manual_seed(2)
    mixed = augmented_crops(16, size=16, generator=g, mix=True)
    changed = [bool((mixed[i] - plain[i]).abs().max() > 1e-6) for i in range(16)]
    # the first half only is CutMix-ed / mixup-ed; a row may be unchanged when its partner is itself or
    # shows the same flat colour (a white page margin)
    assert sum(changed[:8]) >= 5 and not any(changed[8:]), changed
