"""Which activation-range calibration a `ptq_int8` stage uses, per runtime, and the default per target.

onnxruntime (`export.calibrate`) offers all four: MinMax, percentile, entropy (KL) and MSE. The
LiteRT path quantizes with PT2E, whose observers are torch.ao's: `MinMaxObserver` (MinMax) and
`HistogramObserver` (a histogram search for the range with the least L2 quantization error: MSE);
torch.ao has no percentile or entropy observer, so those are refused for LiteRT targets.

Defaults: each runtime keeps what it always did, so recipes measured before these choices existed
give the same files: LiteRT `mse` (litert-torch's own PT2E config uses HistogramObserver) and
onnxruntime `minmax`. On the pretrained EfficientNet-Lite0 benchmark (tests/benchmarks/test_ptq.py,
300 views of 10 held-out photos, 2026-12-07, AVX-512 VNNI host) percentile kept the fp32 top-1 answer
on 93.0 % against MinMax's 94.3 % (top-5 100 % both; entropy 72.7 %, mse 84.0 %): not a reason to
change every recipe's default.
"""

from __future__ import annotations

from typing import Literal

from compress.targets import Target

__all__ = ["Calibration", "RUNTIME_CALIBRATIONS", "default_calibration", "supported_calibrations"]

Calibration = Literal["minmax", "percentile", "entropy", "mse"]

RUNTIME_CALIBRATIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("minmax", "percentile", "entropy", "mse"),
    "litert": ("minmax", "mse"),
}
_DEFAULT = {"onnxruntime": "minmax", "litert": "mse"}


def supported_calibrations(target: Target) -> tuple[str, ...]:
    """The calibrations the target's runtime path implements.

    >>> from compress.targets import load_target
    >>> supported_calibrations(load_target("stm32h7"))
    ('minmax', 'mse')
    """
    return RUNTIME_CALIBRATIONS[target.runtime]


def default_calibration(target: Target | None) -> str:
    """The calibration a stage uses when its recipe names none (onnxruntime when there is no target).

    >>> from compress.targets import load_target
    >>> default_calibration(load_target("jetson_orin_nano")), default_calibration(load_target("stm32h7"))
    ('minmax', 'mse')
    """
    return _DEFAULT[target.runtime if target is not None else "onnxruntime"]


def int8_only(target: Target | None) -> bool:
    """True when the target runs int8 and nothing else (Edge TPU, Ethos-U): no layer can fall back to fp32.

    >>> from compress.targets import load_target
    >>> int8_only(load_target("ethos_u55")), int8_only(load_target("jetson_orin_nano"))
    (True, False)
    """
    return target is not None and target.supported_precisions == ("int8",)
