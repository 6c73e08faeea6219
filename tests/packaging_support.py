"""Build Esper's wheel from a copy of the sources, and a fresh venv that has it without Triton.

The build runs ``python -m build --no-isolation``: an sdist first, then the wheel
from the unpacked sdist, as a release is made. Without isolation it uses the
setuptools of the running environment (the ``test`` extra asks for the version
``[build-system]`` does, and ``build`` checks it) instead of downloading one per run.

The venv is made without system site packages. Only the wheel is installed in
it (``--no-deps``); torch, numpy, safetensors and what they need at run time
(their ``Requires-Dist`` closure on this platform, Triton left out) are linked
into one folder that a ``.pth`` file puts on its path.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
#: What a build reads: the metadata, the readme and licence, and the two source folders.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "esper", "kernels")


def source_packages() -> set[str]:
    """Every package the sources hold: each folder under ``esper/`` with an ``__init__.py``,
    the link ``esper/kernels -> ../kernels`` followed."""
    walk = os.walk(ROOT / "esper", followlinks=True)
    return {".".join(Path(folder).relative_to(ROOT).parts)
            for folder, _, names in walk if "__init__.py" in names}


def build_wheel(workdir: Path) -> Path:
    """Copy the sources (the link kept a link) to ``workdir`` and build; the wheel's path."""
    assert importlib.util.find_spec("build"), "the wheel tests need the 'test' extra: build"
    src, dist = workdir / "src", workdir / "dist"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=skip)
        else:
            shutil.copy2(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist),
                           str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    (wheel,) = dist.glob("*.whl")
    return wheel


def runtime_closure(names: Iterable[str], leave_out: set[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` and, recursively, the ones they require here
    (markers evaluated, no extras), except ``leave_out`` and what is not installed."""
    found: dict[str, metadata.Distribution] = {}
    todo = [canonicalize_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in found or name in leave_out:
            continue
        try:
            dist = found[name] = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for line in dist.requires or ():
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return list(found.values())


def link_distributions(dists: Iterable[metadata.Distribution], folder: Path) -> None:
    """Link each top-level file or folder of ``dists`` (their ``.dist-info`` included) into
    ``folder``; scripts (``../bin``), ``__pycache__`` and ``.pth`` files are left out."""
    folder.mkdir()
    for dist in dists:
        assert dist.files is not None, f"{dist.metadata['Name']} has no RECORD"
        for top in sorted({Path(str(f)).parts[0] for f in dist.files}):
            if top not in ("..", "__pycache__") and not top.endswith(".pth"):
                (folder / top).symlink_to(Path(str(dist.locate_file(top))))


def venv_with(wheel: Path, workdir: Path, leave_out: set[str]) -> Path:
    """A fresh venv holding ``wheel`` and, linked, torch, numpy and safetensors with their
    run-time requirements except ``leave_out``; its python."""
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # Away from the sources: with them on the path pip would take esper as installed already.
    clean = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300, env=clean,
                   cwd=workdir)
    deps = workdir / "deps"
    link_distributions(runtime_closure(["torch", "numpy", "safetensors"], leave_out), deps)
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = subprocess.run([str(python), "-I", "-c", where], capture_output=True, text=True,
                             check=True).stdout.strip()
    Path(purelib, "runtime-deps.pth").write_text(f"{deps}\n")
    return python
