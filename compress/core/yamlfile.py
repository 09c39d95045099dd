"""Reading user YAML safely, remembering the line of every key so errors can point at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compress.core.errors import EdgetierError

KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    """`("stages", 1, "with", "ratio")` -> `stages[1].with.ratio`.

    >>> format_path(("stages", 1, "with", "ratio"))
    'stages[1].with.ratio'
    """
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _lines(node: yaml.Node, path: KeyPath, out: dict[KeyPath, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _lines(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out)


def load_yaml_mapping(path: str | Path, *, error: type[EdgetierError] = EdgetierError,
                      what: str = "file") -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Load a YAML file that must hold a mapping; returns the data and the line of each key path.

    Uses `yaml.safe_load` semantics (no Python objects). Every failure is an `error` naming
    the file, the line and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found" if not path.exists() else f"{what} is not a file", where=str(path),
                    fix="check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} is not text (not UTF-8), so it cannot be YAML", where=str(path),
                    fix=f"pass a YAML {what}") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"not valid YAML ({problem})", where=where, fix="fix the YAML syntax at that line") from None
    if data is None:
        raise error(f"{what} is empty", where=str(path), fix=f"write a {what} (see the examples in recipes/)")
    if not isinstance(data, dict):
        raise error(f"{what} must be a YAML mapping of keys, found {type(data).__name__}", where=str(path),
                    fix=f"write a {what} as `key: value` lines (see the examples in recipes/)")
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _lines(node, (), lines)
    return data, lines
