"""Endless unlabeled training inputs from a few offline images: heavily augmented crops.

For label-free distillation of a pretrained image model (`compress.distill.unlabeled`) the student
only has to learn the teacher's function on natural-looking pixels, and a handful of images cut
into crops of many scales, flipped, colour-jittered and mixed gives as many such inputs as training
needs: Asano & Saeed, "Extrapolating from a single image to a thousand classes using distillation"
(ICLR 2021), distil ImageNet classifiers from one image this way.

`TRAINING_IMAGES` is every image the installed wheels ship that is neither an evaluation photo of
`compress.datasets.photos` nor too small to crop (nothing downloaded): the five calibration photos
(scikit-learn's temple and flower; scikit-image's brick, grass, gravel), matplotlib's photo of
Grace Hopper and its rendered backpack icon, and scikit-image's other files — the Hubble deep
field, a retina, an immunohistochemistry slide and a cell (microscopy / astronomy), a colour
wheel, its logo, a horse silhouette, a Shepp-Logan phantom, a chessboard and two scanned texts.
Disjoint from `EVALUATION_PHOTOS`, which a test of the distilled model is measured on.

`augmented_crops` cuts a batch: random resized crops (a share of `scale` of the image's area,
aspect 3:4 to 4:3), horizontal flips, brightness / contrast / saturation jitter, then CutMix or
mixup between crops of the batch (half the batch each, when `mix`), normalized with `stats`.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from compress.datasets.natural import Stats, _check_stats, _normalized
from compress.datasets.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, load_photo

__all__ = ["TRAINING_IMAGES", "augmented_crops", "load_image"]

TRAINING_IMAGES = (*CALIBRATION_PHOTOS, "matplotlib:grace_hopper.jpg", "matplotlib:Minduka_Present_Blue_Pack.png",
                   "skimage:hubble_deep_field.jpg", "skimage:retina.jpg", "skimage:ihc.png", "skimage:cell.png",
                   "skimage:color.png", "skimage:logo.png", "skimage:horse.png", "skimage:phantom.png",
                   "skimage:chessboard_RGB.png", "skimage:text.png", "skimage:page.png")
_PACKAGES = {"skimage": "skimage.data", "matplotlib": "matplotlib.mpl-data.sample_data"}


@cache
def load_image(name: str) -> torch.Tensor:
    """Image `name` as a `[3, H, W]` RGB tensor in [0, 1]: a photo of `compress.datasets.photos`, or
    `skimage:<file>` / `matplotlib:<file>` (a file inside that wheel's data folder; transparent pixels
    are composited on white, greyscale repeated over the channels).

    >>> load_image("skimage:horse.png").shape  # doctest: +SKIP
    torch.Size([3, 328, 400])
    """
    package, _, file = name.partition(":")
    if package not in _PACKAGES or not file:
        return load_photo(name)
    if package == "skimage" and file.split(".")[0] in {"astronaut", "camera", "chelsea", "clock_motion", "coffee",
                                                       "coins", "moon", "motorcycle_left", "motorcycle_right",
                                                       "rocket"}:
        raise ValueError(f"{name} is one of the evaluation photos {EVALUATION_PHOTOS}; train on other images")
    from PIL import Image

    folder = resources.files("matplotlib") / "mpl-data" / "sample_data" if package == "matplotlib" \
        else resources.files(_PACKAGES[package])
    with Image.open(folder / file) as image:
        pixels = np.asarray(image.convert("RGBA"), np.float32) / 255.0
    rgb = pixels[..., :3] * pixels[..., 3:] + (1.0 - pixels[..., 3:])
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


def augmented_crops(n: int, *, images: tuple[str, ...] = TRAINING_IMAGES, size: int = 224,
                    generator: torch.Generator | None = None, scale: tuple[float, float] = (0.02, 1.0),
                    jitter: float = 0.4, mix: bool = True, stats: Stats = "imagenet") -> torch.Tensor:
    """`[n, 3, size, size]` augmented crops of `images`, normalized with `stats` (float32).

    Each crop: an image drawn uniformly, a random resized crop of `scale` (share of its area,
    log-uniform so small and large crops are equally common), a flip half the time, brightness,
    contrast and saturation each scaled by a factor in [1 - jitter, 1 + jitter]. With `mix`, the
    first quarter of the batch is CutMix-ed and the second quarter mixup-ed with other crops of the
    batch (Asano & Saeed's recipe), so inputs also fall between the images. Same generator state,
    same batch.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = augmented_crops(4, images=("sklearn:flower",), size=32, generator=g)
    >>> tuple(x.shape), x.dtype
    ((4, 3, 32, 32), torch.float32)
    """
    if n < 1 or size < 1 or not 0 < scale[0] <= scale[1] <= 1 or not 0 <= jitter < 1 or not images:
        raise ValueError(f"need n >= 1, size >= 1, 0 < scale[0] <= scale[1] <= 1, 0 <= jitter < 1 and some images; "
                         f"got n={n}, size={size}, scale={scale}, jitter={jitter}, images={images}")
    _check_stats(stats)
    g = generator if generator is not None else torch.Generator().manual_seed(0)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=g))

    out = torch.empty(n, 3, size, size)
    for i in range(n):
        photo = load_image(images[int(torch.randint(len(images), (), generator=g))])
        h, w = photo.shape[1:]
        area = float(np.exp(uniform(np.log(scale[0]), np.log(scale[1])))) * h * w
        aspect = float(np.exp(uniform(np.log(3 / 4), np.log(4 / 3))))
        ch = max(1, min(h, int(round((area / aspect) ** 0.5))))
        cw = max(1, min(w, int(round((area * aspect) ** 0.5))))
        top, left = int(torch.randint(h - ch + 1, (), generator=g)), int(torch.randint(w - cw + 1, (), generator=g))
        crop = photo[None, :, top:top + ch, left:left + cw]
        if float(torch.rand((), generator=g)) < 0.5:
            crop = crop.flip(-1)
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=ch > size or cw > size)[0]
        if jitter:
            crop = crop * uniform(1 - jitter, 1 + jitter)  # brightness
            mean = crop.mean()
            crop = (crop - mean) * uniform(1 - jitter, 1 + jitter) + mean  # contrast
            grey = crop.mean(0, keepdim=True)
            crop = (crop - grey) * uniform(1 - jitter, 1 + jitter) + grey  # saturation
        out[i] = crop.clamp(0, 1)
    if mix and n >= 4:
        partner = torch.randperm(n, generator=g)
        quarter = n // 4
        for i in range(quarter):  # CutMix: a box of another crop pasted in
            side = int(round(size * uniform(0.3, 0.7)))
            top, left = int(torch.randint(size - side + 1, (), generator=g)), int(torch.randint(size - side + 1, (), generator=g))
            out[i, :, top:top + side, left:left + side] = out[partner[i], :, top:top + side, left:left + side]
        for i in range(quarter, 2 * quarter):  # mixup
            lam = uniform(0.3, 0.7)
            out[i] = lam * out[i] + (1 - lam) * out[partner[i]]
    return torch.from_numpy(_normalized(out.numpy(), stats))
