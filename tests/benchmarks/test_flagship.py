"""Issue 14's flagship numbers: `recipes/flagship.yaml` run as shipped, three seeds, every number
measured on the exported files.

- end variant: file ≥ 100× smaller than the cloud model's fp32 ONNX, accuracy of the exported
  file ≥ cloud − 1.0 pt (mean over seeds 0-2, spread printed);
- edge variant: file ≥ 20× smaller, onnxruntime batch-1 latency ≤ 1/4 of the cloud model's (the two
  files timed in turn in one run), accuracy ≥ cloud − 0.5 pt (mean over seeds);
- cascade end → edge → cloud (`edgetier cascade`): ≥ 80 % of test samples answered on the end
  tier, accuracy ≥ cloud − 0.2 pt, mean simulated latency ≤ 1/10 of cloud-only (mean over seeds).

The test split is 1,600 samples, so one sample is 0.06 pt: per-seed margins of a few samples are
seed noise, which is why the accuracy bars hold for the mean of three seeds. Runs for ~30-45 min
on 2 cores: `pytest -m benchmark tests/benchmarks/test_flagship.py -s`.

Measured 2026-12-07 (one run, 8.2 min, OMP_NUM_THREADS=1 beside two other jobs, an AVX-512 VNNI host;
mixed precision keeping a mix only when measurably better on validation): end 110.1-120.3x smaller,
-0.15 pt mean (-0.38..0.00); edge 20.28x smaller, +0.08 pt mean (-0.25..+0.31), latency 0.095x the cloud
model's (0.025 ms against 0.27 ms, all three seeds); cascade 97.1 % answered on the end tier (95.9..98.3),
+0.13 pt, mean simulated latency 0.018x cloud-only. All bars met.

Measured before (2026-11-30, one run, 33.6 min, a non-VNNI AVX2 host, a loaded 2-core machine; edge with uint8 activations): end
108.8-120.3x smaller, -0.23 pt mean (-0.44..-0.06); edge 20.28x smaller, -0.15 pt mean (-0.31..+0.06),
latency 0.21 / 0.18 / 0.16x the cloud model's (0.088-0.102 ms against 0.49-0.54 ms); cascade 97.5 %
answered on the end tier, +0.08 pt, mean simulated latency 0.023x cloud-only. All bars met. (The run
before, with int8 activations, missed the edge latency bar at 0.26-0.40x: onnxruntime fused only 3 of
the 10 convolutions, see `export/quantize.py`; its edge accuracy was +0.19 pt mean.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import compress
from compress.cascade import simulate
from compress.datasets import load
from tests.benchmarks.timing import alternate_latency

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "flagship.yaml"
SEEDS = (0, 1, 2)


def _seed_numbers(run_dir: Path, models: list[dict], seed: int) -> dict:
    by = {m["name"]: m for m in models}
    cloud, edge, end = by["cloud"], by["edge"], by["end"]
    data = load("mnist1d", seed=seed, samples=8000)
    latency = alternate_latency({"cloud": run_dir / "cloud" / "model.onnx", "edge": run_dir / "edge" / "model.onnx"},
                                data.test.x[:1])
    cascade = simulate(run_dir, tiers=["end", "edge", "cloud"])
    return {
        "seed": seed,
        "cloud": {"bytes": cloud["bytes"], "accuracy": cloud["accuracy"], "latency_ms": latency["cloud"]},
        "edge": {"bytes": edge["bytes"], "accuracy": edge["accuracy"], "latency_ms": latency["edge"],
                 "size_ratio": cloud["bytes"] / edge["bytes"], "latency_ratio": latency["edge"] / latency["cloud"],
                 "precision": edge["precision"], "params": edge["params"]},
        "end": {"bytes": end["bytes"], "accuracy": end["accuracy"], "size_ratio": cloud["bytes"] / end["bytes"],
                "precision": end["precision"], "params": end["params"], "format": end.get("format")},
        "cascade": {"accuracy": cascade["cascade"]["accuracy"], "end_share": cascade["cascade"]["share_per_tier"][0],
                    "mean_latency_ms": cascade["cascade"]["mean_latency_ms"],
                    "cloud_only_ms": cascade["cloud_only"]["mean_latency_ms"],
                    "latency_ratio": cascade["cascade"]["mean_latency_ms"] / cascade["cloud_only"]["mean_latency_ms"]},
    }


def _mean_spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


@pytest.mark.benchmark
def test_flagship_three_seeds(tmp_path):
    per_seed = []
    for seed in SEEDS:
        result = compress.run(compress.load_recipe(RECIPE), out_dir=tmp_path / f"seed{seed}", seed=seed)
        per_seed.append(_seed_numbers(result.run_dir, result.models, seed))
    summary = {
        "end_minus_cloud_pt": _mean_spread([100 * (s["end"]["accuracy"] - s["cloud"]["accuracy"]) for s in per_seed]),
        "edge_minus_cloud_pt": _mean_spread([100 * (s["edge"]["accuracy"] - s["cloud"]["accuracy"]) for s in per_seed]),
        "cascade_minus_cloud_pt": _mean_spread([100 * (s["cascade"]["accuracy"] - s["cloud"]["accuracy"])
                                                for s in per_seed]),
        "end_size_ratio": _mean_spread([s["end"]["size_ratio"] for s in per_seed]),
        "edge_size_ratio": _mean_spread([s["edge"]["size_ratio"] for s in per_seed]),
        "edge_latency_ratio": _mean_spread([s["edge"]["latency_ratio"] for s in per_seed]),
        "cascade_end_share": _mean_spread([s["cascade"]["end_share"] for s in per_seed]),
        "cascade_latency_ratio": _mean_spread([s["cascade"]["latency_ratio"] for s in per_seed]),
    }
    print(json.dumps({"per_seed": per_seed, "summary": summary}, indent=2))
    # sizes are bytes on disk, the same every seed up to a few bytes: each seed must clear them
    assert summary["end_size_ratio"]["min"] >= 100
    assert summary["edge_size_ratio"]["min"] >= 20
    # latency: a ratio measured in one run (files timed in turn), each seed
    assert summary["edge_latency_ratio"]["max"] <= 0.25
    # accuracy: the mean over three seeds (one test sample is 0.06 pt)
    assert summary["end_minus_cloud_pt"]["mean"] >= -1.0
    assert summary["edge_minus_cloud_pt"]["mean"] >= -0.5
    assert summary["cascade_minus_cloud_pt"]["mean"] >= -0.2
    assert summary["cascade_end_share"]["mean"] >= 0.80
    assert summary["cascade_latency_ratio"]["mean"] <= 0.1
