"""`strategy: spos`: weight sharing is exact (a path through the supernet computes what the extracted
plain model computes), and a tiny one-shot search runs end to end within the budget, deterministically."""

from __future__ import annotations

import numpy as np
import torch

import compress
from compress.core.context import Context
from compress.core.train import evaluate
from compress.nas.config import NASConfig, SpaceSpec
from compress.nas.costs import DIMS, arch_from_sample
from compress.nas.oneshot import Supernet
from compress.nas.technique import NAS

from .conftest import tiny_config


def test_a_path_through_the_supernet_is_the_extracted_model() -> None:
    spec = SpaceSpec(width=16, depth=(1, 2), width_mult=(0.5, 1.0), kernel=(3, 5, 7), expansion=(0.5, 1.0))
    net = Supernet(spec, input_shape=(1, 40), num_classes=10, seed=0, channel_multiple=4)
    x = torch.randn(8, 1, 40, generator=torch.Generator().manual_seed(0))
    rng = np.random.RandomState(0)
    for _ in range(4):
        sample = {f"stage{i}_{d}": getattr(spec, d)[rng.randint(len(getattr(spec, d)))] for i in (1, 2, 3) for d in DIMS}
        arch = arch_from_sample(spec, sample, channel_multiple=4)
        plain = net.extract(arch).train()  # batch statistics, as the supernet trains
        # Same weights, same ops; only the memory layout of the sliced weights differs, which may
        # change float rounding in the last bits: 1e-5 on logits of order 1.
        torch.testing.assert_close(net(x, arch), plain(x), atol=1e-5, rtol=1e-5)


def test_spos_search_on_the_digits(cloud, digits) -> None:
    config = NASConfig.from_dict(tiny_config(strategy="spos", trials=6, supernet_epochs=3))
    ctx = Context(example_inputs=cloud.example_inputs(), target=compress.targets.load_target("rpi4"), data=digits,
                  seed=3)
    result = NAS(config).apply(cloud, ctx)
    report = result.report
    scored = [c for c in report["candidates"] if c["accuracy"] is not None]
    assert report["strategy"] == "spos" and report["trials"] == len(scored) == 6
    assert all(c["feasible"] and c["latency_ms"] <= 0.25 for c in scored)
    assert report["chosen"]["accuracy"] == max(c["accuracy"] for c in scored)
    # the returned model is the chosen candidate with its inherited weights: its score, reproduced
    assert evaluate(result.model, digits.val) == report["chosen"]["accuracy"]
    # the supernet learned: inherited weights score ~0.49 here (3 supernet epochs on 256 digits), the
    # candidate itself untrained; 0.3 is three times chance (0.1), well below that, above any fluke
    assert report["chosen"]["accuracy"] > 0.3
    again = NAS(config).apply(cloud, ctx).report
    assert again["candidates"] == report["candidates"]
