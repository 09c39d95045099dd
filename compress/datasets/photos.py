"""A fixed offline photo set for pretrained ImageNet models: what scikit-image and scikit-learn bundle.

Nothing is downloaded: every photo is a file inside the scikit-image wheel (`skimage/data/*.png`,
read from the package folder, never through scikit-image's fetcher) or scikit-learn's two sample
images. The set is what these two wheels ship, not chosen for any result; the split is by kind:

- `EVALUATION_PHOTOS`: every photograph of an object or a scene scikit-image ships (10: astronaut,
  cameraman, chelsea the cat, a clock, coffee, coins, the moon, the two views of its stereo
  motorcycle, a rocket; five of them greyscale, repeated over the three channels). Left out: the
  synthetic images (colour wheel, logo, chessboards, horse silhouette, scanned text), microscopy,
  telescope and retina images (not what an ImageNet classifier is for), `lfw_subset` (25x25 faces)
  and the files scikit-image would download.
- `CALIBRATION_PHOTOS`: scikit-learn's two photos (temple, flower) and scikit-image's three texture
  photos (brick, grass, gravel): no object to classify, only the pixel statistics calibration needs.
  Disjoint from the evaluation photos.

`photo_views` turns photos into the inputs a classifier sees at evaluation: the shorter side
resized and a centered square cut out (TensorFlow's / torchvision's 0.875 crop) for the first view
of each photo, then mild variations of it (a square of 70-100 % of the short side at a random
place, flipped half the time). Ten photos are a small sample: views of one photo are correlated, so
results should also be read per photo.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from compress.datasets.natural import Stats, _check_stats, _normalized

__all__ = ["CALIBRATION_PHOTOS", "EVALUATION_PHOTOS", "load_photo", "photo_views"]

EVALUATION_PHOTOS = ("astronaut", "camera", "chelsea", "clock", "coffee", "coins", "moon", "motorcycle_left",
                     "motorcycle_right", "rocket")
CALIBRATION_PHOTOS = ("sklearn:china", "sklearn:flower", "brick", "grass", "gravel")
# file names inside skimage/data (chelsea.png, rocket.jpg, ...)
_SKIMAGE_FILES = {"astronaut": "astronaut.png", "camera": "camera.png", "chelsea": "chelsea.png",
                  "clock": "clock_motion.png", "coffee": "coffee.png", "coins": "coins.png", "moon": "moon.png",
                  "motorcycle_left": "motorcycle_left.png", "motorcycle_right": "motorcycle_right.png",
                  "rocket": "rocket.jpg", "brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png"}


@cache
def load_photo(name: str) -> torch.Tensor:
    """Photo `name` as a `[3, H, W]` RGB tensor in [0, 1] (greyscale repeated over the channels).

    >>> load_photo("chelsea").shape, load_photo("sklearn:flower").shape  # doctest: +SKIP
    (torch.Size([3, 300, 451]), torch.Size([3, 427, 640]))
    """
    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        pixels = np.asarray(load_sample_image(f"{name.split(':', 1)[1]}.jpg"))
    elif name in _SKIMAGE_FILES:
        try:
            from skimage.io import imread
        except ImportError as err:
            from compress.core.errors import EdgetierError

            raise EdgetierError("the photo set needs scikit-image (the 'imagenet' extra)",
                                fix="pip install 'edgetier[imagenet]'") from err
        pixels = np.asarray(imread(resources.files("skimage.data") / _SKIMAGE_FILES[name]))
    else:
        raise ValueError(f"unknown photo {name!r}; known: {sorted(_SKIMAGE_FILES)} and sklearn:china, sklearn:flower")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return torch.from_numpy(np.array(pixels[..., :3], np.uint8)).permute(2, 0, 1).float() / 255.0


def photo_views(names: tuple[str, ...], per_photo: int, *, size: int = 224, seed: int = 0,
                stats: Stats = "imagenet", min_side: float = 0.7) -> np.ndarray:
    """`[len(names) * per_photo, 3, size, size]` float32 views, photo by photo, normalized with `stats`.

    View 0 of each photo is the standard evaluation crop (centered square of 0.875 of the short
    side); the others are squares of `min_side` to 100 % of the short side at random places,
    flipped half the time. Same arguments, same array.

    >>> x = photo_views(("sklearn:china", "sklearn:flower"), 3, size=32, seed=1)
    >>> x.shape, bool(np.array_equal(x, photo_views(("sklearn:china", "sklearn:flower"), 3, size=32, seed=1)))
    ((6, 3, 32, 32), True)
    """
    if per_photo < 1 or size < 1 or not 0 < min_side <= 1:
        raise ValueError(f"need per_photo >= 1, size >= 1 and 0 < min_side <= 1, got per_photo={per_photo}, "
                         f"size={size}, min_side={min_side}")
    _check_stats(stats)
    rng = np.random.default_rng(seed)
    out = np.empty((len(names) * per_photo, 3, size, size), np.float32)
    for p, name in enumerate(names):
        photo = load_photo(name)
        h, w = photo.shape[1:]
        for v in range(per_photo):
            if v == 0:
                side = int(round(0.875 * min(h, w)))
                top, left, flip = (h - side) // 2, (w - side) // 2, False
            else:
                side = int(round(rng.uniform(min_side, 1.0) * min(h, w)))
                top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
                flip = bool(rng.random() < 0.5)
            crop = photo[None, :, top:top + side, left:left + side]
            if flip:
                crop = crop.flip(-1)
            out[p * per_photo + v] = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                                   antialias=True)[0].clamp(0, 1).numpy()
    return _normalized(out, stats)
