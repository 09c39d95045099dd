"""Write a variant's artifact bundle atomically: model files, reports, and a hashed manifest.

The bundle is assembled in a hidden sibling folder and renamed into place, so a reader sees
either the old complete bundle, the new complete bundle, or no bundle — never a half-written
folder that looks whole. Torch-free: the hashing and verification live in `export.manifest`,
which the device runtime shares.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from export.errors import BundleError
from export.manifest import MANIFEST, is_plain_name, sha256_file, unlisted_files, verify_bundle

__all__ = ["dumps_json", "sha256_file", "unlisted_files", "verify_bundle", "write_bundle"]

_RESERVED = (MANIFEST, "report.json", "report.md")


def dumps_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, two-space indent, trailing newline, no NaN.

    Identical inputs give identical bytes, so a bundle's hashes depend only on its content.
    NumPy scalars and paths are converted, since reports are often built from them.

    >>> print(dumps_json({"b": 1, "a": [1.5, None]}), end="")
    {
      "a": [
        1.5,
        null
      ],
      "b": 1
    }
    """
    return (
        json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False, default=_plain) + "\n"
    )


def write_bundle(
    out_dir: str | os.PathLike[str],
    *,
    files: Mapping[str, Path | bytes],
    manifest: Mapping[str, Any],
    report: Mapping[str, Any],
    report_md: str,
) -> Path:
    """Write `files`, `report.json`, `report.md` and `manifest.json` into `out_dir`, atomically.

    The manifest gets a computed `files` table (`{name: {"sha256", "bytes"}}` for every file
    except `manifest.json`); a `files` key in the given manifest is replaced. An existing
    bundle at `out_dir` is replaced only once the new one is complete; a folder that is not a
    bundle is never replaced.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     b = write_bundle(pathlib.Path(d) / "end", files={"model.onnx": b"\\x08\\x07"},
    ...                      manifest={"variant": "end"}, report={"accuracy": 0.9}, report_md="# end\\n")
    ...     sorted(p.name for p in b.iterdir())
    ['manifest.json', 'model.onnx', 'report.json', 'report.md']
    """
    out = Path(out_dir)
    for name in files:
        if name in _RESERVED or not is_plain_name(name):
            raise BundleError(
                f"file name '{name}' cannot be used in a bundle (plain names only; {', '.join(_RESERVED)} "
                "are written by write_bundle)",
                where=str(out),
                fix="rename the file in the `files` mapping",
            )
    _check_replaceable(out)
    _json_bytes(manifest, "manifest", out)  # fail before touching the disk
    texts = {
        "report.json": _json_bytes(report, "report", out),
        "report.md": report_md.encode("utf-8"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        table: dict[str, dict[str, Any]] = {}
        for name, content in sorted({**files, **texts}.items()):
            _write_file(tmp / name, content, where=str(out))
            table[name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
        _write_file(
            tmp / MANIFEST, _json_bytes({**manifest, "files": table}, "manifest", out), where=str(out)
        )
        _fsync_dir(tmp)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the complete bundle `tmp` at `out`. On Linux an existing bundle is exchanged atomically
    (renameat2 RENAME_EXCHANGE), so `out` is never missing, even if the process is killed; elsewhere the
    old bundle is renamed aside first, and a kill between the two renames leaves it as `.<name>.old-*`,
    which the next run puts back (`compress.runlock.clean_leftovers`)."""
    if not out.exists():
        os.rename(tmp, out)
        _fsync_dir(out.parent)
        return
    if _exchange(tmp, out):  # tmp now holds the old bundle
        _fsync_dir(out.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    _fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0  # EINVAL / ENOSYS (file system without exchange): the two-rename fallback


def _check_replaceable(out: Path) -> None:
    # Replacing a folder of the user's own files would lose work: only bundles or empty folders go.
    if not out.exists():
        return
    if not out.is_dir():
        raise BundleError(
            "a file exists where the bundle folder should go", where=str(out), fix="choose another out_dir"
        )
    if not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise BundleError(
            f"the folder exists, is not empty, and is not a bundle (no {MANIFEST}); refusing to replace it",
            where=str(out),
            fix="choose another out_dir, or move the folder's contents away",
        )


def _write_file(dst: Path, content: Path | bytes, *, where: str) -> None:
    if isinstance(content, (bytes, bytearray, memoryview)):
        with open(dst, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        return
    src = Path(content)
    if not src.is_file():
        raise BundleError(
            f"source file for '{dst.name}' not found: {src}",
            where=where,
            fix="export the model before writing the bundle, or fix the path in `files`",
        )
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Without syncing the directory, a power cut can forget a rename that already "happened".
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_bytes(obj: Mapping[str, Any], what: str, out: Path) -> bytes:
    try:
        return dumps_json(dict(obj)).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise BundleError(
            f"the {what} cannot be written as JSON ({err})",
            where=str(out),
            fix=f"keep the {what} to str, int, float (finite), bool, None, lists and dicts",
        ) from None


def _plain(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
