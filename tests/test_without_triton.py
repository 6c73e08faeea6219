"""Esper imports and trains where Triton is not installed (issue 12: optional Triton).

The subprocess hides Triton from the import system before anything imports
it, then imports every package of Esper, runs the multi-tensor norm on the
CPU (the torch path) and one eager training step, and checks that asking for
the Triton backend says Triton is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import importlib.abc, sys

class NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, NoTriton())

import torch
import importlib, pkgutil
import esper, esper.kasmina
# Importing __main__ runs the CLI; esper.kernels.squared_norms is the Triton kernels themselves.
modules = [m.name for m in pkgutil.walk_packages(esper.__path__, "esper.")
           if m.name not in {"esper.__main__", "esper.kernels.squared_norms"}]
for name in modules:
    importlib.import_module(name)
assert {"esper.core.lifecycle", "esper.nn.slot", "esper.tolaria.trainer",
        "esper.kernels.ops"} <= set(modules)
from esper import kernels
assert "triton" not in sys.modules

tensors = [torch.randn(5, 3), torch.randn(7)]
got = kernels.squared_norms(tensors)
want = torch.stack([t.double().square().sum() for t in tensors]).float()
assert torch.allclose(got, want), (got, want)
assert kernels.resolve_backend("auto", torch.device("cpu")) == "torch"
try:
    kernels.squared_norms(tensors, backend="triton")
except RuntimeError as error:
    assert "Triton, which is not installed" in str(error), error
else:
    raise AssertionError("backend='triton' ran without Triton")

from esper.data import load_task
from esper.tamiyo import ControllerConfig
from esper.tolaria.config import GrowConfig
from esper.tolaria.trainer import Trainer
config = GrowConfig(epochs=2, limit=64, batch_size=32, compile=False, quiet=True,
                    controller=ControllerConfig(warmup_epochs=100), out=sys.argv[1])
trainer = Trainer(config, load_task("digits", limit=64))
record = trainer.run_epoch()
assert 0.0 <= record.val_accuracy <= 100.0
print("ok without triton")
"""


def test_esper_imports_and_trains_without_triton(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok without triton")
