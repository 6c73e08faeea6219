"""Where the checkpoints of a run live: versions behind an atomically switched pointer.

A checkpoint root holds complete versions, each a directory
``ckpt-000012/`` with ``weights.safetensors`` and ``checkpoint.json``, and a
``LATEST`` file naming the current one. A save writes a new version into a
hidden temporary directory, makes it durable, renames it into place, and only
then replaces ``LATEST`` (write, fsync, ``os.replace``, fsync the root), so at
every instant ``LATEST`` names a complete version: a crash at any step leaves
the previous checkpoint loadable. Older versions beyond the last ``keep`` are
removed after the switch; leftovers of an interrupted save (temporary
directories, versions newer than ``LATEST``) are removed by the next save.

A root written by Esper before versions existed holds ``checkpoint.json`` and
``weights.safetensors`` itself; it still loads, and the first versioned save
into it removes those two files once its own version is current.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from .errors import CheckpointError
from .format import JSON_FILE, WEIGHTS_FILE

POINTER_FILE = "LATEST"
TEMP_PREFIX = ".tmp-"
DEFAULT_KEEP = 2
_VERSION = re.compile(r"ckpt-(\d{6,})")


def version_name(number: int) -> str:
    """The directory name of version ``number`` (``ckpt-000012``)."""
    return f"ckpt-{number:06d}"


def versions(root: Path) -> dict[int, Path]:
    """Every version directory under ``root``, by number (complete or not)."""
    found: dict[int, Path] = {}
    if root.is_dir():
        for entry in root.iterdir():
            match = _VERSION.fullmatch(entry.name)
            if match and entry.is_dir():
                found[int(match.group(1))] = entry
    return found


def current(root: Path) -> Path | None:
    """The version ``LATEST`` names, or ``None`` when there is no pointer.

    Raises:
        CheckpointError: the pointer is unreadable, names no version, or names
            a version that is not there.
    """
    pointer = root / POINTER_FILE
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{pointer}: unreadable ({error})") from error
    if not _VERSION.fullmatch(name):
        raise CheckpointError(f"{pointer}: names {name[:80]!r}, not a checkpoint version "
                              "(ckpt-NNNNNN)")
    if not (root / name).is_dir():
        raise CheckpointError(f"{pointer}: names {name}, which is not in {root}")
    return root / name


def resolve(root: Path) -> Path:
    """The directory holding the checkpoint to load from ``root``.

    ``root`` may be a checkpoint root (its ``LATEST`` version), a version
    directory itself, or a root written before versions existed.

    Raises:
        CheckpointError: no directory, or no complete checkpoint in it (saying
            so when only an interrupted first save is there).
    """
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint directory")
    pointed = current(root)
    if pointed is not None:
        return pointed
    if (root / JSON_FILE).is_file() or (root / WEIGHTS_FILE).is_file():
        return root
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(TEMP_PREFIX)]
    if versions(root) or leftovers:
        raise CheckpointError(f"{root}: no complete checkpoint: the first save into it did not "
                              "finish, so there is nothing to resume; start the run again")
    raise CheckpointError(f"{root}: no checkpoint here ({POINTER_FILE} is missing)")


def clean(root: Path) -> None:
    """Remove what interrupted saves left: temporary directories and files, and
    versions newer than the current one (``LATEST`` is the authority)."""
    pointed = current(root)
    newest = -1 if pointed is None else int(_VERSION.fullmatch(pointed.name).group(1))
    for entry in list(root.iterdir()) if root.is_dir() else []:
        if entry.name.startswith(TEMP_PREFIX):
            _remove(entry)
    for number, path in versions(root).items():
        if number > newest:
            _remove(path)


def prune(root: Path, keep: int) -> None:
    """Keep the current version and the ``keep - 1`` before it; drop the rest and any
    files of the unversioned layout. Failures are ignored (the next save retries)."""
    pointed = current(root)
    if pointed is None:
        return
    numbers = sorted(versions(root), reverse=True)
    newest = int(_VERSION.fullmatch(pointed.name).group(1))
    kept = [n for n in numbers if n <= newest][:keep]
    for number in numbers:
        if number not in kept:
            _remove(versions(root)[number])
    for legacy in (JSON_FILE, WEIGHTS_FILE):
        with contextlib.suppress(OSError):
            (root / legacy).unlink(missing_ok=True)


def point_to(root: Path, version: Path) -> None:
    """Atomically make ``version`` the current one (write, fsync, replace, fsync the root)."""
    temp = root / f"{TEMP_PREFIX}{POINTER_FILE}"
    with temp.open("w", encoding="utf-8") as stream:
        stream.write(version.name + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, root / POINTER_FILE)
    sync_directory(root)


def sync_directory(path: Path) -> None:
    """fsync a directory so the names in it are durable (where the file system can)."""
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


__all__ = ["DEFAULT_KEEP", "POINTER_FILE", "TEMP_PREFIX", "clean", "current", "point_to", "prune",
           "resolve", "sync_directory", "version_name", "versions"]
