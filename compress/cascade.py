"""`edgetier cascade RUN_DIR`: calibrate and simulate end → edge → cloud inference on a run.

Hand-off thresholds are calibrated on the validation split (a tier answers a sample when its
score passes the threshold whose answered samples reach the target accuracy, by default the
last tier's own validation accuracy). The simulation then routes every test sample through the
exported bundles in onnxruntime and charges, per sample, the target's estimated compute time
for the segments each tier ran (roofline from the target's figures, on the segments' MACs and
file bytes) plus the link transfer of the input at each hand-off. Beside it: cloud-only (the
input crosses every link, the cloud model answers) and end-only (the end tier answers all).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import EdgetierError
from compress.datasets import Dataset
from compress.datasets import load as load_dataset
from compress.exits.calibrate import longest_prefix
from compress.targets import load_target
from compress.targets.latency import estimate_latency, transfer_ms
from export.cascade import Cascade, Tier
from export.policy import score
from export.report_html import write_report_html
from export.runtime import Bundle
from export.runtime import load as load_bundle

TIER_ORDER = {"end": 0, "edge": 1, "cloud": 2}


def _choose_tiers(run_dir: Path, names: list[str] | None) -> list[str]:
    info = _run_info(run_dir)
    available = [n for n in info["bundles"] if (run_dir / n / "manifest.json").is_file()]
    if names:
        missing = [n for n in names if n not in available]
        if missing:
            raise EdgetierError(f"no bundle {missing} in the run", where=str(run_dir),
                                fix=f"choose among: {', '.join(available)}")
        return names
    by_tier: dict[str, list[str]] = {}
    for name in available:
        tier = json.loads((run_dir / name / "manifest.json").read_text())["target"]["tier"]
        by_tier.setdefault(tier, []).append(name)
    ambiguous = {t: v for t, v in by_tier.items() if len(v) > 1}
    if ambiguous:
        raise EdgetierError(f"several bundles per tier {ambiguous}", where=str(run_dir),
                            fix="name the tiers in order with --tiers end_variant,edge_variant,cloud")
    return [by_tier[t][0] for t in sorted(by_tier, key=TIER_ORDER.__getitem__)]


def _run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    if not path.is_file():
        raise EdgetierError("not a run folder (no run.json)", where=str(run_dir),
                            fix="pass the folder `edgetier run` wrote, e.g. runs/<recipe name>")
    return json.loads(path.read_text(encoding="utf-8"))


def _tier_answers(bundle: Bundle, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return bundle.predict(x, return_exits=True)


def _handoff(logits: np.ndarray, early: np.ndarray, y: np.ndarray, target: float, criterion: str) -> float:
    """Threshold on the final output: the most permissive one whose answered samples reach `target`."""
    s = score(logits[~early], criterion)
    correct = logits[~early].argmax(1) == y[~early]
    order = np.argsort(-s if criterion == "confidence" else s, kind="stable")
    take = longest_prefix(correct[order], target, 1.645)  # the same conservative rule as the exits
    if not take:
        return 2.0 if criterion == "confidence" else -1.0  # hand everything on
    return float(s[order[take - 1]])


def _costs(bundle: Bundle, report: dict[str, Any], input_bytes: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Estimated ms on the bundle's target after each exit (cumulative), and its link."""
    target = load_target(bundle.manifest["target"]["name"])
    precision = bundle.manifest["model"]["precision"]
    precision = precision if precision in target.supported_precisions else target.supported_precisions[-1]
    exits = report.get("exits")
    macs = np.cumsum(exits["segment_macs"]) if exits else np.array([report["macs"]])
    sizes = np.cumsum(exits["segment_bytes"]) if exits else np.array([report["bytes"]])
    ms = np.array([estimate_latency(target, macs=int(m), weight_bytes=int(b), activation_bytes=input_bytes,
                                    precision=precision).ms for m, b in zip(macs, sizes, strict=True)])
    return ms, {"target": target, "link": target.link}


