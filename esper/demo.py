"""A short, real demonstration: a small CNN trains while a seed grows in it.

Used by ``esper demo``. It drives the lifecycle by hand (the heuristic
controller and the full trainer are ``esper grow``): germinate, train behind
the host, blend, hold, fossilize, printing each epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import batches, load_task
from .leyline import QualityGates, SeedStage, SlotTelemetry, TaskConfig, is_blended
from .leyline import constants as C
from .nn.host import CNNHost
from .nn.model import MorphogeneticModel
from .tolaria.evaluate import Validation, validate


def _validation(model: MorphogeneticModel, x: torch.Tensor, y: torch.Tensor,
                probe_alpha: float) -> Validation:
    """The model's score; without the seed in ``mid`` once it can blend, with it probed in
    at ``probe_alpha`` while it trains behind the host (G2's evidence)."""
    stage = model.seed_slots["mid"].state.stage
    blended = ["mid"] if is_blended(stage) else []
    probed = {"mid": probe_alpha} if stage == SeedStage.TRAINING else {}
    return validate(model, x, y, blended, probed)


def run_lifecycle_demo(epochs: int = C.DEFAULT_DEMO_EPOCHS,
                       seed: int = C.DEFAULT_RUN_SEED) -> MorphogeneticModel:
    """Train on the bundled digits while one ``norm`` seed goes DORMANT -> FOSSILIZED."""
    torch.manual_seed(seed)
    data = load_task("digits", seed=seed)
    (x, y), (vx, vy) = data.train, data.val
    task = TaskConfig(max_epochs=epochs, blending_steps=3)
    gates = QualityGates(min_blending_epochs=2, min_fossilize_contribution=0.0)
    host = CNNHost(num_classes=data.num_classes, in_channels=data.in_channels or 1,
                   base_channels=16)
    model = MorphogeneticModel(host, slots=("mid",), task_config=task, gates=gates)
    slot = model.seed_slots["mid"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    print(f"{'epoch':>5}  {'val acc':>7}  {'stage':<11} {'alpha':>5}  note")
    for epoch in range(1, epochs + 1):
        if epoch == 2:
            slot.germinate("norm", "seed-1")
            optimizer.add_param_group({"params": list(slot.parameters())})
        for xb, yb in batches(x, y, 64, shuffle=True, generator=generator):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
        validation = _validation(model, vx, vy, gates.probe_alpha)
        accuracy = validation.accuracy
        note = ""
        if slot.state.has_seed:
            # The seed's gradient activity in the epoch's last backward pass (G2's ratio).
            gradients = slot.capture_gradient_telemetry().gradients
            telemetry = SlotTelemetry(
                accuracy, counterfactual_contribution=validation.counterfactuals().get("mid", 0.0),
                seed_gradient_norm_ratio=gradients.ratio,
                probe_loss_reduction=validation.probe_reductions().get("mid"))
            held = slot.state.stage == SeedStage.HOLDING
            slot.step_epoch(telemetry)
            if held and slot.state.stage == SeedStage.HOLDING:  # G5 needs an epoch in HOLDING
                note = slot.fossilize(telemetry).message
        print(f"{epoch:>5}  {accuracy:>6.1f}%  {slot.state.stage.name:<11} "
              f"{slot.state.alpha_value:>5.2f}  {note}")
    return model
