"""End → edge → cloud cascade: routing over real bundles, calibration, and the simulated report."""

from __future__ import annotations

import json

import numpy as np
import pytest

import compress
from compress.cascade import simulate
from compress.core.errors import EdgetierError
from export.cascade import load_cascade
from export.policy import score
from export.runtime import load


@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory):
    import yaml

    from tests.conftest import TINY

    recipe = {**TINY, "name": "casc",
              "stages": [{"name": "exits", "kind": "early_exit", "with": {"after": ["layer1", "layer2"]}},
                         {"name": "tune", "kind": "finetune", "train": {"epochs": 2}}],
              "variants": {"end": {"target": "rpi4"}, "edge": {"target": "jetson_orin_nano", "skip": ["exits"]}}}
    folder = tmp_path_factory.mktemp("casc")
    (folder / "casc.yaml").write_text(yaml.safe_dump(recipe))
    result = compress.run(compress.load_recipe(folder / "casc.yaml"), out_dir=folder / "runs")
    return result.run_dir


def test_simulation_routes_every_sample_and_reports_against_baselines(cascade_run):
    result = simulate(cascade_run)
    assert result["tiers"] == ["end", "edge", "cloud"]
    shares = result["cascade"]["share_per_tier"]
    assert sum(shares) == pytest.approx(1.0)
    assert sum(sum(v) for v in result["cascade"]["share_per_exit"].values()) == pytest.approx(1.0)
    # bytes sent: the input (1x8x8 float32 = 256 bytes) per hand-off
    expected_bytes = 256 * (shares[1] + 2 * shares[2])
    assert result["cascade"]["bytes_sent_per_sample"] == pytest.approx(expected_bytes)
    assert result["cloud_only"]["bytes_sent_per_sample"] == 512 and result["end_only"]["bytes_sent_per_sample"] == 0
    assert result["cascade"]["p95_latency_ms"] >= result["cascade"]["mean_latency_ms"] * 0.5
    saved = json.loads((cascade_run / "cascade.json").read_text())
    assert [t["bundle"] for t in saved["tiers"]] == ["end", "edge", "cloud"] and saved["tiers"][-1]["handoff"] is None
    assert "| cloud only |" in (cascade_run / "cascade.md").read_text()


def test_device_cascade_matches_the_simulation_and_hands_off_by_threshold(cascade_run):
    result = simulate(cascade_run)
    cascade = load_cascade(cascade_run)
    data = compress.datasets.load("digits", seed=0)
    logits, route = cascade.predict(data.test.x, return_route=True)
    assert float((logits.argmax(1) == data.test.y).mean()) == pytest.approx(result["cascade"]["accuracy"])
    # a sample handed on by the end tier failed both its exits and its hand-off threshold
    end = load(cascade_run / "end")
    end_logits, taken = end.predict(data.test.x, return_exits=True)
    handoff = cascade.tiers[0].handoff
    passed = score(end_logits, handoff["criterion"]) >= handoff["threshold"]
    expected_end = (taken < len(end.exits)) | passed
    np.testing.assert_array_equal(route.tier == 0, expected_end)


def test_ambiguous_or_unknown_tiers(cascade_run, tmp_path):
    with pytest.raises(EdgetierError, match="no bundle"):
        simulate(cascade_run, tiers=["end", "nope"])
    with pytest.raises(EdgetierError, match="not a run folder"):
        simulate(tmp_path)


def test_live_cascade_with_the_last_tier_served_answers_like_the_local_one(cascade_run):
    from export.serve import _Model
    from tests.partition.servers import serve_model, stop

    httpd, url = serve_model(_Model(str(cascade_run / "cloud")))  # the serving tier's logic, without Ray's start-up
    try:
        result = simulate(cascade_run, serve=url)
    finally:
        stop(httpd)
    live = result["live"]
    # the same bundles in the same runtimes, the cloud's answer carried as float32 on the wire: identical routes
    assert live["same_prediction_as_local"] == 1.0
    assert live["accuracy"] == pytest.approx(result["cascade"]["accuracy"])
    assert live["samples"] == len(compress.datasets.load("digits", seed=0).test.y)
    assert "Live (" in (cascade_run / "cascade.md").read_text()


def test_live_cascade_refuses_a_down_or_wrong_server(cascade_run, monkeypatch, capsys):
    from export.serve import _Model
    from tests.conftest import run_cli
    from tests.partition.servers import free_port, serve_model, stop

    before = (cascade_run / "cascade.json").read_bytes() if (cascade_run / "cascade.json").exists() else None
    code, _, err = run_cli(monkeypatch, capsys, "cascade", str(cascade_run), "--serve",
                           f"http://127.0.0.1:{free_port()}", "--timeout", "1")
    assert code == 2 and "did not answer within 1 s" in err and "Traceback" not in err
    httpd, url = serve_model(_Model(str(cascade_run / "edge")))  # not the cascade's last tier
    try:
        code, _, err = run_cli(monkeypatch, capsys, "cascade", str(cascade_run), "--serve", url)
    finally:
        stop(httpd)
    assert code == 2 and "serve the run's last bundle" in err
    after = (cascade_run / "cascade.json").read_bytes() if (cascade_run / "cascade.json").exists() else None
    assert after == before  # a failed live run writes nothing
