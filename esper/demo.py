"""A short, real demonstration: a small CNN trains while a seed grows in it.

Used by ``esper demo``. It drives the lifecycle by hand (the heuristic
controller and the full trainer are ``esper grow``): germinate, train behind
the host, blend, hold, fossilize, printing each epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import batches, load_task
from .leyline import QualityGates, SeedStage, SlotTelemetry, TaskConfig
from .nn.host import CNNHost
from .nn.model import MorphogeneticModel
from .tolaria.evaluate import probe_loss_reduction, score, scores_with


def _accuracy(model: MorphogeneticModel, x: torch.Tensor, y: torch.Tensor,
              alpha_overrides: dict[str, float] | None = None) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(x, alpha_overrides=alpha_overrides)
    model.train()
    return 100.0 * float((logits.argmax(1) == y).float().mean())


def _gradient_ratio(model: MorphogeneticModel, slot: str) -> float:
    """Parameter-normalised seed/host gradient-norm ratio of the last backward pass."""
    def norm_and_count(params: list[torch.nn.Parameter]) -> tuple[float, int]:
        grads = [p.grad for p in params if p.grad is not None]
        norm = float(torch.stack([g.norm() for g in grads]).norm()) if grads else 0.0
        return norm, sum(p.numel() for p in params)

    seed_norm, seed_count = norm_and_count(list(model.get_seed_parameters(slot)))
    host_norm, host_count = norm_and_count(list(model.get_host_parameters()))
    if host_norm < 1e-12 or seed_count == 0:
        return 0.0
    return seed_norm / host_norm * (host_count / seed_count) ** 0.5


def run_lifecycle_demo(epochs: int = 12, seed: int = 0) -> MorphogeneticModel:
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
        accuracy = _accuracy(model, vx, vy)
        note = ""
        if slot.state.has_seed:
            without = _accuracy(model, vx, vy, alpha_overrides={"mid": 0.0})
            probe = None
            if slot.state.stage == SeedStage.TRAINING:  # G2 judges the seed blended in a little
                probed = scores_with(model, vx, vy, {"mid": gates.probe_alpha})["mid"]
                probe = probe_loss_reduction(score(model, vx, vy), probed)
            telemetry = SlotTelemetry(accuracy, counterfactual_contribution=accuracy - without,
                                      seed_gradient_norm_ratio=_gradient_ratio(model, "mid"),
                                      probe_loss_reduction=probe)
            held = slot.state.stage == SeedStage.HOLDING
            slot.step_epoch(telemetry)
            if held and slot.state.stage == SeedStage.HOLDING:  # G5 needs an epoch in HOLDING
                note = slot.fossilize(telemetry).message
        print(f"{epoch:>5}  {accuracy:>6.1f}%  {slot.state.stage.name:<11} "
              f"{slot.state.alpha_value:>5.2f}  {note}")
    return model
