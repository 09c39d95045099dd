"""Unlabelled English sentences from the docstrings of installed packages, offline.

Source of the text dataset's `package_docstrings`: prose sentences (6-40 words, no code, markup or
links) of the module, class and function docstrings of numpy, torch, scipy, transformers, pandas,
onnx, pydantic, networkx, rich and brevitas — whichever are installed — read with `ast` (nothing
is imported or run). Thousands of varied sentences, enough to distil a sentence-embedding model
without labels. Standard-library docstrings (`stdlib_docstrings`, the held-out evaluation source)
are a different source; any sentence that also appears there is dropped, so the two never overlap.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

__all__ = ["package_docstrings", "prose_sentences"]

PACKAGES = ("numpy", "torch", "scipy", "transformers", "pandas", "onnx", "pydantic", "networkx", "rich", "brevitas")
FILES_PER_PACKAGE = 200  # in sorted path order: enough sentences, parsed in seconds
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _plain(sentence: str) -> str | None:
    """A prose sentence of 6-40 words, or None (code, tables, references, markup)."""
    s = " ".join(sentence.split())
    words = s.split()
    if not 6 <= len(words) <= 40 or not s[0].isupper() or not s.endswith("."):
        return None
    if re.search(r"[=<>{}\[\]|`_*#:]|\(\)|http|\.\.", s) or sum(c.isalpha() for c in s) < 0.75 * len(s):
        return None
    return s


def prose_sentences(texts: list[str]) -> list[str]:
    """The prose sentences of `texts`, in order, without repeats.

    >>> prose_sentences(["Returns the sum of the array elements. See `np.add`.\\n\\nx = f(1)"])
    ['Returns the sum of the array elements.']
    """
    found = []
    for text in texts:
        for paragraph in re.split(r"\n\s*\n", text):
            for sentence in _SENTENCE.split(" ".join(paragraph.split())):
                plain = _plain(sentence)
                if plain is not None:
                    found.append(plain)
    return list(dict.fromkeys(found))


def package_docstrings(n: int | None = None, *, seed: int = 0) -> list[str]:
    """`n` prose sentences of installed packages' docstrings (all when None), drawn with `seed`."""
    from compress.datasets.text import _draw, stdlib_docstrings

    texts = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        for path in sorted(Path(spec.origin).parent.rglob("*.py"))[:FILES_PER_PACKAGE]:
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        texts.append(doc)
    held_out = set(stdlib_docstrings())
    return _draw(sorted(s for s in prose_sentences(texts) if s not in held_out), n, seed)
