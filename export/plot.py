"""Pareto fronts and their plots (matplotlib, Agg backend: no display needed). Torch-free.

Points are dicts; `x` is a cost to minimise (latency, bytes) and `y` a score to maximise (accuracy).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["pareto_front", "pareto_plot", "pareto_svg"]


def _value(point: Mapping[str, Any], key: str) -> float | None:
    value = point.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def pareto_front(points: Sequence[Mapping[str, Any]], *, x: str, y: str, maximize_y: bool = True) -> list[int]:
    """Indices of the points no other point beats: none has lower-or-equal `x` and higher-or-equal
    `y` (lower-or-equal with `maximize_y=False`, for a cost such as sensitivity) with one of them
    strict. Points missing `x` or `y` are never on the front. Sorted by `x`.

    >>> pts = [{"ms": 1, "acc": 0.5}, {"ms": 2, "acc": 0.7}, {"ms": 3, "acc": 0.6}, {"ms": 2, "acc": 0.4}]
    >>> pareto_front(pts, x="ms", y="acc")
    [0, 1]
    >>> pareto_front(pts, x="ms", y="acc", maximize_y=False)  # y as a cost: lower is better
    [0, 3]
    """
    sign = 1.0 if maximize_y else -1.0
    valid = [(i, _value(p, x), _value(p, y)) for i, p in enumerate(points)]
    valid = [(i, a, sign * b) for i, a, b in valid if a is not None and b is not None]
    front = []
    for i, a, b in valid:
        dominated = any((a2 <= a and b2 >= b) and (a2 < a or b2 > b) for _, a2, b2 in valid)
        if not dominated:
            front.append((a, -b, i))
    return [i for _, _, i in sorted(front)]


def pareto_plot(path: str | Path, points: Sequence[Mapping[str, Any]], *, x: str, y: str, label_x: str,
                label_y: str, chosen: int | None = None, title: str = "Pareto front",
                maximize_y: bool = True) -> Path:
    """Scatter of every point, the Pareto front as a step line, `chosen` (an index) circled; PNG or SVG
    by the suffix of `path`. Returns `path`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = pareto_plot(Path(tmp) / "p.png", [{"ms": 1, "acc": 0.5}, {"ms": 2, "acc": 0.7}],
    ...                       x="ms", y="acc", label_x="latency (ms)", label_y="accuracy", chosen=1)
    ...     out.stat().st_size > 1000
    True
    """
    fig = _pareto_figure(points, x=x, y=y, label_x=label_x, label_y=label_y, chosen=chosen, title=title,
                         maximize_y=maximize_y)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def pareto_svg(points: Sequence[Mapping[str, Any]], *, x: str, y: str, label_x: str, label_y: str,
               title: str = "Pareto front", names: str | None = None, log_x: bool = False) -> str:
    """The same plot as `pareto_plot`, as SVG text to inline in a page; `names` is the key of each
    point's label, written beside it.

    >>> svg = pareto_svg([{"kb": 100, "acc": 0.9, "n": "cloud"}, {"kb": 10, "acc": 0.8, "n": "end"}],
    ...                  x="kb", y="acc", label_x="size (KiB)", label_y="accuracy", names="n")
    >>> svg.startswith("<svg") and ">cloud</text>" in svg  # labels stay text: searchable, selectable
    True
    """
    import io

    fig = _pareto_figure(points, x=x, y=y, label_x=label_x, label_y=label_y, title=title, names=names,
                         log_x=log_x)
    import matplotlib

    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as <text>, not glyph outlines
        fig.savefig(out, format="svg")
    text = out.getvalue()
    # drop the XML prolog, the doctype and the RDF metadata block: the SVG sits inside an HTML page
    text = re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)
    return text


def _pareto_figure(points: Sequence[Mapping[str, Any]], *, x: str, y: str, label_x: str, label_y: str,
                   chosen: int | None = None, title: str, maximize_y: bool = True, names: str | None = None,
                   log_x: bool = False) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, work without a display
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4), dpi=110)  # a Figure, not pyplot: no global figure registry
    ax = fig.add_subplot()
    xy = [(_value(p, x), _value(p, y)) for p in points]
    shown = [(a, b) for a, b in xy if a is not None and b is not None]
    if shown:
        ax.scatter(*zip(*shown, strict=True), s=18, color="0.6", label="models" if names else "candidates")
    front = pareto_front(points, x=x, y=y, maximize_y=maximize_y)
    if front:
        fx, fy = [xy[i][0] for i in front], [xy[i][1] for i in front]
        ax.step(fx, fy, where="post", color="tab:blue", linewidth=1.2)
        ax.scatter(fx, fy, s=24, color="tab:blue", label="Pareto front", zorder=3)
    if chosen is not None and xy[chosen][0] is not None and xy[chosen][1] is not None:
        ax.scatter([xy[chosen][0]], [xy[chosen][1]], s=140, facecolors="none", edgecolors="tab:red", linewidths=2,
                   label="chosen", zorder=4)
    if names is not None:
        for point, (a, b) in zip(points, xy, strict=True):
            if a is not None and b is not None:
                ax.annotate(str(point.get(names, "")), (a, b), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if log_x and shown and min(a for a, _ in shown) > 0:
        ax.set_xscale("log")
    if names is not None:
        ax.margins(x=0.12)  # room for the labels of the outermost points
    ax.set_xlabel(label_x)
    ax.set_ylabel(label_y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if maximize_y else "upper right", fontsize=8)
    fig.tight_layout()
    return fig
