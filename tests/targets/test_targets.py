"""Hardware targets: the shipped files, the schema's rules, the loader's errors, the estimator."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from compress.core.errors import EdgetierError, TargetError
from compress.core.resources import shipped_dir
from compress.targets import (
    TIER_RANK,
    Target,
    estimate_latency,
    list_targets,
    load_target,
    shipped_target_names,
    transfer_ms,
)

# name -> (tier, runtime, export_format, supported precisions): tiers and runtimes as the project
# brief fixes them; NPUs that only run int8 must not claim float support.
EXPECTED = {
    "stm32h7": ("end", "litert", "tflite", ("fp32", "int8")),
    "ethos_u55": ("end", "litert", "tflite", ("int8",)),
    "rpi4": ("end", "litert", "tflite", ("fp32", "int8")),
    "coral_edgetpu": ("end", "litert", "tflite", ("int8",)),
    "jetson_orin_nano": ("edge", "onnxruntime", "onnx", ("fp32", "fp16", "int8")),
    "snapdragon_8gen2": ("edge", "litert", "tflite", ("fp32", "fp16", "int8")),
    "cloud_gpu": ("cloud", "onnxruntime", "onnx", ("fp32", "fp16", "int8")),
}

# The estimator is a handful of float operations on round inputs, so results agree with the
# hand-computed decimals to within a few ulps; 1e-12 relative leaves room for that and nothing else.
EXACT = 1e-12

# A small, valid target with round figures, so the estimator's results can be computed by hand.
BASE: dict[str, Any] = {
    "schema_version": 1,
    "name": "toy",
    "display_name": "Toy MCU",
    "description": "A made-up target with round numbers.",
    "tier": "end",
    "runtime": "litert",
    "export_format": "tflite",
    "memory": {"ram_kb": 256, "storage_kb": 1024},
    "compute": {
        "throughput_gmacs": {"fp32": 5.0, "int8": 10.0},
        "memory_bandwidth_gbs": 2.0,
        "efficiency": 0.5,
        "overhead_ms": 0.25,
    },
    "channel_multiple": 4,
    "link": {"to": "edge", "technology": "Ethernet", "bandwidth_mbps": 8.0, "rtt_ms": 20.0},
    "tolerance": {"atol": 1e-4, "rtol": 1e-3, "quantized_top1_agreement": 0.97},
    "source": {"datasheet": "none: a test fixture", "notes": "round numbers"},
}


def toy(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def write(tmp_path: Path, data: Any, name: str = "toy") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def load_error(path: Path | str) -> TargetError:
    with pytest.raises(TargetError) as info:
        load_target(path)
    return info.value


# --- the shipped targets -------------------------------------------------------------------------


def test_the_seven_targets_are_shipped() -> None:
    assert set(shipped_target_names()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_target_loads_by_name_and_path_and_is_named_after_its_file(name: str) -> None:
    path = shipped_dir("hw_targets") / f"{name}.yaml"
    by_name, by_path = load_target(name), load_target(path)
    assert by_name == by_path
    assert by_name.name == path.stem == name


@pytest.mark.parametrize(("name", "expected"), sorted(EXPECTED.items()))
def test_shipped_tier_runtime_format_and_precisions(name: str, expected: tuple[Any, ...]) -> None:
    t = load_target(name)
    assert (t.tier, t.runtime, t.export_format, t.supported_precisions) == expected


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_links_point_one_tier_up_and_cloud_has_none(name: str) -> None:
    t = load_target(name)
    if t.tier == "cloud":
        assert t.link is None
    else:
        assert t.link is not None
        assert t.link.to == {"end": "edge", "edge": "cloud"}[t.tier]


def test_list_targets_orders_by_tier_then_name() -> None:
    names = [(t.tier, t.name) for t in list_targets()]
    assert len(names) == len(EXPECTED)
    assert names == sorted(names, key=lambda pair: (TIER_RANK[pair[0]], pair[1]))
    assert [tier for tier, _ in names] == ["end"] * 4 + ["edge"] * 2 + ["cloud"]


def test_target_is_frozen_and_round_trips_through_json() -> None:
    t = load_target("stm32h7")
    with pytest.raises(pydantic.ValidationError):
        t.channel_multiple = 8  # type: ignore[misc]
    assert Target.model_validate(t.model_dump(mode="json")) == t


# --- schema rules ------------------------------------------------------------------------------


def test_toy_fixture_is_valid(tmp_path: Path) -> None:
    # Every failure below changes one thing; this proves the unchanged fixture passes.
    assert load_target(write(tmp_path, toy())).supported_precisions == ("fp32", "int8")


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"export_format": "onnx"}, "export_format", "set export_format: tflite"),
        ({"tier": "cloud"}, "link", "has no link"),
        ({"link": None}, "link", "needs a link"),
        ({"tier": "edge"}, "link", "higher tier than 'edge'"),
        ({"compute": {**BASE["compute"], "throughput_gmacs": {}}}, "compute.throughput_gmacs", "at least one"),
        ({"compute": {**BASE["compute"], "throughput_gmacs": {"int8": 0}}}, "compute.throughput_gmacs.int8",
         "greater than 0"),
        ({"compute": {**BASE["compute"], "efficiency": 1.5}}, "compute.efficiency", "less than or equal to 1"),
        ({"tolerance": {**BASE["tolerance"], "quantized_top1_agreement": 0}},
         "tolerance.quantized_top1_agreement", "greater than 0"),
        ({"name": "Toy-1"}, "name", "should match pattern"),
    ],
)
def test_schema_rule_violations_name_the_key(tmp_path: Path, changes: dict[str, Any], key: str, words: str) -> None:
    err = load_error(write(tmp_path, toy(**changes)))
    assert f"toy.yaml: {key}:" in str(err)
    assert words in str(err)


def test_omitted_link_on_an_end_target_is_an_error(tmp_path: Path) -> None:
    data = toy()
    del data["link"]
    assert "toy.yaml: link: an end target needs a link" in str(load_error(write(tmp_path, data)))


def test_cloud_target_may_omit_its_link(tmp_path: Path) -> None:
    data = toy(tier="cloud")
    del data["link"]
    assert load_target(write(tmp_path, data)).link is None


# --- loader errors -----------------------------------------------------------------------------


def test_unknown_key_names_file_dotted_path_and_allowed_keys(tmp_path: Path) -> None:
    data = toy(memory={"ram_kb": 256, "storage_kb": 1024, "ram_mb": 1})
    err = load_error(write(tmp_path, data))
    assert isinstance(err, EdgetierError)
    text = str(err)
    assert "toy.yaml: memory.ram_mb: unknown key 'ram_mb'" in text
    assert "expected one of: ram_kb, storage_kb" in text
    assert "\n" not in text


def test_unknown_precision_key_is_reported_at_its_path(tmp_path: Path) -> None:
    data = toy(compute={**BASE["compute"], "throughput_gmacs": {"int9": 1.0}})
    text = str(load_error(write(tmp_path, data)))
    assert "toy.yaml: compute.throughput_gmacs.int9: unknown key 'int9'" in text
    assert "'fp32', 'fp16', 'int8' or 'int4'" in text


@pytest.mark.parametrize(("value", "shown"), [("lots", "'lots'"), (True, "True"), (512.5, "512.5")])
def test_wrong_type_says_what_was_expected_and_what_was_given(tmp_path: Path, value: Any, shown: str) -> None:
    # strict schema: a boolean or a string is never silently turned into a number
    text = str(load_error(write(tmp_path, toy(memory={"ram_kb": value, "storage_kb": 1024}))))
    assert "toy.yaml: memory.ram_kb:" in text
    assert "valid integer" in text and f"got {shown}" in text


def test_missing_required_key(tmp_path: Path) -> None:
    data = toy()
    del data["tolerance"]
    assert "toy.yaml: tolerance: required key is missing" in str(load_error(write(tmp_path, data)))


def test_several_problems_are_listed_together(tmp_path: Path) -> None:
    text = str(load_error(write(tmp_path, toy(tier="fog", channel_multiple=0))))
    assert "2 problems" in text and "tier:" in text and "channel_multiple:" in text


def test_name_must_equal_the_file_stem(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, toy(), name="other"))
    assert "other.yaml: name:" in str(err)
    assert "name 'toy' does not match the file name 'other.yaml'" in err.problem


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("# nothing but a comment\n", "toy.yaml: the file is empty"),
        ("name: toy\nmemory: {ram_kb: [1, 2\n", "toy.yaml: the file is not valid YAML at line 3"),
        ("- stm32h7\n- rpi4\n", "toy.yaml: expected a mapping of keys to values at the top level, got a list"),
        ("42\n", "got a number"),
    ],
)
def test_files_that_are_not_a_target_mapping(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text(content, encoding="utf-8")
    assert expected in str(load_error(path))


def test_missing_file(tmp_path: Path) -> None:
    err = load_error(tmp_path / "absent.yml")
    assert "absent.yml: file not found" in str(err)


def test_unknown_name_lists_the_known_names() -> None:
    err = load_error("stm33")
    assert "unknown target 'stm33'" in err.problem
    for name in EXPECTED:
        assert name in err.problem
    assert "edgetier targets list" in str(err.fix)


def test_a_path_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    assert "neither a target name nor a .yaml file" in str(load_error(tmp_path / "toy.json"))


# --- latency estimate --------------------------------------------------------------------------


def toy_target(tmp_path: Path) -> Target:
    return load_target(write(tmp_path, toy()))


def test_compute_bound_estimate_by_hand(tmp_path: Path) -> None:
    est = estimate_latency(toy_target(tmp_path), macs=1_000_000_000, weight_bytes=1_000_000,
                           activation_bytes=1_000_000, precision="int8")
    # compute: 1e9 MAC / (10e9 MAC/s * 0.5) = 0.2 s; memory: 2e6 B / 2e9 B/s = 1 ms
    assert est.compute_ms == pytest.approx(200.0, rel=EXACT)
    assert est.memory_ms == pytest.approx(1.0, rel=EXACT)
    assert est.overhead_ms == 0.25
    assert est.ms == pytest.approx(200.25, rel=EXACT)
    assert est.bound == "compute"


def test_memory_bound_estimate_by_hand(tmp_path: Path) -> None:
    est = estimate_latency(toy_target(tmp_path), macs=1_000_000, weight_bytes=3_000_000,
                           activation_bytes=1_000_000, precision="int8")
    # compute: 1e6 / 5e9 = 0.2 ms; memory: 4e6 B / 2e9 B/s = 2 ms; plus 0.25 ms overhead
    assert est.compute_ms == pytest.approx(0.2, rel=EXACT)
    assert est.memory_ms == pytest.approx(2.0, rel=EXACT)
    assert est.ms == pytest.approx(2.25, rel=EXACT)
    assert est.bound == "memory"


def test_precision_selects_its_throughput(tmp_path: Path) -> None:
    t = toy_target(tmp_path)
    fp32 = estimate_latency(t, macs=1_000_000, weight_bytes=0, activation_bytes=0, precision="fp32")
    # fp32 runs at 5 GMAC/s, half the int8 rate: 1e6 / (5e9 * 0.5) = 0.4 ms
    assert fp32.compute_ms == pytest.approx(0.4, rel=EXACT)


def test_empty_workload_costs_only_the_overhead(tmp_path: Path) -> None:
    est = estimate_latency(toy_target(tmp_path), macs=0, weight_bytes=0, activation_bytes=0, precision="int8")
    assert est.ms == 0.25


def test_shipped_figures_feed_the_estimate() -> None:
    # stm32h7: int8 0.96 GMAC/s at efficiency 0.4, 1.92 GB/s, 0.05 ms overhead (hw_targets/stm32h7.yaml)
    est = estimate_latency(load_target("stm32h7"), macs=3_840_000, weight_bytes=1_920_000,
                           activation_bytes=0, precision="int8")
    assert est.compute_ms == pytest.approx(10.0, rel=EXACT)
    assert est.memory_ms == pytest.approx(1.0, rel=EXACT)
    assert est.ms == pytest.approx(10.05, rel=EXACT)


def test_unsupported_precision_names_the_supported_ones() -> None:
    with pytest.raises(TargetError) as info:
        estimate_latency(load_target("coral_edgetpu"), macs=1, weight_bytes=1, activation_bytes=1, precision="fp32")
    text = str(info.value)
    assert "'coral_edgetpu' does not run 'fp32'" in text
    assert "it supports int8" in text


def test_negative_counts_are_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="macs"):
        estimate_latency(toy_target(tmp_path), macs=-1, weight_bytes=0, activation_bytes=0, precision="int8")


def test_transfer_time_by_hand(tmp_path: Path) -> None:
    link = toy_target(tmp_path).link
    assert link is not None
    # 1e6 bytes = 8e6 bits over 8 Mbit/s = 1 s, plus the 20 ms round trip
    assert transfer_ms(link, 1_000_000) == pytest.approx(1020.0, rel=EXACT)
    assert transfer_ms(link, 0) == 20.0
    with pytest.raises(ValueError, match="nbytes"):
        transfer_ms(link, -1)
