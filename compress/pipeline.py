"""Runs a recipe: trains or loads the cloud model, builds each variant stage by stage, exports.

Layout of a run folder `OUT/<recipe name>/`:
- `cloud/`, `<variant>/` — the bundles (written atomically);
- `checkpoints/cloud.pt` — the trained cloud model, reused by later runs of the same recipe
  (same model, data, training and seed);
- `checkpoints/<variant>/<NN>-<stage>.pt` — the state after each finished stage. With
  `resume=True` a variant continues after its last finished stage. Each stage trains from a
  seed derived from (run seed, variant, stage index) and shuffles with its own generator,
  so a resumed run ends with the same weights — and the same model files — as an
  uninterrupted one.
- `report.json`, `report.md` — every model side by side.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.compose import check_order
from compress.core.context import Context, Progress, SilentProgress
from compress.core.errors import EdgetierError, RecipeError
from compress.core.report import StageReport
from compress.core.technique import ExportPlan, HookSet
from compress.core.train import TrainSpec, evaluate, fit
from compress.datasets import Dataset
from compress.datasets import load as load_dataset
from compress.deploy import BundleSpec, deploy
from compress.deploy_exits import deploy_exits
from compress.exits.branches import EarlyExitModel
from compress.hf_pipeline import cloud_hf, deploy_adapted, is_adapted
from compress.models import build_from_spec
from compress.recipe import Plan, Recipe, data_options
from compress.registry import build as build_technique
from compress.runlock import run_lock
from export.manifest import sha256_file
from export.profile import load_profile
from export.report import render_markdown
from export.report_html import write_report_html

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    bundles: dict[str, Path]
    models: list[dict[str, Any]]


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_seed(seed: int, variant: str, index: int) -> int:
    """The seed a stage trains with: independent of what ran before it in this process."""
    return int(_digest(seed, variant, index), 16) % (2**31)


def _save(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"  # unique: no two writers share one
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the old checkpoint or none, never half of one


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _example_inputs(model: nn.Module, data: Dataset) -> tuple[torch.Tensor, ...]:
    if is_adapted(model):  # several inputs: the adapter reads the record array
        return tuple(model.adapter.tensors(data.test.x[:1]).values())
    if hasattr(model, "example_inputs"):
        return tuple(model.example_inputs())
    return (torch.from_numpy(data.test.x[:1]),)


def run(recipe: Recipe, *, out_dir: str | Path = "runs", variants: list[str] | None = None, resume: bool = False,
        seed: int | None = None, progress: Progress | None = None, log: Log = lambda _msg: None,
        executor: str | None = None, profile: str | Path | None = None, trust_code: bool = False) -> RunResult:
    """Run `recipe` and return where its bundles are and their report entries.

    `variants` limits the run to those variants (the cloud bundle is always written). `executor`
    ("ray") runs the parallel work of stages that have some (NAS trials) there, whatever the recipe says.
    `profile` is a device profile (`export.runtime.profile`) whose measured latency replaces the
    roofline estimate for its target. A recipe whose model or data comes from a factory runs that
    code only with `trust_code=True` (`edgetier run --trust-code`); otherwise nothing is done.

    >>> import tempfile, pathlib, compress
    >>> text = ("schema_version: 1\\nname: demo\\n"
    ...         "model: {zoo: resnet2d, width: 8, train: {epochs: 1}}\\ndata: {dataset: digits}\\n"
    ...         "stages: [{name: prune, kind: structured_prune, with: {ratio: 0.5}}]\\n"
    ...         "variants: {edge: {target: jetson_orin_nano}}\\n")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = pathlib.Path(d) / "demo.yaml"
    ...     _ = path.write_text(text)
    ...     result = run(compress.load_recipe(path), out_dir=d)
    ...     cloud, edge = result.models
    ...     sorted(result.bundles), edge["params"] < cloud["params"], (result.run_dir / "report.html").is_file()
    (['cloud', 'edge'], True, True)
    """
    check_trust(recipe, trust_code=trust_code)
    device_profile = load_profile(profile) if profile is not None else None
    seed = recipe.seed if seed is None else seed
    progress = progress or SilentProgress()
    names = list(recipe.variants) if not variants else variants
    for name in names:
        if name not in recipe.variants:
            raise RecipeError(f"no variant {name!r}", where=str(recipe.path),
                              fix=f"use one of: {', '.join(recipe.variants)}")
    plans = [recipe.resolve(name) for name in names]
    run_dir = Path(out_dir) / recipe.name
    with run_lock(run_dir):
        return _run_locked(recipe, plans, run_dir, seed=seed, resume=resume, progress=progress, log=log,
                           executor=executor, device_profile=device_profile)


def _run_locked(recipe: Recipe, plans: list[Plan], run_dir: Path, *, seed: int, resume: bool, progress: Progress,
                log: Log, executor: str | None, device_profile: dict[str, Any] | None) -> RunResult:
    data = _load_data(recipe, seed)
    cloud, fingerprint = _cloud_model(recipe, data, run_dir, seed, plans, progress, log)
    example_inputs = _example_inputs(cloud, data)
    bundles: dict[str, Path] = {}
    models: list[dict[str, Any]] = []
    cloud_spec = BundleSpec("cloud", recipe.cloud_target(), recipe.name, recipe.sha256, seed, profile=device_profile)
    log("exporting the cloud model")
    entry = (deploy_adapted if is_adapted(cloud) else deploy)(cloud, cloud_spec, data=data, example_inputs=example_inputs, export_plan=None, stages=[],
                   out_dir=run_dir / "cloud")
    bundles["cloud"], models = run_dir / "cloud", [entry]
    for plan in plans:
        model, export_plan, stage_reports = _run_variant(plan, cloud, fingerprint, data, example_inputs, run_dir,
                                                         seed, resume, progress, log, executor)
        log(f"exporting variant {plan.variant!r} for {plan.target.name}")
        spec = BundleSpec(plan.variant, plan.target, recipe.name, recipe.sha256, seed, formats=plan.export,
                          profile=device_profile)
        deploy_fn = deploy_exits if isinstance(model, EarlyExitModel) else deploy_adapted if is_adapted(model) else deploy
        models.append(deploy_fn(model, spec, data=data, example_inputs=example_inputs, export_plan=export_plan,
                                stages=stage_reports, out_dir=run_dir / plan.variant))
        bundles[plan.variant] = run_dir / plan.variant
    _write_run_report(run_dir, recipe, models, seed)
    return RunResult(run_dir=run_dir, bundles=bundles, models=models)


def check_trust(recipe: Recipe, *, trust_code: bool) -> None:
    """Refuse, before any work, a recipe that would call a factory the user has not said they trust."""
    factories = recipe.factories()
    if not factories or trust_code:
        return
    path, spec = factories[0]
    named = ", ".join(f"{s!r} ({'.'.join(map(str, p))})" for p, s in factories)
    raise RecipeError(f"this recipe runs code: the factory {named} would be imported and called, and a recipe "
                      "is not trusted to run code unless you say so", where=recipe.where(path),
                      fix=f"read the code of {spec.partition(':')[0]!r}; if you trust it, rerun with "
                          "`edgetier run --trust-code` (Python: compress.run(recipe, trust_code=True))")


def _load_data(recipe: Recipe, seed: int) -> Dataset:
    try:
        return load_dataset(recipe.data.dataset, seed=seed, **data_options(recipe))
    except EdgetierError as exc:
        problem = f"{exc.where}: {exc.problem}" if exc.where else exc.problem
        raise RecipeError(problem, where=recipe.where(("data",)), fix=exc.fix) from None


def _check_plans(model: nn.Module, plans: list[Plan]) -> None:
    """Every stage's config against the actual model, before anything is trained."""
    recipe = plans[0].recipe
    for plan in plans:
        for i, stage in enumerate(plan.stages):
            try:
                stage.config.check_model(model, plan.target)
                check_order([(earlier.name, earlier.kind) for earlier in plan.stages[:i]], stage.name, stage.kind)
                stage.config.check_after([earlier.config for earlier in plan.stages[:i]], model)
            except EdgetierError as exc:
                raise RecipeError(exc.problem, where=recipe.where(("stages", stage.index, "with")),
                                  fix=exc.fix) from None


