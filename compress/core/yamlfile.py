"""Reading user YAML safely, remembering the line of every key so errors can point at it.

A recipe or target file may come from anyone, so parsing is bounded before any structure is
built: a size cap, a nesting-depth cap and an alias cap are checked on the parser's event
stream (which is iterative, so a 100k-deep flow list cannot overflow Python's stack), and the
document's size with every alias expanded is computed once per node (memoized by identity)
and capped, so a "billion laughs" file is refused in milliseconds instead of being expanded by
whatever walks the data next. Duplicate keys are refused (YAML says keys are unique; PyYAML
silently keeps the last). Errors quote at most a short excerpt of the user's text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compress.core.errors import EdgetierError

KeyPath = tuple[str | int, ...]

MAX_BYTES = 1_000_000  # a recipe is a few KB; a megabyte is already absurd
MAX_DEPTH = 64  # recipes nest about 6 levels
MAX_ALIASES = 100  # anchors are handy for shared train settings; a hundred uses is plenty
MAX_NODES = 100_000  # nodes of the document with every alias expanded
EXCERPT = 80


def excerpt(value: Any, limit: int = EXCERPT) -> str:
    """`repr(value)`, cut to `limit` characters, so an error never echoes a huge input.

    >>> excerpt("x" * 1000)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... (1,002 characters)"
    >>> excerpt(3)
    '3'
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(text):,} characters)"


def format_path(path: KeyPath) -> str:
    """`("stages", 1, "with", "ratio")` -> `stages[1].with.ratio`.

    >>> format_path(("stages", 1, "with", "ratio"))
    'stages[1].with.ratio'
    """
    text = ""
    for part in path:
        if not isinstance(part, int):
            part = str(part) if len(str(part)) <= EXCERPT else excerpt(str(part))
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _check_events(text: str, where: str, error: type[EdgetierError]) -> None:
    """Depth and alias counts from the event stream, before any node is composed."""
    depth = aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise error(f"nested more than {MAX_DEPTH} levels deep", where=f"{where}:{event.start_mark.line + 1}",
                            fix="flatten the structure; a recipe needs a handful of levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise error(f"more than {MAX_ALIASES} aliases (*name)", where=f"{where}:{event.start_mark.line + 1}",
                            fix="write the values out instead of referring to anchors so many times")


def _expanded_size(root: yaml.Node, where: str, error: type[EdgetierError]) -> None:
    """The node count with aliases expanded, each distinct node counted once (post-order, iterative)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = _children(node)
        if not children_done:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        sizes[id(node)] = 1 + sum(sizes.get(id(k), 1) for k in kids)
        if sizes[id(node)] > MAX_NODES:
            raise error(f"the document expands to more than {MAX_NODES:,} values once its aliases are resolved",
                        where=f"{where}:{node.start_mark.line + 1}",
                        fix="write the values out instead of nesting aliases of aliases")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _lines(root: yaml.Node, where: str, error: type[EdgetierError]) -> dict[KeyPath, int]:
    """Line of every key path; refuses duplicate keys. Never descends into a node twice (an alias
    records where it is used, not a copy of everything under its anchor)."""
    out: dict[KeyPath, int] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, KeyPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        out.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[Any] = set()
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
                if key in keys and key != "<<":
                    raise error(f"key {excerpt(key)} appears twice in the same mapping",
                                where=f"{where}:{key_node.start_mark.line + 1}",
                                fix="keep one of them (YAML keys are unique; the last would silently win)")
                keys.add(key)
                out[(*path, key)] = key_node.start_mark.line + 1
                stack.append((value_node, (*path, key)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
    return out


def load_yaml_mapping(path: str | Path, *, error: type[EdgetierError] = EdgetierError,
                      what: str = "file") -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Load a YAML file that must hold a mapping; returns the data and the line of each key path.

    Uses `yaml.safe_load` semantics (no Python objects), within the bounds above. Every failure
    is an `error` naming the file, the line and the fix.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d) / "r.yaml"
    ...     _ = p.write_text("a: 1\\na: 2\\n")
    ...     load_yaml_mapping(p)
    Traceback (most recent call last):
    ...
    compress.core.errors.EdgetierError: ...r.yaml:2: key 'a' appears twice in the same mapping. Fix: ...
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found" if not path.exists() else f"{what} is not a file", where=str(path),
                    fix="check the path")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise error(f"{what} is {size:,} bytes, more than the {MAX_BYTES:,} a {what} may have", where=str(path),
                    fix=f"check that this is the right file; a {what} is a few kilobytes")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_BYTES + 1)  # the file may grow between stat and read
    except UnicodeDecodeError:
        raise error(f"{what} is not text (not UTF-8), so it cannot be YAML", where=str(path),
                    fix=f"pass a YAML {what}") from None
    if len(text) > MAX_BYTES:
        raise error(f"{what} is more than {MAX_BYTES:,} characters", where=str(path), fix=f"pass a YAML {what}")
    where = str(path)
    try:
        _check_events(text, where, error)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _expanded_size(node, where, error)
            lines = _lines(node, where, error)
        else:
            lines = {}
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"not valid YAML ({problem[:EXCERPT]})", where=at, fix="fix the YAML syntax at that line") from None
    if data is None:
        raise error(f"{what} is empty", where=str(path), fix=f"write a {what} (see the examples in recipes/)")
    if not isinstance(data, dict):
        raise error(f"{what} must be a YAML mapping of keys, found {type(data).__name__}", where=str(path),
                    fix=f"write a {what} as `key: value` lines (see the examples in recipes/)")
    return data, lines
