"""Latency ratios measured the way the benchmarks quote them: several files timed in turn, in one run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.measure import latency_ms


def alternate_latency(paths: dict[str, Path], x_one: np.ndarray, *, rounds: int = 9, repeats: int = 200) -> dict:
    """Median over `rounds` of each file's median batch-1 latency (onnxruntime, one thread), the files
    timed in turn every round so that a load change on the machine hits all of them alike."""
    medians: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            medians[name].append(latency_ms(path, x_one, threads=1, repeats=repeats).median_ms)
    return {name: float(np.median(values)) for name, values in medians.items()}