def _cloud_model(recipe: Recipe, data: Dataset, run_dir: Path, seed: int, plans: list[Plan], progress: Progress,
                 log: Log) -> tuple[nn.Module, str]:
    torch.manual_seed(seed)  # model initialization is part of what the seed fixes
    spec = recipe.model
    if spec.hf is not None:  # pretrained, loaded offline (compress.hf_pipeline)
        return cloud_hf(recipe, data, plans, check=_check_plans, log=log)
    model = build_from_spec(zoo=spec.zoo, factory=spec.factory, options=spec.options,
                            input_shape=data.input_shape, num_classes=data.num_classes)
    if plans:
        _check_plans(model, plans)
    if spec.checkpoint is not None:
        path = recipe.resolve_file(spec.checkpoint)
        _load_state(model, _load(path), where=recipe.where(("model", "checkpoint")))
        log(f"cloud model loaded from {path}")
        return model.eval(), _digest("checkpoint", hashlib.sha256(path.read_bytes()).hexdigest())
    train = TrainSpec().patched(recipe.defaults.train).patched(spec.train)
    fingerprint = _digest(spec.model_dump(), recipe.data.model_dump(), train.model_dump(), seed)
    ckpt = run_dir / "checkpoints" / "cloud.pt"
    if ckpt.is_file():
        saved = _load(ckpt)
        if saved.get("fingerprint") == fingerprint:
            model.load_state_dict(saved["state_dict"])
            log(f"cloud model reused from {ckpt}")
            return model.eval(), fingerprint
    log(f"training the cloud model ({train.epochs} epochs)")
    fit(model, data.train, train, seed=seed, progress=progress, description="cloud: train")
    log(f"cloud model: validation accuracy {evaluate(model, data.val):.2%}")
    _save({"fingerprint": fingerprint, "state_dict": model.state_dict()}, ckpt)
    return model.eval(), fingerprint


