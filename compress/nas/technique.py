"""`kind: nas` — hardware-aware architecture search; the chosen architecture becomes the variant's model.

The model that `apply` returns is the chosen architecture with the weights of its proxy training
(retrained here from the trial's seed, so in-process and Ray searches return the same weights;
with `strategy: spos`, the weights it inherits from the supernet, see `compress/nas/oneshot.py`);
the stage's `train:` block then trains it further on the whole train split, and later stages
(prune, quantize, exits, distill) work on it like on any reference model.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from compress.core.context import Context
from compress.core.errors import EdgetierError
from compress.core.technique import BaseTechnique, Result
from compress.core.train import evaluate
from compress.nas.arch import arch_key, build_arch
from compress.nas.config import NASConfig
from compress.nas.costs import CostModel, smallest_arch
from compress.nas.trial import canonical, fixed_threads, train_candidate
from export.plot import pareto_plot

if TYPE_CHECKING:
    from compress.nas.search import SearchOutcome

JOURNAL = "trials.jsonl"


def _subset(split: tuple[Any, Any], n: int | None) -> tuple[Any, Any]:
    return split if n is None else (split[0][:n], split[1][:n])


class NAS(BaseTechnique):
    config_type = NASConfig

    def apply(self, model: nn.Module, ctx: Context) -> Result:
        config: NASConfig = self.config  # type: ignore[assignment]
        if ctx.data is None:
            raise EdgetierError("the nas stage needs data to train candidates on", where="nas",
                                fix="pass data=... (recipes always have it)")
        data, target = ctx.data, ctx.target
        multiple = target.channel_multiple if target else 1
        cost = CostModel(config.budget, target, input_shape=tuple(data.input_shape), num_classes=data.num_classes)
        cost.check_reachable(smallest_arch(config.space, channel_multiple=multiple))
        train = _subset(data.train, config.proxy.samples)
        fingerprint = _fingerprint(config, ctx, multiple)
        journal = ctx.workdir / JOURNAL if ctx.workdir is not None else None
        with warnings.catch_warnings():  # NNI warns at import about torch classes it does not know (harmless)
            warnings.simplefilter("ignore", RuntimeWarning)
            from compress.nas.search import best_candidate, run_search  # NNI loads only when a search runs
        if config.strategy == "spos":
            from compress.nas.oneshot import run_spos

            outcome = run_spos(config, cost, train=train, val=data.val, seed=ctx.seed, channel_multiple=multiple,
                               progress=ctx.progress)
        else:
            outcome = run_search(config, cost, train=train, val=data.val, seed=ctx.seed, channel_multiple=multiple,
                                 journal_path=journal, fingerprint=fingerprint, executor=ctx.executor,
                                 progress=ctx.progress)
        if not outcome.trained:
            raise EdgetierError(f"the search found no candidate within the budget in {len(outcome.rejected)} samples",
                                where="with.budget", fix="raise the budget or allow smaller choices in `space`")
        chosen = best_candidate(outcome.trained)
        finals: list[dict[str, Any]] = []
        if config.finalists > 1 and outcome.model is None:
            chosen, result_model, finals = _final_round(config, outcome.trained, data, ctx)
        else:
            best = outcome.trained[chosen]
            result_model = outcome.model if outcome.model is not None else train_candidate(
                best["arch"], train, config.proxy.model_dump(), seed=best["seed"],
                input_shape=tuple(data.input_shape), num_classes=data.num_classes)
        best = outcome.trained[chosen]
        report = _report(config, outcome, chosen)
        if finals:
            report["finalists"] = finals
        if ctx.workdir is not None:
            report["figures"] = _plots(ctx.workdir, outcome, chosen, target.name if target else "")
        state = {"arch": best["arch"], "input_shape": list(data.input_shape), "num_classes": data.num_classes}
        return Result(result_model, report, state=state)

    def restore(self, model: nn.Module, state: dict[str, Any], ctx: Context) -> Result:
        """The chosen architecture, freshly built; the pipeline then loads its saved weights."""
        return Result(build_arch(state["arch"], input_shape=tuple(state["input_shape"]),
                                 num_classes=int(state["num_classes"])))


def _final_round(config: NASConfig, trained: list[dict[str, Any]], data: Any,
                 ctx: Context) -> tuple[int, nn.Module, list[dict[str, Any]]]:
    """Retrain the `finalists` best distinct architectures (by proxy accuracy) on the whole train split
    for `final_epochs`, each from its trial's seed, and choose the most accurate on validation
    (ties: the better proxy rank). Runs in-process; the trial code gives the same bits anywhere."""
    ranked, seen = [], set()
    for i in sorted(range(len(trained)), key=lambda i: (-trained[i]["accuracy"], trained[i]["macs"], i)):
        key = arch_key(trained[i]["arch"])
        if key not in seen:
            seen.add(key)
            ranked.append(i)
    proxy = {**config.proxy.model_dump(), "samples": None,
             "epochs": config.final_epochs or config.proxy.epochs}
    finals, models = [], []
    for i in ranked[:config.finalists]:
        model = train_candidate(trained[i]["arch"], data.train, proxy, seed=trained[i]["seed"],
                                input_shape=tuple(data.input_shape), num_classes=data.num_classes)
        with fixed_threads():
            accuracy = evaluate(model, canonical(data.val))
        finals.append({"index": i, "arch": arch_key(trained[i]["arch"]), "proxy_accuracy": trained[i]["accuracy"],
                       "final_accuracy": accuracy, "epochs": proxy["epochs"]})
        models.append(model)
    pick = max(range(len(finals)), key=lambda k: (finals[k]["final_accuracy"], -k))
    return finals[pick]["index"], models[pick], finals


def _fingerprint(config: NASConfig, ctx: Context, multiple: int) -> str:
    # Where trials run does not change their results, so the executor is not part of it.
    search = config.to_dict()
    for key in ("executor", "address", "workers"):
        search.pop(key)
    data = ctx.data
    assert data is not None
    parts = [search, ctx.seed, multiple, ctx.target.name if ctx.target else None,
             [len(data.train[1]), len(data.val[1])], float(data.train[0][:64].sum()), float(data.val[0][:64].sum())]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _report(config: NASConfig, outcome: SearchOutcome, chosen: int) -> dict[str, Any]:
    best = outcome.trained[chosen]
    candidates = [{**c, "arch": arch_key(c["arch"])} for c in outcome.trained + outcome.rejected]
    return {"strategy": config.strategy, "trials": len(outcome.trained), "rejected": len(outcome.rejected),
            "trials_from_journal": outcome.from_journal, "trials_trained": outcome.trained_here,
            "chosen": {"index": chosen, "arch": arch_key(best["arch"]), "accuracy": best["accuracy"],
                       "params": best["params"], "bytes": best["bytes"], "macs": best["macs"],
                       "latency_ms": best["latency_ms"]},
            "budget": config.budget.model_dump(), "candidates": candidates,
            "note": f"{config.strategy} searched {len(outcome.trained)} candidates ({len(outcome.rejected)} over "
                    f"budget, rejected before {'scoring' if config.strategy == 'spos' else 'training'}); chosen "
                    f"{arch_key(best['arch'])} at {best['accuracy']:.1%} proxy val accuracy"}


def _plots(workdir: Path, outcome: SearchOutcome, chosen: int, target: str) -> dict[str, str]:
    """Two Pareto plots in the stage folder, as `{label: path}` under the summary's `figures`: the
    deploy step copies them into each bundle (covered by the manifest's sha256) and links them from
    the bundle's report.md and the run's report.md (see `compress.core.report.bundle_figures`)."""
    points = [{"accuracy": c["accuracy"], "latency_ms": c["latency_ms"], "kib": c["bytes"] / 1024}
              for c in outcome.trained]
    figures = {}
    for name, x, label in (("pareto_latency.png", "latency_ms", f"estimated latency on {target} (ms)"),
                           ("pareto_size.png", "kib", "weights (KiB)")):
        path = pareto_plot(workdir / name, points, x=x, y="accuracy", label_x=label, label_y="proxy val accuracy",
                           chosen=chosen, title=f"NAS: {len(points)} candidates")
        figures[name] = str(path)
    return figures
