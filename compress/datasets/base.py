"""The two containers every loader returns: a `Split` of arrays and a `Dataset` of splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Split(NamedTuple):
    """Inputs and labels of one split; a tuple so that ``x, y = ds.train`` works.

    >>> import numpy as np
    >>> x, y = Split(np.zeros((2, 1, 4), np.float32), np.array([0, 1]))
    >>> x.shape, y.tolist()
    ((2, 1, 4), [0, 1])
    """

    x: np.ndarray
    y: np.ndarray


# eq=False: comparing datasets field by field would compare arrays, which has no single truth value.
@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset split four ways, with what a model needs to know about its inputs.

    ``calib`` is a small subset of ``train`` (never of ``val`` or ``test``) for post-training
    quantization and other calibration; ``input_shape`` is per sample, without the batch.
    """

    name: str
    train: Split
    val: Split
    test: Split
    calib: Split
    input_shape: tuple[int, ...]
    num_classes: int
    labels: tuple[str, ...]

    def __repr__(self) -> str:
        # The default repr would print every array; sizes are what a reader wants.
        sizes = ", ".join(f"{s}={len(getattr(self, s).y)}" for s in ("train", "val", "test", "calib"))
        return (f"Dataset(name={self.name!r}, {sizes}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes})")
