"""Helpers of the checkpoint tests: grown models, and tampering with a saved checkpoint."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from esper.checkpoint.format import document_checksum
from esper.kasmina import set_alpha, transition
from esper.leyline import QualityGates, SeedStage, TaskConfig
from esper.nn.host import CNNHost, TransformerHost
from esper.nn.model import MorphogeneticModel
from esper.optim import OptimizerState, SGDConfig

PATH = (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)


def walk(model: MorphogeneticModel, slot: str, until: SeedStage) -> None:
    for stage in PATH[: PATH.index(until) + 1]:
        model.seed_slots[slot].state = transition(model.seed_slots[slot].state, stage)


def _grown(model: MorphogeneticModel, sample: torch.Tensor) -> tuple[MorphogeneticModel,
                                                                     OptimizerState]:
    with torch.no_grad():  # seeds start near the identity: make every weight matter
        for p in model.get_seed_parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.train()
    model(sample)  # moves BatchNorm statistics
    optimizer = OptimizerState(SGDConfig(lr=0.1, seed_lr=0.01)).synced(model)
    for buffer in optimizer.buffers["momentum"].values():
        buffer.normal_()  # in place: the layout stays the parameter's
    return model, optimizer


def grown_cnn() -> tuple[MorphogeneticModel, OptimizerState, torch.Tensor]:
    """A channels_last CNN: FOSSILIZED, gated BLENDING at alpha 0.6, and a PRUNED slot."""
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(base_channels=4), slots=("early", "mid", "late"),
                               task_config=TaskConfig(max_epochs=7), gates=QualityGates(
                                   min_blending_epochs=2))
    model.germinate_seed("conv_light", "s1", slot="early")
    walk(model, "early", SeedStage.FOSSILIZED)
    model.germinate_seed("depthwise", "s2", slot="mid", blend_algorithm_id="gated")
    walk(model, "mid", SeedStage.BLENDING)
    model.seed_slots["mid"].state = set_alpha(model.seed_slots["mid"].state, 0.6)
    model.germinate_seed("norm", "s3", slot="late")
    model.prune_seed(slot="late", reason="test")
    x = torch.randn(4, 3, 16, 16)
    return *_grown(model, x), x


def grown_transformer() -> tuple[MorphogeneticModel, OptimizerState, torch.Tensor]:
    """A tied-weight decoder with per-channel alpha: TRAINING, gated HOLDING and DORMANT."""
    torch.manual_seed(0)
    host = TransformerHost(vocab_size=32, n_embd=16, n_head=2, n_layer=3, block_size=8)
    model = MorphogeneticModel(host, slots=("early", "mid", "late"),
                               task_config=TaskConfig(topology="transformer"), alpha_mode="channel")
    model.germinate_seed("lora", "t1", slot="early")
    walk(model, "early", SeedStage.TRAINING)
    model.germinate_seed("attention", "t2", slot="mid", blend_algorithm_id="gated")
    walk(model, "mid", SeedStage.HOLDING)
    model.seed_slots["mid"].state = set_alpha(model.seed_slots["mid"].state,
                                              torch.linspace(0.1, 0.9, 16))
    x = torch.randint(0, 32, (2, 8))
    return *_grown(model, x), x


def tamper(directory: Path, *, tensors: Callable[[dict[str, torch.Tensor]], Any] | None = None,
           document: Callable[[dict[str, Any]], Any] | None = None) -> None:
    """Edit a saved checkpoint and re-stamp the weights' size and digest and the document's
    checksum (a buggy writer: every check below the checksum still has to catch it)."""
    weights, doc_path = directory / "weights.safetensors", directory / "checkpoint.json"
    data = json.loads(doc_path.read_text())
    if tensors is not None:
        stored = safetensors.torch.load_file(weights)
        tensors(stored)
        safetensors.torch.save_file(stored, weights)
        data["weights"].update(bytes=weights.stat().st_size,
                               sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    if document is not None:
        document(data)
    if "checksum" in data:
        data["checksum"] = document_checksum(data)
    doc_path.write_text(json.dumps(data))
