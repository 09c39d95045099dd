"""One writer per run folder, and what an interrupted writer left behind cleaned at the next run.

Two `edgetier run` into the same `--out` would otherwise interleave: the last writer's bundles
next to the first one's report, checkpoint folders deleted under a running stage. The lock is
an OS file lock (the `filelock` package: `fcntl.flock` here, released by the kernel when the
process dies, so a killed run never leaves a stale lock) on `OUT/.<recipe name>.lock`, next to
the run folder rather than in it. A second run refuses at once with one paragraph.

Under the lock, leftovers of a killed run are tidied: hidden `.<name>.tmp-*` folders and files
(half-written bundles, checkpoints and reports: never visible under their real names) are
removed; a `.<name>.old-*` folder (the previous bundle, set aside during a swap on a system
without atomic exchange) is put back if its bundle is missing, else removed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from compress.core.errors import EdgetierError

_TMP = re.compile(r"\A\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-z-]+\Z")


class RunLockedError(EdgetierError):
    """Another run is writing into the same run folder."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block, or refuse if another process holds it.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d, run_lock(pathlib.Path(d) / "q"):
    ...     with run_lock(pathlib.Path(d) / "q"):
    ...         pass
    Traceback (most recent call last):
    ...
    compress.runlock.RunLockedError: ...q: another edgetier run is writing into this run folder. Fix: ...
    """
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir.parent / f".{run_dir.name}.lock"), timeout=0)  # a new instance: never reentrant
    try:
        lock.acquire()
    except Timeout:
        raise RunLockedError("another edgetier run is writing into this run folder", where=str(run_dir),
                             fix="wait for it to finish, or give this run another --out") from None
    try:
        clean_leftovers(run_dir)
        yield
    finally:
        lock.release()


def clean_leftovers(run_dir: Path) -> list[str]:
    """Remove what killed writes left in `run_dir` (and its checkpoints); returns what was done."""
    done: list[str] = []
    for folder in (run_dir, run_dir / "checkpoints", *sorted((run_dir / "checkpoints").glob("*/"))):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            match = _TMP.match(entry.name)
            if match is None:
                continue
            real = folder / match.group("name")
            if match.group("kind") == "old" and entry.is_dir() and not real.exists():
                os.rename(entry, real)  # the previous bundle, put back where its readers look
                done.append(f"restored {real.name}")
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry.name}")
            else:
                entry.unlink(missing_ok=True)
                done.append(f"removed {entry.name}")
    return done
