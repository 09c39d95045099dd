"""Latency ratios measured the way the benchmarks quote them: several files (or text bundles) timed in
turn, in one run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from export import runtime
from export.measure import latency_ms


def alternate_latency(paths: dict[str, Path], x_one: np.ndarray, *, rounds: int = 9, repeats: int = 200) -> dict:
    """Median over `rounds` of each file's median batch-1 latency (onnxruntime, one thread), the files
    timed in turn every round so that a load change on the machine hits all of them alike."""
    medians: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            medians[name].append(latency_ms(path, x_one, threads=1, repeats=repeats).median_ms)
    return {name: float(np.median(values)) for name, values in medians.items()}


def alternating_batch1_ms(bundles: list[runtime.Bundle], texts: list[str], rounds: int = 150) -> list[float]:
    """Median batch-1 latency per text bundle, timed alternately on the same sentences so all see the
    same machine load (the cores are shared); the tokenizer runs outside the timed call."""
    feeds = [[b.tokenizer.encode([t], names=[i["name"] for i in b.manifest["inputs"]]) for t in texts]
             for b in bundles]
    times: list[list[float]] = [[] for _ in bundles]
    for r in range(rounds):
        for k, b in enumerate(bundles):
            feed = feeds[k][r % len(texts)]
            b.session.run(None, feed)  # warm
            start = time.perf_counter()
            b.session.run(None, feed)
            times[k].append(time.perf_counter() - start)
    return [float(np.median(t) * 1e3) for t in times]
