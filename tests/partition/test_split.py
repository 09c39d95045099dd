"""Split exported graphs: composed segments equal the whole model; int8 crossing; split bundles; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.datasets import load as load_dataset
from compress.models import build
from compress.partition.graph import load_graph
from compress.partition.plan import plan_graph, resolve_targets
from export.errors import BundleError, ExportError
from export.onnx import export_onnx
from export.partitioned import load_split
from export.runtime import make_session
from export.split import split_onnx, write_split_bundles
from export.wire import WireError, decode, encode

# The segments are the same ONNX operators run in the same order with the same weights; only
# onnxruntime's graph optimizations may fuse differently across the cut. 1e-4 absolute and
# 1e-3 relative is every target's stated tolerance (hw_targets/*.yaml).
ATOL, RTOL = 1e-4, 1e-3
ZOO = [("resnet1d", {"width": 8}, (1, 40)), ("resnet2d", {"width": 8}, (1, 8, 8)),
       ("transformer", {"dim": 16}, (1, 40))]


def _export(zoo: str, kw: dict, shape: tuple[int, ...], path: Path) -> Path:
    torch.manual_seed(0)
    model = build(zoo, input_shape=shape, num_classes=10, **kw).eval()
    return export_onnx(model, tuple(model.example_inputs(batch=1)), path)


def _every_cut(graph_path: Path, stride: int) -> list[list[str]]:
    """Neurosurgeon-style prefix cuts of the topological order, every `stride`-th one."""
    g = load_graph(graph_path)
    ops = [n.name for n in g.ops]
    index = {o: i for i, o in enumerate(ops)}
    cuts = []
    for k in range(1, len(ops), stride):
        cut = [t.name for t in g.tensors.values() if index.get(t.producer, -1) < k
               and any(index[c] >= k for c in t.consumers)]
        cuts.append(cut)
    return cuts


@pytest.mark.parametrize(("zoo", "kw", "shape"), ZOO, ids=[z[0] for z in ZOO])
def test_composed_segments_equal_the_whole_model(tmp_path: Path, zoo: str, kw: dict, shape: tuple) -> None:
    path = _export(zoo, kw, shape, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
    (ref,) = make_session(path).run(None, {"input": x})
    cuts = _every_cut(path, stride=5 if zoo != "transformer" else 23)
    assert len(cuts) >= 5
    for k, cut in enumerate(cuts):
        head, tail = split_onnx(path, [cut], tmp_path / f"cut{k}")
        h = make_session(head)
        mid = dict(zip([o.name for o in h.get_outputs()], h.run(None, {"input": x}), strict=True))
        t = make_session(tail)
        (out,) = t.run(None, {i.name: mid[i.name] for i in t.get_inputs()})
        np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL, err_msg=f"cut {cut}")


def test_a_cut_tensor_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    path = _export(*ZOO[0], tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="does not have"):
        split_onnx(path, [["no_such_tensor"]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_cut_that_does_not_separate_the_graph_is_refused(tmp_path: Path) -> None:
    path = _export(*ZOO[0], tmp_path / "m.onnx")
    cuts = _every_cut(path, stride=1)
    residual = next(c for c in cuts if len(c) == 2)  # inside a block: main path + shortcut both cross
    with pytest.raises(ExportError, match="cross no cut"):
        split_onnx(path, [residual[-1:]], tmp_path / "out")  # the shortcut alone is missing


@pytest.fixture(scope="module")
def split_pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A briefly trained resnet1d on MNIST-1D, cut where the plan would cut at a slow link, int8 crossing.

    10,000 samples (2,000 test): the 0.3 pt bar is then 6 test samples. With 2,000 (400 test, 68 %
    accuracy) it was one sample, and another CPU's int8 rounding flipped two near-ties (67.75 -> 68.25 %
    on an AVX-512 VNNI host, 2026-12-07)."""
    d = tmp_path_factory.mktemp("pair")
    data = load_dataset("mnist1d", seed=0, samples=10_000)
    torch.manual_seed(0)
    model = build("resnet1d", input_shape=data.input_shape, num_classes=data.num_classes, width=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    for _ in range(4):
        for i in range(0, len(x), 64):
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = export_onnx(model.eval(), (torch.zeros(1, *data.input_shape),), d / "model.onnx")
    singles = [c for c in _every_cut(path, stride=1) if len(c) == 1]  # block boundaries: one tensor crosses
    cut = singles[len(singles) // 2]
    tiers = [{"name": "rpi4", "tier": "end", "runtime": "onnxruntime"},
             {"name": "cloud_gpu", "tier": "cloud", "runtime": "onnxruntime"}]
    spec_in = {"name": "input", "shape": [None, *data.input_shape], "dtype": "float32"}
    spec_out = {"name": "logits", "shape": [None, data.num_classes]}
    dirs = write_split_bundles(path, [cut], d / "split", tiers=tiers, crossing_dtype="int8",
                               calib=data.calib.x, input_spec=spec_in, output_spec=spec_out)
    return {"path": path, "dirs": dirs, "data": data, "cut": cut}


def test_int8_crossing_keeps_accuracy_and_shrinks_the_tensor(split_pair: dict) -> None:
    data, split = split_pair["data"], load_split(split_pair["dirs"])
    (ref,) = make_session(split_pair["path"]).run(None, {"input": data.test.x})
    got = split.predict(data.test.x)
    acc_ref, acc = (ref.argmax(1) == data.test.y).mean(), (got.argmax(1) == data.test.y).mean()
    # issue 15's bar: within 0.3 pt of the unsplit model on the whole test split
    assert abs(acc - acc_ref) <= 0.003, (acc, acc_ref)
    one = data.test.x[:1]
    (tensor,) = split.segments[0].run({"input": one}).values()
    fp32_bytes, int8_bytes = tensor.size * 4, tensor.size * 1 + 8  # data, plus the int8 scale and zero point
    assert fp32_bytes / int8_bytes >= 3.5, (fp32_bytes, int8_bytes)
    # The whole ETW1 message adds a fixed 35-byte header: at batch 1 on this small tensor the ratio is lower
    # (about 3.4x), at batch 16 it is above 3.8x.
    batch = data.test.x[:16]
    fp32_msg = len(encode({"0": split.segments[0].run({"input": batch})[split_pair["cut"][0]]}))
    assert fp32_msg / len(split.first_step(batch)) >= 3.5


def test_mismatched_bundle_pair_is_refused(split_pair: dict, tmp_path: Path) -> None:
    end, cloud = split_pair["dirs"]
    other = write_split_bundles(split_pair["path"], [split_pair["cut"]], tmp_path / "other",
                                tiers=[{"tier": "end"}, {"tier": "cloud"}], crossing_dtype="fp16",
                                input_spec={"name": "input"}, output_spec={"name": "logits"})
    with pytest.raises(BundleError, match="manifests do not match"):
        load_split([end, other[1]])
    with pytest.raises(BundleError, match="manifests do not match"):
        load_split([cloud, end])


def test_manifests_link_the_pair(split_pair: dict) -> None:
    end, cloud = (json.loads((d / "manifest.json").read_text()) for d in split_pair["dirs"])
    assert end["partition"]["sends"] == cloud["partition"]["receives"]
    assert end["partition"]["sends"][0]["dtype"] == "int8"
    assert end["files"]["model.onnx"]["sha256"] == cloud["partition"]["segment_sha256"][0]


@pytest.mark.parametrize("garbage", [b"", b"ETW1", b"ETW1\x01\x00\xff\xff", encode({"a": np.ones(3)}) + b"x",
                                     encode({"a": np.ones(3)})[:-1], b"<html>502</html>"])
def test_garbage_payloads_are_refused(garbage: bytes) -> None:
    with pytest.raises(WireError):
        decode(garbage)


def test_plan_cut_splits_cleanly_on_every_zoo_model(tmp_path: Path) -> None:
    # the planner's cut at a slow link, whatever it is, must split and compose exactly
    for zoo, kw, shape in ZOO:
        path = _export(zoo, kw, shape, tmp_path / f"{zoo}.onnx")
        plan = plan_graph(load_graph(path), resolve_targets(["rpi4", "cloud_gpu"]), bandwidth_mbps=0.5)
        cut = plan.best.cut_tensors[0]
        if cut:
            split_onnx(path, [cut], tmp_path / zoo)
