"""A griffe extension for the site: docstring examples (`>>>` lines and their output) become
`pycon` code blocks, so Markdown does not read `x["key"]` as a link or `>>>` as a quote.

The docstrings stay plain doctests — the test suite runs them as they are.
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    r"""Wrap each run of doctest lines (prompt, continuation and output, up to a blank line) in a fence.

    >>> fence_doctests('Intro.\n\n>>> 1 + 1\n2\n\nAfter.').splitlines()
    ['Intro.', '', '```pycon', '>>> 1 + 1', '2', '```', '', 'After.']
    """
    out: list[str] = []
    block = False
    for line in text.splitlines():
        stripped = line.strip()
        if not block and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            block = True
        elif block and not stripped:
            out.append(f"{indent}```")
            block = False
        out.append(line)
    if block:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
