"""Fixtures of the checkpoint tests (helpers live in ``checkpoint_support``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from checkpoint_support import grown_cnn

from esper.checkpoint import save_checkpoint
from esper.checkpoint.layout import current


@pytest.fixture(scope="session")
def _pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, optimizer, _ = grown_cnn()
    return save_checkpoint(tmp_path_factory.mktemp("pristine") / "ckpt", model=model,
                           optimizer=optimizer, trainer_state={"epoch": 3})


@pytest.fixture
def saved(_pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of a saved grown CNN with optimizer and trainer state: the directory
    of its one version, which holds the two files (and loads by itself)."""
    root = Path(shutil.copytree(_pristine, tmp_path / "ckpt"))
    version = current(root)
    assert version is not None
    return version
