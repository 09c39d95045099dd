"""Text data: sentences available offline, tokenized with a model's tokenizer into a record array.

Two sentence sources that ship with the installed packages, so nothing is downloaded and they
never overlap (one is Python's own documentation, the other scikit-learn's dataset cards):

- `stdlib_docstrings()` — the first paragraph of the docstrings of public functions and classes
  of ~70 standard-library modules: short English sentences about programming. **Held out**: used
  to evaluate embeddings (the benchmark's cosine and nearest-neighbour agreement).
- `sklearn_descriptions()` — sentences of the `DESCR` texts of scikit-learn's bundled datasets
  (iris, digits, wine, breast cancer, diabetes, linnerud): for distillation / calibration.
- `package_docstrings` (`compress.datasets.docstrings`) — thousands of prose sentences of installed
  packages' docstrings (numpy, torch, scipy, ...), never a stdlib one: for label-free distillation.

Tokenization rules (the same as `export.tokenizer` on the device): truncate to `max_length`
tokens, special tokens included; pad to `max_length` here (one array for the whole split; the
mean pooling ignores padding through the attention mask) — the device pads per batch instead.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from compress.core.errors import DataError
from compress.datasets.base import Dataset, Split

__all__ = ["read_lines", "sklearn_descriptions", "stdlib_docstrings", "tokenize"]

_STDLIB = ("json", "os", "re", "collections", "itertools", "functools", "pathlib", "textwrap", "string", "random",
           "statistics", "heapq", "bisect", "shutil", "tempfile", "csv", "argparse", "logging", "datetime",
           "calendar", "decimal", "fractions", "math", "zipfile", "tarfile", "gzip", "hashlib", "hmac", "secrets",
           "socket", "urllib.parse", "http.client", "email.message", "html", "xml.dom.minidom", "sqlite3",
           "threading", "queue", "subprocess", "inspect", "ast", "dis", "typing", "dataclasses", "enum",
           "contextlib", "abc", "copy", "pprint", "difflib", "unittest", "doctest", "pdb", "timeit", "operator",
           "glob", "fnmatch", "io", "codecs", "locale", "gettext", "uuid", "base64", "binascii", "struct", "array",
           "weakref", "types", "traceback", "warnings")


def stdlib_docstrings(n: int | None = None, *, seed: int = 0) -> list[str]:
    """First docstring paragraphs (30-300 characters) of public stdlib functions and classes, sorted,
    then `n` of them drawn with `seed` (all when `n` is None).

    >>> s = stdlib_docstrings(3); len(s), all(30 < len(t) < 300 for t in s)
    (3, True)
    """
    found = set()
    for name in _STDLIB:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj)
            if doc:
                first = " ".join(doc.strip().split("\n\n")[0].split())
                if 30 < len(first) < 300:
                    found.add(first)
    return _draw(sorted(found), n, seed)


def sklearn_descriptions(n: int | None = None, *, seed: int = 0) -> list[str]:
    """Sentences (30-300 characters) of the dataset cards bundled with scikit-learn.

    >>> s = sklearn_descriptions(); len(s) > 50
    True
    """
    from sklearn import datasets

    loaders = (datasets.load_iris, datasets.load_digits, datasets.load_wine, datasets.load_breast_cancer,
               datasets.load_diabetes, datasets.load_linnerud)
    found = set()
    for load in loaders:
        text = " ".join(load().DESCR.split())
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            if 30 < len(sentence) < 300 and sum(c.isalpha() for c in sentence) > 0.6 * len(sentence):
                found.add(sentence)
    return _draw(sorted(found), n, seed)


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file (one sentence per line)."""
    p = Path(path)
    if not p.is_file():
        raise DataError("text file not found", where=str(p), fix="give a UTF-8 file with one text per line")
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


def tokenize(texts: Sequence[str], tokenizer_dir: str | Path, *, max_length: int = 128,
             names: Sequence[str] = ("input_ids", "attention_mask")) -> np.ndarray:
    """A record array (one int64 field per model input, `[N, max_length]` each) for `texts`."""
    from export.tokenizer import TextEncoder

    path = Path(tokenizer_dir)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"no tokenizer.json in {path}", where=str(path),
                        fix="point at the Hugging Face model folder that holds tokenizer.json")
    encoder = TextEncoder(file, max_length=max_length)
    arrays = encoder.encode(list(texts), names=list(names))
    width = max_length
    out = np.zeros(len(texts), dtype=[(n, "int64", (width,)) for n in names])
    for n, a in arrays.items():
        out[n][:, :a.shape[1]] = a  # pad the rest with 0 (the pad id of BERT vocabularies; masked anyway)
    return out


def _draw(items: list[str], n: int | None, seed: int) -> list[str]:
    if n is None or n >= len(items):
        return items
    idx = np.random.default_rng(seed).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(idx)]


def _package_docstrings(n: int | None = None, *, seed: int = 0) -> list[str]:
    from compress.datasets.docstrings import package_docstrings

    return package_docstrings(n, seed=seed)


SOURCES = {"sklearn_descriptions": sklearn_descriptions, "stdlib_docstrings": stdlib_docstrings,
           "package_docstrings": _package_docstrings}


def text_dataset(*, seed: int, tokenizer: str | None, source: str, file: str | None, samples: int | None,
                 max_length: int, calib_samples: int) -> Dataset:
    """An unlabelled text dataset (all labels 0, no classes) tokenized into record arrays; the test
    split (a quarter) is what exports are checked on, the calib split a part of train."""
    from compress.models.hf import hf_folder

    if tokenizer is None:
        raise DataError("the text dataset needs the tokenizer of its model", where="dataset 'text'",
                        fix="give `tokenizer: <model folder>` (a recipe with `model: {hf: ...}` fills it in)")
    texts = read_lines(file) if file else SOURCES[source](samples, seed=seed)
    if file and samples:
        texts = _draw(texts, samples, seed)
    if len(texts) < 8:
        raise DataError(f"only {len(texts)} texts", where="dataset 'text'", fix="give at least 8 texts")
    x = tokenize(texts, hf_folder(tokenizer), max_length=max_length)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(len(x) // 4, 1)
    test, train = order[:n_test], order[n_test:]
    y = np.zeros(len(x), dtype=np.int64)
    split = lambda idx: Split(x[idx], y[idx])  # noqa: E731
    return Dataset(name="text", train=split(train), val=split(test), test=split(test),
                   calib=split(train[:calib_samples]), input_shape=(max_length,), num_classes=0, labels=())
