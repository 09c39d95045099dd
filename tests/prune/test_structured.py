"""structured_prune: physically smaller models on every zoo model and on depthwise / grouped convolutions,
rounding to the target's channel multiple, the MACs budget, iterative steps, restore, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

import compress
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.measure import count_macs, count_params
from compress.prune.structured import StructuredPrune, StructuredPruneConfig
from compress.targets import load_target
from export.measure import onnx_stats
from export.onnx import export_onnx

ZOO_CASES = [("resnet1d", (1, 40)), ("resnet2d", (1, 8, 8)), ("transformer", (1, 40)), ("transformer", (1, 8, 8))]


class Separable(nn.Module):
    """A MobileNet-style residual block: 1×1 expand → depthwise 3×3 → grouped 1×1 (4 groups) → add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.expand, self.bn1 = nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64)
        self.dw, self.bn2 = nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), nn.BatchNorm2d(64)
        self.project, self.bn3 = nn.Conv2d(64, 32, 1, groups=4, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.bn3(self.project(F.relu(self.bn2(self.dw(F.relu(self.bn1(self.expand(x))))))))
        return self.fc((x + y).mean((2, 3)))

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)),)


class CustomGain(nn.Module):
    """A per-channel, per-position gain kept as a raw parameter and applied with einsum: torch-pruning
    cannot follow it and declines to prune conv2, whose channels it scales."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv1d(16, 16, 3, padding=1)
        self.gain = nn.Parameter(torch.ones(16, 8))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bcl,cl->bcl", F.relu(self.conv2(F.relu(self.conv1(x)))), self.gain)
        return self.fc(y.mean(2))

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (torch.zeros(1, 1, 8),)


class AveragedChannels(nn.Module):
    """The gain multiplies the channels, which are then averaged away: torch-pruning prunes the gain
    along the wrong dimension and fails inside its scoring (an IndexError deep in the library)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 16, 3, padding=1)
        self.gain = nn.Parameter(torch.ones(16, 8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((F.relu(self.conv(x)) * self.gain.t().t()).mean(1))

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (torch.zeros(1, 1, 8),)


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-6)


def _restored(model_before: nn.Module, result: compress.Result) -> nn.Module:
    """What a resumed run does: restore on a fresh copy of the unpruned model, then load the weights."""
    fresh = copy.deepcopy(model_before)
    ctx = Context(example_inputs=tuple(fresh.example_inputs()))
    StructuredPrune(StructuredPruneConfig(ratio=0.5)).restore(fresh, result.state, ctx)
    fresh.load_state_dict(result.model.state_dict())  # raises on any size mismatch
    return fresh


@pytest.mark.parametrize(("zoo", "shape"), ZOO_CASES, ids=[f"{z}-{'x'.join(map(str, s))}" for z, s in ZOO_CASES])
def test_every_zoo_model_gets_smaller_and_restores(small, zoo: str, shape: tuple[int, ...]) -> None:
    dense = small(zoo, shape)
    model = copy.deepcopy(dense)
    example, one = dense.example_inputs(4), dense.example_inputs(1)
    result = compress.apply(model, StructuredPruneConfig(ratio=0.5), target="rpi4")
    report = result.report
    # Halving every hidden width leaves about a quarter of the MACs (both sides of a conv halve);
    # 0.35 allows for the stem's single input channel and the unpruned classifier outputs.
    assert count_macs(model, one) <= 0.35 * count_macs(dense, one)
    assert count_params(model) <= 0.35 * count_params(dense)
    assert report["macs"] == [count_macs(dense, one), count_macs(model, one)]
    assert model(example[0]).shape == (4, 10) and model.head.fc.out_features == 10
    assert report["classifiers"] == ["head.fc"] and report["unchanged"] == []
    multiple = load_target("rpi4").channel_multiple
    changed = {n: c for n, c in report["layers"].items() if c["channels"][0] != c["channels"][1]}
    assert changed and all(after % multiple == 0 for _, after in (c["channels"] for c in changed.values()))
    assert _same_outputs(_restored(dense, result), model, example[0])


def test_the_exported_file_is_smaller(small, tmp_path) -> None:
    dense = small("resnet1d", (1, 40))
    model, _ = compress.apply(copy.deepcopy(dense), StructuredPruneConfig(ratio=0.5), target="rpi4")
    example = dense.example_inputs()
    a = onnx_stats(export_onnx(dense, example, tmp_path / "dense.onnx"))
    b = onnx_stats(export_onnx(model, example, tmp_path / "pruned.onnx"))
    assert b["params"] < 0.35 * a["params"] and b["bytes"] < 0.4 * a["bytes"]  # the file, not just torch


def test_depthwise_and_grouped_convolutions_stay_consistent() -> None:
    torch.manual_seed(0)
    dense = Separable()
    model = copy.deepcopy(dense)
    result = compress.apply(model, StructuredPruneConfig(ratio=0.5), target="rpi4")
    layers = result.report["layers"]
    # every coupled group halves: the residual stream (stem + grouped project), expand and depthwise
    assert {n: layers[n]["channels"] for n in ("stem.0", "expand", "dw", "project")} == {
        "stem.0": [32, 16], "expand": [64, 32], "dw": [64, 32], "project": [32, 16]}
    assert model.dw.groups == model.dw.out_channels == model.dw.in_channels == 32
    assert model.project.groups == 4 and model.project.weight.shape == (16, 8, 1, 1)
    x = torch.randn(3, 1, 8, 8)
    assert model(x).shape == (3, 10)
    assert _same_outputs(_restored(dense, result), model, x)


class TwoExits(nn.Module):
    """An early-exit model: logits after the first block and at the end; both classifiers keep 10 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv1d(1, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv1d(16, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU())
        self.exit1, self.fc = nn.Linear(16, 10), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.block1(x)
        return self.exit1(h.mean(2)), self.fc(self.block2(h).mean(2))

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (torch.zeros(1, 1, 12),)


def test_every_output_layer_keeps_its_classes() -> None:
    model, report = compress.apply(TwoExits(), StructuredPruneConfig(ratio=0.5), target="rpi4")
    assert report["classifiers"] == ["exit1", "fc"]
    assert model.exit1.out_features == model.fc.out_features == 10
    assert model.block1[0].out_channels == 8 and model.block2[0].out_channels == 16


def test_channel_counts_follow_the_target_or_the_config(small) -> None:
    _, report = compress.apply(small("resnet1d", (1, 40)), StructuredPruneConfig(ratio=0.3), target="rpi4")
    assert report["layers"]["stem.conv"]["channels"] == [16, 8]  # 11.2 kept → nearest multiple of 8
    _, report = compress.apply(small("resnet1d", (1, 40)), StructuredPruneConfig(ratio=0.3, channel_multiple=4),
                               target="rpi4")
    assert report["layers"]["stem.conv"]["channels"] == [16, 12]
    _, report = compress.apply(small("resnet1d", (1, 40)), StructuredPruneConfig(ratio=0.3))  # no target
    assert report["layers"]["stem.conv"]["channels"] == [16, 11] and report["channel_multiple"] is None


def test_a_macs_budget_is_met_with_the_fewest_channels_removed(small) -> None:
    dense = small("resnet1d", (1, 40), width=64)
    _, report = compress.apply(copy.deepcopy(dense), StructuredPruneConfig(macs_ratio=0.3), target="rpi4")
    assert report["macs_fraction"] <= 0.3
    # one rounding step (8 channels) fewer removed misses the budget: the search did not over-prune
    kept = report["layers"]["stem.conv"]["channels"][1]
    looser = StructuredPruneConfig(ratio=1 - (kept + 8) / 64)
    _, other = compress.apply(copy.deepcopy(dense), looser, target="rpi4")
    assert other["layers"]["stem.conv"]["channels"][1] == kept + 8 and other["macs_fraction"] > 0.3


def test_iterative_steps_fine_tune_in_between(small, digits) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.tasks: list[str] = []

        def task(self, description: str, total: int | None) -> str:
            self.tasks.append(description)
            return description

        def advance(self, task: object, n: int = 1) -> None:
            pass

        def done(self, task: object) -> None:
            pass

    progress = Recorder()
    config = StructuredPruneConfig(ratio=0.5, steps=3, finetune_epochs=1, importance="taylor", taylor_batches=2)
    model, report = compress.apply(small(), config, target="rpi4", data=digits, progress=progress)
    assert progress.tasks == ["structured_prune: fine-tune after step 1", "structured_prune: fine-tune after step 2"]
    assert report["layers"]["stem.conv"]["channels"] == [16, 8] and report["steps"] == 3


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale"])
def test_each_importance_prunes(small, importance: str) -> None:
    model, report = compress.apply(small(), StructuredPruneConfig(ratio=0.5, importance=importance), target="rpi4")
    assert report["macs_fraction"] <= 0.35 and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_importances_choose_different_channels(small, digits) -> None:
    kept = {}
    for importance in ("l1", "bn_scale"):
        model = small()
        with torch.no_grad():  # BN scales unrelated to the conv weights, as after real training
            model.stem.bn.weight.copy_(torch.linspace(0.1, 2.0, 16).flip(0))
        compress.apply(model, StructuredPruneConfig(ratio=0.5, importance=importance), target="rpi4")
        kept[importance] = model.stem.bn.weight.detach().clone()
    # bn_scale keeps the 8 largest scales of the stem's BatchNorm (its group also holds other BNs, so
    # compare the order only loosely): they must differ from what weight magnitude keeps
    assert not torch.equal(kept["l1"], kept["bn_scale"])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ratio": 1.2}, "ratio must be strictly between 0 and 1"),
    ({"ratio": 0.0}, "ratio must be strictly between 0 and 1"),
    ({"macs_ratio": 1.0}, "macs_ratio must be strictly between 0 and 1"),
    ({}, "give exactly one of ratio"),
    ({"ratio": 0.5, "macs_ratio": 0.3}, "give exactly one of ratio"),
    ({"ratio": 0.5, "importance": "l3"}, "'l1', 'l2', 'taylor', 'bn_scale', 'activation' or 'least_squares'"),
])
def test_bad_values_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StructuredPruneConfig(**kwargs)


def test_a_selector_that_matches_nothing_names_it(small) -> None:
    config = StructuredPruneConfig(ratio=0.5, ignore=("layer4",))
    with pytest.raises(EdgetierError, match="'layer4' matches no module"):
        config.check_model(small(), load_target("rpi4"))


def test_removing_every_channel_of_a_layer_is_an_error_naming_it(small) -> None:
    config = StructuredPruneConfig(ratio=0.9)  # 16 channels → 1.6 kept → 0 in multiples of 8
    with pytest.raises(EdgetierError) as info:
        config.check_model(small(), load_target("rpi4"))
    text = str(info.value)
    assert "would remove every channel of layer" in text and "at least 8 must stay" in text and "ignore" in text
    compress.apply(small(), StructuredPruneConfig(ratio=0.9, channel_multiple=1), target="rpi4")  # 2 of 16 stay


def test_a_layer_the_dependency_graph_cannot_handle_is_named_with_the_fix() -> None:
    torch.manual_seed(0)
    with pytest.raises(EdgetierError) as info:
        StructuredPruneConfig(ratio=0.5).check_model(CustomGain(), load_target("rpi4"))
    assert "left layer(s) 'conv2' unpruned" in str(info.value) and "add 'conv2' to `ignore`" in str(info.value)
    # following the fix works: conv1 is pruned, conv2 (and the gain on its channels) stay as they are
    model, report = compress.apply(CustomGain(), StructuredPruneConfig(ratio=0.5, ignore=("conv2",)), target="rpi4")
    assert report["layers"]["conv1"]["channels"] == [16, 8] and model(torch.zeros(2, 1, 8)).shape == (2, 10)


def test_a_crash_inside_torch_pruning_becomes_an_error_naming_the_layer() -> None:
    model = AveragedChannels()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(EdgetierError) as info:
        compress.apply(model, StructuredPruneConfig(ratio=0.5), target="rpi4")
    assert "cannot score the channels of layer 'conv'" in str(info.value) and "add 'conv' to `ignore`" in str(info.value)
    # the check runs on a copy first: the caller's model is left whole
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_an_unreachable_macs_budget_is_an_error(small) -> None:
    with pytest.raises(EdgetierError, match="MACs budget of 1% cannot be met"):
        compress.apply(small(), StructuredPruneConfig(macs_ratio=0.01), target="rpi4")


def test_bn_scale_needs_batchnorm(small) -> None:
    with pytest.raises(EdgetierError, match="has no BatchNorm layer"):
        StructuredPruneConfig(ratio=0.5, importance="bn_scale").check_model(small("transformer", (1, 40)), None)


def test_taylor_needs_data(small) -> None:
    with pytest.raises(EdgetierError, match="taylor importance scores channels by gradients"):
        compress.apply(small(), StructuredPruneConfig(ratio=0.5, importance="taylor"), target="rpi4")
