"""Helpers of the compile-contract tests: tiny models, a lifecycle walk, the step's inputs.

The training step under test is the product's, :func:`esper.tolaria.step.train_step`,
compiled by :func:`esper.tolaria.compiled.build_step` as ``esper grow`` compiles it.

Models are tiny (a 4-channel CNN on 8x8 images, an 8-wide decoder on 8 tokens):
compile time, not run time, is what these tests pay for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from esper.kasmina import SlotState, fossilize, step
from esper.leyline import SeedStage, SlotTelemetry, TaskConfig
from esper.nn.host import CNNHost, TransformerHost
from esper.nn.model import MorphogeneticModel
from esper.nn.slot import SeedSlot
from esper.optim import OptimizerState, SGDConfig
from esper.tolaria.inputs import StepInputs

SLOTS = ("early", "mid", "late")
SEED_SLOT = "mid"
VOCAB = 16
# Telemetry that passes every gate on time: accuracy rises, the seed's gradient is healthy.
GOOD_RATIO = 0.5
# An epoch in HOLDING at alpha 1 with this reading validates the seed for G5.
FOSSILIZE_TELEMETRY = SlotTelemetry(99.0, counterfactual_contribution=2.0)

LR = 0.1


@dataclass
class Tiny:
    """A small model, one batch for it, and its loss."""

    model: MorphogeneticModel
    x: Tensor
    y: Tensor

    def loss(self, logits: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, -2), self.y.flatten())

    @property
    def slot(self) -> SeedSlot:
        return self.model.seed_slots[SEED_SLOT]  # type: ignore[return-value]

    def params(self) -> dict[str, Tensor]:
        """Detached copies of the parameters: the functional step's own."""
        return {name: p.detach().clone() for name, p in self.model.named_parameters()}

    def buffers(self) -> dict[str, Tensor]:
        return dict(self.model.named_buffers())


def tiny_host(topology: str) -> torch.nn.Module:
    """A host small enough to compile in about a second."""
    if topology == "cnn":
        return CNNHost(base_channels=4)
    return TransformerHost(vocab_size=VOCAB, n_embd=8, n_head=2, n_layer=3, block_size=8)


def tiny_batch(topology: str) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    if topology == "cnn":
        return (torch.randn(4, 3, 8, 8, generator=generator),
                torch.randint(0, 10, (4,), generator=generator))
    tokens = torch.randint(0, VOCAB, (2, 9), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


def build_tiny(topology: str, *, germinate: bool = True) -> Tiny:
    """Three dormant slots, and a ``norm`` seed germinated in ``mid`` unless told otherwise."""
    torch.manual_seed(0)
    task = TaskConfig(topology=topology, max_epochs=5, embargo_epochs=1)  # type: ignore[arg-type]
    model = MorphogeneticModel(tiny_host(topology), slots=SLOTS, task_config=task)
    if germinate:
        model.germinate_seed("norm", "seed-1", slot=SEED_SLOT)
    return Tiny(model, *tiny_batch(topology))


def telemetry(epoch: int) -> SlotTelemetry:
    """Passing telemetry for epoch ``epoch``: one accuracy point better each epoch."""
    return SlotTelemetry(50.0 + epoch, seed_gradient_norm_ratio=GOOD_RATIO,
                         probe_loss_reduction=0.01)


def lifecycle_states(germinated: SlotState) -> list[SlotState]:
    """Every state of a successful run: GERMINATED, each ramp alpha, HOLDING at 1.0, FOSSILIZED.

    Built by :func:`esper.kasmina.step` with passing telemetry, as a trainer
    would, then, once alpha reached 1, one more epoch in HOLDING that records
    the counterfactual G5 judges, and :func:`esper.kasmina.fossilize`.
    """
    assert germinated.stage == SeedStage.GERMINATED
    states, state = [germinated], germinated
    for epoch in range(1, 100):
        state = step(state, telemetry(epoch))
        states.append(state)
        if state.stage == SeedStage.HOLDING and float(state.alpha) == 1.0:
            break
    state = step(state, FOSSILIZE_TELEMETRY)
    states.append(state)
    state, result = fossilize(state, FOSSILIZE_TELEMETRY)
    assert result.passed, result
    states.append(state)
    stages = {s.stage for s in states}
    assert stages == {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING,
                      SeedStage.HOLDING, SeedStage.FOSSILIZED}, stages
    return states


def state_in(stage: SeedStage, germinated: SlotState) -> SlotState:
    """The first state of a successful run that is in ``stage``."""
    return next(s for s in lifecycle_states(germinated) if s.stage == stage)


def step_inputs(tiny: Tiny, *, own_buffers: bool = False) -> StepInputs:
    """The inputs of the product step (:func:`esper.tolaria.step.train_step`) for ``tiny``.

    Copies of the model's parameters (the model's own weights stay as built),
    fresh momenta and learning rates (``lr`` :data:`LR`), the slots' own
    states; the model's buffers, or copies of them with ``own_buffers``.
    """
    inputs = StepInputs.of(tiny.model, OptimizerState(SGDConfig(lr=LR)).synced(tiny.model))
    buffers = {n: b.clone() for n, b in inputs.buffers.items()} if own_buffers else inputs.buffers
    return replace(inputs, params=tiny.params(), buffers=buffers)


def make_eval_forward(tiny: Tiny) -> Callable[..., Tensor]:
    """``forward(params, buffers, states, x) -> logits``, the functional evaluation forward."""
    model = tiny.model

    def evaluate(params: dict[str, Tensor], buffers: dict[str, Tensor],
                 states: dict[str, SlotState], x: Tensor) -> Tensor:
        return model.functional_forward(params, states, x, buffers)

    return evaluate


def randomize_seed(tiny: Tiny) -> None:
    """Give the seed non-zero weights so that its output differs from its input."""
    generator = torch.Generator().manual_seed(2)
    seed = tiny.slot.seed
    assert seed is not None
    with torch.no_grad():
        for p in seed.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))


def walk_slot(slot: SeedSlot, on_state: Callable[[], None]) -> list[SeedStage]:
    """Drive a GERMINATED slot to FOSSILIZED through its own lifecycle calls.

    ``advance_stage`` to TRAINING, then ``step_epoch`` with passing telemetry
    until alpha reaches 1 in HOLDING, one more epoch there (the counterfactual
    G5 judges), then ``fossilize``; ``on_state()`` runs
    once in every state on the way, the first and the last included. Returns
    the stages visited.
    """
    visited = [slot.state.stage]
    on_state()
    result = slot.advance_stage(SeedStage.TRAINING, telemetry(0))
    assert result.passed, result
    for epoch in range(1, 100):
        visited.append(slot.state.stage)
        on_state()
        if slot.state.stage == SeedStage.HOLDING and float(slot.state.alpha) == 1.0:
            break
        slot.step_epoch(telemetry(epoch))
    slot.step_epoch(FOSSILIZE_TELEMETRY)
    visited.append(slot.state.stage)
    on_state()
    result = slot.fossilize(FOSSILIZE_TELEMETRY)
    assert result.passed, result
    visited.append(slot.state.stage)
    on_state()
    return visited
