"""A search end to end on the digits: determinism, budget, order independence, the journal, restore."""

from __future__ import annotations

import json

import numpy as np
import torch

import compress
from compress.core.context import Context
from compress.nas import executors
from compress.nas.config import NASConfig
from compress.nas.technique import NAS

from .conftest import tiny_config


def _search(cloud, digits, tmp_path=None, **overrides):
    config = NASConfig.from_dict(tiny_config(**overrides))
    ctx = Context(example_inputs=cloud.example_inputs(), target=compress.targets.load_target("rpi4"), data=digits,
                  seed=3, workdir=tmp_path)
    return NAS(config).apply(cloud, ctx)


def test_evolution_search_is_deterministic_within_budget_and_returns_the_best(cloud, digits, tmp_path) -> None:
    first = _search(cloud, digits, tmp_path / "a")
    again = _search(cloud, digits)
    report = first.report
    trained = [c for c in report["candidates"] if c["accuracy"] is not None]
    assert report["trials"] == len(trained) == 6
    assert [c["arch"] for c in trained] == [c["arch"] for c in again.report["candidates"] if c["accuracy"] is not None]
    assert all(c["feasible"] and c["latency_ms"] <= 0.25 for c in trained)
    assert all(not c["feasible"] for c in report["candidates"] if c["accuracy"] is None)
    best = max(trained, key=lambda c: c["accuracy"])
    assert report["chosen"]["accuracy"] == best["accuracy"]
    # The returned model is the chosen architecture with its proxy weights: same accuracy as its trial.
    accuracy = compress.core.train.evaluate(first.model, digits.val)
    assert accuracy == report["chosen"]["accuracy"]
    assert (tmp_path / "a" / "pareto_latency.png").stat().st_size > 1000
    assert report["figures"]["pareto_size.png"] == str(tmp_path / "a" / "pareto_size.png")


def test_completion_order_does_not_change_the_search(cloud, digits, monkeypatch) -> None:
    """Ray finishes trials in any order; results reach NNI in submission order, so nothing changes."""
    reference = _search(cloud, digits).report["candidates"]
    original = executors.InProcessExecutor.map

    def reversed_map(self, jobs, on_done):
        out = original(self, jobs[::-1], lambda i, acc: on_done(len(jobs) - 1 - i, acc))
        return out[::-1]

    monkeypatch.setattr(executors.InProcessExecutor, "map", reversed_map)
    assert _search(cloud, digits).report["candidates"] == reference


def test_an_interrupted_search_continues_from_its_journal(cloud, digits, tmp_path) -> None:
    full = _search(cloud, digits, tmp_path)
    journal = tmp_path / "trials.jsonl"
    lines = journal.read_text().splitlines()
    assert len(lines) == full.report["trials_trained"] == len({c["arch"] for c in full.report["candidates"]
                                                               if c["accuracy"] is not None})
    journal.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # killed while writing the 4th line
    resumed = _search(cloud, digits, tmp_path)
    assert resumed.report["trials_from_journal"] == 3 and resumed.report["trials_trained"] == len(lines) - 3
    def strip(candidates):  # everything but where each accuracy came from
        return [{k: v for k, v in c.items() if k != "source"} for c in candidates]

    assert strip(resumed.report["candidates"]) == strip(full.report["candidates"])
    # a changed search ignores the old journal instead of reusing its accuracies
    changed = _search(cloud, digits, tmp_path, proxy={"epochs": 1, "samples": 200, "lr": 0.01, "batch_size": 64})
    assert changed.report["trials_from_journal"] == 0
    assert all(json.loads(line)["accuracy"] >= 0 for line in journal.read_text().splitlines()[:3])


def test_restore_rebuilds_the_chosen_architecture(cloud, digits) -> None:
    result = _search(cloud, digits, strategy="random", trials=3, batch=3)
    state_dict = result.model.state_dict()
    ctx = Context(example_inputs=cloud.example_inputs(), data=None)
    restored = NAS(NASConfig.from_dict(tiny_config())).restore(cloud, result.state, ctx).model
    restored.load_state_dict(state_dict)  # fails on any shape mismatch
    x = torch.from_numpy(digits.test.x[:16])
    result.model.eval(), restored.eval()
    np.testing.assert_array_equal(result.model(x).detach().numpy(), restored(x).detach().numpy())
    # state is plain values: what checkpoints loaded with weights_only=True accept
    assert json.loads(json.dumps(result.state)) == result.state


def test_finalists_are_retrained_longer_and_chosen_on_validation(cloud, digits) -> None:
    """The top-2 distinct architectures by proxy accuracy get a longer training on the whole train
    split; the chosen one is the more accurate of them on validation, and the returned model is it."""
    result = _search(cloud, digits, finalists=2, final_epochs=2)
    report = result.report
    finals = report["finalists"]
    trained = sorted((c for c in report["candidates"] if c["accuracy"] is not None),
                     key=lambda c: -c["accuracy"])
    assert len(finals) == 2 and finals[0]["arch"] == trained[0]["arch"] and finals[0]["arch"] != finals[1]["arch"]
    assert all(f["epochs"] == 2 for f in finals)
    winner = max(finals, key=lambda f: f["final_accuracy"])
    assert report["chosen"]["arch"] == winner["arch"]
    assert compress.core.train.evaluate(result.model, digits.val) == winner["final_accuracy"]