def _load_state(model: nn.Module, state: Any, *, where: str) -> None:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecipeError(f"the checkpoint does not fit the model ({first})", where=where,
                          fix="save `model.state_dict()` of the same architecture and parameters as `model`") from None


def _fingerprints(plan: Plan, cloud_fingerprint: str, seed: int) -> list[str]:
    """One fingerprint per stage, each chaining everything before it: the newest checkpoint whose
    fingerprint matches proves that every earlier stage matches too."""
    out, fingerprint = [], _digest(cloud_fingerprint, plan.variant, plan.target.name, seed)
    for stage in plan.stages:
        fingerprint = _digest(fingerprint, stage.kind, stage.config.to_dict(),
                              stage.train.model_dump() if stage.train else None)
        out.append(fingerprint)
    return out


def restore_stages(model: nn.Module, plan: Plan, saved: dict[str, Any],
                   context: Callable[[int], Context]) -> tuple[nn.Module, HookSet]:
    """A stage checkpoint back as a model: each finished stage rebuilds its structure and hooks
    (`Technique.restore`) on a copy of the cloud model, then the saved weights are loaded."""
    hooks = HookSet()
    for stage, state in zip(plan.stages[:len(saved["states"])], saved["states"], strict=True):
        restored = build_technique(stage.config).restore(model, state, context(stage.index))
        model, hooks = restored.model, hooks + restored.hooks
    model.load_state_dict(saved["state_dict"])
    return model, hooks


