"""Bit widths: which ones a target can run, how many bits they take on disk, and the defaults.

A layer quantized to `b` bits computes at `int4` when its weights *and* its input activations
have at most 4 bits, else at `int8` (`precision_for`). What a target runs is its
`supported_precisions` (the keys of its throughput table):

- activations at `b` bits need `precision_for(b)`: an int8-only device cannot take 4-bit
  activations;
- weights at `b` bits need `precision_for(b)` too, except that weights of at most 4 bits are
  also accepted on a target that runs `int8` *and* `fp32`: the runtime dequantizes the stored
  int4 / int2 weights when it loads the model (onnxruntime runs the QCDQ graph's
  `DequantizeLinear` on them; LiteRT unpacks int4 weights to int8) and computes at the
  activations' precision. An int8-only accelerator (Edge TPU, Ethos-U55) has no such path:
  its compiler needs int8 weights, so it restricts weights to 5-8 bits.

On disk a weight of `b` bits takes `storage_bits(b)`: 2 (ONNX INT2), 4 (INT4) or 8 (INT8) —
the narrowest ONNX integer type that holds it (see `export.qcdq`). Budgets in bytes use it.
"""

from __future__ import annotations

from collections.abc import Iterable

from compress.core.errors import EdgetierError
from compress.targets import Target

MIN_BITS, MAX_BITS = 2, 8


def precision_for(bits: int) -> str:
    """The integer precision a layer of `bits` bits computes at.

    >>> precision_for(2), precision_for(4), precision_for(5), precision_for(8)
    ('int4', 'int4', 'int8', 'int8')
    """
    return "int4" if bits <= 4 else "int8"


def storage_bits(bits: int) -> int:
    """Bits per weight on disk: the narrowest of ONNX INT2 / INT4 / INT8 that holds `bits` bits.

    >>> [storage_bits(b) for b in (2, 3, 4, 5, 8)]
    [2, 4, 4, 8, 8]
    """
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def weight_bits_ok(bits: int, target: Target | None) -> bool:
    """Whether `target` can run weights of `bits` bits (any width when there is no target).

    >>> from compress.targets import load_target
    >>> weight_bits_ok(4, load_target("rpi4")), weight_bits_ok(4, load_target("coral_edgetpu"))
    (True, False)
    """
    if target is None:
        return True
    runs = set(target.supported_precisions)
    return precision_for(bits) in runs or (bits <= 4 and {"int8", "fp32"} <= runs)


def act_bits_ok(bits: int, target: Target | None) -> bool:
    """Whether `target` can run activations of `bits` bits.

    >>> from compress.targets import load_target
    >>> act_bits_ok(8, load_target("rpi4")), act_bits_ok(4, load_target("rpi4"))
    (True, False)
    """
    return target is None or precision_for(bits) in target.supported_precisions


def check_weight_bits(bits: Iterable[int], target: Target, *, what: str) -> None:
    """Raise when `target` cannot run one of the weight widths `bits` (`what` names the setting)."""
    bad = sorted({b for b in bits if not weight_bits_ok(b, target)})
    if bad:
        raise EdgetierError(
            f"{what} asks for {_bits(bad)} weights, which target {target.name!r} cannot run (it runs "
            f"{', '.join(target.supported_precisions)}; weights of 4 bits or fewer need int4, or int8 plus fp32)",
            fix=f"use {_bits(allowed_weight_bits(range(MIN_BITS, MAX_BITS + 1), target)) or 'no quantization'} "
                "for this target, or skip this stage for that variant")


def check_act_bits(bits: int | None, target: Target, *, what: str) -> None:
    """Raise when `target` cannot run activations of `bits` bits."""
    if bits is not None and not act_bits_ok(bits, target):
        raise EdgetierError(
            f"{what} is {bits}, but target {target.name!r} runs {', '.join(target.supported_precisions)}: "
            f"{bits}-bit activations need {precision_for(bits)}",
            fix="use act_bits: 8 (or 5-8) for this target, or skip this stage for that variant")


def allowed_weight_bits(bits: Iterable[int], target: Target | None) -> list[int]:
    """The widths of `bits` that `target` can run, sorted.

    >>> from compress.targets import load_target
    >>> allowed_weight_bits([2, 4, 8], load_target("coral_edgetpu"))
    [8]
    """
    return sorted({b for b in bits if weight_bits_ok(b, target)})


def default_bits(target: Target | None) -> int:
    """8 when the target runs int8 (or there is no target), 4 when it runs only int4.

    >>> from compress.targets import load_target
    >>> default_bits(load_target("stm32h7")), default_bits(None)
    (8, 8)
    """
    if target is None or "int8" in target.supported_precisions:
        return 8
    if "int4" in target.supported_precisions:
        return 4
    raise EdgetierError(f"target {target.name!r} runs no integer precision ({', '.join(target.supported_precisions)})",
                        fix="skip quantization for that variant, or choose a target that runs int8 or int4")


def _bits(values: Iterable[int]) -> str:
    return ", ".join(f"{b}-bit" for b in values)
