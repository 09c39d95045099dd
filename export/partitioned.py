"""Run a split model: the end segment here, the crossing tensors on the wire, the next tier finishes.

`load_split([end_dir, cloud_dir])` verifies every bundle's hashes and that the manifests belong
together (same plan id, consecutive indexes, each segment's sha256 as the others recorded it, the
tensors one sends are the ones the next receives) before anything runs. `SplitModel.predict`
composes the segments locally; with a `remote` (export.client.SegmentClient) the segments after
the first run on a serving tier. numpy + onnxruntime only: this is device-side code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import BundleError
from export.manifest import verify_bundle
from export.policy import exits as passes
from export.wire import Crossing, WireError, decode, encode

__all__ = ["Segment", "SplitModel", "load_segment", "load_split"]

RELAY = "__relay"


@dataclass(frozen=True)
class Segment:
    """One verified split bundle: its manifest's partition section and its session."""

    path: Path
    manifest: dict[str, Any]
    session: Any = field(repr=False)
    exit_session: Any = field(default=None, repr=False)  # the end segment's early exit (Edgent), if any

    @property
    def partition(self) -> dict[str, Any]:
        return self.manifest["partition"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on named inputs; outputs keyed by the name the next segment reads them under.

        Names come from the manifest (a .tflite graph names its tensors by position), in the
        segment graph's order, which both runtimes keep.
        """
        ins = [i["name"] for i in self.partition["inputs"]]
        outs = [o["name"] for o in self.partition["outputs"]]
        missing = [n for n in ins if n not in feeds]
        if missing:
            raise BundleError(f"segment {self.partition['index']} needs tensor(s) {missing} which were not received",
                              where=str(self.path), fix="pair this bundle with the one it was cut with")
        values = self.session.run(outs, {n: feeds[n] for n in ins})
        return {(n[: -len(RELAY)] if n.endswith(RELAY) else n): np.asarray(v) for n, v in zip(outs, values, strict=True)}

    def pack(self, outputs: dict[str, np.ndarray]) -> bytes:
        """Encode this segment's outputs for the wire: tensors by position in `sends` (names stay in the
        manifests, not in every message), compressed as calibrated; the last segment sends its logits."""
        if self.partition["index"] == self.partition["segments"] - 1:
            return encode({"0": _first(outputs)})
        sends = self.partition["sends"]
        return encode({str(i): outputs[c["name"]] for i, c in enumerate(sends)},
                      {str(i): Crossing(str(i), c["dtype"], float(c["scale"]), int(c["zero_point"]))
                       for i, c in enumerate(sends)})

    def unpack(self, payload: bytes) -> dict[str, np.ndarray]:
        """Decode what the tier below sent, back to the tensor names this segment reads."""
        received, expected = decode(payload), self.partition["receives"]
        if sorted(received) != sorted(str(i) for i in range(len(expected))):
            raise WireError(f"the message carries tensors {sorted(received)}, segment {self.partition['index']} "
                            f"expects {len(expected)}", where=str(self.path),
                            fix="pair this bundle with the one it was cut with")
        return {c["name"]: received[str(i)] for i, c in enumerate(expected)}

    def early_exit(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """(exit logits, answered mask) for the rows of `outputs`, or None without an exit.

        The exit head reads one of the tensors this segment sends; a row whose exit score passes
        the calibrated threshold is answered here and never leaves the device.
        """
        if self.exit_session is None:
            return None
        spec = self.partition["exit"]
        (logits,) = self.exit_session.run(None, {self.exit_session.get_inputs()[0].name: outputs[spec["reads"]]})
        return np.asarray(logits, np.float32), passes(logits, spec["criterion"], float(spec["threshold"]))

    def handle(self, payload: bytes) -> bytes:
        """Server side: decode what the tier below sent, run, encode what goes on (or the final logits)."""
        return self.pack(self.run(self.unpack(payload)))


def _first(outputs: dict[str, np.ndarray]) -> np.ndarray:
    return next(iter(outputs.values()))


def load_segment(bundle_dir: str | os.PathLike[str], *, threads: int = 1) -> Segment:
    """Verify one split bundle and open its segment.

    A bundle without a `partition` section is not a split bundle; refuse it rather than guess.
    """
    from export.runtime import open_model

    root = Path(bundle_dir)
    manifest = verify_bundle(root)
    part = manifest.get("partition")
    keys = ("plan_id", "index", "segments", "segment_sha256", "sends", "receives")
    if not isinstance(part, dict) or any(k not in part for k in keys):
        raise BundleError("this bundle is not a split bundle (no complete 'partition' section in its manifest)",
                          where=str(root / "manifest.json"), fix="write split bundles with `edgetier partition --out`")
    file = manifest.get("model", {}).get("file", "model.onnx")
    if manifest["files"].get(file, {}).get("sha256") != part["segment_sha256"][part["index"]]:
        raise BundleError("the segment file's sha256 is not the one its own partition section records",
                          where=str(root / "manifest.json"), fix="re-write the split bundles")
    exit_session = None
    if "exit" in part:
        spec = part["exit"]
        if part["index"] != 0 or not isinstance(spec, dict) or spec.get("file") not in manifest["files"] \
                or spec.get("reads") not in [c["name"] for c in part["sends"]]:
            raise BundleError("the partition's exit is not an exit head on the end segment reading a tensor it sends",
                              where=str(root / "manifest.json"), fix="re-write the split bundles with the exit")
        exit_session = open_model(root / spec["file"], threads=threads)
    return Segment(root, manifest, open_model(root / file, threads=threads), exit_session)


def load_split(bundle_dirs: Sequence[str | os.PathLike[str]], *, threads: int = 1) -> SplitModel:
    """Verify a chain of split bundles (end first) and check their manifests belong together."""
    segments = [load_segment(d, threads=threads) for d in bundle_dirs]
    check_chain([s.manifest for s in segments], [str(s.path) for s in segments])
    return SplitModel(tuple(segments))


def check_chain(manifests: Sequence[dict[str, Any]], where: Sequence[str]) -> None:
    """Raise BundleError unless the manifests are consecutive segments of one plan."""
    first = manifests[0]["partition"]
    for k, (m, w) in enumerate(zip(manifests, where, strict=True)):
        p = m["partition"]
        problems = []
        if p["plan_id"] != first["plan_id"]:
            problems.append(f"plan id {p['plan_id']} differs from {first['plan_id']}")
        if p["index"] != k or p["segments"] != first["segments"]:
            problems.append(f"it is segment {p['index']} of {p['segments']}, expected {k} of {first['segments']}")
        if p["segment_sha256"] != first["segment_sha256"]:
            problems.append("it records other segment files' sha256")
        if k and p["receives"] != manifests[k - 1]["partition"]["sends"]:
            problems.append("it receives other tensors than the previous bundle sends")
        if problems:
            raise BundleError("the split bundles' manifests do not match: " + "; ".join(problems), where=w,
                              fix="use bundles written together by one `edgetier partition --out` run")


@dataclass(frozen=True)
class SplitModel:
    """Segments in order; the first runs here."""

    segments: tuple[Segment, ...]

    @property
    def plan_id(self) -> str:
        return self.segments[0].partition["plan_id"]

    def first_step(self, x: np.ndarray) -> bytes:
        """Run the end segment and encode the crossing tensors (what the device sends, exit or not)."""
        head = self.segments[0]
        return head.pack(head.run({head.manifest["input"]["name"]: np.asarray(x, np.float32)}))

    def predict(self, x: np.ndarray, *, remote: Callable[[bytes], bytes] | None = None, batch_size: int = 256,
                return_exited: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Logits for `x`: the first segment here, the rest locally or through `remote(payload) -> payload`.

        With an exit on the end segment (Edgent), rows the exit answers take its logits and are
        left out of the message: a batch the exit answers entirely sends nothing.
        `return_exited=True` also returns which rows the exit answered.
        """
        if remote is None and len(self.segments) < self.segments[0].partition["segments"]:
            raise BundleError(f"only {len(self.segments)} of {self.segments[0].partition['segments']} segments are "
                              "here and no serving tier was given", where=str(self.segments[0].path),
                              fix="load every split bundle, or pass a remote (--serve URL)")
        head = self.segments[0]
        parts, exited = [], []
        for i in range(0, len(x), batch_size):
            batch = np.asarray(x[i:i + batch_size], np.float32)
            outputs = head.run({head.manifest["input"]["name"]: batch})
            early = head.early_exit(outputs)
            rows = len(batch)
            answered = early[1] if early is not None else np.zeros(rows, bool)
            logits = early[0].copy() if early is not None else None
            rest = ~answered
            if rest.any():
                # a crossing tensor without the batch axis (a shape, a constant) is the same for every row
                payload = head.pack(outputs if rest.all() else
                                    {k: v[rest] if v.ndim and len(v) == rows else v for k, v in outputs.items()})
                if remote is not None:
                    answer = decode(remote(payload))
                else:
                    for seg in self.segments[1:]:
                        payload = seg.handle(payload)
                    answer = decode(payload)
                final = _first(answer).astype(np.float32)
                if logits is None:
                    logits = np.zeros((rows, final.shape[1]), np.float32)
                logits[rest] = final
            parts.append(logits)
            exited.append(answered)
        out = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        return (out, np.concatenate(exited) if exited else np.zeros(0, bool)) if return_exited else out
