"""The run directory of ``esper grow``: refused if it holds another run, locked while in use.

A run writes into a directory that is new, empty, the run it resumes, or one
it was told to overwrite (``--overwrite``); anything else is refused before a
byte is written (:class:`~esper.errors.RunDirectoryExistsError`). For the
run's life it holds an exclusive advisory lock (``fcntl.flock``) on
:data:`LOCK_FILE` inside the directory, which holds the run's pid; a second run
on the same directory fails at once naming that pid
(:class:`~esper.errors.RunDirectoryLockedError`). The kernel drops the lock
when the process ends, however it ends, so a crashed run never leaves a stale
lock behind; the file itself stays (empty) and is never counted as content.

Example::

    check_run_dir(out)                 # cheap, touches nothing: fail fast
    with claim_run_dir(out):           # the lock, held until the block ends
        ...write the run...
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import RunDirectoryExistsError, RunDirectoryLockedError

LOCK_FILE = ".esper.lock"
_PID_WAIT_S = 0.5  # how long a refused run waits for the holder to write its pid


def _contents(out: Path) -> list[str]:
    """The names in ``out`` that belong to a run (everything but the lock file)."""
    return sorted(name for name in os.listdir(out) if name != LOCK_FILE)


def _holder(fd: int) -> str:
    """The pid written in an open lock file (``unknown`` if none appears in time)."""
    deadline = time.monotonic() + _PID_WAIT_S
    while True:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if text.isdigit() or time.monotonic() >= deadline:
            return text if text.isdigit() else "unknown"
        time.sleep(0.01)


def _locked(out: Path, fd: int) -> RunDirectoryLockedError:
    pid = _holder(fd)
    error = RunDirectoryLockedError(
        f"--out {out}: the run directory is locked by another esper run (pid {pid}); wait for "
        "it to end, or choose another --out")
    error.pid = int(pid) if pid.isdigit() else None
    return error


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_run_dir(out: Path, *, resume: Path | None = None, overwrite: bool = False) -> None:
    """Refuse ``out`` if another run holds it or it holds a run this one may not replace.

    Reads only: creates and changes nothing (a lock is only probed).
    ``out`` may be written when it does not exist, is empty, is the directory
    ``resume`` continues (its run directory: ``resume`` or its parent when
    ``resume`` is the ``checkpoint`` directory), or ``overwrite`` is set.

    Raises:
        ValueError: ``resume`` and ``overwrite`` together.
        RunDirectoryLockedError: a live run holds the lock on ``out``.
        RunDirectoryExistsError: ``out`` is not a directory, or holds files it may not replace.
    """
    if resume is not None and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: --resume continues the "
                         "run in its directory, --overwrite replaces it")
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirectoryExistsError(f"--out {out}: exists and is not a directory; choose "
                                      "another --out")
    lock = out / LOCK_FILE
    if lock.exists():
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _locked(out, fd) from None
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    _check_contents(out, resume, overwrite)


def _check_contents(out: Path, resume: Path | None, overwrite: bool) -> None:
    """Refuse a directory that holds a run this one may neither continue nor replace."""
    contents = _contents(out)
    if not contents or overwrite:
        return
    if resume is not None:
        run_dir = resume.parent if resume.name == "checkpoint" else resume
        if _same_directory(run_dir, out):
            return
        raise RunDirectoryExistsError(
            f"--out {out}: the directory holds a run ({', '.join(contents[:5])}) other than "
            f"the one --resume {resume} continues; pass --out {run_dir} to continue it in "
            "place, or choose a new --out")
    raise RunDirectoryExistsError(
        f"--out {out}: the directory already holds a run ({', '.join(contents[:5])}); continue "
        "it with --resume, replace it with --overwrite, or choose another --out")


def _acquire(out: Path, lock: Path) -> int:
    """Create ``out`` and take the lock on ``lock``, the file on disk; its descriptor.

    Raises:
        RunDirectoryLockedError: another process holds the lock.
    """
    while True:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _locked(out, fd)
            os.close(fd)
            raise error from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder before us may have removed the file: lock the one on disk
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _remove(out: Path, names: Iterable[str]) -> None:
    """Delete each of ``names`` under ``out`` that exists (a directory with its contents)."""
    for name in names:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


@contextmanager
def claim_run_dir(out: Path, *, resume: Path | None = None, overwrite: bool = False,
                  outputs: Iterable[str] = ()) -> Iterator[Path]:
    """Lock ``out`` for the block, after :func:`check_run_dir` (done again under the lock).

    Creates ``out`` (and its parents) if missing. With ``overwrite``, deletes
    the names in ``outputs`` (the files and directories a run writes; other
    files stay) once the lock is held. The lock is released when the block
    ends, on an exception too; a directory this call created that holds
    nothing but the lock file is removed again then.

    Yields:
        ``out``.

    Raises:
        RunDirectoryLockedError: another process holds the lock (its pid in the message).
        RunDirectoryExistsError, ValueError: as :func:`check_run_dir`.
    """
    check_run_dir(out, resume=resume, overwrite=overwrite)
    created = not out.exists()
    lock = out / LOCK_FILE
    fd = _acquire(out, lock)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        _check_contents(out, resume, overwrite)  # again: another run may have ended just now
        if overwrite:
            _remove(out, outputs)
        yield out
    finally:
        try:
            os.ftruncate(fd, 0)
            if created and not _contents(out):
                lock.unlink()
                out.rmdir()
        except OSError:  # best effort: never mask the run's own outcome
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
