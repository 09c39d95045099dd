"""lottery_ticket: per-round sparsity, rewinding to init or to step k, the random-reinit control, restore, bad input."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import compress
from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.technique import Hooks, HookSet
from compress.core.train import TrainSpec, fit
from compress.prune import lottery, lottery_structured
from compress.prune.lottery import LotteryTicket, LotteryTicketConfig


@pytest.fixture
def starts(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """The model's state at the start of every training `lottery_ticket` runs, in order."""
    seen: list[dict[str, torch.Tensor]] = []
    real = lottery.fit

    def recording(model: nn.Module, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(lottery, "fit", recording)
    monkeypatch.setattr(lottery_structured, "fit", recording)
    return seen


def _pruned(state: dict[str, torch.Tensor]) -> float:
    """Fraction of zeros over every conv / linear weight (the tensors of two or more dimensions)."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() >= 2]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_rounds_prune_the_remaining_weights_and_rewind_to_init(small, few_digits, starts) -> None:
    model = small()
    init = copy.deepcopy(model.state_dict())
    config = LotteryTicketConfig(rounds=2, ratio=0.3, epochs=1)
    result = compress.apply(model, config, data=few_digits)
    report, masks = result.report, result.state["masks"]
    assert len(starts) == 5  # round 0, then ticket + control for each of 2 rounds
    assert all(torch.equal(starts[0][k], init[k]) for k in init)  # round 0 trains the model as given
    # round r keeps (1 - 0.3)^r of the weights: 0.3 then 0.51 pruned (exact up to one weight)
    n = sum(m.numel() for m in masks.values())
    assert [r["sparsity"] for r in report["rounds"]] == pytest.approx([0.0, 0.3, 0.51], abs=1 / n)
    # every ticket starts from the initial values of its survivors, BatchNorm and biases included
    for start, pruned in ((starts[1], 0.3), (starts[3], 0.51)):
        for key, value in init.items():
            survived = start[key] != 0 if key.endswith("weight") and value.dim() >= 2 else ...  # num_batches_tracked is 0-dim
            assert torch.equal(start[key][survived], value[survived]), key
        assert _pruned(start) == pytest.approx(pruned, abs=1 / n)
    for name, mask in masks.items():  # the last ticket starts exactly at init ⊙ its mask
        assert torch.equal(starts[3][f"{name}.weight"], init[f"{name}.weight"] * mask)
    # the control: the same mask on fresh random values
    control = starts[4]
    for name, mask in masks.items():
        weight = control[f"{name}.weight"]
        assert bool((weight[~mask] == 0).all()) and not torch.equal(weight, starts[3][f"{name}.weight"])
    # the returned model is the last ticket, trained, with its mask
    for name, mask in masks.items():
        assert torch.equal(model.get_submodule(name).weight.detach() == 0, ~mask)
    assert report["winning_ticket"] == (report["rounds"][-1]["ticket_accuracy"]
                                        >= report["rounds"][-1]["control_accuracy"])
    assert all(0.0 <= r["ticket_accuracy"] <= 1.0 for r in report["rounds"]) and report["accuracy_split"] == "val"


def test_late_rewinding_goes_back_to_step_k_of_round_0(small, few_digits, starts) -> None:
    k = 2
    model = small()
    reference = copy.deepcopy(model)

    class Stop(Exception):
        pass

    steps = {"n": 0}

    def stop_at_k(_m: nn.Module) -> None:
        steps["n"] += 1
        if steps["n"] == k:
            raise Stop

    with pytest.raises(Stop):  # the same training as round 0 (same seed, same batches), cut after k steps
        fit(reference, few_digits.train, TrainSpec(epochs=1, lr=1e-3, batch_size=128),
            hooks=HookSet([Hooks(after_step=stop_at_k)]), seed=0)
    after_k = reference.state_dict()
    compress.apply(model, LotteryTicketConfig(rounds=1, ratio=0.5, epochs=1, rewind=k, control="none"), data=few_digits)
    ticket_start = starts[1]
    for key, value in after_k.items():
        kept = ticket_start[key] != 0 if key.endswith("weight") and value.dim() >= 2 else ...  # num_batches_tracked is 0-dim
        assert torch.equal(ticket_start[key][kept], value[kept]), key
    assert _pruned(ticket_start) == pytest.approx(0.5, abs=1e-3)


def test_control_can_be_limited_or_skipped(small, few_digits) -> None:
    _, report = compress.apply(small(), LotteryTicketConfig(rounds=2, epochs=1, control="last_round"), data=few_digits)
    assert [r["control_accuracy"] is None for r in report["rounds"]] == [True, True, False]
    _, report = compress.apply(small(), LotteryTicketConfig(rounds=1, epochs=1, control="none"), data=few_digits)
    assert report["winning_ticket"] is None


def test_restore_keeps_the_mask_in_later_training(small, few_digits) -> None:
    technique = LotteryTicket(LotteryTicketConfig(rounds=1, ratio=0.5, epochs=1, control="none"))
    ctx = Context(example_inputs=(torch.zeros(1, 1, 8, 8),), data=few_digits)
    result = technique.apply(small(), ctx)
    buffer = io.BytesIO()
    torch.save(result.state, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = small(seed=1)
    restored = technique.restore(fresh, state, ctx)
    fresh.load_state_dict(result.model.state_dict())
    fit(fresh, few_digits.train, TrainSpec(epochs=1, lr=0.01), hooks=restored.hooks)
    for name, mask in state["masks"].items():
        assert bool((fresh.get_submodule(name).weight.detach()[~mask] == 0).all())


def test_rewinding_past_round_0_is_an_error(small, few_digits) -> None:
    with pytest.raises(EdgetierError, match="round 0 trains only 3 optimizer steps") as info:
        compress.apply(small(), LotteryTicketConfig(rounds=1, epochs=1, rewind=500), data=few_digits)
    assert "rewind: init" in str(info.value)


def test_lottery_needs_data(small) -> None:
    with pytest.raises(EdgetierError, match="no data was given"):
        compress.apply(small(), LotteryTicketConfig(rounds=1, epochs=1))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ratio": 1.0}, "ratio must be strictly between 0 and 1"),
    ({"rewind": -1}, "rewind must be 'init' or a number of optimizer steps >= 0"),
    ({"rewind": "start"}, "rewind"),
    ({"rounds": 0}, "greater than or equal to 1"),
])
def test_bad_values_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LotteryTicketConfig(**kwargs)


def test_structured_rounds_remove_channels_and_rewind_the_survivors(small, few_digits, starts) -> None:
    """Structured tickets are physically smaller each round; their survivors start at init; the
    control has the same shapes and fresh values; restore rebuilds the shapes so weights load."""
    model = small()
    init = copy.deepcopy(model.state_dict())
    config = LotteryTicketConfig(rounds=2, ratio=0.5, epochs=1, granularity="structured")
    ctx = Context(example_inputs=(torch.zeros(1, 1, 8, 8),), data=few_digits)
    result = LotteryTicket(config).apply(model, ctx)
    report = result.report
    assert len(starts) == 5 and report["granularity"] == "structured"  # round 0, then ticket + control per round
    # width 16, half of the remaining channels per round: 16 -> 8 -> 4 in every pruned layer (no target: no rounding)
    assert report["layers"]["stem.conv"]["channels"] == [16, 4]
    assert report["layers"]["head.fc"]["channels"] == [10, 10]  # the classifier keeps its outputs
    params = [r["params"] for r in report["rounds"][1:]]
    assert params[0] > params[1] and report["rounds"][2]["sparsity"] > 0.8  # convs keep ~1/16 of their weights
    # the round-1 ticket starts from the initial values of the filters it kept: every stem filter
    # (one input channel, so no input was removed from it) is one of the 16 initial filters
    kept, initial = starts[1]["stem.conv.weight"], init["stem.conv.weight"]
    assert kept.shape[0] == 8 and all(any(torch.equal(f, g) for g in initial) for f in kept)
    assert all(starts[4][k].shape == starts[3][k].shape for k in starts[3])  # control: same architecture
    assert not all(torch.equal(starts[4][k], starts[3][k]) for k in starts[3] if k.endswith("weight"))
    # resume: a fresh model rebuilt from the saved state takes the ticket's weights and gives its outputs
    buffer = io.BytesIO()
    torch.save(result.state, buffer)
    buffer.seek(0)
    fresh = small(seed=1)
    LotteryTicket(config).restore(fresh, torch.load(buffer, weights_only=True), ctx)
    fresh.load_state_dict(result.model.state_dict())
    x = torch.from_numpy(few_digits.test.x[:16])
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), result.model.eval()(x))
