"""Unlabeled natural images available offline: random crops of scikit-learn's two sample photos.

scikit-learn bundles two 427x640 RGB photographs (`load_sample_images`: a Chinese temple and a
flower). Random crops of 30-100 % of the area (`min_scale`), random aspect ratios, horizontal
flips and a resize to `size` turn them into as many distinct inputs as a calibration or agreement
check needs, with the statistics of real photographs (edges, textures, smooth regions) that random
noise lacks. They have no labels: they serve to calibrate a pretrained ImageNet model and to
measure how often its quantized version keeps its fp32 answer, not its accuracy.

The crops keep at least 30 % of the photo (not torchvision's training default of 8 %): at 8 % a
crop of these two photos is mostly leaves, sky or petals, on which an ImageNet classifier has no
answer to keep (EfficientNet-Lite0 gave its top-1 a probability >= 0.5 on 3 % of such crops).

Pixels are normalized the way the model was trained, which the model implies, not the user:
`stats="imagenet"` ((x - mean) / std with the ImageNet mean and std, torchvision-style models) or
`stats="inception"` ((x - 127) / 128 on 0-255 pixels, i.e. [-1, 1]: TensorFlow's edge models such
as EfficientNet-Lite and MobileNet, see `compress.models.pretrained`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_MEAN", "INCEPTION_STD", "Stats", "natural_images", "sample_photos"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow's "inception-style" (x - 127) / 128 on 0-255 pixels, written on 0-1 pixels
INCEPTION_MEAN = (127 / 255,) * 3
INCEPTION_STD = (128 / 255,) * 3

Stats = Literal["imagenet", "inception"]
_STATS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "inception": (INCEPTION_MEAN, INCEPTION_STD)}


def natural_images(n: int, *, size: int = 224, seed: int = 0, normalize: bool = True,
                   stats: Stats = "imagenet", min_scale: float = 0.3) -> np.ndarray:
    """`n` random crops `[n, 3, size, size]` (float32, RGB) of scikit-learn's sample photos.

    Same `seed`, same images. Each crop covers `min_scale` to 100 % of a photo's area. Without
    `normalize` pixels are in [0, 1]; with it they are standardized with `stats` ("imagenet" or
    "inception", see the module docstring): use the one the model was trained with.

    >>> x = natural_images(3, size=32, seed=1)
    >>> x.shape, x.dtype.name, bool(np.array_equal(x, natural_images(3, size=32, seed=1)))
    ((3, 3, 32, 32), 'float32', True)
    >>> x = natural_images(3, size=32, seed=1, stats="inception")
    >>> bool(x.min() >= -127 / 128 and x.max() <= 1.0)
    True
    """
    if n < 0 or size < 1 or not 0 < min_scale <= 1:
        raise ValueError(f"need n >= 0, size >= 1 and 0 < min_scale <= 1, got n={n}, size={size}, "
                         f"min_scale={min_scale}")
    _check_stats(stats)
    photos = _photos()
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[1:]
        # RandomResizedCrop-style: area share and log-uniform aspect ratio, retried until it fits
        for _ in range(20):
            area = rng.uniform(min_scale, 1.0) * h * w
            ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            ch, cw = int(round(np.sqrt(area / ratio))), int(round(np.sqrt(area * ratio)))
            if 0 < ch <= h and 0 < cw <= w:
                break
        else:
            ch = cw = min(h, w)
        top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        crop = photo[:, top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        out[i] = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)[0].clamp(0, 1).numpy()
    return _normalized(out, stats) if normalize else out


def sample_photos(*, size: int = 224, crop: float = 0.875, normalize: bool = True,
                  stats: Stats = "imagenet") -> np.ndarray:
    """The two photos, temple then flower, as `[2, 3, size, size]`: the usual evaluation view.

    A centered square of `crop` times the short side, resized to `size` (bilinear, antialiased):
    the evaluation crop of torchvision and of TensorFlow's EfficientNet (224 / (224 + 32) = 0.875).
    A quick check that a pretrained model gets its inputs right: its top-1 should be a temple-like
    class ('palace', 'bell cote') and a flower ('daisy' is ImageNet's nearest to this dahlia).

    >>> sample_photos(size=32, normalize=False).shape
    (2, 3, 32, 32)
    """
    if size < 1 or not 0 < crop <= 1:
        raise ValueError(f"need size >= 1 and 0 < crop <= 1, got size={size}, crop={crop}")
    _check_stats(stats)
    out = np.empty((2, 3, size, size), np.float32)
    for i, photo in enumerate(_photos()):
        h, w = photo.shape[1:]
        side = int(round(crop * min(h, w)))
        top, left = (h - side) // 2, (w - side) // 2
        square = photo[None, :, top:top + side, left:left + side]
        out[i] = F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)[0].clamp(0, 1).numpy()
    return _normalized(out, stats) if normalize else out


def _check_stats(stats: str) -> None:
    if stats not in _STATS:
        raise ValueError(f"stats must be one of {sorted(_STATS)}, got {stats!r}")


def _photos() -> list[torch.Tensor]:
    """scikit-learn's two sample photos as [3, H, W] RGB tensors in [0, 1] (temple, flower)."""
    from sklearn.datasets import load_sample_images

    return [torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255.0 for p in load_sample_images().images]


def _normalized(x: np.ndarray, stats: Stats) -> np.ndarray:
    mean, std = _STATS[stats]
    x -= np.asarray(mean, np.float32)[:, None, None]
    x /= np.asarray(std, np.float32)[:, None, None]
    return x
