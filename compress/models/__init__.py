"""Reference cloud models: residual CNNs (1-D, 2-D) and a small transformer, built by name.

>>> import torch
>>> from compress import models
>>> _ = torch.manual_seed(0)
>>> model = models.build("transformer", input_shape=(1, 40), num_classes=10, dim=16)
>>> [name for name, _ in model.named_children()]
['stem', 'layer1', 'layer2', 'layer3', 'head']
"""

from __future__ import annotations

from compress.models.base import ReferenceModel
from compress.models.zoo import ZOO, build, build_from_spec, check_spec

__all__ = ["ZOO", "ReferenceModel", "build", "build_from_spec", "check_spec"]
