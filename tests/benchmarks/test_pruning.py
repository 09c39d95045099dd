"""Issue 3's "Done when" numbers, on MNIST-1D with the reference resnet1d (width 64, 15 epochs).

    pytest -m benchmark tests/benchmarks/test_pruning.py -s

Every accuracy, size and latency is measured on the exported ONNX file through the pipeline's
own `deploy` (the `measure` fixture helper). Latency ratios come from dense and pruned files
timed alternately in the same process, several rounds each, median of the rounds' medians: the
CPU is shared, so one-shot timings are noisy.

Sparse storage (issue 14, measured 2026-11-30, `-k unstructured`, one run): at 90 % global sparsity the
ONNX file stores kept values + 1-byte gaps (`export.sparse_store`): 79,997 B against the dense file's
551,666 B (14.5 %), DEFLATE of it 64,267 B; outputs bit-identical to the dense file's in onnxruntime;
latency 0.128 vs 0.182 ms (dense weights rebuilt at load; the gap is load noise, not a gain).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import compress
from compress.core.train import TrainSpec, fit
from compress.datasets import Dataset
from compress.models import build
from compress.prune.lottery import LotteryTicketConfig
from compress.prune.structured import StructuredPruneConfig
from compress.prune.unstructured import UnstructuredPruneConfig
from tests.benchmarks.conftest import SEED, measure
from tests.benchmarks.timing import alternate_latency

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def dense_entry(dense_resnet1d: nn.Module, mnist1d: Dataset, tmp_path_factory) -> dict:
    """The dense reference, exported and measured once: (report entry, path of its ONNX file)."""
    out = tmp_path_factory.mktemp("dense")
    entry = measure(copy.deepcopy(dense_resnet1d), mnist1d, out, name="dense")
    return {"entry": entry, "onnx": out / "dense" / "model.onnx"}


def test_structured_half_the_channels(fresh_dense, mnist1d, dense_entry, tmp_path) -> None:
    dense = dense_entry["entry"]
    config = StructuredPruneConfig(ratio=0.5, importance="l2", steps=2, finetune_epochs=2)
    model, report = compress.apply(fresh_dense, config, target="rpi4", data=mnist1d, seed=SEED)
    fit(model, mnist1d.train, TrainSpec(epochs=10, lr=1e-3), seed=SEED)  # the stage's fine-tuning
    pruned = measure(model, mnist1d, tmp_path, name="structured")
    latency = alternate_latency({"dense": dense_entry["onnx"], "structured": tmp_path / "structured" / "model.onnx"},
                                mnist1d.test.x[:1])
    macs_ratio = pruned["macs"] / dense["macs"]
    latency_ratio = latency["structured"] / latency["dense"]
    drop = dense["accuracy"] - pruned["accuracy"]
    print(f"\nstructured 50 %: params {dense['params']} -> {pruned['params']}, MACs {dense['macs']} -> "
          f"{pruned['macs']} ({macs_ratio:.1%}), file {dense['bytes']} -> {pruned['bytes']} bytes, latency "
          f"{latency['dense']:.4f} -> {latency['structured']:.4f} ms ({latency_ratio:.2f}x, 9 alternating rounds), "
          f"accuracy {dense['accuracy']:.2%} -> {pruned['accuracy']:.2%} (drop {drop * 100:.2f} pt)")
    assert macs_ratio <= 0.35
    assert latency_ratio <= 0.6
    assert drop <= 0.015
    assert pruned["bytes"] < 0.35 * dense["bytes"] and report["channels_removed"] == pytest.approx(0.5)


def test_unstructured_90_percent_global_gradual(fresh_dense, mnist1d, dense_entry, tmp_path) -> None:
    dense = dense_entry["entry"]
    spec = TrainSpec(epochs=10, lr=1e-3)
    steps = spec.epochs * math.ceil(len(mnist1d.train.y) / spec.batch_size)
    config = UnstructuredPruneConfig(ratio=0.9, scope="global", schedule="gradual", steps=steps)
    result = compress.apply(fresh_dense, config, data=mnist1d, seed=SEED)
    fit(result.model, mnist1d.train, spec, hooks=result.hooks, seed=SEED)
    sparse = measure(result.model, mnist1d, tmp_path, name="unstructured")
    storage = sparse["compressed_bytes"] / dense["compressed_bytes"]
    drop = dense["accuracy"] - sparse["accuracy"]
    print(f"\nunstructured 90 % global gradual: sparsity {result.report['sparsity']:.2%}, non-zero params "
          f"{sparse['nonzero_params']} of {sparse['torch_params']}, file {sparse['bytes']} bytes (dense "
          f"{dense['bytes']}), DEFLATE {dense['compressed_bytes']} -> {sparse['compressed_bytes']} bytes "
          f"({storage:.1%} of dense compressed, {sparse['compressed_bytes'] / dense['bytes']:.1%} of the dense file), "
          f"accuracy {dense['accuracy']:.2%} -> {sparse['accuracy']:.2%} (drop {drop * 100:.2f} pt), latency "
          f"{dense['latency_ms']:.4f} / {sparse['latency_ms']:.4f} ms (no gain expected); file stored sparse "
          f"{sparse['bytes'] / dense['bytes']:.1%} of dense")
    assert result.report["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert storage <= 0.3
    # the file itself, as onnxruntime loads it: kept values + 1-byte gaps (export.sparse_store), 10 % x 5 B of 4 B
    assert sparse["bytes"] <= 0.3 * dense["bytes"]
    assert drop <= 0.02


def test_lottery_ticket_beats_its_random_reinit_control(mnist1d, tmp_path) -> None:
    # The classic experiment starts untrained: the reference resnet1d at its own initialization
    # (the dense fixture's architecture and seed, before its training).
    torch.manual_seed(SEED)
    model = build("resnet1d", input_shape=mnist1d.input_shape, num_classes=mnist1d.num_classes)
    config = LotteryTicketConfig(rounds=5, ratio=0.2, epochs=3, lr=1e-3, rewind="init")
    model, report = compress.apply(model, config, data=mnist1d, seed=SEED)
    ticket = measure(model, mnist1d, tmp_path, name="ticket")
    print("\nlottery ticket, 5 rounds x 20 %, rewind to init, 3 epochs per round (val accuracy):")
    for r in report["rounds"]:
        control = "-" if r["control_accuracy"] is None else f"{r['control_accuracy']:.2%}"
        print(f"  round {r['round']}: sparsity {r['sparsity']:.2%}  ticket {r['ticket_accuracy']:.2%}  "
              f"random-reinit control {control}")
    print(f"  exported ticket: test accuracy {ticket['accuracy']:.2%}, compressed {ticket['compressed_bytes']} bytes")
    last = report["rounds"][-1]
    assert last["sparsity"] == pytest.approx(1 - 0.8 ** 5, abs=1e-4)
    assert last["ticket_accuracy"] >= last["control_accuracy"]
    assert report["winning_ticket"] is True
