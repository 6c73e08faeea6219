"""Saving and loading grown models: identical outputs, states, momenta and layouts."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from checkpoint_support import grown_cnn, grown_transformer, tamper

import esper
from esper.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from esper.checkpoint.layout import current
from esper.leyline import SeedStage
from esper.optim import AdamWConfig, OptimizerState, SGDConfig

BUILDERS = {"cnn": grown_cnn, "transformer": grown_transformer}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_round_trip_restores_everything(tmp_path: Path, kind: str) -> None:
    model, optimizer, x = BUILDERS[kind]()
    trainer = {"epoch": 7, "losses": [1.5, 0.25], "note": None}
    path = save_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer,
                           trainer_state=trainer)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, Checkpoint)
    assert (loaded.esper_version, loaded.schema_version) == (esper.__version__, 2)
    assert loaded.trainer_state == trainer
    assert loaded.model.slot_states() == model.slot_states()
    model.eval()
    loaded.model.eval()
    assert torch.equal(loaded.model(x), model(x))
    assert loaded.optimizer is not None
    assert loaded.optimizer.config == optimizer.config
    assert dict(loaded.optimizer.groups) == dict(optimizer.groups)
    assert list(loaded.optimizer.buffers["momentum"]) == list(optimizer.buffers["momentum"])
    for name, buffer in optimizer.buffers["momentum"].items():
        assert torch.equal(loaded.optimizer.buffers["momentum"][name], buffer), name


def test_grown_cnn_covers_the_stages_it_claims() -> None:
    model, _, _ = grown_cnn()
    stages = {name: s.stage for name, s in model.slot_states().items()}
    assert stages == {"early": SeedStage.FOSSILIZED, "mid": SeedStage.BLENDING,
                      "late": SeedStage.PRUNED}
    assert model.seed_slots["mid"].gate is not None


def test_layouts_match_the_saved_model_channels_last_seeds_included(tmp_path: Path) -> None:
    model, optimizer, _ = grown_cnn()
    loaded = load_checkpoint(save_checkpoint(tmp_path, model=model, optimizer=optimizer))
    original = dict(model.named_parameters())
    channels_last = [n for n, p in original.items() if not p.is_contiguous()
                     and p.is_contiguous(memory_format=torch.channels_last)]
    assert "seed_slots.early.seed.conv_in.weight" in channels_last
    for name, param in loaded.model.named_parameters():
        assert param.stride() == original[name].stride(), name
        assert loaded.optimizer.buffers["momentum"][name].stride() == param.stride(), name


def test_files_are_json_and_pure_safetensors(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == ["checkpoint.json", "weights.safetensors"]
    document = json.loads((saved / "checkpoint.json").read_text())
    assert document["format"] == "esper-checkpoint" and document["schema_version"] == 2
    raw = (saved / "weights.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    assert 8 + length + max(ends) == len(raw)  # header + tensor bytes, nothing else
    assert set(header) - {"__metadata__"} == set(document["tensors"])
    assert not any(key.endswith("_extra_state") for key in header)


def test_tied_weights_are_stored_once(tmp_path: Path) -> None:
    model, optimizer, _ = grown_transformer()
    path = save_checkpoint(tmp_path, model=model, optimizer=optimizer)
    document = json.loads((current(path) / "checkpoint.json").read_text())
    assert document["tied"] == {"model/host.lm_head.weight": "model/host.wte.weight"}
    assert "model/host.lm_head.weight" not in document["tensors"]
    host = load_checkpoint(path).model.host
    assert host.lm_head.weight is host.wte.weight


def test_loading_never_unpickles_and_reads_safetensors(saved: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during load_checkpoint")

    for owner, name in ((torch, "load"), (torch.serialization, "load"), (pickle, "load"),
                        (pickle, "loads")):
        monkeypatch.setattr(owner, name, refuse)
    calls = []
    real = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    load_checkpoint(saved)
    assert len(calls) == 1


def test_loading_leaves_the_callers_rng_alone(saved: Path) -> None:
    before = torch.get_rng_state()
    load_checkpoint(saved)
    assert torch.equal(torch.get_rng_state(), before)


def test_resaving_a_loaded_checkpoint_is_byte_identical(saved: Path, tmp_path: Path) -> None:
    loaded = load_checkpoint(saved)
    again = save_checkpoint(tmp_path / "again", model=loaded.model, optimizer=loaded.optimizer,
                            trainer_state=loaded.trainer_state)
    for name in ("weights.safetensors", "checkpoint.json"):
        assert (current(again) / name).read_bytes() == (saved / name).read_bytes(), name


def test_saving_over_a_checkpoint_makes_a_new_current_version(saved: Path) -> None:
    root = saved.parent
    model, _, _ = grown_transformer()
    save_checkpoint(root, model=model)
    loaded = load_checkpoint(root)
    assert loaded.model.host.topology == "transformer"
    assert loaded.optimizer is None and loaded.trainer_state == {}
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "ckpt-000001", "ckpt-000002"]
    assert load_checkpoint(saved).trainer_state == {"epoch": 3}  # the previous version


def test_checkpoint_from_before_holding_validation_loads(saved: Path) -> None:
    """Written before ``min_holding_epochs`` and ``holding_contribution`` existed: defaults."""
    expected = load_checkpoint(saved).model.slot_states()
    path = saved / "checkpoint.json"
    document = json.loads(path.read_text())
    document["schema_version"] = 1  # as written then: no checksum either
    del document["checksum"]
    del document["model"]["gates"]["min_holding_epochs"]
    for state in document["slots"].values():
        del state["gates"]["min_holding_epochs"], state["metrics"]["holding_contribution"]
    path.write_text(json.dumps(document))
    loaded = load_checkpoint(saved)
    assert loaded.model.slot_states() == expected
    assert all(s.gates.min_holding_epochs == 1 and s.metrics.holding_contribution is None
               for s in loaded.model.slot_states().values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_a_model_in_another_float_dtype_round_trips_bit_identically(
        tmp_path: Path, kind: str, dtype: torch.dtype) -> None:
    model, _, x = BUILDERS[kind]()
    model = model.to(dtype)
    optimizer = OptimizerState(SGDConfig(lr=0.1, seed_lr=0.01)).synced(model)
    for buffer in optimizer.buffers["momentum"].values():
        buffer.normal_()
    loaded = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model=model,
                                             optimizer=optimizer))
    saved, restored = model.state_dict(), loaded.model.state_dict()
    assert restored.keys() == saved.keys()
    floats = 0
    for key, value in saved.items():
        if isinstance(value, torch.Tensor):
            assert restored[key].dtype == value.dtype, key
            assert torch.equal(restored[key].reshape(-1).view(torch.uint8),
                               value.reshape(-1).view(torch.uint8)), key
            floats += value.dtype == dtype
    assert floats > 10
    assert {p.dtype for p in loaded.model.parameters()} == {dtype}
    assert loaded.optimizer is not None
    for name, buffer in optimizer.buffers["momentum"].items():
        stored = loaded.optimizer.buffers["momentum"][name]
        assert stored.dtype == dtype and torch.equal(stored, buffer), name
    model.eval()
    loaded.model.eval()
    x = x if kind == "transformer" else x.to(dtype)
    assert torch.equal(loaded.model(x), model(x))


def test_adamw_state_round_trips_bit_for_bit(tmp_path: Path) -> None:
    """Every AdamW buffer (the step count a 0-d float32 one) comes back as saved."""
    model, _, _ = BUILDERS["cnn"]()
    optimizer = OptimizerState(AdamWConfig(lr=3e-4, seed_lr=1e-4)).synced(model)
    for kind, owned in optimizer.buffers.items():
        for buffer in owned.values():
            buffer.copy_(torch.rand_like(buffer) * (7 if kind == "step" else 1))
    path = save_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer)
    loaded = load_checkpoint(path).optimizer
    assert loaded is not None and loaded.config == optimizer.config
    assert loaded.groups == optimizer.groups
    for kind, owned in optimizer.buffers.items():
        assert list(loaded.buffers[kind]) == list(owned), kind
        for name, buffer in owned.items():
            assert torch.equal(loaded.buffers[kind][name], buffer), (kind, name)


def test_a_checkpoint_written_before_adamw_loads_its_momenta(tmp_path: Path) -> None:
    """The older layout (no optimizer name, momenta under ``optim/<parameter>``) still loads."""
    model, optimizer, _ = BUILDERS["cnn"]()
    path = save_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer)
    prefix = "optim/momentum/"

    def old_keys(tensors: dict[str, torch.Tensor]) -> None:
        for key in [k for k in tensors if k.startswith(prefix)]:
            tensors["optim/" + key.removeprefix(prefix)] = tensors.pop(key)

    def old_document(document: dict) -> None:
        del document["optimizer"]["name"]
        document["tensors"] = {("optim/" + k.removeprefix(prefix) if k.startswith(prefix)
                                else k): v for k, v in document["tensors"].items()}

    version = current(path)
    assert version is not None
    tamper(version, tensors=old_keys, document=old_document)
    loaded = load_checkpoint(path).optimizer
    assert loaded is not None and isinstance(loaded.config, SGDConfig)
    momenta = optimizer.buffers["momentum"]
    assert list(loaded.buffers["momentum"]) == list(momenta)
    assert all(torch.equal(loaded.buffers["momentum"][n], b) for n, b in momenta.items())
