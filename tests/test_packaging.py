"""Packaging: a range for torch in the metadata, the exact tested pin in constraints.txt."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.version import Version

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
