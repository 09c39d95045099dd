"""`edgetier partition`: plan a run's (or a bundle's) model over tiers, write the plan, the plot and split bundles."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import EdgetierError
from compress.partition.costs import CrossingDtype
from compress.partition.graph import load_graph
from compress.partition.plan import PartitionPlan, plan_graph, sweep_bandwidth, sweep_plot
from compress.targets import load_target
from compress.targets.schema import TIERS, Target
from export.bundle import dumps_json
from export.manifest import MANIFEST, verify_bundle

__all__ = ["partition_command", "resolve_model"]


def resolve_model(path: Path) -> tuple[Path, dict[str, Any], dict[str, dict[str, Any]]]:
    """The whole-model ONNX file to plan on, its bundle manifest, and the run's bundles by tier."""
    if (path / MANIFEST).is_file():
        manifest = verify_bundle(path)
        by_tier = {manifest.get("target", {}).get("tier"): manifest}
        bundle = path
    elif (path / "cloud" / MANIFEST).is_file():
        by_tier = {}
        for sub in sorted(p for p in path.iterdir() if (p / MANIFEST).is_file()):
            m = json.loads((sub / MANIFEST).read_text(encoding="utf-8"))
            by_tier.setdefault(m.get("target", {}).get("tier"), m)
        bundle, manifest = path / "cloud", verify_bundle(path / "cloud")
    else:
        raise EdgetierError("not a bundle (no manifest.json) nor a run folder (no cloud/manifest.json)",
                            where=str(path), fix="pass a run folder written by `edgetier run`, or one of its bundles")
    model = manifest.get("model", {})
    if model.get("format") != "onnx" or "file" not in model:
        raise EdgetierError(f"the bundle's model is {model.get('format', 'segmented')}, the planner reads one ONNX "
                            "graph", where=str(bundle / MANIFEST), fix="plan on the run's cloud bundle (fp32 ONNX)")
    return bundle / model["file"], manifest, by_tier


def resolve_tiers(tokens: Sequence[str], by_tier: dict[str, dict[str, Any]]) -> list[Target]:
    """Each token is a target name, or a tier name that the run's bundle of that tier targets."""
    out = []
    for token in tokens:
        if token in TIERS:
            if token not in by_tier:
                raise EdgetierError(f"the run has no bundle for tier {token!r} to take its target from",
                                    where="--tiers", fix="name the target instead, e.g. --tiers rpi4,cloud_gpu")
            out.append(load_target(by_tier[token]["target"]["name"]))
        else:
            out.append(load_target(token))
    return out


def partition_command(path: Path, tiers: Sequence[str], *, bandwidth_mbps: float | None, rtt_ms: float | None,
                      crossing_dtype: CrossingDtype, out_dir: Path | None, calib: Path | None,
                      profile: dict[str, Any] | None = None) -> tuple[PartitionPlan, list[Path]]:
    """Plan, write partition.json / .md / .png next to the model (or in `out_dir`), and split bundles there."""
    from export.split import write_split_bundles

    model_path, manifest, by_tier = resolve_model(path)
    targets = resolve_tiers(tiers, by_tier)
    graph = load_graph(model_path)
    plan = plan_graph(graph, targets, crossing_dtype=crossing_dtype, bandwidth_mbps=bandwidth_mbps, rtt_ms=rtt_ms,
                      profile=profile)
    samples = None
    if plan.is_split and out_dir is not None and crossing_dtype == "int8":
        if calib is None:
            raise EdgetierError("an int8 crossing tensor is calibrated on samples, and none were given",
                                where="--calib", fix="pass --calib CALIB.npy (inputs from the calib split), or "
                                                     "--crossing-dtype fp16")
        samples = np.load(calib, allow_pickle=False)  # a user file: never unpickle
    dest = out_dir or (path if not (path / MANIFEST).is_file() else path.parent)
    sweep = sweep_bandwidth(graph, targets, crossing_dtype=crossing_dtype, rtt_ms=rtt_ms)
    bundles: list[Path] = []
    if plan.is_split and out_dir is not None:
        cuts = [list(c) for c in plan.cut_tensors]
        bundles = write_split_bundles(model_path, cuts, out_dir / "split", tiers=[_target_entry(t) for t in targets],
                                      crossing_dtype=crossing_dtype, calib=samples, input_spec=manifest["input"],
                                      output_spec=manifest["output"], labels=manifest.get("labels", []),
                                      plan=plan.to_dict())
    dest.mkdir(parents=True, exist_ok=True)
    result = {**plan.to_dict(), "sweep": sweep, "split_bundles": [str(b) for b in bundles]}
    (dest / "partition.json").write_text(dumps_json(result), encoding="utf-8")
    (dest / "partition.md").write_text(plan.render() + "\n\n![latency vs bandwidth](partition.png)\n", encoding="utf-8")
    sweep_plot(dest / "partition.png", sweep, title=f"{' -> '.join(t.name for t in targets)}, {crossing_dtype} crossing")
    return plan, bundles


def _target_entry(t: Target) -> dict[str, Any]:
    return {"name": t.name, "tier": t.tier, "runtime": t.runtime, "export_format": t.export_format,
            "compute": t.compute.model_dump(mode="json"),
            "link": t.link.model_dump(mode="json") if t.link else None,
            "tolerance": t.tolerance.model_dump(mode="json")}
