"""Bundle hashing and verification, shared by the writer and the device runtime.

Stdlib only on purpose: `export.runtime` imports this module on devices that have no torch,
so the code that decides whether a bundle can be trusted is the same on both sides.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from export.errors import BundleError

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large models do not load whole.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d) / "a.bin"
    ...     _ = p.write_bytes(b"abc")
    ...     sha256_file(p)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and shape-check `manifest.json` without hashing any file (see `verify_bundle`).

    >>> import tempfile, pathlib
    >>> from export.bundle import write_bundle
    >>> with tempfile.TemporaryDirectory() as d:
    ...     b = write_bundle(pathlib.Path(d) / "b", files={"w.bin": b"x"}, manifest={"variant": "end"},
    ...                      report={}, report_md="")
    ...     sorted(read_manifest(b)["files"])
    ['report.json', 'report.md', 'w.bin']
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(
            "bundle folder not found",
            where=str(root),
            fix="export the variant again, or check the path; if a write was interrupted, a "
            f"'.{root.name}.old-*' folder next to it holds the previous bundle",
        )
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"no {MANIFEST} in the bundle, so nothing in it can be trusted",
            where=str(root),
            fix="re-export the bundle, or re-copy the whole folder",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(
            f"{MANIFEST} is not valid JSON ({err})", where=str(path), fix="re-export or re-copy the bundle"
        ) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(_is_entry(name, e) for name, e in files.items()):
        raise BundleError(
            f"{MANIFEST} has no valid 'files' table (expected {{name: {{'sha256': hex, 'bytes': int}}}} "
            "with plain file names)",
            where=str(path),
            fix="re-export the bundle with export.bundle.write_bundle",
        )
    return manifest


def verify_bundle(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every file listed in the manifest against its size and sha256; return the manifest.

    Files present but not listed are allowed (see `unlisted_files`): they cannot change what
    the runtime loads, since it only opens listed files.

    >>> import tempfile, pathlib
    >>> from export.bundle import write_bundle
    >>> with tempfile.TemporaryDirectory() as d:
    ...     b = write_bundle(pathlib.Path(d) / "b", files={"w.bin": b"x"}, manifest={"variant": "end"},
    ...                      report={}, report_md="")
    ...     verify_bundle(b)["variant"]
    'end'
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    for name, entry in sorted(manifest["files"].items()):
        path = root / name
        if not path.is_file():
            raise BundleError(
                f"file '{name}' is listed in {MANIFEST} but missing",
                where=str(root),
                fix="re-export the bundle, or re-copy the whole folder",
            )
        size = path.stat().st_size
        actual = sha256_file(path)
        if actual != entry["sha256"] or size != entry["bytes"]:
            raise BundleError(
                f"file '{name}' does not match {MANIFEST}: sha256 {actual} ({size} bytes) on disk, "
                f"{entry['sha256']} ({entry['bytes']} bytes) expected; the file is corrupted or was edited",
                where=str(path),
                fix="re-export the bundle, or re-copy it from a good source",
            )
    return manifest


def unlisted_files(bundle_dir: str | os.PathLike[str]) -> list[str]:
    """Names of files in the bundle folder that the manifest does not list (besides itself).

    >>> import tempfile, pathlib
    >>> from export.bundle import write_bundle
    >>> with tempfile.TemporaryDirectory() as d:
    ...     b = write_bundle(pathlib.Path(d) / "b", files={}, manifest={}, report={}, report_md="")
    ...     _ = (b / "notes.txt").write_text("hi")
    ...     unlisted_files(b)
    ['notes.txt']
    """
    root = Path(bundle_dir)
    listed = set(read_manifest(root)["files"]) | {MANIFEST}
    return sorted(p.name for p in root.iterdir() if p.name not in listed)


def is_plain_name(name: object) -> bool:
    """True for a bare file name, the only kind a bundle lists.

    A listed "../x" would let a manifest point the runtime outside its own folder.

    >>> is_plain_name("model.onnx"), is_plain_name("../model.onnx")
    (True, False)
    """
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _is_entry(name: object, entry: object) -> bool:
    return (
        is_plain_name(name)
        and isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("bytes"), int)
    )
