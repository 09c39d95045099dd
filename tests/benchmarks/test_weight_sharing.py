"""Issue 7's bars for weight sharing, measured on the exported files (`pytest -m benchmark`).

- cluster, 16 centroids per layer, centroids fine-tuned: ONNX <= 0.2x the dense fp32 file and
  accuracy within 0.5 point of dense (MNIST-1D resnet1d, digits resnet2d);
- magnitude pruning to 80 % then sparsity-preserving cluster 16: zeros stay zeros, and the file
  DEFLATE-compressed (`compressed_bytes`, the encoded storage) <= 0.1x the dense fp32 file;
- hash_share at compression 1/8: file <= 0.2x dense; accuracy reported beside a narrower dense
  resnet1d with as many real parameters (Chen et al.'s comparison), both trained the same way.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import compress
from compress.core.measure import count_params
from compress.core.technique import Hooks, HookSet
from compress.core.train import TrainSpec, evaluate, fit
from compress.models import build
from compress.share.clustering import ClusterConfig
from compress.share.hashing import HashShareConfig
from export.runtime import make_session
from tests.benchmarks.conftest import DENSE_TRAIN, SEED, measure

pytestmark = pytest.mark.benchmark

CENTROID_TUNE = TrainSpec(epochs=3, lr=1e-4, batch_size=128)  # lr 1e-3 overshoots shared centroids
HASH_TUNE = TrainSpec(epochs=5, lr=1e-3, batch_size=128)
# Batch-1 latency, measured paired (sessions alternate, best of the rounds' medians) because the CPU
# is shared: the folded weights must not make inference slower than dense beyond that noise.
LATENCY_SLACK = 1.25


def show(title: str, rows: dict[str, dict]) -> None:
    print(f"\n{title}")
    for name, m in rows.items():
        print(f"  {name:28} bytes {m['bytes']:>8}  deflated {m['compressed_bytes']:>8}  "
              f"acc {m['accuracy']:.4f}  latency {m['latency_ms']:.3f} ms  torch params {m['torch_params']}")


def optimized_ops(path: Path) -> Counter:
    """The op types onnxruntime runs after its session-start optimizations (constant folding included)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def paired_latency(paths: list[Path], x_one: np.ndarray, *, rounds: int = 5, runs: int = 200) -> list[float]:
    sessions = [make_session(p, threads=1) for p in paths]
    best = [float("inf")] * len(paths)
    for _ in range(rounds):
        for k, session in enumerate(sessions):
            for _ in range(20):
                session.run(None, {"input": x_one})
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, {"input": x_one})
                times.append(time.perf_counter() - start)
            best[k] = min(best[k], float(np.median(times)) * 1e3)
    return best


def check_folded(tmp_path: Path, data, dense: str, shared: str) -> None:
    """The shared file runs exactly the dense file's ops once onnxruntime has folded its weights, and as fast."""
    paths = [tmp_path / dense / "model.onnx", tmp_path / shared / "model.onnx"]
    assert optimized_ops(paths[1]) == optimized_ops(paths[0])
    dense_ms, shared_ms = paired_latency(paths, data.test.x[:1])
    print(f"  paired batch-1 latency: dense {dense_ms:.3f} ms, {shared} {shared_ms:.3f} ms")
    assert shared_ms <= LATENCY_SLACK * dense_ms


def cluster_and_tune(model: nn.Module, data, config: ClusterConfig) -> nn.Module:
    """Cluster, then fine-tune the centroids (the codes stay fixed; zeros need no mask hooks any more)."""
    result = compress.apply(model, config, data=data, seed=SEED)
    fit(result.model, data.train, CENTROID_TUNE, hooks=result.hooks, seed=SEED)
    return result.model


def test_cluster_16_per_layer_resnet1d(mnist1d, dense_resnet1d, tmp_path):
    dense = measure(copy.deepcopy(dense_resnet1d), mnist1d, tmp_path, name="dense")
    model = cluster_and_tune(copy.deepcopy(dense_resnet1d), mnist1d, ClusterConfig(clusters=16))
    shared = measure(model, mnist1d, tmp_path, name="cluster16")
    show("MNIST-1D resnet1d, cluster 16 per layer", {"dense fp32": dense, "cluster 16 (fine-tuned)": shared})
    print(f"  ratio {shared['bytes'] / dense['bytes']:.4f}, accuracy change {shared['accuracy'] - dense['accuracy']:+.4f}")
    assert shared["bytes"] <= 0.2 * dense["bytes"]
    assert shared["accuracy"] >= dense["accuracy"] - 0.005
    check_folded(tmp_path, mnist1d, "dense", "cluster16")


def test_cluster_16_per_layer_resnet2d_digits(digits, tmp_path):
    torch.manual_seed(SEED)
    dense_model = build("resnet2d", input_shape=digits.input_shape, num_classes=digits.num_classes)
    fit(dense_model, digits.train, TrainSpec(epochs=30, lr=1e-3, batch_size=64), seed=SEED)
    dense = measure(copy.deepcopy(dense_model), digits, tmp_path, name="dense")
    model = cluster_and_tune(dense_model, digits, ClusterConfig(clusters=16))
    shared = measure(model, digits, tmp_path, name="cluster16")
    show("digits resnet2d, cluster 16 per layer", {"dense fp32": dense, "cluster 16 (fine-tuned)": shared})
    print(f"  ratio {shared['bytes'] / dense['bytes']:.4f}, accuracy change {shared['accuracy'] - dense['accuracy']:+.4f}")
    assert shared["bytes"] <= 0.2 * dense["bytes"]
    assert shared["accuracy"] >= dense["accuracy"] - 0.005
    check_folded(tmp_path, digits, "dense", "cluster16")


