"""The `edgetier` command line.

Every problem with the user's input ends as one paragraph on stderr and exit code 2 —
never a traceback. Ctrl-C says how to continue (`--resume`) and exits 130.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from export.errors import ExplainedError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress one trained cloud model into verified edge and end bundles.")
targets_app = typer.Typer(no_args_is_help=True, help="The hardware targets edgetier knows.")
app.add_typer(targets_app, name="targets")
# Wide enough for the summary table when output is a file or a CI log (rich assumes 80 columns there).
out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


class RichProgress:
    """The `Progress` protocol drawn with rich bars."""

    def __init__(self, console: Console) -> None:
        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=console, transient=False)

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def task(self, description: str, total: int | None) -> Any:
        return self._bars.add_task(description, total=total)

    def advance(self, task: Any, n: int = 1) -> None:
        self._bars.advance(task, n)

    def done(self, task: Any) -> None:
        self._bars.update(task, completed=self._bars.tasks[task].total)


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "kib":
        return f"{value / 1024:,.1f}"
    if kind == "pct":
        return f"{100 * value:.2f}"
    if kind == "ms":
        return f"{value:.3f}"
    return f"{value:,}"


def summary_table(models: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("model", "target", "prec", "KiB", "params", "MACs", "acc %", "host ms", "target ms"):
        table.add_column(col, justify="left" if col in ("model", "target", "prec") else "right", no_wrap=True)
    for m in models:
        table.add_row(m["name"], m["target"], m["precision"], _fmt(m["bytes"], "kib"), _fmt(m["params"], "n"),
                      _fmt(m["macs"], "n"), _fmt(m["accuracy"], "pct"), _fmt(m["latency_ms"], "ms"),
                      _fmt(m["estimated_latency_ms"], "ms"))
    return table


@app.command()
def run(recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
        variant: Annotated[list[str] | None, typer.Option(help="only this variant (repeatable)")] = None,
        out_dir: Annotated[Path, typer.Option("--out", help="where run folders go")] = Path("runs"),
        resume: Annotated[bool, typer.Option(help="continue after the last finished stage")] = False,
        seed: Annotated[int | None, typer.Option(help="override the recipe's seed")] = None,
        profile: Annotated[Path | None, typer.Option(
            help="device profile JSON (edgetier profile BUNDLE) to estimate its target's latency")] = None,
        executor: Annotated[str | None, typer.Option(
            help="where NAS trials train: inprocess or ray (overrides the recipe's `executor`)")] = None,
        trust_code: Annotated[bool, typer.Option(
            "--trust-code", help="allow the recipe's model/data factories to be imported and run")] = False) -> None:
    """Train or load the cloud model, build every variant, export, verify and report."""
    from compress.core.errors import EdgetierError
    from compress.pipeline import run as run_pipeline
    from compress.recipe import load_recipe

    if executor not in (None, "inprocess", "ray"):
        raise EdgetierError(f"unknown executor {executor!r}", where="--executor", fix="use inprocess or ray")
    loaded = load_recipe(recipe)
    try:
        with RichProgress(err) as progress:
            result = run_pipeline(loaded, out_dir=out_dir, variants=variant, resume=resume, seed=seed,
                                  progress=progress, log=lambda msg: err.print(f"[dim]{msg}[/dim]"), profile=profile,
                                  executor=executor, trust_code=trust_code)
    except KeyboardInterrupt:
        err.print("interrupted: finished stages are checkpointed; rerun with --resume to continue")
        raise typer.Exit(130) from None
    out.print(summary_table(result.models, f"{loaded.name}: bundles in {result.run_dir}"))
    out.print("Latency is measured in each bundle's runtime (onnxruntime or LiteRT) on this host, batch 1, "
              f"{result.models[0]['latency_threads']} thread; the estimate is the target's roofline"
              + (f" or the device profile {profile}." if profile else "."))


@app.command()
def validate(recipe: Annotated[Path, typer.Argument(help="recipe YAML file")]) -> None:
    """Check a recipe completely without running it."""
    from compress.recipe import load_recipe

    loaded = load_recipe(recipe)
    for name in loaded.variants:
        plan = loaded.resolve(name)
        stages = ", ".join(f"{s.name} ({s.kind})" for s in plan.stages) or "no stages"
        out.print(f"{name}: {plan.target.name} [{plan.target.tier}, {plan.target.runtime}] — {stages}")
    for _, spec in loaded.factories():
        out.print(f"note: runs code from factory {spec!r} (not imported by validate); `run` needs --trust-code")
    out.print(f"{recipe}: valid")


@app.command()
def inspect(bundle: Annotated[Path, typer.Argument(help="bundle folder")],
            public_key: Annotated[Path | None, typer.Option(
                "--public-key", help="Ed25519 public key (PEM): verify the bundle's signature first")] = None) -> None:
    """Verify a bundle's hashes; show its input, operators, tensor precisions, sizes and report; re-run parity."""
    from export.bundle_check import read_report
    from export.inspect import describe, rerun_parity
    from export.signing import signature_status

    status = signature_status(bundle, public_key)
    info = describe(bundle, public_key=public_key)
    manifest = info["manifest"]
    table = Table(title=f"{bundle} — every sha256 verified; {status}")
    for col in ("file", "bytes", "sha256"):
        table.add_column(col, justify="right" if col == "bytes" else "left")
    for name, entry in sorted(manifest["files"].items()):
        table.add_row(name, f"{entry['bytes']:,}", entry["sha256"])
    out.print(table)
    model, target, inp = manifest["model"], _obj(manifest, "target"), _obj(manifest, "input")
    recipe, toolkit = _obj(manifest, "recipe"), _obj(manifest, "toolkit")
    out.print(f"variant {manifest.get('variant', '?')} · target {target.get('name', '?')} ({target.get('tier', '?')}, "
              f"{target.get('runtime', '?')}) · model {model.get('file', 'segments')} [{model.get('format', '?')}, "
              f"{model.get('precision', '?')}] · input {inp.get('name', '?')} {inp.get('shape', '?')} "
              f"{inp.get('dtype', '?')} · recipe {recipe.get('name', '?')} {str(recipe.get('sha256', '?'))[:12]} · "
              f"edgetier {toolkit.get('version', '?')} · {status}", highlight=False, markup=False)
    for m in info["models"]:
        ops = ", ".join(f"{k} x{v}" for k, v in m["operators"].items())
        precisions = ", ".join(f"{k}: {v}" for k, v in m["tensor_precisions"].items())
        out.print(f"{m['file']} ({m['format']}, {m['bytes']:,} bytes) — operators: {ops}; tensors by dtype: {precisions}",
                  highlight=False)
    parity = rerun_parity(bundle, public_key=public_key)
    if parity is None:
        out.print("parity: this bundle has no parity.npz (exported by an older edgetier); not re-run")
    else:
        out.print(f"parity re-run on {parity['samples']} stored samples: max |diff| {parity['max_abs_diff']:.3g}, "
                  f"top-1 agreement {parity['top1_agreement']:.1%} ({parity['rule']}): "
                  + ("passed" if parity["passed"] else "FAILED"), highlight=False)
    report = read_report(bundle, manifest)
    out.print(summary_table(report["models"], "report (measured on the exported file)"))
    if parity is not None and not parity["passed"]:
        raise typer.Exit(1)


