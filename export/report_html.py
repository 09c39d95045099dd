"""The run report as one self-contained page (`report.html`): no network, every plot inline. Torch-free.

The page shows what `report.md` shows — every model side by side, notes — plus the variants on
accuracy-vs-size and accuracy-vs-latency plots with the Pareto front marked, each bundle's
verification (every file's sha256 re-checked when the page is written, and the parity recorded
at export), the per-stage figures of each bundle embedded as data, and extra sections such as
the cascade simulation when a later command adds them.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from export.errors import ExplainedError, ExportError
from export.manifest import verify_bundle
from export.plot import pareto_svg
from export.report import _COLUMNS, _LEGEND, _number, _row

__all__ = ["render_html", "write_report_html"]

_IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
padding:0 1rem;color:#1d2330;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #dde2ea}
.sub{color:#5b6475;font-size:.9rem}table{border-collapse:collapse;font-size:.88rem;margin:.8rem 0;width:100%}
th,td{border:1px solid #dde2ea;padding:.3rem .5rem}th{background:#f3f5f9;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.ok{color:#1a7f37;font-weight:600}
.bad{color:#c0392b;font-weight:600}.plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots figure{margin:0;flex:1 1 480px}.plots svg{width:100%;height:auto}
figure img{max-width:100%}figcaption{font-size:.85rem;color:#5b6475}code{background:#f3f5f9;padding:0 .2rem}
"""


