"""The search's journal: one JSON line per finished trial, so an interrupted search continues.

Each line carries the search's fingerprint (config, seed, data); lines of another search in the
same folder are ignored, so a changed recipe never reuses stale accuracies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Journal:
    """Finished trials by architecture key; `path=None` keeps them in memory only.

    >>> journal = Journal(None, fingerprint="f")
    >>> journal.add("a", {"accuracy": 0.5}); journal.get("a")["accuracy"], len(journal)
    (0.5, 1)
    """

    def __init__(self, path: Path | None, *, fingerprint: str) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.entries: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a journal killed mid-write
                if entry.get("fingerprint") == fingerprint:
                    self.entries[entry["key"]] = entry
        self.loaded_keys = frozenset(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def add(self, key: str, entry: dict[str, Any]) -> None:
        entry = {"key": key, "fingerprint": self.fingerprint, **entry}
        self.entries[key] = entry
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a finished trial survives a kill right after it
