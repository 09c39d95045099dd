"""Text in, token ids out, on the device: a bundle's `tokenizer.json` run with `tokenizers` + numpy.

Rules (the same in training, calibration, parity and the runtime): truncate each text to
`max_length` tokens (special tokens included), pad with the tokenizer's pad token to the
longest text of the batch, `attention_mask` 1 on real tokens and 0 on padding, `token_type_ids`
all 0 (one segment). Torch-free; `tokenizers` is imported on first use, so bundles without a
tokenizer never need it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from export.errors import BundleError

__all__ = ["TextEncoder"]

_PAD_TOKENS = ("[PAD]", "<pad>", "<|padding|>")


class TextEncoder:
    """A `tokenizer.json` with the bundle's truncation and padding rules.

    Usage (exercised in tests/export/test_tokenizer.py, which builds a small tokenizer):
    `TextEncoder("tokenizer.json", max_length=128).encode(["a text"], names=("input_ids", "attention_mask"))`.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_length: int) -> None:
        from tokenizers import Tokenizer  # only text bundles need it

        try:
            self._tok = Tokenizer.from_file(os.fspath(path))
        except Exception as err:  # tokenizers raises a bare Exception for a bad file
            raise BundleError(f"cannot read the tokenizer ({str(err).splitlines()[0]})", where=os.fspath(path),
                              fix="ship the model's tokenizer.json (a Hugging Face fast-tokenizer file)") from None
        pad_id, pad_token = 0, None
        for token in _PAD_TOKENS:
            token_id = self._tok.token_to_id(token)
            if token_id is not None:
                pad_id, pad_token = token_id, token
                break
        self.max_length = max_length
        self._tok.enable_truncation(max_length=max_length)
        self._tok.enable_padding(pad_id=pad_id, pad_token=pad_token or "[PAD]")

    def encode(self, texts: Sequence[str], *, names: Sequence[str]) -> dict[str, np.ndarray]:
        """int64 arrays for the model inputs in `names` (input_ids, attention_mask, token_type_ids)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise BundleError("the tokenizer takes a list of strings", fix='pass ["some text", ...]')
        encodings = self._tok.encode_batch(list(texts))
        table: dict[str, Any] = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [[0] * len(e.ids) for e in encodings],
        }
        unknown = [n for n in names if n not in table]
        if unknown:
            raise BundleError(f"the model takes inputs {unknown} that a tokenizer does not produce",
                              fix="pass a dict of arrays instead of strings")
        width = max((len(e.ids) for e in encodings), default=0)
        return {n: np.asarray(table[n], dtype=np.int64).reshape(len(texts), width) for n in names}
