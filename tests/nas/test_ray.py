"""Trials as Ray tasks on a local 2-CPU instance give the same search as in-process (slow: Ray's
start-up alone takes 20-40 s on two shared cores)."""

from __future__ import annotations

import pytest

import compress
from compress.nas.config import NASConfig

from .conftest import tiny_config


@pytest.mark.slow
def test_ray_with_two_workers_matches_in_process(cloud, digits) -> None:
    import ray

    results = {}
    for executor in ("inprocess", "ray"):
        config = NASConfig.from_dict(tiny_config(executor=executor, workers=2))
        results[executor] = compress.apply(cloud, config, target="rpi4", data=digits, seed=5)
    assert not ray.is_initialized()  # the local instance the search started is shut down
    assert results["ray"].state["arch"] == results["inprocess"].state["arch"]
    assert results["ray"].report["candidates"] == results["inprocess"].report["candidates"]
