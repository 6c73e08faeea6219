"""Packaging: a torch range in the metadata (the tested pin in constraints.txt), a LICENSE,
Triton only where it has wheels, the command line's dependencies in an extra, and a wheel
that installs ``esper`` alone (``kernels/`` inside it as ``esper.kernels``) and runs
without Triton."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from packaging_support import build_wheel, source_packages, venv_with

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


# --- the wheel ----------------------------------------------------------------------------


def test_the_test_extra_holds_what_a_build_without_isolation_needs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    test_extra = set(PROJECT["optional-dependencies"]["test"])
    assert {"build", *pyproject["build-system"]["requires"]} <= test_extra


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def _dist_info(names: list[str]) -> str:
    (info,) = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
    return info


@pytest.mark.slow
def test_the_wheel_ships_every_package_under_esper_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    info = _dist_info(names)
    assert {name.split("/")[0] for name in names} == {"esper", info}  # no top-level kernels
    packages = {name.rsplit("/", 1)[0].replace("/", ".")
                for name in names if name.endswith("/__init__.py")}
    assert packages == source_packages()
    assert {"esper/kernels/ops.py", "esper/kernels/squared_norms.py", "esper/py.typed",
            "esper/kernels/py.typed", f"{info}/licenses/LICENSE"} <= set(names)


@pytest.mark.slow
def test_the_wheel_metadata_names_the_project_urls(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    text = archive.read(f"{_dist_info(archive.namelist())}/METADATA").decode()
    lines = HeaderParser().parsestr(text).get_all("Project-URL")
    urls = dict(line.split(", ", 1) for line in lines)
    assert urls == PROJECT["urls"]
    assert set(urls) == {"Homepage", "Source", "Issues", "Documentation"}
    assert all(url.startswith("https://github.com/esper-ml/esper") for url in urls.values())


IN_THE_VENV = r"""
import importlib.util, json, sys, tempfile
import torch
from torch import nn
import esper
import esper.kernels
from esper.kasmina import MorphogeneticModel

a, b = torch.arange(6.0).reshape(2, 3), torch.full((4,), 0.5)
net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
x = torch.randn(3, 4)
before = net(x)
model = esper.graft(net, ["1"], example_input=x)
model.germinate_seed("lowrank", "s1", slot="1")
with tempfile.TemporaryDirectory() as directory:
    esper.save(model, directory)
    fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    loaded = esper.load(fresh, directory)
print(json.dumps({
    "esper": esper.__file__, "kernels": esper.kernels.__file__,
    "norms": esper.kernels.squared_norms([a, b]).tolist(),
    "groups": esper.kernels.group_squared_norms([[a], [b], []]).tolist(),
    "backend": esper.kernels.resolve_backend("auto", torch.device("cpu")),
    "grafted": isinstance(model, MorphogeneticModel) and torch.equal(model(x), before),
    "loaded": torch.equal(loaded(x), model(x)),
    "top_level_kernels": importlib.util.find_spec("kernels") is not None,
    "triton": importlib.util.find_spec("triton") is not None or "triton" in sys.modules,
    "path": sys.path,
}))
"""


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_without_triton(
    wheel: Path, tmp_path: Path
) -> None:
    python = venv_with(wheel, tmp_path, leave_out={"triton"})
    # -I: no PYTHONPATH, no user site, no current folder: only the venv and the linked folder.
    run = subprocess.run([str(python), "-I", "-c", IN_THE_VENV], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    site = Path(report["esper"]).parents[1]
    assert site.is_relative_to(tmp_path / "venv") and ROOT not in map(Path, report["path"])
    assert Path(report["kernels"]) == site / "esper" / "kernels" / "__init__.py"
    assert report["norms"] == pytest.approx([55.0, 1.0], rel=1e-6)
    assert report["groups"] == pytest.approx([55.0, 1.0, 0.0], rel=1e-6)
    assert report["backend"] == "torch"
    assert report["grafted"] and report["loaded"]
    assert not report["top_level_kernels"] and not report["triton"]
