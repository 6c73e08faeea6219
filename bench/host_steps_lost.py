"""Host updates a bad seed costs: one eager epoch on the bundled digits per case.

Run from the repository root::

    python bench/host_steps_lost.py

A seed that emits NaN (always) is planted in ``mid`` and put in TRAINING or
in BLENDING at alpha 0.3; a seed whose output is x1e4 is put in BLENDING.
Each case trains three epochs next to a run without the seed, and prints
the host updates skipped over them, whether every host BatchNorm statistic
is still finite, and the final validation accuracy of both runs. The script uses only API
that also existed before issue 10 (it measures the "before" column too).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esper.core.lifecycle import set_alpha
from esper.data import load_task
from esper.kasmina import blueprints, transition
from esper.leyline import SeedStage
from esper.nn.blueprints.registry import BlueprintSpec
from esper.tamiyo import ControllerConfig
from esper.tolaria.config import GrowConfig
from esper.tolaria.trainer import Trainer

EPOCHS = 3


class Scaled(nn.Module):
    """A 1x1 conv times ``scale`` (``nan`` for a NaN seed)."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return out * self.scale if self.training else out


def trainer(out: Path) -> tuple[Trainer, list[dict]]:
    config = GrowConfig(epochs=EPOCHS, out=out, compile=False, quiet=True,
                        controller=ControllerConfig(warmup_epochs=100), max_seeds=1,
                        slots=("mid",), batch_size=32)
    events: list[dict] = []
    return Trainer(config, load_task("digits"), sink=events.append), events


def run(scale: float | None, stage: SeedStage, out: Path) -> tuple[int, int, bool, float]:
    t, events = trainer(out)
    if scale is not None:
        blueprints.register(BlueprintSpec("bench_bad", "cnn", lambda c: Scaled(c, scale)),
                            replace=True)
        t.model.germinate_seed("bench_bad", "bad", slot="mid")
        slot = t.model.seed_slots["mid"]
        slot.state = transition(slot.state, SeedStage.TRAINING)
        if stage is SeedStage.BLENDING:
            slot.state = set_alpha(transition(slot.state, SeedStage.BLENDING), 0.3)
        t.optimizer = t.optimizer.synced(t.model)
    for _ in range(EPOCHS):
        record = t.run_epoch()
    skipped = sum(e["skipped_updates"].get("host", 0) for e in events if e["kind"] == "safety")
    steps = EPOCHS * (len(t.data.train[1]) // t.config.batch_size)
    finite = all(bool(b.isfinite().all()) for b in t.model.host.buffers()
                 if b.is_floating_point())
    return skipped, steps, finite, record.val_accuracy


def main() -> None:
    torch.set_num_threads(2)
    cases = [("NaN seed, TRAINING", float("nan"), SeedStage.TRAINING),
             ("NaN seed, BLENDING a=0.3", float("nan"), SeedStage.BLENDING),
             ("x1e4 seed, BLENDING a=0.3", 1e4, SeedStage.BLENDING)]
    with tempfile.TemporaryDirectory() as tmp:
        _, _, _, clean = run(None, SeedStage.TRAINING, Path(tmp) / "clean")
        print("| case | host updates skipped | host BN statistics finite | val acc | "
              "val acc without the seed |\n|---|---|---|---|---|")
        for i, (name, scale, stage) in enumerate(cases):
            skipped, steps, finite, acc = run(scale, stage, Path(tmp) / str(i))
            print(f"| {name} | {skipped} of {steps} | {'yes' if finite else 'no'} | "
                  f"{acc:.2f}% | {clean:.2f}% |")


if __name__ == "__main__":
    main()
