"""Latency timing shared by the benchmarks of text bundles."""

from __future__ import annotations

import time

import numpy as np

from export import runtime


def alternating_batch1_ms(bundles: list[runtime.Bundle], texts: list[str], rounds: int = 150) -> list[float]:
    """Median batch-1 latency per bundle, timed alternately on the same sentences so all see the
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