def _run_variant(plan: Plan, cloud: nn.Module, cloud_fingerprint: str, data: Dataset,
                 example_inputs: tuple[torch.Tensor, ...], run_dir: Path, seed: int, resume: bool,
                 progress: Progress, log: Log,
                 executor: str | None = None) -> tuple[nn.Module, ExportPlan | None, list[StageReport]]:
    ckpt_dir = run_dir / "checkpoints" / plan.variant
    if not resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    paths = [ckpt_dir / f"{stage.index:02d}-{stage.name}.pt" for stage in plan.stages]
    fingerprints = _fingerprints(plan, cloud_fingerprint, seed)

    trains = {stage.index: stage.train for stage in plan.stages}
    # each stage's own folder, next to its checkpoint (so it is cleared and kept with them)
    workdirs = {stage.index: ckpt_dir / f"{stage.index:02d}-{stage.name}" for stage in plan.stages}

    def context(index: int) -> Context:
        return Context(example_inputs=example_inputs, target=plan.target, data=data, teacher=cloud,
                       seed=stage_seed(seed, plan.variant, index), progress=progress, train=trains[index],
                       workdir=workdirs[index], executor=executor)

    model, hooks = copy.deepcopy(cloud), HookSet()
    export_plan: ExportPlan | None = None
    reports: list[StageReport] = []
    states: list[dict[str, Any]] = []
    start = 0
    for position in reversed(range(len(plan.stages))) if resume else ():
        saved = _load(paths[position]) if paths[position].is_file() else {}
        if saved.get("fingerprint") == fingerprints[position]:
            model, hooks = restore_stages(model, plan, saved, context)
            reports = [StageReport.from_dict(r) for r in saved["reports"]]
            states = list(saved["states"])
            export_plan = ExportPlan(**saved["export_plan"]) if saved["export_plan"] else None
            start = position + 1
            log(f"{plan.variant}: resuming after stage {plan.stages[position].name!r}")
            break
    task = progress.task(f"{plan.variant}: stages", total=len(plan.stages))
    progress.advance(task, start)
    for position, stage in enumerate(plan.stages[start:], start=start):
        log(f"{plan.variant}: stage {stage.name!r} ({stage.kind})")
        ctx = context(stage.index)
        torch.manual_seed(ctx.seed)
        result = build_technique(stage.config).apply(model, ctx)
        model, hooks = result.model, hooks + result.hooks
        export_plan = result.export or export_plan
        val_accuracy = None
        if stage.train is not None and stage.train.epochs > 0:
            labelled = data.num_classes > 0  # a text dataset for embeddings has none: the stages' losses alone
            history = fit(model, data.train, stage.train, hooks=hooks, val=data.val if labelled else None,
                          seed=ctx.seed, progress=progress, description=f"{plan.variant}: {stage.name}",
                          supervised=labelled)
            val_accuracy = history.val_accuracy[-1] if history.val_accuracy else None
        summary = {k: v for k, v in result.report.items() if k != "layers"}
        reports.append(StageReport(stage.name, stage.kind, summary, result.report.get("layers", {}), val_accuracy))
        states.append(result.state)
        _save({"fingerprint": fingerprints[position], "state_dict": model.state_dict(), "states": states,
               "reports": [r.to_dict() for r in reports],
               "export_plan": export_plan.to_dict() if export_plan else None}, paths[position])
        progress.advance(task)
    progress.done(task)
    return model.eval(), export_plan, reports


def _write_run_report(run_dir: Path, recipe: Recipe, models: list[dict[str, Any]], seed: int) -> None:
    notes = [f"{m['name']}: {note}" for m in models for note in m.get("notes", [])]
    # the digest of each bundle's manifest (which hashes every file of it): what this run vouches for
    manifests = {m["name"]: sha256_file(run_dir / m["name"] / "manifest.json") for m in models}
    report = {"recipe": recipe.name, "recipe_sha256": recipe.sha256, "models": models, "notes": notes,
              "manifest_sha256": manifests}
    # what later commands (`edgetier cascade`) need to rebuild the run's data splits
    run_info = {"recipe": recipe.name, "recipe_path": str(recipe.path.resolve()), "recipe_sha256": recipe.sha256,
                "seed": seed, "data": {"dataset": recipe.data.dataset, **recipe.data.options},
                "bundles": [m["name"] for m in models]}
    for name, text in (("report.json", json.dumps(report, indent=2, sort_keys=True)),
                       ("report.md", render_markdown(report, figures_in_bundles=True)),
                       ("run.json", json.dumps(run_info, indent=2, sort_keys=True))):
        tmp = run_dir / f".{name}.tmp-{secrets.token_hex(4)}"
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, run_dir / name)
    write_report_html(run_dir)
