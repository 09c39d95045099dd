"""`finetune`: a stage that changes nothing by itself and exists for its `train` block.

Recipes use it to train the variant (again) between other stages, e.g. after a
structural change, or to run a training-time technique's hooks for longer.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from compress.core.config import TechniqueConfig
from compress.core.context import Context
from compress.core.technique import BaseTechnique, Result


class FinetuneConfig(TechniqueConfig):
    """No parameters of its own: the stage's `train` block says how long and how fast.

    >>> FinetuneConfig().kind
    'finetune'
    """

    kind: Literal["finetune"] = "finetune"


class Finetune(BaseTechnique):
    config_type = FinetuneConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        return Result(model, {})
