"""The search space and the hardware cost: rounding to the target's channel multiple, exact counts
against hand-computed references, and rejection of over-budget samples before training."""

from __future__ import annotations

import pytest
from nni.mutable import SampleValidationError
from numpy.random import RandomState

from compress.core.errors import EdgetierError
from compress.core.measure import count_params
from compress.nas.arch import build_arch
from compress.nas.config import Budget, SpaceSpec
from compress.nas.costs import CostModel, arch_from_sample, smallest_arch, smallest_sample
from compress.nas.space import SearchSpace
from compress.targets import load_target

RPI4 = load_target("rpi4")


def _sample(**values: float) -> dict[str, float]:
    return {f"stage{i}_{d}": values[d] for i in (1, 2, 3) for d in ("depth", "width_mult", "kernel", "expansion")}


def test_widths_round_up_to_the_channel_multiple() -> None:
    arch = arch_from_sample(SpaceSpec(width=20), _sample(depth=2, width_mult=0.5, kernel=5, expansion=0.5),
                            channel_multiple=8)
    # 20 * 0.5 = 10 -> 16; inner 16 * 0.5 = 8 -> 8
    assert arch["stem"] == 16
    assert arch["stages"] == [{"depth": 2, "width": 16, "mid": 8, "kernel": 5}] * 3


def test_cost_counts_match_the_built_model() -> None:
    arch = smallest_arch(SpaceSpec(), channel_multiple=8)
    cost = CostModel(Budget(), RPI4, input_shape=(1, 40), num_classes=10)(arch)
    model = build_arch(arch, input_shape=(1, 40), num_classes=10)
    assert cost.params == count_params(model)
    assert cost.bytes == 4 * cost.params  # fp32 weights
    # stem 1->8 k5 at L=40; each stage: conv1 k3 (stride 2), conv2 k3, 1x1 shortcut only where shapes change
    # (only the stride does here: 8 -> 8 channels, stride 2 in every stage) -> exact MACs by hand:
    stem = 8 * 1 * 5 * 40
    stages = sum(8 * 8 * 3 * length + 8 * 8 * 3 * length + 8 * 8 * length for length in (20, 10, 5))
    head = 8 * 10
    assert cost.macs == stem + stages + head
    assert cost.feasible and cost.latency_ms > RPI4.compute.overhead_ms


def test_over_budget_samples_fail_nni_validation_and_are_recorded() -> None:
    cost = CostModel(Budget(max_latency_ms=0.21), RPI4, input_shape=(1, 40), num_classes=10)
    space = SearchSpace(SpaceSpec(), cost, channel_multiple=8)
    big = _sample(depth=2, width_mult=1.0, kernel=7, expansion=1.0)
    assert not cost(space.arch(big)).feasible
    with pytest.raises(SampleValidationError):
        space.freeze(big)
    assert len(space.rejected) == 1
    state = RandomState(0)
    drawn = []
    for _ in range(40):
        try:
            drawn.append(space.random(random_state=state))
        except SampleValidationError:
            continue
    assert drawn and all(cost(a).feasible for a in drawn)
    assert all(not c.feasible for _, c in space.rejected.values())


def test_an_unreachable_budget_names_the_smallest_candidate_cost() -> None:
    cost = CostModel(Budget(max_kb=1), RPI4, input_shape=(1, 40), num_classes=10)
    smallest = smallest_arch(SpaceSpec(), channel_multiple=8)
    with pytest.raises(EdgetierError) as err:
        cost.check_reachable(smallest)
    params = cost(smallest).params
    assert f"{params:,} params" in str(err.value) and "KiB > 1.0 KiB" in str(err.value)
    assert smallest_sample(SpaceSpec())["stage1_kernel"] == 3