def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Per-layer magnitude pruning of every Conv/Linear weight, applied in place; True = kept."""
    masks = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                w = m.weight
                cut = w.abs().flatten().kthvalue(round(sparsity * w.numel())).values
                masks[name] = w.abs() > cut
                w.mul_(masks[name])
    return masks


def mask_hooks(masks: dict[str, torch.Tensor]) -> HookSet:
    def after_backward(model: nn.Module) -> None:
        for name, mask in masks.items():
            model.get_submodule(name).weight.grad.mul_(mask)

    def after_step(model: nn.Module) -> None:
        with torch.no_grad():
            for name, mask in masks.items():
                model.get_submodule(name).weight.mul_(mask)

    return HookSet([Hooks(after_backward=after_backward, after_step=after_step)])


def test_prune_80_then_sparsity_preserving_cluster_16(mnist1d, dense_resnet1d, tmp_path):
    dense = measure(copy.deepcopy(dense_resnet1d), mnist1d, tmp_path, name="dense")
    model = copy.deepcopy(dense_resnet1d)
    masks = magnitude_masks(model, 0.8)
    fit(model, mnist1d.train, TrainSpec(epochs=3, lr=1e-3, batch_size=128), hooks=mask_hooks(masks), seed=SEED)
    pruned = measure(copy.deepcopy(model), mnist1d, tmp_path, name="pruned")
    model = cluster_and_tune(model, mnist1d, ClusterConfig(clusters=16, preserve_sparsity=True))
    for name, mask in masks.items():  # zeros exactly where pruning put them, nowhere else
        assert torch.equal(model.get_submodule(name).weight != 0, mask), name
    shared = measure(model, mnist1d, tmp_path, name="pruned_cluster16")
    show("MNIST-1D resnet1d, prune 80 % then sparsity-preserving cluster 16",
         {"dense fp32": dense, "pruned 80 % (fp32)": pruned, "pruned + cluster 16": shared})
    print(f"  encoded (deflated) storage ratio {shared['compressed_bytes'] / dense['bytes']:.4f} of the dense file")
    assert shared["compressed_bytes"] <= 0.1 * dense["bytes"]
    check_folded(tmp_path, mnist1d, "dense", "pruned_cluster16")


def test_hash_share_one_eighth_beside_a_dense_model_of_equal_real_parameters(mnist1d, dense_resnet1d, tmp_path):
    dense = measure(copy.deepcopy(dense_resnet1d), mnist1d, tmp_path, name="dense")
    # The stem (320 weights) stays dense, as in recipes/weight_sharing.yaml: its rebuilt-weight
    # subgraph would take more bytes than hashing it saves.
    config = HashShareConfig(compression=0.125, ignore=("stem.conv",))
    tuned = compress.apply(copy.deepcopy(dense_resnet1d), config, data=mnist1d, seed=SEED).model
    fit(tuned, mnist1d.train, HASH_TUNE, seed=SEED)
    from_dense = measure(tuned, mnist1d, tmp_path, name="hashed_from_dense")

    torch.manual_seed(SEED)
    fresh = build("resnet1d", input_shape=mnist1d.input_shape, num_classes=mnist1d.num_classes)
    scratch = compress.apply(fresh, config.model_copy(update={"init": "scratch"}), data=mnist1d, seed=SEED).model
    fit(scratch, mnist1d.train, DENSE_TRAIN, seed=SEED)
    from_scratch = measure(scratch, mnist1d, tmp_path, name="hashed_from_scratch")

    real = count_params(scratch)
    widths = {w: count_params(build("resnet1d", input_shape=mnist1d.input_shape, num_classes=10, width=w))
              for w in range(8, 64)}
    width = min(widths, key=lambda w: abs(widths[w] - real))
    torch.manual_seed(SEED)
    narrow_model = build("resnet1d", input_shape=mnist1d.input_shape, num_classes=mnist1d.num_classes, width=width)
    fit(narrow_model, mnist1d.train, DENSE_TRAIN, seed=SEED)
    narrow = measure(narrow_model, mnist1d, tmp_path, name=f"dense_width{width}")

    show(f"MNIST-1D resnet1d, hash_share 1/8 ({real} real parameters) vs dense width {width} "
         f"({widths[width]} parameters)",
         {"dense fp32 (width 64)": dense, "hashed 1/8, from dense + 5 ep": from_dense,
          "hashed 1/8, from scratch 15 ep": from_scratch, f"dense width {width}, 15 ep": narrow})
    print(f"  ratio {from_dense['bytes'] / dense['bytes']:.4f}; validation accuracy of the from-scratch pair: "
          f"hashed {evaluate(scratch, mnist1d.val):.4f}, narrow dense {evaluate(narrow_model, mnist1d.val):.4f}")
    assert from_dense["bytes"] <= 0.2 * dense["bytes"] and from_scratch["bytes"] <= 0.2 * dense["bytes"]
    assert abs(widths[width] - real) <= 0.1 * real  # the comparison is at (nearly) equal real parameters
    check_folded(tmp_path, mnist1d, "dense", "hashed_from_dense")
