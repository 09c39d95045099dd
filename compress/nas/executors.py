"""Where trials train: in this process, one after another, or as Ray tasks in parallel.

Both take a batch of jobs and return the accuracies in the batch's order; `on_done(index, accuracy)`
fires as each trial finishes (in completion order) so the journal records it at once.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from compress.core.errors import EdgetierError
from compress.nas.arch import Arch
from compress.nas.trial import Split, run_trial

Job = tuple[Arch, int]  # (architecture, trial seed)
OnDone = Callable[[int, float], None]


class InProcessExecutor:
    """Trials run here, sequentially (each on one torch thread, as on a Ray worker; see `trial`)."""

    def __init__(self, train: Split, val: Split, common: dict[str, Any]) -> None:
        self.train, self.val, self.common = train, val, common

    def map(self, jobs: list[Job], on_done: OnDone) -> list[float]:
        out = []
        for i, (arch, seed) in enumerate(jobs):
            out.append(run_trial(arch, self.train, self.val, seed=seed, **self.common))
            on_done(i, out[-1])
        return out

    def close(self) -> None:
        pass


def _unreachable(address: str, reason: str) -> EdgetierError:
    return EdgetierError(f"Ray is not reachable at {address} ({reason})", where="with.address",
                         fix="start the cluster (`ray start --head`) and give its address ('auto' on a cluster "
                             "node, 'host:6379' or 'ray://host:10001'), or use executor: inprocess")


def _check_reachable(address: str | None) -> None:
    """Fail in seconds on a host:port nobody listens on; `ray.init` itself retries for minutes."""
    if address is None or address in ("auto", "local"):
        return
    host_port = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise _unreachable(address, "expected host:port, 'auto' or 'ray://host:port'")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise _unreachable(address, exc.strerror or type(exc).__name__) from None


class RayExecutor:
    """Trials run as Ray tasks (one CPU each) on a local instance or an existing cluster.

    A local instance started here is shut down by `close`; a Ray session that was already
    initialized (the caller's own) is used as it is and left running.
    """

    def __init__(self, train: Split, val: Split, common: dict[str, Any], *, address: str | None, workers: int) -> None:
        import ray

        self._ray = ray
        self._owned = False
        if not ray.is_initialized():
            _check_reachable(address)
            try:
                if address is None:
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                             configure_logging=False)
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise _unreachable(address or "a new local instance", first) from None
            self._owned = True
        self._task = ray.remote(num_cpus=1)(run_trial)
        # The splits go to the object store once, not with every task.
        self._train, self._val = ray.put(train), ray.put(val)
        self.common = common

    def map(self, jobs: list[Job], on_done: OnDone) -> list[float]:
        ray = self._ray
        refs = [self._task.remote(arch, self._train, self._val, seed=seed, **self.common) for arch, seed in jobs]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[float | None] = [None] * len(refs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results[index[ref]] = float(ray.get(ref))
                on_done(index[ref], results[index[ref]])
        return [float(r) for r in results if r is not None]

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