def simulate(run_dir: str | Path, *, tiers: list[str] | None = None, target_accuracy: float | None = None,
             criterion: str = "confidence", serve: str | None = None, timeout_s: float = 5.0) -> dict[str, Any]:
    """Calibrate hand-offs on val, simulate on test; writes `cascade.json` and `cascade.md` in `run_dir`.

    With `serve` (the URL of `edgetier serve` on the last bundle), the test split also runs live
    with that tier remote and the links emulated (compress.cascade_live): `result["live"]`.
    """
    root = Path(run_dir)
    names = _choose_tiers(root, tiers)
    info = _run_info(root)
    data: Dataset = load_dataset(info["data"]["dataset"], seed=info["seed"],
                                 **{k: v for k, v in info["data"].items() if k != "dataset"})
    bundles = [load_bundle(root / n) for n in names]
    reports = [json.loads((root / n / "report.json").read_text())["models"][0] for n in names]
    input_bytes = int(np.prod(data.test.x.shape[1:])) * 4
    val = [_tier_answers(b, data.val.x) for b in bundles]
    if target_accuracy is None:
        target_accuracy = float((val[-1][0].argmax(1) == data.val.y).mean())
    handoffs = []
    for (logits, taken), bundle in zip(val[:-1], bundles[:-1], strict=True):
        early = taken < len(bundle.exits)
        handoffs.append({"criterion": criterion,
                         "threshold": _handoff(logits, early, data.val.y, target_accuracy, criterion)})
    cascade = Cascade([Tier(n, b, h) for n, b, h in zip(names, bundles, [*handoffs, None], strict=True)])
    logits, route = cascade.predict(data.test.x, return_route=True)
    costs = [_costs(b, r, input_bytes) for b, r in zip(bundles, reports, strict=True)]
    latency = np.zeros(len(data.test.y))
    sent = np.zeros(len(data.test.y))
    for i, (tier, exit_k) in enumerate(zip(route.tier, route.exit, strict=True)):
        for t in range(tier + 1):
            ms, extra = costs[t]
            latency[i] += ms[exit_k] if t == tier else ms[-1]  # earlier tiers ran to their final output
            if t < tier:
                latency[i] += transfer_ms(extra["link"], input_bytes)
                sent[i] += input_bytes
    hops = sum(transfer_ms(c[1]["link"], input_bytes) for c in costs[:-1])
    cloud_only = {"accuracy": reports[-1]["accuracy"], "mean_latency_ms": float(costs[-1][0][-1] + hops),
                  "p95_latency_ms": float(costs[-1][0][-1] + hops), "bytes_sent_per_sample": input_bytes * (len(names) - 1)}
    end_logits, end_taken = bundles[0].predict(data.test.x, return_exits=True)
    end_ms = costs[0][0]
    end_latency = end_ms[np.minimum(end_taken, len(end_ms) - 1)]
    result = {
        "tiers": names, "handoffs": handoffs, "target_accuracy": target_accuracy,
        "cascade": {"accuracy": float((logits.argmax(1) == data.test.y).mean()),
                    "share_per_tier": [float((route.tier == t).mean()) for t in range(len(names))],
                    "share_per_exit": {n: [float(((route.tier == t) & (route.exit == k)).mean())
                                           for k in range(len(b.exits) + 1)]
                                       for t, (n, b) in enumerate(zip(names, bundles, strict=True))},
                    "mean_latency_ms": float(latency.mean()), "p95_latency_ms": float(np.percentile(latency, 95)),
                    "bytes_sent_per_sample": float(sent.mean())},
        "cloud_only": cloud_only,
        "end_only": {"accuracy": float((end_logits.argmax(1) == data.test.y).mean()),
                     "mean_latency_ms": float(end_latency.mean()),
                     "p95_latency_ms": float(np.percentile(end_latency, 95)), "bytes_sent_per_sample": 0},
        "input_bytes": input_bytes,
        "notes": ["latency is estimated from the targets' compute and link figures (roofline), not measured"],
    }
    if serve is not None:
        from compress.cascade_live import run_live

        result["live"] = run_live(names, bundles, [*handoffs, None], data.test.x, data.test.y, logits, serve,
                                  timeout_s=timeout_s)
        result["notes"].append(f"live: the last tier served at {serve}, links emulated on the client, "
                               "latency measured per sample")
    spec = {"tiers": [{"bundle": n, "handoff": h} for n, h in zip(names, [*handoffs, None], strict=True)]}
    for name, text in (("cascade.json", json.dumps({**spec, "simulation": result}, indent=2, sort_keys=True)),
                       ("cascade.md", render_cascade(result))):
        tmp = root / f".{name}.tmp"
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, root / name)
    write_report_html(root)  # the run's page now shows the simulation too
    return result


def render_cascade(result: dict[str, Any]) -> str:
    rows = [("cascade " + " → ".join(result["tiers"]), result["cascade"]), ("cloud only", result["cloud_only"]),
            ("end only", result["end_only"])]
    lines = ["# cascade", "", "| policy | accuracy | mean ms | p95 ms | bytes sent / sample |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {100 * r['accuracy']:.2f} % | {r['mean_latency_ms']:.3f} | {r['p95_latency_ms']:.3f} | "
              f"{r['bytes_sent_per_sample']:.0f} |" for name, r in rows]
    shares = ", ".join(f"{n}: {100 * s:.1f} %" for n, s in zip(result["tiers"], result["cascade"]["share_per_tier"],
                                                                strict=True))
    lines += ["", f"Answered per tier: {shares}."]
    if "live" in result:
        live = result["live"]
        lines += ["", f"Live ({live['url']}): accuracy {100 * live['accuracy']:.2f} %, mean {live['mean_latency_ms']:.3f} ms, "
                      f"p95 {live['p95_latency_ms']:.3f} ms measured per sample; "
                      f"{100 * live['same_prediction_as_local']:.2f} % same predictions as the local cascade."]
    lines += ["", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"