def render_html(report: Mapping[str, Any], *, bundles_dir: str | Path | None = None,
                sections: Sequence[tuple[str, str]] = ()) -> str:
    """The whole page as a string. `report` is a run report (`recipe`, `recipe_sha256`, `models`,
    `notes`), `bundles_dir` the folder holding one bundle folder per model (verified, and the source
    of the figures); `sections` are extra `(title, html)` blocks (e.g. the cascade simulation).

    >>> import re
    >>> page = render_html({"recipe": "demo", "models": [
    ...     {"name": "cloud", "bytes": 204800, "accuracy": 0.95, "latency_ms": 1.0},
    ...     {"name": "end", "bytes": 51200, "accuracy": 0.9, "latency_ms": 0.25}]})
    >>> page.startswith("<!DOCTYPE html>"), page.count("<svg"), re.findall(r'(?:src|href)="[a-z]+:', page)
    (True, 2, [])
    """
    models = report.get("models")
    if not isinstance(models, Sequence) or isinstance(models, str):
        raise ExportError("the report has no 'models' list",
                          fix="pass {'recipe': ..., 'models': [...], 'notes': [...]}")
    title = html.escape(str(report.get("recipe", "edgetier report")))
    root = Path(bundles_dir) if bundles_dir is not None else None
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title} — edgetier report</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
    ]
    if report.get("recipe_sha256"):
        parts.append(f'<p class="sub">recipe sha256 <code>{html.escape(str(report["recipe_sha256"]))}</code></p>')
    parts += ["<h2>Models</h2>", _table(models), f'<p class="sub">{html.escape(_LEGEND)}</p>']
    parts += ["<h2>Accuracy against size and latency</h2>", _plots(models)]
    parts += ["<h2>Verification</h2>", _verification(models, root)]
    notes = [str(n) for n in report.get("notes", ())]
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>", *(f"<li>{html.escape(n)}</li>" for n in notes), "</ul>"]
    for section_title, body in sections:
        parts += [f"<h2>{html.escape(section_title)}</h2>", body]
    figures = _figures(models, root)
    if figures:
        parts += ["<h2>Stage figures</h2>", figures]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _table(models: Sequence[Mapping[str, Any]]) -> str:
    first_bytes = models[0].get("bytes") if models else None
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
    rows = []
    for model in models:
        cells = _row(model, first_bytes)
        rows.append("<tr>" + "".join(
            f'<td{" class=n" if i >= 4 else ""}>{html.escape(c.replace(chr(92) + "|", "|"))}</td>'
            for i, c in enumerate(cells)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _plots(models: Sequence[Mapping[str, Any]]) -> str:
    points = [{"name": str(m.get("name", "?")),
               "kib": m["bytes"] / 1024 if _number(m.get("bytes")) else None,
               "ms": m.get("latency_ms") if _number(m.get("latency_ms")) else None,
               "acc": 100 * m["accuracy"] if _number(m.get("accuracy")) else None} for m in models]
    figures = []
    for x, label, caption in (("kib", "exported file (KiB, log scale)", "accuracy of the exported file vs its size"),
                              ("ms", "batch-1 latency here (ms, log scale)", "accuracy vs latency measured in the runtime")):
        if sum(p[x] is not None and p["acc"] is not None for p in points) == 0:
            figures.append(f"<figure><figcaption>{caption}: no model has both numbers</figcaption></figure>")
            continue
        svg = pareto_svg(points, x=x, y="acc", label_x=label, label_y="accuracy (%)", title=caption,
                         names="name", log_x=True)
        figures.append(f"<figure>{svg}<figcaption>{caption}; the blue line is the Pareto front"
                       "</figcaption></figure>")
    return f'<div class="plots">{"".join(figures)}</div>'


def _verification(models: Sequence[Mapping[str, Any]], root: Path | None) -> str:
    rows = []
    for model in models:
        name = str(model.get("name", "?"))
        if root is None:
            files = '<span class="sub">not checked (no bundle folder given)</span>'
        else:
            try:
                manifest = verify_bundle(root / name)
                files = f'<span class="ok">verified</span>: {len(manifest.get("files", {}))} files, sha256 match'
            except (ExplainedError, OSError) as exc:
                files = f'<span class="bad">FAILED</span>: {html.escape(str(exc))}'
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{files}</td><td>{_parity(model)}</td></tr>")
    return ("<table><thead><tr><th>Bundle</th><th>Files</th><th>Parity with PyTorch (at export)</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _parity(model: Mapping[str, Any]) -> str:
    parity = model.get("parity")
    if not isinstance(parity, Mapping):
        return '<span class="sub">not recorded</span>'
    passed = parity.get("passed")
    bits = []
    if _number(parity.get("max_abs_diff")):
        bits.append(f"max |Δ| {parity['max_abs_diff']:.3g}")
    if _number(parity.get("top1_agreement")):
        bits.append(f"top-1 agreement {100 * parity['top1_agreement']:.1f} %")
    status = ('<span class="ok">passed</span>' if passed is True else
              '<span class="bad">failed</span>' if passed is False else "measured")
    return status + (": " + html.escape(", ".join(bits)) if bits else "")


def _figures(models: Sequence[Mapping[str, Any]], root: Path | None) -> str:
    if root is None:
        return ""
    out = []
    for model in models:
        for name in model.get("figures", ()):
            path = root / str(model.get("name")) / str(name)
            kind = _IMAGE_TYPES.get(path.suffix.lower())
            if kind is None or not path.is_file() or path.is_symlink():
                continue
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            caption = html.escape(f"{model.get('name')}: {name}")
            out.append(f'<figure><img alt="{caption}" src="data:{kind};base64,{data}"><figcaption>{caption}'
                       "</figcaption></figure>")
    return "\n".join(out)



def write_report_html(run_dir: str | Path) -> Path:
    """Write `run_dir/report.html` from the run's `report.json` and, when present, `cascade.json`
    (atomically: a unique temporary file renamed into place). Returns the page's path.

    Called by `edgetier run` after the run report and by `edgetier cascade` after its simulation,
    so the page always shows everything the folder holds.
    """
    root = Path(run_dir)
    report = json.loads((root / "report.json").read_text(encoding="utf-8"))
    sections = []
    cascade_file = root / "cascade.json"
    if cascade_file.is_file():
        sections.append(("Cascade simulation", _cascade(json.loads(cascade_file.read_text(encoding="utf-8")))))
    page = render_html(report, bundles_dir=root, sections=sections)
    fd, tmp = tempfile.mkstemp(prefix=".report.html.", suffix=".tmp", dir=root)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(page)
    out = root / "report.html"
    os.replace(tmp, out)
    return out


def _cascade(saved: Mapping[str, Any]) -> str:
    sim = saved.get("simulation", {})
    tiers = [str(t) for t in sim.get("tiers", ())]
    rows = [("cascade " + " → ".join(tiers), sim.get("cascade", {})), ("cloud only", sim.get("cloud_only", {})),
            ("end only", sim.get("end_only", {}))]

    def cell(value: Any, fmt: str) -> str:
        return f'<td class="n">{fmt.format(value) if _number(value) else "—"}</td>'

    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + cell(100 * r["accuracy"] if _number(r.get("accuracy")) else None, "{:.2f} %")
        + cell(r.get("mean_latency_ms"), "{:.3f}") + cell(r.get("p95_latency_ms"), "{:.3f}")
        + cell(r.get("bytes_sent_per_sample"), "{:.0f}") + "</tr>" for name, r in rows)
    shares = sim.get("cascade", {}).get("share_per_tier", [])
    answered = ", ".join(f"{html.escape(t)}: {100 * s:.1f} %" for t, s in zip(tiers, shares, strict=False)
                         if _number(s))
    notes = "".join(f"<li>{html.escape(str(n))}</li>" for n in sim.get("notes", ()))
    return ("<table><thead><tr><th>Policy</th><th>Accuracy</th><th>Mean ms</th><th>p95 ms</th>"
            f"<th>Bytes sent / sample</th></tr></thead><tbody>{body}</tbody></table>"
            f"<p>Answered per tier: {answered}.</p><ul>{notes}</ul>")
