"""Run a split model on a device: `python -m export.split_run END_BUNDLE [NEXT_BUNDLES ...] --input X.npy [--serve URL]`.

Without `--serve`, every split bundle named runs here (the local composition). With `--serve URL`
only the end bundle runs here; what crosses the cut goes to the serving tier (`edgetier serve`)
through export.client — urllib, stated timeouts — and the link emulator adds the end target's
link (its RTT and bandwidth, from the end bundle's manifest, or `--bandwidth` / `--rtt`), so the
per-sample latency printed is comparable with the plan. Each sample is sent on its own, as a
device would. A server that is down or answers garbage stops the run with one clear error
(exit 2), within the timeout. No torch, no Ray: numpy, onnxruntime (and LiteRT for .tflite).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.client import LinkEmulator, SegmentClient, endpoint, health
from export.errors import BundleError, ExplainedError
from export.partitioned import SplitModel, load_split

__all__ = ["SplitRun", "main", "run_split"]


@dataclass(frozen=True)
class SplitRun:
    """Logits, which rows the end segment's exit answered, and the wall-clock ms of each sample."""

    logits: np.ndarray
    exited: np.ndarray
    latency_ms: np.ndarray
    link: LinkEmulator | None

    def summary(self) -> str:
        link = (f"emulated link {self.link.bandwidth_mbps:g} Mbit/s, {self.link.rtt_ms:g} ms RTT" if self.link
                else "no link emulated")
        return (f"{len(self.logits)} samples, {int(self.exited.sum())} answered by the end segment's exit; "
                f"latency per sample: mean {self.latency_ms.mean():.3f} ms, median {np.median(self.latency_ms):.3f} ms, "
                f"p95 {np.percentile(self.latency_ms, 95):.3f} ms ({link})")


def default_link(split: SplitModel) -> LinkEmulator | None:
    """The end target's link as its manifest records it (None when it records none)."""
    link = split.segments[0].manifest.get("target", {}).get("link") or {}
    if "bandwidth_mbps" in link and "rtt_ms" in link:
        return LinkEmulator(float(link["bandwidth_mbps"]), float(link["rtt_ms"]))
    return None


def run_split(bundles: Sequence[str | os.PathLike[str]], x: np.ndarray, *, serve: str | None = None,
              timeout_s: float = 5.0, link: LinkEmulator | None = None) -> SplitRun:
    """Run `x` sample by sample through the split bundles, the later segments local or at `serve`."""
    split = load_split(bundles)
    remote = None
    if serve is not None:
        info = health(serve, timeout_s=timeout_s)  # down, garbage, or another plan: say so before any sample
        if info.get("kind") != "segment" or info.get("plan_id") != split.plan_id:
            raise BundleError(f"the server holds {info.get('kind')} {info.get('variant')!r} of plan "
                              f"{info.get('plan_id')}, this device's end segment is plan {split.plan_id}",
                              where=endpoint(serve, "/health"),
                              fix="serve the next split bundle written with this one (`edgetier serve DIR/split/cloud`)")
        remote = SegmentClient(endpoint(serve, "/segment"), timeout_s=timeout_s, plan_id=split.plan_id, link=link)
    logits, exited, ms = [], [], []
    for i in range(len(x)):
        start = time.perf_counter()
        out, ex = split.predict(x[i:i + 1], remote=remote, return_exited=True)
        ms.append((time.perf_counter() - start) * 1e3)
        logits.append(out)
        exited.append(ex)
    return SplitRun(np.concatenate(logits), np.concatenate(exited), np.asarray(ms), link if remote else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.split_run", description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="split bundles, end first")
    parser.add_argument("--input", type=Path, required=True, help=".npy of input rows")
    parser.add_argument("--serve", help="URL of the next tier's `edgetier serve` (else all segments run here)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server (default 5)")
    parser.add_argument("--bandwidth", type=float, help="emulated link bandwidth, Mbit/s (default: the end target's)")
    parser.add_argument("--rtt", type=float, help="emulated link round trip, ms (default: the end target's)")
    parser.add_argument("--out", type=Path, help="write the logits here (.npy)")
    args = parser.parse_args(argv)
    try:
        x = np.load(args.input, allow_pickle=False)  # a user file: never unpickle
    except (OSError, ValueError) as err:
        print(f"error: {args.input}: cannot read the input rows ({err}). Fix: pass a .npy array of inputs.",
              file=sys.stderr)
        return 2
    try:
        link = None
        if args.serve:
            base = default_link(load_split(args.bundles[:1]))
            bw = args.bandwidth if args.bandwidth is not None else (base.bandwidth_mbps if base else None)
            rtt = args.rtt if args.rtt is not None else (base.rtt_ms if base else None)
            link = LinkEmulator(bw, rtt or 0.0) if bw else None
        result = run_split(args.bundles, x, serve=args.serve, timeout_s=args.timeout, link=link)
    except ExplainedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    if args.out:
        np.save(args.out, result.logits)
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
