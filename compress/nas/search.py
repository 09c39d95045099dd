"""Running one search: NNI strategy + `SearchSpace` + `BatchEngine`, with the journal and an executor."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nni.nas.space import RawFormatModelSpace
from nni.nas.strategy import Random, RegularizedEvolution

from compress.core.context import Progress, SilentProgress
from compress.core.errors import EdgetierError
from compress.nas.arch import Arch
from compress.nas.config import NASConfig
from compress.nas.costs import CostModel
from compress.nas.engine import BatchEngine
from compress.nas.executors import InProcessExecutor, RayExecutor
from compress.nas.journal import Journal
from compress.nas.space import SearchSpace
from compress.nas.trial import Split


@dataclass
class SearchOutcome:
    """Every trained candidate (submission order) and every rejected one, with their costs."""

    trained: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    from_journal: int = 0
    trained_here: int = 0
    model: Any = None  # spos: the chosen candidate with its supernet weights (others retrain it)


@contextmanager
def _quiet_nni() -> Iterator[None]:
    """NNI logs every sample and metric at INFO to stdout; the report has them all, so keep warnings only."""
    logger = logging.getLogger("nni")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _strategy(config: NASConfig, seed: int) -> Random | RegularizedEvolution:
    """NNI's strategy; spos evolves over its supernet, so it takes regularized evolution too."""
    if config.strategy == "random":
        return Random(dedup=True, seed=seed)
    population = min(config.population, config.trials)
    return RegularizedEvolution(population_size=population, sample_size=min(config.sample_size, population),
                                mutation_prob=config.mutation_prob, dedup=True, seed=seed)


def run_search(config: NASConfig, cost: CostModel, *, train: Split, val: Split, seed: int, channel_multiple: int,
               journal_path: Path | None, fingerprint: str, executor: str | None = None,
               progress: Progress | None = None, runner: Any = None) -> SearchOutcome:
    """Search with NNI's random or regularized-evolution strategy; trials train in generations of
    `config.batch` on the chosen executor (or score on `runner`, e.g. spos's supernet). Finished
    trials found in the journal are not retrained."""
    progress = progress or SilentProgress()
    space = SearchSpace(config.space, cost, channel_multiple=channel_multiple)
    journal = Journal(journal_path, fingerprint=fingerprint)
    common = {"proxy": config.proxy.model_dump(), "input_shape": cost.input_shape, "num_classes": cost.num_classes}
    kind = executor or config.executor
    if kind not in ("inprocess", "ray"):
        raise EdgetierError(f"unknown executor {kind!r}", where="executor", fix="use inprocess or ray")
    if runner is None:
        runner = (RayExecutor(train, val, common, address=config.address, workers=config.workers) if kind == "ray"
                  else InProcessExecutor(train, val, common))
    task = progress.task("nas: trials", total=config.trials)
    engine = BatchEngine(runner, journal, arch_of=space.arch, trials=config.trials, batch=config.batch, seed=seed,
                         on_trial=lambda: progress.advance(task))
    try:
        with _quiet_nni():
            strategy = _strategy(config, seed)
            strategy(RawFormatModelSpace(space, None), engine)
            engine.wait_models()  # the last, partly filled generation (Random does not wait for it)
    finally:
        engine.shutdown()
        progress.done(task)
    trained = [{**r, **cost(r["arch"]).to_dict()} for r in engine.records]
    seen = {r["key"] for r in trained}
    rejected = [{"arch": arch, "key": key, "accuracy": None, **c.to_dict()}
                for key, (arch, c) in space.rejected.items() if key not in seen]
    return SearchOutcome(trained, rejected, from_journal=sum(r["source"] == "journal" for r in trained),
                         trained_here=engine.trained_here)


def best_candidate(candidates: list[dict[str, Any]]) -> int:
    """Index of the most accurate candidate; ties go to the cheaper (fewer MACs), then the earlier one."""
    return min(range(len(candidates)), key=lambda i: (-candidates[i]["accuracy"], candidates[i]["macs"], i))


def arch_of(candidate: dict[str, Any]) -> Arch:
    return candidate["arch"]
