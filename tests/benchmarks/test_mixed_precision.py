"""Issue 14's mixed-precision bar: at the same budget, the stage's pick is at least as accurate on the test split
as the best uniform width that fits — `avg_bits: 4` against uniform 4-bit, `avg_bits: 3` against uniform 3- and
2-bit (3 bits is stored as 4 but counts 3 in an `avg_bits` budget, so it fits) — with `bits: [2, 4, 8]`, on a 1-D
model (MNIST-1D, the reference resnet1d of width 64) and a 2-D one (digits, resnet2d of width 32).

    pytest -m benchmark tests/benchmarks/test_mixed_precision.py -s

Each run starts from the same trained fp32 model; the mixed stage gets `trial_epochs: 1` per candidate (the
uniform width that fits, the sensitivity optimum, two Pareto points) on the same training settings, then every
model — mixed and uniform — gets the same QAT_TRAIN fine-tuning with the same seed. Accuracy is the exported QCDQ
file's in onnxruntime (`measure`, the pipeline's own deploy). Fine-tuning seeds 0, 1, 2: the margin is compared on
the mean, and the spread (min..max over seeds) is printed next to it.

Measured (2026-11-30, one run, a heavily shared 2-CPU machine; test accuracy of the exported file, mean over seeds
0-2, min..max):
- digits resnet2d w32: uniform 4-bit 98.52 % (98.33..98.61, 173,282 B); mixed avg_bits 4 98.52 % (98.33..98.61,
  157,219 B: 'pareto 1' at 3.57 bits kept on seed 0, uniform 4-bit on seeds 1-2 — the sensitivity optimum *was*
  uniform 4-bit); uniform 3-bit 98.43 % (98.33..98.61), uniform 2-bit 98.33 % (98.06..98.61); mixed avg_bits 3
  98.52 % (98.33..98.61, 118,084 B). Passes, with margins (0.0 and +0.09 pt) inside the seed spread.
- MNIST-1D resnet1d w64: only seed 0 and avg_bits 4 measured (the same code path run from a script; the full test
  did not fit the session on the shared machine): uniform 4-bit 98.10 %, mixed avg_bits 4 98.10 % (87,718 B both) —
  it kept uniform 4-bit: after one epoch the candidates scored on validation uniform 98.2 %, the sensitivity
  optimum (3.97 bits) 97.6 %, 'pareto 1' (3.55 bits) 98.2 % (a tie, so uniform), 'pareto 2' (3.07 bits) 98.1 %.
  The summed-sensitivity pick alone would have lost 0.6 pt on validation here. avg_bits 3 and seeds 1-2 not run.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from compress.core.context import Context
from compress.core.train import TrainSpec, fit
from compress.datasets import Dataset
from compress.quant.mixed_precision import MixedPrecision, MixedPrecisionConfig
from compress.quant.qat import QAT, QATConfig
from compress.targets import load_target
from tests.benchmarks.conftest import measure

pytestmark = pytest.mark.benchmark

QAT_TRAIN = TrainSpec(epochs=3, lr=5e-4, batch_size=128)
TARGET = "rpi4"
SEEDS = (0, 1, 2)
EPS = 1e-9  # accuracies are fractions of the test set: equality is a pass




def _run(dense: nn.Module, data: Dataset, technique: Any, out: Path, name: str, seed: int) -> dict[str, Any]:
    ctx = Context(example_inputs=(torch.from_numpy(data.test.x[:1]),), target=load_target(TARGET), data=data,
                  seed=seed, train=QAT_TRAIN)
    result = technique.apply(copy.deepcopy(dense), ctx)
    fit(result.model, data.train, QAT_TRAIN, seed=seed)
    entry = measure(result.model, data, out, name=f"{name}-s{seed}", target=TARGET, export_plan=result.export)
    return {"accuracy": entry["accuracy"], "bytes": entry["bytes"], "report": result.report}


def _family(dense: nn.Module, data: Dataset, out: Path, label: str) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    configs = {"uniform4": QAT(QATConfig(weight_bits=4)), "uniform3": QAT(QATConfig(weight_bits=3)),
               "uniform2": QAT(QATConfig(weight_bits=2))}
    for avg in (4, 3):
        configs[f"mixed_avg{avg}"] = MixedPrecision(MixedPrecisionConfig(bits=(2, 4, 8), budget={"avg_bits": avg},
                                                                         trials=2, trial_epochs=1))
    for name, technique in configs.items():
        runs[name] = [_run(dense, data, technique, out, name, seed) for seed in SEEDS]
    print(f"\n{label} (test accuracy of the exported file, seeds {SEEDS})")
    for name, rs in runs.items():
        accs = [100 * r["accuracy"] for r in rs]
        print(f"  {name:<11} mean {statistics.mean(accs):6.2f} %  spread {min(accs):.2f}..{max(accs):.2f}  "
              f"bytes {rs[0]['bytes']:,}")
        for seed, r in zip(SEEDS, rs, strict=True):
            if "candidates" in r["report"]:
                print(f"    seed {seed}: kept {r['report']['chosen']['candidate']!r}; candidates:",
                      [(c["name"], c["avg_bits"], c["val_accuracy_quantized"], c["val_accuracy"])
                       for c in r["report"]["candidates"]])
    return runs


def _mean(runs: list[dict[str, Any]]) -> float:
    return statistics.mean(r["accuracy"] for r in runs)


def _check(runs: dict[str, list[dict[str, Any]]]) -> None:
    for r in runs["mixed_avg4"]:
        assert r["report"]["chosen"]["avg_bits"] <= 4 + 1e-9
    for r in runs["mixed_avg3"]:
        assert r["report"]["chosen"]["avg_bits"] <= 3 + 1e-9
    assert _mean(runs["mixed_avg4"]) >= _mean(runs["uniform4"]) - EPS
    assert _mean(runs["mixed_avg3"]) >= max(_mean(runs["uniform3"]), _mean(runs["uniform2"])) - EPS


def test_mixed_precision_never_loses_to_uniform_resnet1d(fresh_dense, mnist1d, tmp_path):
    _check(_family(fresh_dense, mnist1d, tmp_path, "MNIST-1D resnet1d w64"))


def test_mixed_precision_never_loses_to_uniform_resnet2d(digits_resnet2d, digits, tmp_path):
    _check(_family(digits_resnet2d, digits, tmp_path, "digits resnet2d w32"))
