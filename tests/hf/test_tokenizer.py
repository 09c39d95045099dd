"""A text bundle carries tokenizer.json (hashed) and runs on strings with tokenizers + numpy only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import compress
from compress.core.errors import EdgetierError
from compress.datasets.text import tokenize
from export.tokenizer import TextEncoder
from tests.hf.tiny import tiny_bert, tiny_tokenizer_json, token_batch


def test_encoder_truncates_pads_to_the_longest_and_masks(tmp_path):
    enc = TextEncoder(tiny_tokenizer_json(tmp_path / "tokenizer.json"), max_length=5)
    out = enc.encode(["the model", "a small model runs on device"], names=["input_ids", "attention_mask"])
    assert out["input_ids"].tolist() == [[2, 4, 6, 3, 0], [2, 5, 7, 6, 3]]  # [CLS] .. [SEP], cut at 5, [PAD]=0
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_bundle_predicts_strings_like_pytorch_on_the_same_ids(tmp_path):
    tok = tiny_tokenizer_json(tmp_path / "tokenizer.json")
    model = tiny_bert()
    bundle = compress.export(model, target="jetson_orin_nano", out_dir=tmp_path / "b", data=token_batch(),
                             tokenizer=tok, max_length=16)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["tokenizer"]["file"] == "tokenizer.json" and "tokenizer.json" in manifest["files"]
    texts = ["the small model runs on the edge device", "a text"]
    got = bundle.predict(texts)
    rows = tokenize(texts, tok, max_length=16)  # the training-side tokenization: same rules, padded to 16
    ids, mask = torch.from_numpy(rows["input_ids"]), torch.from_numpy(rows["attention_mask"])
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    ref = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    # same tokens; the device pads less (to the longest text), which masked mean pooling ignores up to fp32 noise
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=1e-4)


def test_a_missing_tokenizer_folder_is_explained_and_nothing_is_written(tmp_path):
    with pytest.raises(EdgetierError, match="no tokenizer.json"):
        compress.export(tiny_bert(), target="jetson_orin_nano", out_dir=tmp_path / "b", data=token_batch(),
                        tokenizer=tmp_path / "nowhere")
    assert not (tmp_path / "b").exists()
