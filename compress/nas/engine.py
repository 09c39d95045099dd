"""An NNI execution engine that runs trials in generations (batches) through an executor.

NNI's strategies submit models one at a time and learn results through engine events. This
engine queues `batch` submissions, trains them together (in-process, or in parallel on Ray),
then reports their results to the strategy in submission order. Which candidates the strategy
proposes therefore depends only on the seed and the batch size, never on how many workers ran
the batch or which trial finished first: 1 or 2 Ray workers give the same search.

Before training, each candidate is looked up in the journal; a finished trial is not trained again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from nni.nas.execution import ExecutionEngine
from nni.nas.execution.event import FinalMetricEvent, TrainingEndEvent
from nni.nas.space import ExecutableModelSpace, ModelStatus

from compress.nas.arch import Arch, arch_key
from compress.nas.executors import InProcessExecutor, RayExecutor
from compress.nas.journal import Journal
from compress.nas.trial import trial_seed


class BatchEngine(ExecutionEngine):
    """Runs at most `trials` models, `batch` at a time; `records` lists them in submission order."""

    def __init__(self, executor: InProcessExecutor | RayExecutor, journal: Journal, *, arch_of: Callable[[Any], Arch],
                 trials: int, batch: int, seed: int, on_trial: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.executor, self.journal, self.arch_of = executor, journal, arch_of
        self.trials, self.batch, self.seed, self.on_trial = trials, batch, seed, on_trial
        self.records: list[dict[str, Any]] = []
        self._history: list[ExecutableModelSpace] = []
        self._queue: list[ExecutableModelSpace] = []
        self.trained_here = 0
        self._seen: set[str] = set()

    def submit_models(self, *models: ExecutableModelSpace) -> None:
        for model in models:
            if len(self._history) >= self.trials:
                raise RuntimeError("trial budget exhausted")  # strategies check budget_available() first
            model.status = ModelStatus.Training
            self._history.append(model)
            self._queue.append(model)
            if len(self._queue) >= self.batch or len(self._history) >= self.trials:
                self._flush()

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        archs = [self.arch_of(m.sample) for m in queue]
        keys = [arch_key(a) for a in archs]
        accuracy: dict[str, float] = {k: self.journal.get(k)["accuracy"] for k in keys if self.journal.get(k)}
        # Two samples can round to the same architecture (e.g. widths raised to the channel multiple):
        # it trains once, and a repeat takes the first result (same seed, same accuracy).
        unique = {key: arch for arch, key in zip(archs, keys, strict=True) if key not in accuracy}
        todo = [(arch, trial_seed(self.seed, arch)) for arch in unique.values()]

        def done(index: int, value: float) -> None:
            arch, seed = todo[index]
            accuracy[arch_key(arch)] = value
            self.journal.add(arch_key(arch), {"arch": arch, "seed": seed, "accuracy": value})
            self.trained_here += 1
            self.on_trial()

        self.executor.map(todo, done)
        for model, arch, key in zip(queue, archs, keys, strict=True):
            source = "repeat" if key in self._seen else "journal" if key in self.journal.loaded_keys else "trained"
            self._seen.add(key)
            self.records.append({"arch": arch, "key": key, "accuracy": accuracy[key],
                                 "seed": trial_seed(self.seed, arch), "source": source})
            self.dispatch_model_event(FinalMetricEvent(model, accuracy[key]))
            self.dispatch_model_event(TrainingEndEvent(model, ModelStatus.Trained))

    def wait_models(self, *models: ExecutableModelSpace) -> None:
        if self._queue:
            self._flush()

    def list_models(self, status: ModelStatus | None = None) -> Iterable[ExecutableModelSpace]:
        return [m for m in self._history if status is None or m.status == status]

    def idle_worker_available(self) -> bool:
        return True  # submissions queue; a full queue trains before submit_models returns

    def budget_available(self) -> bool:
        return len(self._history) < self.trials

    def shutdown(self) -> None:
        self.executor.close()

    def state_dict(self) -> dict:
        return {"submitted": len(self._history)}

    def load_state_dict(self, state_dict: dict) -> None:
        pass  # resuming replays the strategy from its seed; the journal supplies finished trials
