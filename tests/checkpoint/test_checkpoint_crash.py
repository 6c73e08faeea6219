"""Issue 11, defect 1: a crash or a full disk during a save never loses the run.

At 98a0a54 a save deleted ``checkpoint.json`` before writing the new weights
and there was one checkpoint: 6 of 9 kills in the save code, 8 of 8 kills in
the save window and 2 of 2 full disks left nothing to resume from.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from checkpoint_support import grown_cnn

from esper.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from esper.checkpoint.layout import current

HERE = Path(__file__).parent


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_checkpoint(path).model.state_dict().items()
            if isinstance(v, torch.Tensor)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_kill_at_every_file_system_step_of_a_save_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL before each traced call of a save (and halfway through the weights):
    the root loads the old checkpoint until the pointer switch, the new one after,
    and the next save cleans up and succeeds."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    done = subprocess.run([sys.executable, str(HERE / "kill_saves.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    steps, killed = report["steps"], report["killed"]
    assert "save_file" in steps and "replace" in steps and len(steps) >= 8
    a, b = weights_of(tmp_path / "ref-a"), weights_of(tmp_path / "ref-b")
    epochs = []
    for k in range(1, len(steps) + 1):
        root = tmp_path / f"k{k}"
        assert killed[str(k)], f"the save was not killed at step {k} ({steps[k - 1]})"
        loaded = load_checkpoint(root)
        epoch = loaded.trainer_state["epoch"]
        assert same(weights_of(root), a if epoch == 1 else b), k
        epochs.append(epoch)
        save_checkpoint(root, model=loaded.model, trainer_state={"epoch": 3})
        assert load_checkpoint(root).trainer_state == {"epoch": 3}
        assert not [p.name for p in root.iterdir() if p.name.startswith(".tmp-")], k
    # Old until the pointer is replaced, new from then on: never neither, never mixed.
    switch = steps.index("replace") + 1  # the kill *before* that call still sees the old
    assert epochs == [1] * switch + [2] * (len(steps) - switch), (steps, epochs)


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     safetensors.SafetensorError("No space left on device")])
def test_a_full_disk_keeps_the_previous_checkpoint_and_the_next_save_recovers(
        tmp_path, monkeypatch, failure):
    model, optimizer, _ = grown_cnn()
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, trainer_state={"epoch": 1})
    real = safetensors.torch.save_file

    def full(tensors, filename, **kwargs):
        Path(filename).write_bytes(b"\0" * 64)
        raise failure

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(CheckpointError, match=r"could not be written .*ckpt-000001 is still "
                                              r"the current one: free space"):
        save_checkpoint(tmp_path, model=model, optimizer=optimizer, trainer_state={"epoch": 2})
    assert load_checkpoint(tmp_path).trainer_state == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-000001"]
    monkeypatch.setattr(safetensors.torch, "save_file", real)  # space is back
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, trainer_state={"epoch": 2})
    assert load_checkpoint(tmp_path).trainer_state == {"epoch": 2}


def test_a_full_disk_at_the_pointer_switch_keeps_the_previous_current(tmp_path, monkeypatch):
    model, _, _ = grown_cnn()
    save_checkpoint(tmp_path, model=model, trainer_state={"epoch": 1})
    real = os.replace

    def full(source, target, *args, **kwargs):
        if Path(target).name == "LATEST":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(CheckpointError, match="ckpt-000001 is still the current one"):
        save_checkpoint(tmp_path, model=model, trainer_state={"epoch": 2})
    assert load_checkpoint(tmp_path).trainer_state == {"epoch": 1}
    monkeypatch.setattr(os, "replace", real)
    save_checkpoint(tmp_path, model=model, trainer_state={"epoch": 2})
    assert current(tmp_path).name == "ckpt-000002"  # the orphaned version was cleaned
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-000001", "ckpt-000002"]


def test_only_the_last_versions_are_kept(tmp_path):
    model, _, _ = grown_cnn()
    for epoch in range(1, 5):
        save_checkpoint(tmp_path, model=model, trainer_state={"epoch": epoch}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-000003", "ckpt-000004"]
    assert load_checkpoint(tmp_path).trainer_state == {"epoch": 4}
    assert load_checkpoint(tmp_path / "ckpt-000003").trainer_state == {"epoch": 3}
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        save_checkpoint(tmp_path, model=model, keep=0)


def test_leftovers_of_an_interrupted_save_are_removed_by_the_next(tmp_path):
    model, _, _ = grown_cnn()
    save_checkpoint(tmp_path, model=model, trainer_state={"epoch": 1})
    (tmp_path / ".tmp-abandoned").mkdir()
    (tmp_path / ".tmp-abandoned" / "weights.safetensors").write_bytes(b"partial")
    (tmp_path / ".tmp-LATEST").write_text("ckpt-000009\n")
    (tmp_path / "ckpt-000009").mkdir()  # renamed into place, never made current
    assert load_checkpoint(tmp_path).trainer_state == {"epoch": 1}
    save_checkpoint(tmp_path, model=model, trainer_state={"epoch": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-000001", "ckpt-000002"]


def test_an_unversioned_checkpoint_loads_and_the_next_save_replaces_it(tmp_path):
    """A root written before versions existed: the two files in the root itself."""
    model, _, _ = grown_cnn()
    save_checkpoint(tmp_path / "new", model=model, trainer_state={"epoch": 1})
    version = current(tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    for name in ("checkpoint.json", "weights.safetensors"):
        (old / name).write_bytes((version / name).read_bytes())
    assert load_checkpoint(old).trainer_state == {"epoch": 1}
    save_checkpoint(old, model=model, trainer_state={"epoch": 2})
    assert sorted(p.name for p in old.iterdir()) == ["LATEST", "ckpt-000001"]
    assert load_checkpoint(old).trainer_state == {"epoch": 2}


def test_a_first_save_that_never_finished_says_so(tmp_path):
    (tmp_path / ".tmp-x1").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint: the first save into it "
                                              "did not finish"):
        load_checkpoint(tmp_path)
    (tmp_path / ".tmp-x1").rmdir()
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(("pointer", "message"), [
    ("../../etc", "not a checkpoint version"),
    ("ckpt-000007", "names ckpt-000007, which is not in"),
    ("\udcff", "unreadable|not a checkpoint version"),
])
def test_a_bad_pointer_is_a_clear_error(tmp_path, pointer, message):
    model, _, _ = grown_cnn()
    save_checkpoint(tmp_path, model=model)
    (tmp_path / "LATEST").write_bytes(pointer.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)
