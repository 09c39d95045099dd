"""Which bit widths a target runs: activations need the matching integer precision; weights of ≤ 4 bits
also run where int8 and fp32 are available (dequantized at load); int8-only accelerators take 5-8 bits."""

from __future__ import annotations

import pytest

from compress.core.errors import EdgetierError
from compress.quant import precision
from compress.targets import load_target


@pytest.mark.parametrize(("target", "weights", "acts"), [
    ("rpi4", [2, 3, 4, 5, 8], [5, 8]),            # fp32 + int8: low-bit weights dequantized, int8 activations
    ("stm32h7", [2, 3, 4, 5, 8], [5, 8]),
    ("jetson_orin_nano", [2, 3, 4, 5, 8], [5, 8]),
    ("coral_edgetpu", [5, 8], [5, 8]),            # int8 only: its compiler needs int8 weights
    ("ethos_u55", [5, 8], [5, 8]),
])
def test_shipped_targets_restrict_bits(target, weights, acts):
    t = load_target(target)
    assert [b for b in (2, 3, 4, 5, 8) if precision.weight_bits_ok(b, t)] == weights
    assert [b for b in (2, 3, 4, 5, 8) if precision.act_bits_ok(b, t)] == acts


def test_int4_target_runs_four_bit_activations(int4_target):
    assert precision.act_bits_ok(4, int4_target) and precision.act_bits_ok(2, int4_target)
    assert precision.allowed_weight_bits([2, 4, 8], int4_target) == [2, 4, 8]


def test_errors_name_the_target_and_what_it_runs():
    coral = load_target("coral_edgetpu")
    with pytest.raises(EdgetierError, match=r"4-bit weights, which target 'coral_edgetpu' cannot run") as err:
        precision.check_weight_bits([4, 8], coral, what="qat weight_bits")
    assert "int8" in err.value.problem and "5-bit" in err.value.fix  # the widths it does take
    with pytest.raises(EdgetierError, match=r"4-bit activations need int4"):
        precision.check_act_bits(4, load_target("rpi4"), what="qat act_bits")


def test_storage_is_the_narrowest_onnx_type():
    # what a weight costs on disk: INT2 / INT4 / INT8 containers (export.qcdq)
    assert [precision.storage_bits(b) for b in range(2, 9)] == [2, 4, 4, 8, 8, 8, 8]
    assert precision.default_bits(load_target("rpi4")) == 8
