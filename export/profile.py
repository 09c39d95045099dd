"""Device profiles: time a bundle's models on the machine that runs them, and use that instead of a roofline.

`profile(bundle)` (also `export.runtime.profile`) runs on the device — numpy + the runtime, no
torch — and times each model file (each segment of an early-exit bundle) at batch 1. The profile
JSON keeps, per file, the measured milliseconds and the MACs the bundle's report counted, so a
later run (`edgetier run ... --profile FILE`) can estimate a *different* model on that device as
`measured ms x its MACs / profiled MACs`, from the entry of the same target, format and precision.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError

__all__ = ["latency_from_profile", "load_profile", "profile"]

PROFILE_VERSION = 1


def profile(bundle_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, threads: int = 1,
            repeats: int = 50) -> dict[str, Any]:
    """Time every model file of a verified bundle at batch 1 on this machine; write the profile to `out`.

    >>> import tempfile, pathlib
    >>> from export._examples import tiny_bundle
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = profile(tiny_bundle(pathlib.Path(d) / "b"), pathlib.Path(d) / "device.json", repeats=3)
    ...     [m["file"] for m in p["models"]], (pathlib.Path(d) / "device.json").is_file()
    (['model.onnx'], True)
    """
    from export.measure import latency_ms
    from export.runtime import load

    bundle = load(bundle_dir, threads=threads)
    manifest = bundle.manifest
    report = _report(Path(bundle_dir))
    model = manifest["model"]
    specs = model.get("segments") or [{"file": model["file"]}]
    shape = [1 if d is None else d for d in manifest["input"]["shape"]]
    feed = np.zeros(shape, dtype=np.float32)
    entries = []
    for k, spec in enumerate(specs):
        timing = latency_ms(Path(bundle_dir) / spec["file"], feed, threads=threads, repeats=repeats)
        entries.append({"file": spec["file"], "format": model["format"], "precision": model.get("precision", "fp32"),
                        "latency_ms": timing.median_ms, "latency_p90_ms": timing.p90_ms,
                        "macs": _macs(report, k, len(specs))})
        if k < len(specs) - 1:  # the next segment's input: this segment's features
            feed = bundle.segments[k].run(None, {spec.get("input", "input"): feed})[1]
    result = {"profile_version": PROFILE_VERSION, "target": manifest.get("target", {}).get("name"),
              "variant": manifest.get("variant"), "threads": threads,
              "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                       "system": platform.system(), "python": platform.python_version()},
              "models": entries}
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return result


def _report(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / "report.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _macs(report: dict[str, Any], k: int, n: int) -> int | None:
    models = report.get("models") or [{}]
    if n > 1:
        segs = (models[0].get("exits") or {}).get("segment_macs") or []
        return int(segs[k]) if k < len(segs) else None
    macs = models[0].get("macs")
    return int(macs) if macs else None


def load_profile(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and shape-check a profile written by `profile`.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (pathlib.Path(d) / "p.json").write_text('{"profile_version": 1, "target": "rpi4", "models": []}')
    ...     load_profile(pathlib.Path(d) / "p.json")["target"]
    'rpi4'
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"cannot read the device profile ({err})", where=str(path),
                          fix="write it with `export.runtime.profile(bundle, out)` on the device") from None
    if not isinstance(data, dict) or data.get("profile_version") != PROFILE_VERSION \
            or not isinstance(data.get("models"), list):
        raise ExportError(f"not a device profile (expected profile_version {PROFILE_VERSION} and a 'models' list)",
                          where=str(path), fix="write it with `export.runtime.profile(bundle, out)` on the device")
    return data


def latency_from_profile(prof: dict[str, Any], *, target: str, fmt: str, precision: str, macs: int) -> float | None:
    """Batch-1 ms for a model of `macs` on the profiled device, or None when the profile has no matching entry.

    >>> p = {"target": "rpi4", "models": [{"format": "tflite", "precision": "int8", "latency_ms": 2.0, "macs": 1000}]}
    >>> latency_from_profile(p, target="rpi4", fmt="tflite", precision="int8", macs=500)
    1.0
    >>> latency_from_profile(p, target="stm32h7", fmt="tflite", precision="int8", macs=500) is None
    True
    """
    if prof.get("target") != target:
        return None
    for entry in prof.get("models", []):
        if entry.get("format") == fmt and entry.get("precision") == precision and entry.get("macs"):
            return float(entry["latency_ms"]) * macs / float(entry["macs"])
    return None
