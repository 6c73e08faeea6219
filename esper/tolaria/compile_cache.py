"""The run's compiled graphs, kept in its directory so a resumed run starts warm.

torch records the inductor and AOTAutograd artifacts a process compiles
(``torch.compiler.save_cache_artifacts``); a run writes them to
``compile_cache.bin`` in its directory whenever it compiled something new,
and ``--resume`` loads them (``torch.compiler.load_cache_artifacts``) before
anything compiles, so on another machine, in a fresh container or with a
cleared ``/tmp`` its graphs come from the file instead of being compiled
again (dynamo still traces each one). A cache is only a speed-up: one that
cannot be read or loaded is reported and ignored.

Example::

    loaded = load_compile_cache(run_dir)      # before the first step
    save_compile_cache(run_dir)               # after an epoch that compiled
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

CACHE_FILE = "compile_cache.bin"
_log = logging.getLogger("esper")


def save_compile_cache(run_dir: Path) -> int:
    """Write every artifact this process compiled or loaded to ``run_dir``; returns the
    number written (0 when there is none, e.g. a backend that caches nothing).

    The file is replaced atomically (a temporary file, then a rename), so a
    crash leaves the previous cache whole.
    """
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return 0
    data, info = saved
    temporary = run_dir / f".{CACHE_FILE}.tmp"
    temporary.write_bytes(data)
    os.replace(temporary, run_dir / CACHE_FILE)
    return sum(len(keys) for keys in info.artifacts.values())


def load_compile_cache(run_dir: Path) -> int:
    """Load the artifacts a run saved in ``run_dir``; returns how many (0 when there is no
    file, or it could not be loaded: that is logged, and the run compiles as usual)."""
    path = run_dir / CACHE_FILE
    if not path.is_file():
        return 0
    try:
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
        problem = "torch found nothing it could load in it" if info is None else None
    except Exception as error:  # any failure only costs the speed-up
        info, problem = None, f"{type(error).__name__}: {error}"
    if info is None:
        _log.warning("%s: not loaded (%s); the run compiles its graphs again", path, problem)
        return 0
    return sum(len(keys) for keys in info.artifacts.values())


__all__ = ["CACHE_FILE", "load_compile_cache", "save_compile_cache"]
