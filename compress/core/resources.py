"""Where the shipped recipes and hardware targets live.

In a source checkout they are the top-level `recipes/` and `hw_targets/` folders; a wheel
carries them inside the package as `compress/_shipped/<name>/` (see pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def shipped_dir(name: str) -> Path:
    """The folder of shipped `recipes` or `hw_targets`.

    >>> shipped_dir("hw_targets").name
    'hw_targets'
    """
    if name not in ("recipes", "hw_targets"):
        raise ValueError(f"unknown shipped folder {name!r}")
    for candidate in (_PACKAGE / "_shipped" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the shipped folder {name!r} is missing from this installation of edgetier")