def _obj(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    value = manifest.get(key)
    return value if isinstance(value, dict) else {}


@app.command()
def keygen(private_key: Annotated[Path, typer.Argument(help="where to write the private key (PEM); the public "
                                                            "key goes next to it as NAME.pub.pem")]) -> None:
    """Create an Ed25519 key pair for signing bundles (same as openssl genpkey -algorithm ed25519)."""
    from export.signing import generate_keypair

    private, public = generate_keypair(private_key)
    out.print(f"written: {private} (private: keep it secret), {public} (give this to devices)")


@app.command()
def sign(bundle: Annotated[Path, typer.Argument(help="bundle folder")],
         key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM)")]) -> None:
    """Sign a bundle's manifest (which hashes every file) with an Ed25519 key: writes manifest.sig."""
    from export.bundle_check import open_bundle
    from export.signing import sign_bundle

    open_bundle(bundle)  # vouch only for a bundle that passes every check
    out.print(f"written: {sign_bundle(bundle, key)}")


@app.command()
def verify(bundle: Annotated[Path, typer.Argument(help="bundle folder")],
           public_key: Annotated[Path, typer.Option("--public-key", help="Ed25519 public key (PEM)")]) -> None:
    """Check a bundle's signature, then every file against the signed manifest."""
    from export.bundle_check import open_bundle

    open_bundle(bundle, public_key=public_key)
    out.print(f"{bundle}: signature valid, every file matches the signed manifest")


@app.command()
def profile(bundle: Annotated[Path, typer.Argument(help="bundle folder")],
            out_file: Annotated[Path, typer.Option("--out", help="where to write the profile JSON")] = Path(
                "device_profile.json"),
            threads: Annotated[int, typer.Option(help="runtime threads")] = 1) -> None:
    """Time the bundle's models on this machine and write a device profile for `run --profile`."""
    from export.profile import profile as profile_bundle

    result = profile_bundle(bundle, out_file, threads=threads)
    for m in result["models"]:
        out.print(f"{m['file']} [{m['format']}, {m['precision']}]: {m['latency_ms']:.3f} ms median at batch 1, "
                  f"{threads} thread(s)")
    out.print(f"written: {out_file}")


@app.command()
def cascade(run_dir: Annotated[Path, typer.Argument(help="run folder written by `edgetier run`")],
            tiers: Annotated[str | None, typer.Option(help="bundles in order, e.g. end,edge,cloud")] = None,
            target_accuracy: Annotated[float | None, typer.Option(
                help="accuracy each tier's answers must reach on val (default: the last tier's)")] = None,
            serve: Annotated[str | None, typer.Option(
                help="URL of `edgetier serve` on the last bundle: also run live, links emulated")] = None,
            timeout: Annotated[float, typer.Option(help="seconds to wait for the server")] = 5.0) -> None:
    """Calibrate and simulate end → edge → cloud inference on the test split (and run it live with --serve)."""
    from compress.cascade import render_cascade, simulate

    result = simulate(run_dir, tiers=tiers.split(",") if tiers else None, target_accuracy=target_accuracy,
                      serve=serve, timeout_s=timeout)
    out.print(render_cascade(result), markup=False, highlight=False)
    out.print(f"written: {run_dir / 'cascade.json'}, {run_dir / 'cascade.md'}")


@app.command()
def partition(path: Annotated[Path, typer.Argument(help="run folder or bundle (its ONNX model is planned)")],
              tiers: Annotated[str, typer.Option(help="tiers or targets, device first, e.g. end,cloud")] = "end,cloud",
              bandwidth: Annotated[float | None, typer.Option(help="first link's bandwidth, Mbit/s")] = None,
              rtt: Annotated[float | None, typer.Option(help="first link's round trip, ms")] = None,
              crossing_dtype: Annotated[str, typer.Option(help="fp32, fp16 or int8")] = "fp32",
              out_dir: Annotated[Path | None, typer.Option("--out", help="also write split bundles here")] = None,
              calib: Annotated[Path | None, typer.Option(help="calibration inputs (.npy) for int8")] = None,
              profile: Annotated[Path | None, typer.Option(
                  help="device profile JSON (edgetier profile) replacing its target's roofline")] = None) -> None:
    """Plan where to cut the model between tiers (DADS min-cut), side by side with the extremes."""
    from compress.partition.command import partition_command
    from export.profile import load_profile

    if crossing_dtype not in ("fp32", "fp16", "int8"):
        from compress.core.errors import EdgetierError

        raise EdgetierError(f"unknown crossing dtype {crossing_dtype!r}", where="--crossing-dtype",
                            fix="use fp32, fp16 or int8")
    plan, bundles = partition_command(path, tiers.split(","), bandwidth_mbps=bandwidth, rtt_ms=rtt,
                                      crossing_dtype=crossing_dtype, out_dir=out_dir, calib=calib,  # type: ignore[arg-type]
                                      profile=load_profile(profile) if profile else None)
    out.print(plan.render(), markup=False, highlight=False)
    for b in bundles:
        manifest = json.loads((b / "manifest.json").read_text(encoding="utf-8"))
        note = manifest["partition"].get("format_note")
        out.print(f"split bundle: {b} ({manifest['model']['file']})" + (f"; note: {note}" if note else ""),
                  markup=False, highlight=False)


@app.command()
def serve(bundle: Annotated[Path, typer.Argument(help="bundle or split bundle to serve")],
          tier: Annotated[str | None, typer.Option(help="refuse a bundle of another tier")] = None,
          host: Annotated[str, typer.Option(help="listen address (0.0.0.0 only on a trusted network)")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
          address: Annotated[str | None, typer.Option(help="existing Ray cluster, e.g. auto")] = None,
          replicas: Annotated[int, typer.Option(help="Serve replicas")] = 1,
          next_url: Annotated[str | None, typer.Option(
              "--next", help="a middle segment's next tier (its `edgetier serve` URL)")] = None,
          timeout: Annotated[float, typer.Option(help="seconds to wait for the next tier")] = 5.0) -> None:
    """Serve a bundle's model or a split segment over HTTP with Ray Serve, until Ctrl-C."""
    import time

    from export.client import endpoint
    from export.errors import BundleError
    from export.manifest import verify_bundle
    from export.serve import start, stop

    manifest = verify_bundle(bundle)
    if tier is not None and manifest.get("target", {}).get("tier") != tier:
        raise BundleError(f"this bundle is for tier {manifest.get('target', {}).get('tier')!r}, not {tier!r}",
                          where=str(bundle), fix="serve the bundle of that tier")
    url = start(bundle, host=host, port=port, address=address, replicas=replicas,
                next_url=endpoint(next_url, "/segment") if next_url else None, timeout_s=timeout)
    out.print(f"serving {bundle} at {url} (POST /segment or /predict, GET /health); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop()


@targets_app.command("list")
def targets_list() -> None:
    """List the known hardware targets."""
    from compress.targets import list_targets

    table = Table(title="hardware targets")
    for col in ("name", "tier", "runtime", "precisions", "RAM KiB", "storage KiB", "link"):
        table.add_column(col)
    for t in list_targets():
        link = f"{t.link.technology} → {t.link.to}" if t.link else "-"
        table.add_row(t.name, t.tier, t.runtime, ", ".join(t.supported_precisions), f"{t.memory.ram_kb:,}",
                      f"{t.memory.storage_kb:,}", link)
    out.print(table)


@targets_app.command("show")
def targets_show(name: Annotated[str, typer.Argument(help="target name or YAML path")]) -> None:
    """Show one target's figures and sources."""
    import yaml

    from compress.targets import load_target

    out.print(yaml.safe_dump(load_target(name).model_dump(mode="json"), sort_keys=False), end="")


@app.command()
def schema() -> None:
    """Print the recipe JSON schema (for editor completion)."""
    from compress.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))


def main() -> None:
    """Entry point: typer handles usage errors (exit 2); our input errors print one paragraph, exit 2."""
    try:
        app()
    except ExplainedError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
