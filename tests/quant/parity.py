"""How close a QCDQ file's int8 logits must be to brevitas' own, in output quantization steps.

onnxruntime and brevitas round in a different order (the conv's accumulation order; BatchNorm
folded into the weight scales by the exporter), so a value sitting on a quantization boundary may
round the other way — in the logits (one step) or in an intermediate activation, whose flip moves
the logits downstream by a step or a few (measured: up to 4 steps on one of 256 MNIST-1D samples for
the flagship's end variant, top-1 agreement 255 of 256). So: nearly every logit within one step, none beyond a
handful. A graph that computes something else is off by tens of steps and changes answers.
"""

from __future__ import annotations

import numpy as np

MAX_STEPS = 8  # worst logit: a few rounding flips on its path, with room for another CPU's rounding
MAX_SHARE_BEYOND_ONE = 0.01  # logits more than one step apart: at most 1 %


def assert_within_steps(got: np.ndarray, ref: np.ndarray, step: float) -> None:
    steps = np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64)) / step
    assert steps.max() <= MAX_STEPS + 1e-4, steps.max()
    assert (steps > 1 + 1e-4).mean() <= MAX_SHARE_BEYOND_ONE, (steps > 1 + 1e-4).mean()
