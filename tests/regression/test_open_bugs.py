"""The two open bugs of the earlier implementation, reproduced in this API.

``spec/bug-gradient-telemetry-segfault.md``: gradient telemetry on a ``norm``
seed in TRAINING crashed the process (exit 139). Each scenario runs in a
subprocess so a native crash fails the test instead of killing the run.

``spec/bug-isolation-false-violations.md``: ordinary host gradients were
counted as isolation violations.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from esper.kasmina import transition
from esper.leyline import SeedStage
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel

SEGFAULT_SCRIPT = """
import torch
from esper.kasmina import transition
from esper.nn.host import CNNHost
from esper.nn.model import MorphogeneticModel
from esper.leyline import SeedStage

torch.manual_seed(0)
x = torch.randn(4, 3, 32, 32)
labels = torch.randint(0, 10, (4,))
model = MorphogeneticModel(CNNHost(num_classes=10, memory_format={memory_format}),
                           device="cpu", slots=["mid"])
model.germinate_seed("norm", "seed-1", slot="mid")
slot = model.seed_slots["mid"]
{setup}
slot.state = transition(slot.state, SeedStage.TRAINING)
forward = {forward}
out = forward(x)
loss = torch.nn.functional.cross_entropy(out, labels)
loss.backward()
{after_backward}
report = slot.capture_gradient_telemetry()
probe = model.probe_isolation(x)
metrics = slot.state.metrics
assert metrics.seed_gradient_norm_ratio is not None and metrics.seed_gradient_norm_ratio > 0
assert metrics.isolation_violations == 0 and not probe["mid"].violated
print("done", metrics.isolation_violations, metrics.seed_gradient_norm_ratio)
"""

REGERMINATE = """
model.prune_seed(slot="mid", reason="test")
for _ in range(8):
    model.step_epoch({"mid": __import__("esper.leyline", fromlist=["x"]).SlotTelemetry(1.0)})
assert slot.state.stage == SeedStage.DORMANT
model.germinate_seed("norm", "seed-2", slot="mid")
"""

SCENARIOS = {
    "as_reported_channels_last": dict(),
    "contiguous_host": dict(memory_format="torch.contiguous_format"),
    "some_gradients_none": dict(after_backward="next(model.host.parameters()).grad = None"),
    "frozen_host": dict(setup="model.host.requires_grad_(False)"),
    "after_prune_and_regermination": dict(setup=REGERMINATE),
    "under_torch_compile": dict(
        forward="torch.compile(model, backend='aot_eager', fullgraph=True)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_gradient_telemetry_never_crashes(name):
    options = {"memory_format": "torch.channels_last", "setup": "", "forward": "model",
               "after_backward": "", **SCENARIOS[name]}
    if name == "frozen_host":  # no host gradient at all: the ratio is 0, not a crash
        options["after_backward"] = ""
    script = textwrap.dedent(SEGFAULT_SCRIPT.format(**options))
    if name == "frozen_host":
        script = script.replace("metrics.seed_gradient_norm_ratio > 0",
                                "metrics.seed_gradient_norm_ratio == 0")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr[-3000:]}"
    assert run.stdout.startswith("done 0")


def test_host_gradients_are_not_isolation_violations():
    model = MorphogeneticModel(CNNHost(num_classes=10, base_channels=8), slots=["mid"])
    model.germinate_seed("norm", "seed-iso", slot="mid")
    slot = model.seed_slots["mid"]
    slot.state = transition(slot.state, SeedStage.TRAINING)
    x = torch.randn(4, 3, 32, 32)
    for _ in range(20):  # the report saw the G2 limit hit after ~11 captures
        for p in model.host.parameters():
            p.grad = torch.ones_like(p) * 0.01
        for p in slot.seed.parameters():
            p.grad = torch.ones_like(p) * 0.02
        slot.capture_gradient_telemetry()
        model.probe_isolation(x)
    assert slot.state.metrics.isolation_violations == 0
    assert slot.state.metrics.seed_gradient_norm_ratio > 0
