"""Issue 14's mixed-precision bar: at the same budget, the stage's pick is at least as accurate on the test split
as the best uniform width that fits — `avg_bits: 4` against uniform 4-bit, `avg_bits: 3` against uniform 3- and
2-bit (3 bits is stored as 4 but counts 3 in an `avg_bits` budget, so it fits) — with `bits: [2, 4, 8]`, on a 1-D
model (MNIST-1D, the reference resnet1d of width 64) and a 2-D one (digits, resnet2d of width 32).

    pytest -m benchmark tests/benchmarks/test_mixed_precision.py -s

Each run starts from the same trained fp32 model; the mixed stage gives each candidate (the uniform width that
fits — the widest from 2 to 8 bits, so uniform 3-bit at avg_bits 3 —, the sensitivity optimum, two Pareto points)
the same QAT the kept allocation then gets (`trial_epochs` = QAT_TRAIN's 3 epochs, same settings and seed), and
keeps a mix only when it beats uniform on the same validation samples by more than one standard error of the
paired difference (right where uniform is wrong on b samples, wrong where it is right on c: b - c > sqrt(b + c));
the kept allocation is quantized again from the float model, and every model — mixed and uniform — gets the same
QAT_TRAIN fine-tuning with the same seed. Accuracy is the exported QCDQ file's in onnxruntime (`measure`, the
pipeline's own deploy). Fine-tuning seeds 0, 1, 2: the margin is compared on the mean, and the spread (min..max
over seeds) is printed.

Measured 2026-12-07 (OMP_NUM_THREADS=1, 2 cores shared with two other jobs; 2 passed in 13 min; test accuracy of
the exported file, mean over seeds 0-2, min..max):
- MNIST-1D resnet1d w64 (2,000 test signals, one = 0.05 pt): uniform 4-bit 98.10 % (97.30..98.80, 78,668 B),
  uniform 3-bit 98.10 % (97.85..98.25, 78,668 B: 3 bits are stored as int4), uniform 2-bit 97.53 % (49,048 B);
  mixed avg_bits 4 **98.68 %** (98.30..98.95, 71,829 B: 'pareto 1' at 3.55 bits with b/c 16/6, uniform, 'pareto 2'
  at 3.07 bits with 8/4) — +0.58 pt; mixed avg_bits 3 98.10 %: uniform 3-bit kept in every seed (the best mix
  was 11/10, 7/7, 6/10 samples against it) — a tie, passes.
- digits resnet2d w32 (360 test digits, one = 0.28 pt; 180 validation digits): uniform 4-bit 98.43 %
  (98.06..98.61), uniform 3-bit 98.33 % (97.78..98.89), uniform 2-bit 98.15 %; mixed avg_bits 4 98.43 % and
  avg_bits 3 98.33 %: uniform kept in every seed, every mix within 0-1 validation digit of it — ties, pass.
So the bar holds because the stage keeps uniform unless a mix is measurably better; on these models a mix is
measurably better only on MNIST-1D at avg_bits 4. What the rule replaced, same day, same seeds: keeping the
most accurate on validation (uniform on exact ties) let one-digit differences pick an equivalent mix that then
lost a test sample — digits avg_bits 4 98.33 % against uniform 4-bit 98.43 %, MNIST-1D avg_bits 3 98.08 %
against uniform 3-bit 98.10 % — both failing by one prediction.
Earlier (2026-11-30, uniform candidate from `bits` only, i.e. 2-bit at avg_bits 3): `trial_epochs: 1` gave
MNIST-1D avg_bits 3 97.83 % against uniform 2-bit 98.18 %, one epoch mis-ranking a slowly recovering 2-bit
allocation — hence trials as long as the final training.
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
                                                                         trials=2,
                                                                         trial_epochs=QAT_TRAIN.epochs))
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
                      [(c["name"], c["avg_bits"], c["val_accuracy_quantized"], c["val_accuracy"],
                        c.get("val_right_where_uniform_wrong"), c.get("val_wrong_where_uniform_right"))
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
