"""The partitioned runtime: an early exit on the end segment (Edgent), and end -> edge -> cloud with two cuts,
composed locally and over HTTP (the edge forwarding to the cloud). No Ray here: the servers are stdlib
`http.server` threads around the serving tier's own request logic (export.serve._Model); the live Ray
Serve round trip is in tests/benchmarks/test_partition.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compress.models import build
from export.client import SegmentClient
from export.errors import BundleError, ExportError
from export.onnx import export_onnx
from export.partitioned import load_split
from export.policy import exits as passes
from export.runtime import make_session
from export.split import write_split_bundles
from tests.partition.servers import serve_model, stop
from tests.partition.test_split import _every_cut

# every target's stated tolerance (hw_targets/*.yaml): same ONNX operators, cut in pieces
ATOL, RTOL = 1e-4, 1e-3
SPEC_IN = {"name": "input", "shape": [None, 1, 40], "dtype": "float32"}
SPEC_OUT = {"name": "logits", "shape": [None, 10]}
TIERS3 = [{"tier": "end"}, {"tier": "edge"}, {"tier": "cloud"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("rt")
    torch.manual_seed(0)
    net = build("resnet1d", input_shape=(1, 40), num_classes=10, width=8).eval()
    path = export_onnx(net, tuple(net.example_inputs(batch=1)), d / "m.onnx")
    singles = [c for c in _every_cut(path, stride=1) if len(c) == 1]  # block boundaries: one tensor crosses
    x = np.random.default_rng(0).standard_normal((40, 1, 40)).astype(np.float32)
    return {"dir": d, "path": path, "singles": singles, "x": x}


@pytest.fixture(scope="module")
def with_exit(model: dict) -> dict:
    """A split at a block boundary with a pooled linear exit head on the crossing tensor; the threshold is the
    median exit confidence on the inputs, so about half of them leave at the exit."""
    d, cut = model["dir"], model["singles"][len(model["singles"]) // 2]
    plain = write_split_bundles(model["path"], [cut], d / "plain", tiers=TIERS3[::2], input_spec=SPEC_IN,
                                output_spec=SPEC_OUT)
    head_outputs = load_split(plain).segments[0].run({"input": model["x"]})
    feature = head_outputs[cut[0]]
    torch.manual_seed(1)
    head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(feature.shape[1], 10)).eval()
    head_path = export_onnx(head, (torch.zeros(1, *feature.shape[1:]),), d / "exit.onnx")
    (exit_logits,) = make_session(head_path).run(None, {"input": feature})
    conf = np.exp(exit_logits - exit_logits.max(1, keepdims=True))
    threshold = float(np.median((conf / conf.sum(1, keepdims=True)).max(1)))
    spec = {"model": head_path, "reads": cut[0], "criterion": "confidence", "threshold": threshold}
    dirs = write_split_bundles(model["path"], [cut], d / "exit", tiers=TIERS3[::2], input_spec=SPEC_IN,
                               output_spec=SPEC_OUT, early_exit=spec)
    return {"plain": plain, "dirs": dirs, "exit_logits": exit_logits, "spec": spec}


class _Recorder:
    """A remote that finishes the split locally and records every message the device sends."""

    def __init__(self, split) -> None:  # noqa: ANN001 - a SplitModel
        self.split, self.sent = split, []

    def __call__(self, payload: bytes) -> bytes:
        self.sent.append(payload)
        for seg in self.split.segments[1:]:
            payload = seg.handle(payload)
        return payload


def test_rows_the_exit_answers_send_nothing_and_the_rest_compose_as_before(model: dict, with_exit: dict) -> None:
    split, plain = load_split(with_exit["dirs"]), load_split(with_exit["plain"])
    x = model["x"]
    remote = _Recorder(split)
    got, exited = split.predict(x, remote=remote, batch_size=1, return_exited=True)
    expected_exit = passes(with_exit["exit_logits"], "confidence", with_exit["spec"]["threshold"])
    np.testing.assert_array_equal(exited, expected_exit)
    assert 0 < exited.sum() < len(x)
    assert len(remote.sent) == int((~exited).sum())  # one message per row that was not answered; none for the rest
    np.testing.assert_allclose(got[exited], with_exit["exit_logits"][exited], atol=1e-6)  # the exit's own logits
    before = plain.predict(x, batch_size=1)
    np.testing.assert_array_equal(got[~exited], before[~exited])  # the same computation, bit for bit
    # batched: the answered rows are left out of the message, the others compose within tolerance
    remote.sent.clear()
    got_b, exited_b = split.predict(x, remote=remote, batch_size=64, return_exited=True)
    np.testing.assert_array_equal(exited_b, exited)
    assert len(remote.sent) == 1 and len(plain.first_step(x[~exited])) == len(remote.sent[0])
    np.testing.assert_allclose(got_b[~exited], before[~exited], atol=ATOL, rtol=RTOL)


def test_an_exit_that_answers_everything_sends_nothing(model: dict, with_exit: dict, tmp_path: Path) -> None:
    spec = {**with_exit["spec"], "threshold": 0.0}  # every confidence is >= 0
    cut = [spec["reads"]]
    dirs = write_split_bundles(model["path"], [cut], tmp_path / "all", tiers=TIERS3[::2], input_spec=SPEC_IN,
                               output_spec=SPEC_OUT, early_exit=spec)

    def never(payload: bytes) -> bytes:
        raise AssertionError("nothing should be sent")

    got, exited = load_split(dirs).predict(model["x"], remote=never, return_exited=True)
    assert exited.all()
    np.testing.assert_allclose(got, with_exit["exit_logits"], atol=1e-6)


def test_an_exit_on_a_tensor_that_does_not_cross_is_refused(model: dict, with_exit: dict, tmp_path: Path) -> None:
    spec = {**with_exit["spec"], "reads": "input"}
    with pytest.raises(ExportError, match="does not send"):
        write_split_bundles(model["path"], [[with_exit["spec"]["reads"]]], tmp_path / "bad", tiers=TIERS3[::2],
                            input_spec=SPEC_IN, output_spec=SPEC_OUT, early_exit=spec)
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def three(model: dict) -> dict:
    singles = model["singles"]
    cuts = [singles[len(singles) // 3], singles[2 * len(singles) // 3]]
    calib = np.random.default_rng(3).standard_normal((64, 1, 40)).astype(np.float32)
    fp32 = write_split_bundles(model["path"], cuts, model["dir"] / "three32", tiers=TIERS3, input_spec=SPEC_IN,
                               output_spec=SPEC_OUT)
    int8 = write_split_bundles(model["path"], cuts, model["dir"] / "three8", tiers=TIERS3, input_spec=SPEC_IN,
                               output_spec=SPEC_OUT, crossing_dtype="int8", calib=calib)
    return {"fp32": fp32, "int8": int8, "cuts": cuts}


def test_end_edge_cloud_composes_like_the_whole_model(model: dict, three: dict) -> None:
    (ref,) = make_session(model["path"]).run(None, {"input": model["x"]})
    split = load_split(three["fp32"])
    assert [s.partition["index"] for s in split.segments] == [0, 1, 2]
    np.testing.assert_allclose(split.predict(model["x"]), ref, atol=ATOL, rtol=RTOL)
    # int8 on both links: two rounding steps of a calibrated tensor; the top-1 answer is what must survive
    # (0.97: the targets' quantized_top1_agreement bar)
    got = load_split(three["int8"]).predict(model["x"])
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.97


@pytest.fixture
def edge_and_cloud(three: dict) -> Iterator[str]:
    from export.serve import _Model

    _, edge_dir, cloud_dir = three["fp32"]
    cloud, cloud_url = serve_model(_Model(str(cloud_dir)))
    edge, edge_url = serve_model(_Model(str(edge_dir), next_url=f"{cloud_url}/segment", timeout_s=5))
    try:
        yield edge_url
    finally:
        stop(edge)
        stop(cloud)


def test_end_edge_cloud_over_http_answers_like_the_local_chain(model: dict, three: dict, edge_and_cloud: str) -> None:
    end_only = load_split(three["fp32"][:1])
    client = SegmentClient(f"{edge_and_cloud}/segment", timeout_s=5, plan_id=end_only.plan_id)
    local = load_split(three["fp32"]).predict(model["x"])
    np.testing.assert_array_equal(end_only.predict(model["x"], remote=client), local)  # same bytes, same operators


def test_a_middle_segment_without_a_next_tier_is_refused(three: dict) -> None:
    from export.serve import _Model

    with pytest.raises(BundleError, match="needs the next tier's URL"):
        _Model(str(three["fp32"][1]))
