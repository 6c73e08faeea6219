"""Bad checkpoints: each is refused with a CheckpointError naming the file and the problem."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from checkpoint_support import grown_cnn, tamper

import esper
from esper.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

BIAS = "model/host.head.bias"  # 10 float32 values
MOMENTUM = "optim/momentum/host.head.bias"
JSON, WEIGHTS = "checkpoint.json", "weights.safetensors"


def _both(key: str, value: torch.Tensor) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """Replace a tensor in the file and the manifest alike (or add it)."""
    def document(d: dict[str, Any]) -> None:
        d["tensors"][key] = {"shape": list(value.shape), "dtype": str(value.dtype)[6:]}
    return {"tensors": lambda t: t.__setitem__(key, value), "document": document}


def _drop(key: str) -> dict[str, Callable[[dict[str, Any]], Any]]:
    return {"tensors": lambda t: t.pop(key), "document": lambda d: d["tensors"].pop(key)}


CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "missing tensor": ({"tensors": lambda t: t.pop(BIAS)}, WEIGHTS,
                       r"missing tensors \['model/host.head.bias'\] listed in checkpoint.json"),
    "unexpected tensor": ({"tensors": lambda t: t.__setitem__("model/x", torch.zeros(2))},
                          WEIGHTS, r"unexpected tensors \['model/x'\], not in checkpoint.json"),
    "shape file vs manifest": ({"tensors": lambda t: t.__setitem__(BIAS, torch.zeros(11))},
                               WEIGHTS, r"is float32 \[11\], checkpoint.json says float32 \[10\]"),
    "dtype file vs manifest": ({"tensors": lambda t: t.__setitem__(BIAS, t[BIAS].double())},
                               WEIGHTS, r"is float64 \[10\], checkpoint.json says float32 \[10\]"),
    "shape vs model": (_both(BIAS, torch.zeros(11)), WEIGHTS,
                       r"float32 \[11\] in the file, float32 \[10\] in the model"),
    "dtype vs model": (_both(BIAS, torch.zeros(10, dtype=torch.float64)), WEIGHTS,
                       r"float64 \[10\] in the file, float32 \[10\] in the model"),
    "tensor the model lacks": (_both("model/host.extra", torch.zeros(1)), WEIGHTS,
                               r"holds tensors \['host.extra'\] that are not in the model"),
    "tensor the file lacks": (_drop(BIAS), WEIGHTS,
                              r"lacks the model's tensors \['host.head.bias'\]"),
    "unknown blueprint": ({"document": lambda d: d["slots"]["mid"].update(blueprint_id="nope")},
                          JSON, r"slot 'mid': unknown cnn blueprint 'nope'"),
    "malformed slot state": ({"document": lambda d: d["slots"]["mid"].pop("epoch")},
                             JSON, r"slot 'mid': .*missing keys \['epoch'\]"),
    "slot states do not match slots": ({"document": lambda d: d["slots"].pop("late")}, JSON,
                                       r"slot states for \['early', 'mid'\], but the model's"),
    "future schema": ({"document": lambda d: d.update(schema_version=4)}, JSON,
                      r"schema version 4 was written by a newer Esper"),
    "schema not an int": ({"document": lambda d: d.update(schema_version="1")}, JSON,
                          r"schema_version must be an int >= 1, got '1'"),
    "no format key": ({"document": lambda d: d.pop("format")}, JSON,
                      r"not an Esper checkpoint \(format None"),
    "other format": ({"document": lambda d: d.update(format="pytorch")}, JSON,
                     r"not an Esper checkpoint \(format 'pytorch'"),
    "missing section": ({"document": lambda d: d.pop("tied")}, JSON,
                        r"missing sections \['tied'\]"),
    "section of the wrong type": ({"document": lambda d: d.update(trainer=[])}, JSON,
                                  r"section 'trainer' has the wrong type"),
    "unknown host kind": ({"document": lambda d: d["host"].update(kind="rnn")}, JSON,
                          r"host: unknown host kind 'rnn'"),
    "bad model config": ({"document": lambda d: d["model"].update(alpha_mode="odd")}, JSON,
                         r"model: alpha_mode must be one of"),
    "bad tied entry": ({"document": lambda d: d["tied"].update({"model/a": "model/b"})}, JSON,
                       r"tied tensor 'model/a' -> 'model/b'"),
    "optimizer names a missing parameter": (
        {"document": lambda d: d["optimizer"]["groups"]["host"].append("host.nope")}, JSON,
        r"optimizer group 'host' names parameter 'host.nope', which the model does not have"),
    "momentum missing": (_drop(MOMENTUM), JSON,
                         r"no momentum buffer for grouped parameters \['host.head.bias'\]"),
    "unknown optimizer": ({"document": lambda d: d["optimizer"].update(name="lion")}, JSON,
                          r"unknown optimizer 'lion'; known: \['sgd', 'adamw'\]"),
    "buffer of another optimizer": (_both("optim/exp_avg/host.head.bias", torch.zeros(10)), JSON,
                                    r"buffer kinds \['exp_avg'\] are not sgd's"),
    "momentum of the wrong shape": (_both(MOMENTUM, torch.zeros(3)), JSON,
                                    r"momentum of 'host.head.bias' is float32 \[3\], it "
                                    r"must be float32 \[10\]"),
    "momenta without an optimizer": ({"document": lambda d: d.update(optimizer=None)}, JSON,
                                     r"optimizer buffers are stored \(optim/...\) but"),
    "momentum outside any group": (_both("optim/momentum/host.x", torch.zeros(1)), JSON,
                                   r"momentum buffers \['host.x'\] belong to no optimizer group"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_is_refused(saved: Path, case: str) -> None:
    edits, file, message = CASES[case]
    tamper(saved, **edits)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(saved)
    assert str(saved / file) in str(caught.value)


def test_missing_directory_and_files(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "nowhere")
    (saved / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS}: missing \(checkpoint.json expects"):
        load_checkpoint(saved)
    (saved / JSON).unlink()
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(saved)


def test_truncated_corrupt_and_foreign_weights(saved: Path) -> None:
    weights = saved / WEIGHTS
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS}: \d+ bytes, .* expects \d+ \(trunc"):
        load_checkpoint(saved)
    weights.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS}: SHA-256 differs"):
        load_checkpoint(saved)
    garbage = b"\x80\x04 a pickle opcode, not a safetensors header"
    weights.write_bytes(garbage)
    tamper(saved, document=lambda d: d["weights"].update(
        bytes=len(garbage), sha256=hashlib.sha256(garbage).hexdigest()))
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS}: not a readable safetensors file"):
        load_checkpoint(saved)


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", r"not valid JSON"),
    ("[1, 2]", r"not an Esper checkpoint \(a JSON list, not an object\)"),
    ('{"format": "esper-checkpoint"}', r"schema_version must be an int"),
])
def test_json_that_is_not_ours(saved: Path, text: str, message: str) -> None:
    (saved / JSON).write_text(text)
    with pytest.raises(CheckpointError, match=rf"{JSON}: {message}"):
        load_checkpoint(saved)


def test_save_refuses_what_it_cannot_restore(tmp_path: Path) -> None:
    model, optimizer, _ = grown_cnn()
    target = tmp_path / "ckpt"
    with pytest.raises(CheckpointError, match="trainer_state is not JSON"):
        save_checkpoint(target, model=model, trainer_state={"when": object()})
    model.prune_seed(slot="mid")  # the optimizer still names the pruned seed's parameters
    with pytest.raises(CheckpointError, match=r"optimizer group 'mid' names parameter"):
        save_checkpoint(target, model=model, optimizer=optimizer)

    class Scaled(torch.nn.Module):  # a forward with a number among its arguments
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
            return self.lin(x) * scale

    grafted = esper.graft(Scaled(), ["lin"], example_input=(torch.randn(2, 4), 2.0))
    with pytest.raises(CheckpointError, match="example input that is not all tensors"):
        save_checkpoint(target, model=grafted)
    with pytest.raises(TypeError, match="MorphogeneticModel"):
        save_checkpoint(target, model=torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    assert not target.exists()  # nothing was written


def test_a_crash_while_saving_keeps_the_previous_checkpoint(saved: Path, monkeypatch) -> None:
    root = saved.parent
    before = load_checkpoint(root)

    def crash(tensors: dict[str, torch.Tensor], filename: str, **kwargs: Any) -> None:
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    model, _, _ = grown_cnn()
    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, model=model)
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", saved.name]  # no temp files
    after = load_checkpoint(root)
    assert after.trainer_state == before.trainer_state == {"epoch": 3}


def test_document_has_the_documented_layout(saved: Path) -> None:
    document = json.loads((saved / JSON).read_text())
    assert list(document) == ["format", "schema_version", "esper_version", "host", "model",
                              "slots", "optimizer", "trainer", "tensors", "tied", "weights",
                              "checksum"]
    assert document["host"]["kind"] == "cnn"
    assert document["host"]["memory_format"] == "channels_last"
    assert document["model"]["slots"] == ["early", "mid", "late"]
    assert document["slots"]["mid"]["blend_algorithm_id"] == "gated"
    assert set(document["optimizer"]["groups"]) == {"host", "early", "mid"}
    assert document["tensors"][BIAS] == {"shape": [10], "dtype": "float32"}
