"""The Markdown report: one row per model, the given numbers, then the notes."""

from __future__ import annotations

import numpy as np
import pytest

from export.errors import ExportError
from export.report import render_markdown

REPORT = {
    "recipe": "mnist1d-cascade",
    "models": [
        {
            "name": "cloud",
            "target": "cloud_gpu",
            "tier": "cloud",
            "precision": "fp32",
            "bytes": 209_871,
            "compressed_bytes": 190_000,
            "params": 52_170,
            "macs": 1_234_567,
            "accuracy": 0.9648,
            "latency_ms": 0.1834,
            "latency_threads": 1,
            "estimated_latency_ms": 0.0123,
        },
        {
            "name": "end",
            "target": "stm32h7",
            "tier": "end",
            "precision": "int8",
            "bytes": np.int64(61_228),
            "params": 52_170,
            "macs": 1_234_567,
            "accuracy": np.float64(0.9609),
            "latency_ms": 0.2476,
            "latency_threads": 2,
            "estimated_latency_ms": None,
        },
    ],
    "notes": ["int8 was not faster than fp32 in onnxruntime on this host", "a | pipe stays in its cell"],
}


def rows(md: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split(" | ")] for line in md.splitlines() if line.startswith("| ")
    ]


def test_table_has_one_row_per_model_with_the_numbers() -> None:
    md = render_markdown(REPORT)
    header, cloud, end = rows(md)
    assert header[0] == "Model" and len(header) == len(cloud) == len(end) == 12
    assert cloud == [
        "cloud", "cloud", "cloud_gpu", "fp32", "205.0", "1.00×", "185.5", "52,170", "1,234,567", "96.5 %",
        "0.183 (1 thread)", "0.012",
    ]  # fmt: skip
    assert end == [
        "end", "end", "stm32h7", "int8", "59.8", "0.29×", "—", "52,170", "1,234,567", "96.1 %",
        "0.248 (2 threads)", "—",
    ]  # fmt: skip


def test_title_legend_and_notes() -> None:
    md = render_markdown(REPORT)
    assert md.startswith("# mnist1d-cascade\n")
    assert "## Notes" in md
    assert md.index("## Notes") > md.index("| end |")
    assert "- int8 was not faster than fp32 in onnxruntime on this host" in md
    assert "- a | pipe stays in its cell" in md  # notes are prose, not table cells
    assert "measured at batch 1" in md


def test_pipes_in_names_do_not_break_the_table() -> None:
    md = render_markdown({"recipe": "r", "models": [{"name": "a|b", "bytes": 10}]})
    assert "| a\\|b |" in md


def test_missing_numbers_print_a_dash() -> None:
    (_, row) = rows(render_markdown({"recipe": "r", "models": [{"name": "x"}]}))
    assert row[0] == "x" and set(row[1:]) == {"—"}


def test_no_models_list_is_explained() -> None:
    with pytest.raises(ExportError, match="no 'models' list"):
        render_markdown({"recipe": "r"})
