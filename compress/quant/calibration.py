"""Which activation-range calibration a `ptq_int8` stage uses, per runtime, and the default per target.

onnxruntime (`export.calibrate`) offers all four: MinMax, percentile, entropy (KL) and MSE. The
LiteRT path quantizes with PT2E, whose observers are torch.ao's: `MinMaxObserver` (MinMax) and
`HistogramObserver` (a histogram search for the range with the least L2 quantization error: MSE);
torch.ao has no percentile or entropy observer, so those are refused for LiteRT targets.

Defaults: LiteRT keeps `mse` (litert-torch's own PT2E config uses HistogramObserver, so that is
what it always did); onnxruntime uses `percentile` (99.999th), measured as the better of the two
on the pretrained EfficientNet-Lite0 benchmark (tests/benchmarks/test_ptq.py) while costing one
histogram pass.
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
_DEFAULT = {"onnxruntime": "percentile", "litert": "mse"}


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
    ('percentile', 'mse')
    """
    return _DEFAULT[target.runtime if target is not None else "onnxruntime"]


def int8_only(target: Target | None) -> bool:
    """True when the target runs int8 and nothing else (Edge TPU, Ethos-U): no layer can fall back to fp32.

    >>> from compress.targets import load_target
    >>> int8_only(load_target("ethos_u55")), int8_only(load_target("jetson_orin_nano"))
    (True, False)
    """
    return target is not None and target.supported_precisions == ("int8",)
