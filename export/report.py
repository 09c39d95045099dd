"""Render a variant comparison report as Markdown (the `report.md` of a bundle). Torch-free."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from export.errors import ExportError

__all__ = ["render_markdown"]

_MISSING = "—"
_COLUMNS = (
    "Model",
    "Tier",
    "Target",
    "Precision",
    "Size (KiB)",
    "Size vs first",
    "Compressed (KiB)",
    "Params",
    "MACs",
    "Accuracy",
    "Latency here (ms)",
    "Est. on target (ms)",
)


def render_markdown(report: Mapping[str, Any], *, figures_in_bundles: bool = False) -> str:
    """A Markdown table comparing the models of a report, followed by its notes.

    `report` has `recipe` (name), `models` (list of dicts with `name`, `tier`, `target`,
    `precision`, `bytes`, `params`, `macs`, `accuracy` as a fraction, `latency_ms` with
    `latency_threads`, `estimated_latency_ms`; missing values print as a dash) and `notes`.
    Sizes are compared with the first model, usually the cloud one. A model's `figures` (file names
    in its bundle) are shown after the notes; `figures_in_bundles` links them as
    `<model name>/<file>`, for the run's report beside the bundle folders.

    >>> md = render_markdown({"recipe": "demo", "models": [
    ...     {"name": "cloud", "tier": "cloud", "bytes": 204800, "accuracy": 0.95},
    ...     {"name": "end", "tier": "end", "bytes": 51200, "accuracy": 0.9, "latency_ms": 0.25,
    ...      "latency_threads": 1}], "notes": ["int8 was not faster here"]})
    >>> print(md.splitlines()[7])
    | end | end | — | — | 50.0 | 0.25× | — | — | — | 90.0 % | 0.250 (1 thread) | — |
    """
    models = report.get("models")
    if not isinstance(models, Sequence) or isinstance(models, str):
        raise ExportError(
            "the report has no 'models' list", fix="pass {'recipe': ..., 'models': [...], 'notes': [...]}"
        )
    first_bytes = models[0].get("bytes") if models else None
    lines = [
        f"# {_cell(report.get('recipe', 'edgetier report'))}",
        "",
        _legend(models),
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        # Text columns left-aligned, numbers right-aligned so digits line up when rendered.
        "|" + "|".join(["---"] * 4 + ["---:"] * (len(_COLUMNS) - 4)) + "|",
    ]
    lines += ["| " + " | ".join(_row(model, first_bytes)) + " |" for model in models]
    notes = list(report.get("notes", []))
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    shown = [(m, fig) for m in models for fig in m.get("figures", ())]
    if shown:
        lines += ["", "## Figures", ""]
        for model, fig in shown:
            link = f"{model.get('name')}/{fig}" if figures_in_bundles else fig
            lines += [f"![{_cell(model.get('name', ''))}: {_cell(fig)}]({link})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


_RUNTIME_NAMES = {"onnxruntime": "onnxruntime", "litert": "LiteRT"}


def _legend(models: Sequence[Any]) -> str:
    """The table's legend, naming the runtime(s) the latency was actually measured in (from each model's
    `runtime`; a LiteRT bundle is timed in LiteRT, not onnxruntime)."""
    runtimes = sorted({_RUNTIME_NAMES.get(str(m.get("runtime")), str(m.get("runtime")))
                       for m in models if isinstance(m, Mapping) and m.get("runtime")})
    where = (f"in {runtimes[0]}" if len(runtimes) == 1 else
             f"in each bundle's own runtime ({', '.join(runtimes)})" if runtimes else "in each bundle's runtime")
    return ("Size is the exported file on disk; compressed is that file after DEFLATE (storage when shipped "
            f"compressed; the runtime loads the uncompressed file). Latency here is measured at batch 1 {where} on "
            "the machine that built the report; the estimate is for the target, from its datasheet figures.")


def _row(model: Mapping[str, Any], first_bytes: Any) -> list[str]:
    size = model.get("bytes")
    ratio = (
        f"{size / first_bytes:.2f}×" if _number(size) and _number(first_bytes) and first_bytes else _MISSING
    )
    latency = model.get("latency_ms")
    threads = model.get("latency_threads")
    if _number(latency):
        latency_text = f"{latency:.3f}"
        if _number(threads):
            latency_text += f" ({threads} thread{'s' if threads != 1 else ''})"
    else:
        latency_text = _MISSING
    return [
        _cell(model.get("name", _MISSING)),
        _cell(model.get("tier", _MISSING)),
        _cell(model.get("target", _MISSING)),
        _cell(model.get("precision", _MISSING)),
        f"{size / 1024:.1f}" if _number(size) else _MISSING,
        ratio,
        f"{model['compressed_bytes'] / 1024:.1f}" if _number(model.get("compressed_bytes")) else _MISSING,
        _count(model.get("params")),
        _count(model.get("macs")),
        f"{100 * model['accuracy']:.1f} %" if _number(model.get("accuracy")) else _MISSING,
        latency_text,
        f"{model['estimated_latency_ms']:.3f}" if _number(model.get("estimated_latency_ms")) else _MISSING,
    ]


def _count(value: Any) -> str:
    return f"{int(value):,}" if _number(value) else _MISSING


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _cell(value: Any) -> str:
    # A '|' or newline inside a name would break the table.
    return str(value).replace("|", "\\|").replace("\n", " ")
