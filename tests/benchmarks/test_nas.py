"""Issue 8's "Done when" numbers, on MNIST-1D (10,000 samples: 7,000 train / 1,000 val / 2,000 test).

    pytest -m benchmark tests/benchmarks/test_nas.py -s

- The reference is the quickstart's hand-sized end model: resnet1d width 32 trained 12 epochs
  (lr 3e-3), half of its channels removed with `structured_prune` for rpi4, fine-tuned 3 epochs
  (lr 5e-4): 15 epochs in all.
- The search: 30 trials of NNI's regularized evolution under rpi4's budget — the storage budget and
  at most the reference's estimated latency (the same roofline the report uses, fp32 both); each
  candidate trains 6 epochs on the whole train split (7,000) and is scored on the validation split.
  Measured (2 shared cores) with bit-identical trials: 5 epochs x 3,500 samples chose a model at
  97.05 % test, 6 epochs x 7,000 one at 97.25 %, against the reference's 97.60 % — a gap of 7-11 of
  2,000 test samples, about one standard error (0.4 %); bar 2 held in both.
- The 3 best distinct architectures by proxy accuracy (`finalists`) are retrained from scratch for
  the reference's 15 epochs on the whole train split (one cosine run, the usual final training of a
  searched model) and the most accurate on validation is chosen; its test accuracy is the number.
  The reference keeps the quickstart's schedule, its better one (95.00 % with cosine decay in both
  phases). Last run (2 shared cores): the finalists confirmed the proxy's best,
  `s16 | d1 w16 m16 k3 | d1 w32 m16 k3 | d2 w16 m8 k3`: 97.95 % test vs the reference's 97.60 %, at
  0.2110 vs 0.2142 ms estimated, 7,498 vs 8,858 params, 79,520 vs 101,920 MACs; Ray chose the same.
  The margin is within seed noise: the same architecture and schedule from another initial seed
  gave 97.10 % in the run before, which retrained the proxy's best from scratch without finalists:
  reference 97.60 % at 0.2142 ms; chosen `s16 | d1 w16 m16 k3 | d1 w32 m16 k3 | d2 w16 m8 k3` at
  0.2110 ms, 7,498 params, 79,520 MACs, 97.10 % — bar 1 NOT met (-0.5 pt); Ray chose the same
  architecture with bit-identical trials (bar 2 met). With the reference's own 12 + 3 schedule the
  chosen models reached 97.25 % (constant-rate proxy) and 96.55 %: the reference, pruned from a
  trained model twice as wide, is a strong baseline for a from-scratch architecture at this size.
- Accuracy and estimated latency of both are measured on their exported ONNX files (`measure`).
- The same search on a local 2-CPU Ray instance must choose the same architecture.
"""

from __future__ import annotations

import time

import pytest
import torch

import compress
from compress.core.train import TrainSpec, fit
from compress.datasets import Dataset
from compress.models import build
from compress.nas.arch import arch_key
from compress.nas.config import NASConfig
from compress.nas.costs import CostModel
from compress.prune.structured import StructuredPruneConfig
from compress.targets import load_target
from tests.benchmarks.conftest import SEED, measure

pytestmark = pytest.mark.benchmark

# the reference trains exactly as the quickstart trains its end model (constant rates: with cosine
# decay in both phases it reached only 95.00 %, so the reference keeps its better schedule)
FIRST = TrainSpec(epochs=12, lr=3e-3, batch_size=128)
TUNE = TrainSpec(epochs=3, lr=5e-4, batch_size=128)



def _search_config(max_latency_ms: float, executor: str) -> NASConfig:
    return NASConfig(strategy="evolution", trials=30, population=10, sample_size=4, mutation_prob=0.3, batch=4,
                     space={"family": "resnet1d", "width": 32, "depth": [1, 2], "width_mult": [0.25, 0.5, 0.75, 1.0],
                            "kernel": [3, 5, 7], "expansion": [0.5, 1.0]},
                     budget={"max_latency_ms": max_latency_ms, "precision": "fp32"},
                     proxy={"epochs": 6, "samples": None, "lr": 3e-3, "batch_size": 128, "schedule": "cosine"},
                     finalists=3, final_epochs=15,
                     executor=executor, workers=2)


def test_evolution_beats_the_hand_sized_end_model_and_ray_agrees(mnist1d: Dataset, tmp_path) -> None:
    rpi4 = load_target("rpi4")
    torch.manual_seed(SEED)
    reference = build("resnet1d", input_shape=mnist1d.input_shape, num_classes=mnist1d.num_classes, width=32)
    fit(reference, mnist1d.train, FIRST, seed=SEED)
    reference, _ = compress.apply(reference, StructuredPruneConfig(ratio=0.5), target=rpi4, data=mnist1d, seed=SEED)
    fit(reference, mnist1d.train, TUNE, seed=SEED)
    ref = measure(reference, mnist1d, tmp_path, name="reference")
    # the budget: the reference's cost by the same roofline the search applies to every candidate
    cost = CostModel(NASConfig().budget, rpi4, input_shape=mnist1d.input_shape, num_classes=mnist1d.num_classes)
    ref_budget_ms = cost.latency_of(reference)

    start = time.perf_counter()
    result = compress.apply(reference, _search_config(ref_budget_ms, "inprocess"), target=rpi4, data=mnist1d,
                            seed=SEED)
    search_s = time.perf_counter() - start
    chosen = result.state["arch"]
    model = result.model  # the finalist chosen on validation: 15 epochs from scratch, as the reference's 12 + 3
    found = measure(model, mnist1d, tmp_path, name="nas")

    start = time.perf_counter()
    on_ray = compress.apply(reference, _search_config(ref_budget_ms, "ray"), target=rpi4, data=mnist1d, seed=SEED)
    ray_s = time.perf_counter() - start

    trained = [c for c in result.report["candidates"] if c["accuracy"] is not None]
    print(f"\nreference (width 32, pruned 50 %, 15 epochs): {ref['accuracy']:.2%} test, "
          f"{ref['estimated_latency_ms']:.4f} ms est. on rpi4 (search budget {ref_budget_ms:.4f} ms), "
          f"{ref['params']:,} params, {ref['macs']:,} MACs")
    print(f"NAS chosen {arch_key(chosen)}: {found['accuracy']:.2%} test, {found['estimated_latency_ms']:.4f} ms est., "
          f"{found['params']:,} params, {found['macs']:,} MACs; proxy val {result.report['chosen']['accuracy']:.2%}")
    print(f"search: {len(trained)} trials, {result.report['rejected']} rejected before training, {search_s:.0f} s "
          f"in-process, {ray_s:.0f} s on Ray (2 workers, includes Ray start-up); Ray chose "
          f"{on_ray.report['chosen']['arch']}")
    here = [c["accuracy"] for c in result.report["candidates"]]
    there = [c["accuracy"] for c in on_ray.report["candidates"]]
    print("proxy val accuracy per trial, in-process:", " ".join(f"{a:.3f}" for a in here if a is not None))
    print("proxy val accuracy per trial, on Ray:    ", " ".join(f"{a:.3f}" for a in there if a is not None))
    differ = [i for i, (a, b) in enumerate(zip(here, there, strict=False)) if a != b]
    print(f"first trial that differs: {differ[0] if differ else None} (of {len(here)} candidates)")
    assert len(trained) == 30
    assert found["accuracy"] >= ref["accuracy"]
    assert found["estimated_latency_ms"] <= ref["estimated_latency_ms"]
    assert on_ray.state["arch"] == chosen
    assert there == here  # bit-identical trials (see compress/nas/trial.py), so no tolerance
