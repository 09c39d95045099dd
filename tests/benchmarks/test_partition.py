"""Issue 15's "Done when" lines, measured (`pytest -m benchmark tests/benchmarks/test_partition.py -s`).

1. Planner speed on a 100+-operator graph (QDMP's 0.3 s bound); DADS == brute force is in tests/partition.
2. rpi4 -> cloud_gpu over rpi4's Wi-Fi figures: the best planned cut vs the better extreme, over the plotted
   bandwidth range, for the zoo models at their bundled-data input sizes and at a camera frame.
3. Split bundles of the dense resnet1d with an int8 crossing tensor: accuracy vs the unsplit model, bytes vs fp32.
4. A live Ray Serve round trip on localhost: same predictions on the whole test split; measured latency with
   the emulated Wi-Fi link vs the plan for this host's measured segment times, and vs the plan plus the
   serving overhead measured on its own (`POST /echo`: the same bytes, nothing run).
5. The end segment as .tflite for rpi4 (LiteRT): the composed split model vs the unsplit one on the test split.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compress.datasets import Dataset
from compress.models import build
from compress.partition.graph import load_graph
from compress.partition.plan import plan_graph, resolve_targets, sweep_bandwidth, sweep_plot
from compress.targets import load_target
from export.client import LinkEmulator, SegmentClient
from export.measure import latency_ms
from export.onnx import export_onnx
from export.partitioned import load_split
from export.runtime import make_session
from export.split import write_split_bundles
from export.wire import encode

pytestmark = pytest.mark.benchmark
TARGETS = ["rpi4", "cloud_gpu"]


def _export(model: nn.Module, path: Path) -> Path:
    return export_onnx(model.eval(), tuple(model.example_inputs(batch=1)), path)


def test_planner_takes_under_0_3_s_on_a_100_plus_node_graph(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build("transformer", input_shape=(1, 40), num_classes=10, dim=32, blocks=(2, 2, 2))
    graph = load_graph(_export(model, tmp_path / "t.onnx"))
    targets = resolve_targets(TARGETS)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        plan_graph(graph, targets, crossing_dtype="int8")
        times.append(time.perf_counter() - start)
    print(f"\nplanner (DADS + Neurosurgeon sweep + extremes) on {len(graph.ops)} operators: "
          f"median {np.median(times) * 1e3:.1f} ms, best {min(times) * 1e3:.1f} ms")
    assert len(graph.ops) >= 100
    assert np.median(times) <= 0.3


def test_best_cut_vs_extremes_rpi4_to_cloud(tmp_path: Path) -> None:
    torch.manual_seed(0)
    targets = resolve_targets(TARGETS)
    cases = {
        "resnet1d mnist1d (1x40)": build("resnet1d", input_shape=(1, 40), num_classes=10, width=32),
        "resnet2d digits (1x8x8)": build("resnet2d", input_shape=(1, 8, 8), num_classes=10, width=16),
        "transformer mnist1d (1x40)": build("transformer", input_shape=(1, 40), num_classes=10),
        "transformer camera frame (3x224x224)": build("transformer", input_shape=(3, 224, 224), num_classes=10,
                                                      dim=128, patch=16, blocks=(4, 4, 4)),
    }
    best = {}
    for name, model in cases.items():
        graph = load_graph(_export(model, tmp_path / f"{len(best)}.onnx"))
        sweep = sweep_bandwidth(graph, targets, crossing_dtype="int8", points=25)
        sweep_plot(tmp_path / f"{len(best)}.png", sweep, title=name)
        top = max(sweep, key=lambda s: s["speedup"])
        best[name] = top["speedup"]
        print(f"\n{name}: {len(graph.ops)} ops; best speedup over the better extreme {top['speedup']:.2f}x at "
              f"{top['bandwidth_mbps']:.1f} Mbit/s ({top['best_ms']:.2f} ms vs end {top['all on end']:.2f} / cloud "
              f"{top['all on cloud']:.2f} ms), cut {top['cut'][:60]}")
        if top["speedup"] <= 1.0 + 1e-9:
            print("  no cut beats the extremes anywhere in 0.1-1000 Mbit/s: the input is smaller than any "
                  "intermediate tensor, so sending it raw (or not at all) is always at least as good")
    assert max(best.values()) >= 3.0


@pytest.fixture(scope="module")
def split_dense(dense_resnet1d: nn.Module, mnist1d: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("split")
    path = export_onnx(dense_resnet1d.eval(), (torch.zeros(1, *mnist1d.input_shape),), d / "model.onnx")
    graph = load_graph(path)
    ops = [n.name for n in graph.ops]
    index = {o: i for i, o in enumerate(ops)}
    cuts = [[t.name for t in graph.tensors.values() if index.get(t.producer, -1) < k
             and any(index[c] >= k for c in t.consumers)] for k in range(1, len(ops))]
    singles = [c for c in cuts if len(c) == 1]
    cut = singles[len(singles) // 2]  # a block boundary in the middle of the network
    tiers = [{"name": "rpi4", "tier": "end"}, {"name": "cloud_gpu", "tier": "cloud"}]
    dirs = write_split_bundles(path, [cut], d / "bundles", tiers=tiers, crossing_dtype="int8", calib=mnist1d.calib.x,
                               input_spec={"name": "input", "shape": [None, *mnist1d.input_shape], "dtype": "float32"},
                               output_spec={"name": "logits", "shape": [None, mnist1d.num_classes]})
    return {"path": path, "dirs": dirs, "cut": cut}


def test_int8_crossing_accuracy_and_size(split_dense: dict, mnist1d: Dataset) -> None:
    x, y = mnist1d.test.x, mnist1d.test.y
    (ref,) = make_session(split_dense["path"]).run(None, {"input": x})
    split = load_split(split_dense["dirs"])
    got = split.predict(x)
    acc_ref, acc = float((ref.argmax(1) == y).mean()), float((got.argmax(1) == y).mean())
    (tensor,) = split.segments[0].run({"input": x[:1]}).values()
    fp32_msg = len(encode({"0": tensor}))
    int8_msg = len(split.first_step(x[:1]))
    print(f"\nint8 crossing at {split_dense['cut'][0]} {list(tensor.shape)}: accuracy {acc:.2%} vs unsplit {acc_ref:.2%} "
          f"({(acc - acc_ref) * 100:+.2f} pt); tensor {tensor.size * 4} B fp32 vs {tensor.size + 8} B int8 "
          f"({tensor.size * 4 / (tensor.size + 8):.2f}x); whole batch-1 message {fp32_msg} vs {int8_msg} B "
          f"({fp32_msg / int8_msg:.2f}x)")
    assert abs(acc - acc_ref) <= 0.003
    assert tensor.size * 4 / (tensor.size + 8) >= 3.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_live_round_trip_matches_local_and_plan(split_dense: dict, mnist1d: Dataset) -> None:
    from export.serve import start, stop

    end_dir, cloud_dir = split_dense["dirs"]
    x = mnist1d.test.x
    local = load_split([end_dir, cloud_dir])
    device = load_split([end_dir])  # the device holds only its own segment
    link = load_target("rpi4").link
    started = time.perf_counter()
    url = start(cloud_dir, port=_free_port())
    print(f"\nRay Serve up in {time.perf_counter() - started:.1f} s at {url}")
    try:
        plain = SegmentClient(url + "/segment", timeout_s=30, plan_id=device.plan_id)
        remote = device.predict(x, remote=plain, batch_size=64)
        same = float((remote.argmax(1) == local.predict(x).argmax(1)).mean())
        max_diff = float(np.abs(remote - local.predict(x)).max())
        # batch-1 requests with the emulated Wi-Fi link, and without it; and the serving overhead on its own:
        # /echo sends back the request's bytes and runs nothing (empty: a 6-byte message; sized: the real one)
        emulated = SegmentClient(url + "/segment", timeout_s=30, plan_id=device.plan_id,
                                 link=LinkEmulator(link.bandwidth_mbps, link.rtt_ms))
        echo = SegmentClient(url + "/echo", timeout_s=30)
        payload = device.first_step(x[:1])
        for client in (plain, emulated):  # warm every path
            device.predict(x[:5], remote=client, batch_size=1)
        for _ in range(5):
            echo(encode({}))
        n = 200
        measured = {}
        for label, call in (("no link", lambda i: device.predict(x[i:i + 1], remote=plain, batch_size=1)),
                            ("emulated link", lambda i: device.predict(x[i:i + 1], remote=emulated, batch_size=1)),
                            ("empty echo", lambda i: echo(encode({}))),
                            ("sized echo", lambda i: echo(payload))):
            times = []
            for i in range(n):
                t0 = time.perf_counter()
                call(i)
                times.append((time.perf_counter() - t0) * 1e3)
            measured[label] = float(np.median(times))
    finally:
        stop()
    # the plan for this host: measured segment times + the link model (RTT + bytes over bandwidth)
    end_ms = latency_ms(end_dir / "model.onnx", x[:1], repeats=50).median_ms
    head = local.segments[0].run({"input": x[:1]})
    mid = local.segments[1].run(local.segments[1].unpack(local.first_step(x[:1])))
    cloud_ms = latency_ms(cloud_dir / "model.onnx", next(iter(head.values())), repeats=50).median_ms
    up, down = len(local.first_step(x[:1])), len(local.segments[1].pack(mid))
    link_ms = link.rtt_ms + (up + down) * 8 / (link.bandwidth_mbps * 1e6) * 1e3
    planned = end_ms + link_ms + cloud_ms
    derived = measured["no link"] - end_ms - cloud_ms  # what the no-link run leaves after the compute
    overhead = measured["sized echo"]  # the serving overhead measured on its own
    print(f"predictions equal on {same:.2%} of {len(x)} test samples (max |diff| {max_diff:.2e}); batch-1 medians "
          f"over {n} requests: planned {planned:.2f} ms (end {end_ms:.3f} + link {link_ms:.3f} + cloud "
          f"{cloud_ms:.3f}); measured {measured['emulated link']:.2f} ms with the emulated link, "
          f"{measured['no link']:.2f} ms without; serving overhead on its own (/echo, nothing run): "
          f"{measured['empty echo']:.2f} ms empty, {measured['sized echo']:.2f} ms with the {up}-byte message "
          f"(the no-link run minus compute leaves {derived:.2f} ms); plan + echo overhead {planned + overhead:.2f} ms "
          f"vs measured {measured['emulated link']:.2f} ms "
          f"({(measured['emulated link'] / (planned + overhead) - 1) * 100:+.1f} %); plan alone is "
          f"{(measured['emulated link'] / planned - 1) * 100:+.1f} % off")
    assert same == 1.0 and max_diff <= 1e-4  # the same ONNX segment runs on both sides
    # The plan has no term for the HTTP stack: the gap is explained when plan + the overhead measured on its
    # own (not derived from the same run) is within 25 % of the measured latency.
    assert abs(measured["emulated link"] - (planned + overhead)) <= 0.25 * (planned + overhead)


def test_litert_end_segment_composes_like_the_unsplit_model(split_dense: dict, mnist1d: Dataset,
                                                             tmp_path: Path) -> None:
    x, y = mnist1d.test.x, mnist1d.test.y
    tiers = [{"name": "rpi4", "tier": "end", "runtime": "litert", "export_format": "tflite",
              "tolerance": {"atol": 1e-4, "rtol": 1e-3}}, {"name": "cloud_gpu", "tier": "cloud"}]
    started = time.perf_counter()
    dirs = write_split_bundles(split_dense["path"], [split_dense["cut"]], tmp_path / "litert", tiers=tiers,
                               calib=mnist1d.calib.x[:64],
                               input_spec={"name": "input", "shape": [None, *mnist1d.input_shape], "dtype": "float32"},
                               output_spec={"name": "logits", "shape": [None, mnist1d.num_classes]})
    took = time.perf_counter() - started
    split = load_split(dirs)
    (ref,) = make_session(split_dense["path"]).run(None, {"input": x})
    got = split.predict(x)
    diff = float(np.abs(got - ref).max())
    print(f"\nLiteRT end segment: {split.segments[0].manifest['model']['file']} "
          f"({(dirs[0] / 'model.tflite').stat().st_size:,} B, written in {took:.1f} s); composed vs unsplit on "
          f"{len(x)} test samples: max |diff| {diff:.2e}, accuracy {(got.argmax(1) == y).mean():.2%} vs "
          f"{(ref.argmax(1) == y).mean():.2%}")
    assert split.segments[0].manifest["model"]["format"] == "tflite"
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)  # rpi4's stated tolerance
