"""Loading hardware targets from YAML, with errors that name the file, the key and the fix.

A bare name (`"stm32h7"`) loads a shipped target from `hw_targets/`; a path ending in `.yaml` or
`.yml` loads that file. Nothing here raises a raw YAML or pydantic error: every problem becomes
one :class:`~compress.core.errors.TargetError`.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from compress.core.errors import TargetError
from compress.core.resources import shipped_dir
from compress.targets.schema import TIER_RANK, Target

_YAML_SUFFIXES = (".yaml", ".yml")


def shipped_target_names() -> list[str]:
    """Names of the targets shipped with edgetier, sorted.

    >>> "stm32h7" in shipped_target_names()
    True
    """
    return sorted(path.stem for path in shipped_dir("hw_targets").glob("*.yaml"))


def load_target(name_or_path: str | Path) -> Target:
    """Load a shipped target by name, or any target file by its `.yaml` / `.yml` path.

    >>> target = load_target("rpi4")
    >>> target.name, target.tier, target.link.to
    ('rpi4', 'end', 'edge')
    >>> try:
    ...     load_target("rpi5")
    ... except TargetError as err:
    ...     print(err.problem.split(";")[0])
    unknown target 'rpi5'
    """
    path = _resolve(name_or_path)
    shown = _display(path)
    data = _read_mapping(path, shown)
    try:
        target = Target.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, shown) from None
    if target.name != path.stem:
        raise TargetError(
            f"name {target.name!r} does not match the file name {path.name!r}",
            where=f"{shown}: name",
            fix=f"set `name: {path.stem}` or rename the file to {target.name}{path.suffix}",
        )
    return target


def list_targets() -> list[Target]:
    """Every shipped target, sorted by tier (end, edge, cloud) and then by name.

    >>> targets = list_targets()
    >>> targets[0].tier, targets[-1].tier, targets[-1].name
    ('end', 'cloud', 'cloud_gpu')
    """
    targets = [load_target(name) for name in shipped_target_names()]
    return sorted(targets, key=lambda t: (TIER_RANK[t.tier], t.name))


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if text.lower().endswith(_YAML_SUFFIXES):
        return Path(name_or_path)
    if isinstance(name_or_path, Path) or os.sep in text or "/" in text or "." in text:
        raise TargetError(
            f"{text!r} is neither a target name nor a .yaml file",
            fix="give a shipped target name (see `edgetier targets list`) or a path ending in .yaml",
        )
    path = shipped_dir("hw_targets") / f"{text}.yaml"
    if not path.is_file():
        known = ", ".join(shipped_target_names()) or "none"
        raise TargetError(
            f"unknown target {text!r}; the known targets are: {known}",
            fix="use one of those names (`edgetier targets list` describes them) or the path of your own target .yaml",
        )
    return path


def _display(path: Path) -> str:
    """The path as the user will recognise it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_mapping(path: Path, shown: str) -> dict[str, Any]:
    if not path.is_file():
        raise TargetError(
            "file not found",
            where=shown,
            fix="check the path, or give a shipped target name (see `edgetier targets list`)",
        )
    try:
        # libyaml's safe loader when available: a recipe load parses up to three targets
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except UnicodeDecodeError:
        raise TargetError("the file is not UTF-8 text, so it is not YAML", where=shown,
                          fix="point at the target's .yaml file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or "invalid syntax"
        raise TargetError(f"the file is not valid YAML{at} ({reason})", where=shown,
                          fix="correct the YAML syntax there") from None
    if data is None:
        raise TargetError("the file is empty", where=shown,
                          fix="write the target's keys into it (copy a file from hw_targets/ as a start)")
    if not isinstance(data, dict):
        got = {"list": "a list", "str": "a string", "bool": "a boolean"}.get(type(data).__name__, "a number")
        raise TargetError(f"expected a mapping of keys to values at the top level, got {got}",
                          where=shown, fix="write the target as `key: value` lines (copy a file from hw_targets/)")
    return data


def _explain(exc: ValidationError, shown: str) -> TargetError:
    """Turn pydantic's errors into one paragraph: file, dotted key path, what was expected."""
    errors = exc.errors()
    problems = [(_dotted(err["loc"]), _describe(err)) for err in errors]
    example = "`edgetier targets show stm32h7` prints a complete target"
    if len(problems) == 1:
        key, text = problems[0]
        return TargetError(text, where=f"{shown}: {key}" if key else shown, fix=f"{_action(errors[0])}; {example}")
    listed = "; ".join(f"{key}: {text}" if key else text for key, text in problems)
    return TargetError(f"{len(problems)} problems: {listed}", where=shown, fix=f"correct each key listed; {example}")


def _action(err: Any) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "extra_forbidden":
        return "remove the key or correct its spelling"
    if kind == "missing":
        return "add the key"
    if loc and loc[-1] == "[key]":
        return "rename the key to one of those"
    if kind == "value_error":
        return "change the value as the message says"
    return "set a value of the expected kind"


def _dotted(loc: tuple[int | str, ...]) -> str:
    # pydantic appends "[key]" when a dict *key* (not its value) is wrong; the key itself is
    # already the previous element, which is what the user wrote.
    parts = [f"[{part}]" if isinstance(part, int) else str(part) for part in loc if part != "[key]"]
    return ".".join(parts).replace(".[", "[")


def _describe(err: Any) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"unknown key {loc[-1]!r}{hint}"
    if kind == "missing":
        return "required key is missing"
    if loc and loc[-1] == "[key]":
        return f"unknown key {loc[-2]!r}: {err['msg']}"
    message = err["msg"].removeprefix("Value error, ")
    if kind.endswith(("_type", "_parsing")) or kind in ("literal_error", "enum"):
        message += f", got {err['input']!r}"
    return message


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the schema accepts at `loc`, found by walking the models along the path."""
    model: type[BaseModel] = Target
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        candidates = typing.get_args(field.annotation) or (field.annotation,)
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)
