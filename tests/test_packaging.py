"""Packaging: a torch range in the metadata (the tested pin in constraints.txt), a LICENSE,
Triton only where it has wheels, the command line's dependencies in an extra, and the
source folder ``kernels/`` as the package ``esper.kernels``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from packaging_support import source_packages

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _torch_requirement() -> Requirement:
    found = [Requirement(dep) for dep in PROJECT["dependencies"] if dep.startswith("torch")]
    assert len(found) == 1
    return found[0]


def test_the_metadata_allows_a_torch_range_and_constraints_pin_the_tested_one() -> None:
    requirement = _torch_requirement()
    assert not any(spec.operator == "==" for spec in requirement.specifier)
    pins = re.findall(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert len(pins) == 1 and requirement.specifier.contains(Version(pins[0]))
    assert Version(torch.__version__.split("+")[0]) == Version(pins[0])  # what runs here


def test_triton_is_only_required_where_it_has_wheels() -> None:
    triton = [Requirement(d) for d in PROJECT["dependencies"] if d.startswith("triton")]
    assert len(triton) == 1 and triton[0].marker is not None
    assert not triton[0].marker.evaluate({"platform_system": "Darwin"})
    assert not triton[0].marker.evaluate({"platform_system": "Windows"})


def test_the_license_ships_and_the_metadata_names_it() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PROJECT["license"] == {"file": "LICENSE"}
    assert "License :: OSI Approved :: MIT License" in PROJECT["classifiers"]


HIDE_CLI_EXTRAS = r"""
import importlib.abc, sys

class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"rich", "matplotlib", "sklearn"}:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
        return None

sys.meta_path.insert(0, Hidden())
"""

LIBRARY_WITHOUT_EXTRAS = HIDE_CLI_EXTRAS + r"""
import tempfile
import torch
from torch import nn
import esper, esper.kasmina, esper.optim, esper.checkpoint, esper.nn

net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
x = torch.randn(3, 4)
model = esper.graft(net, ["1"], example_input=x)
model.germinate_seed("lowrank", "s1", slot="1")
with tempfile.TemporaryDirectory() as directory:
    esper.save(model, directory)
    fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert torch.equal(esper.load(fresh, directory)(x), model(x))
assert not {"rich", "matplotlib", "sklearn"} & set(sys.modules)
print("library ok")
"""

CLI_WITHOUT_EXTRAS = HIDE_CLI_EXTRAS + r"""
from esper.cli import main
main(["grow", "--epochs", "1", "--out", sys.argv[1]])
"""


def _python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)


def test_the_library_needs_none_of_the_cli_extras() -> None:
    run = _python(LIBRARY_WITHOUT_EXTRAS)
    assert run.returncode == 0 and "library ok" in run.stdout, run.stderr[-3000:]


def test_esper_grow_without_the_cli_extras_says_what_to_install(tmp_path: Path) -> None:
    run = _python(CLI_WITHOUT_EXTRAS, str(tmp_path / "run"))
    assert run.returncode == 2, run.stderr[-3000:]
    assert "needs the command line's extras" in run.stderr
    assert "pip install 'esper[cli]'" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "run").exists()


# --- the name esper.kernels ---------------------------------------------------------------


def test_the_kernels_folder_is_the_package_esper_kernels() -> None:
    link = ROOT / "esper" / "kernels"
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "kernels")
    assert "esper.kernels" in source_packages()


TOP_LEVEL_KERNELS = r"""
import json, sys, torch

def top_level():
    try:
        import kernels  # the source folder, found through the repository root on the path
    except ImportError as error:
        return str(error)
    return None

first = top_level()  # before esper.kernels registered the ops
import esper.kernels
one = [torch.arange(6.0).reshape(2, 3)]
print(json.dumps({"first": first, "again": top_level(),
                  "public": esper.kernels.squared_norms(one).tolist(),
                  "op": torch.ops.esper.squared_norms(one, "torch").tolist()}))
"""


@pytest.mark.slow
def test_the_source_folder_does_not_import_as_a_second_top_level_kernels() -> None:
    # A second copy would register torch.ops.esper.* again (torch raises on that).
    run = _python(TOP_LEVEL_KERNELS)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert "'esper.kernels'" in report["first"] and report["again"] == report["first"]
    assert report["public"] == report["op"] == pytest.approx([55.0])

