"""Unlabeled natural images available offline: random crops of scikit-learn's two sample photos.

scikit-learn bundles two 427x640 RGB photographs (`load_sample_images`: a Chinese temple and a
flower). Random crops of 8-100 % of the area, random aspect ratios, horizontal flips and a
resize to `size` turn them into as many distinct inputs as a calibration or agreement check
needs, with the statistics of real photographs (edges, textures, smooth regions) that random
noise lacks. They have no labels: they serve to calibrate a pretrained ImageNet model and to
measure how often its quantized version keeps its fp32 answer, not its accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "natural_images"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def natural_images(n: int, *, size: int = 224, seed: int = 0, normalize: bool = True) -> np.ndarray:
    """`n` random crops `[n, 3, size, size]` (float32) of scikit-learn's sample photos.

    Same `seed`, same images. With `normalize`, pixels are scaled to [0, 1] and standardized
    with the ImageNet mean and std that torchvision-style pretrained models expect.

    >>> x = natural_images(3, size=32, seed=1)
    >>> x.shape, x.dtype.name, bool(np.array_equal(x, natural_images(3, size=32, seed=1)))
    ((3, 3, 32, 32), 'float32', True)
    """
    if n < 0 or size < 1:
        raise ValueError(f"need n >= 0 and size >= 1, got n={n}, size={size}")
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1).float() / 255.0
              for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[1:]
        # RandomResizedCrop-style: area share and log-uniform aspect ratio, retried until it fits
        for _ in range(20):
            area = rng.uniform(0.08, 1.0) * h * w
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
    if normalize:
        out -= np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
        out /= np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    return out
