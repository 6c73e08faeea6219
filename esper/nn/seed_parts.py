"""A slot's seed and blend gate, built from their blueprint and blend algorithm.

:func:`build_seed` is germination's: the seed is checked (shape, device,
dtype) and a raise from the blueprint's own code becomes a
:class:`~esper.errors.SeedRaisedError`. :func:`rebuild_seed` is a checkpoint
load's: the seed the saved state names, re-created before its weights load.
Both draw from the CPU random number generator in the same order (the seed,
then the gate), so a seeded run builds the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.state import SlotState
from ..errors import EsperError, SeedRaisedError, describe
from ..leyline import Topology
from . import blueprints
from .blending import create_blend


@dataclass(frozen=True)
class SeedSite:
    """Where a seed is planted: what its blueprint builds for and where its weights live."""

    slot_id: str
    topology: Topology
    channels: int
    device: torch.device
    memory_format: torch.memory_format
    feature_shape: tuple[int, ...] | None = None  # recorded by a graft's dry run (batch first)
    dtype: torch.dtype = torch.float32

    def seed(self, blueprint_id: str) -> nn.Module:
        """An unchecked seed of ``blueprint_id`` on the site's device and layout."""
        seed = blueprints.create(self.topology, blueprint_id, self.channels)
        return seed.to(self.device, memory_format=self.memory_format)

    def gate(self, blend_algorithm_id: str) -> nn.Module | None:
        """The blend gate of ``blend_algorithm_id`` on the site's device (``None``: no gate)."""
        gate = create_blend(blend_algorithm_id, self.channels, self.topology)
        return gate.to(self.device) if gate is not None else None


def build_seed(site: SeedSite, blueprint_id: str,
               blend_algorithm_id: str) -> tuple[nn.Module, nn.Module | None]:
    """A checked seed of ``blueprint_id`` and its blend gate, for germination.

    Raises:
        SeedRaisedError: the blueprint's own code raised (a ``RuntimeError``).
        EsperError: the seed does not fit the site (shape, device, dtype).
    """
    try:
        seed = site.seed(blueprint_id)
        blueprints.validate_seed(seed, topology=site.topology, channels=site.channels,
                                 device=site.device, name=blueprint_id)
    except EsperError:
        raise
    except Exception as error:
        raise SeedRaisedError(f"blueprint {blueprint_id!r} raised while its seed for slot "
                              f"{site.slot_id!r} was built and checked: {describe(error)}; "
                              "the slot is unchanged") from error
    return seed, site.gate(blend_algorithm_id)


def rebuild_seed(site: SeedSite, state: SlotState) -> tuple[nn.Module | None, nn.Module | None]:
    """The seed and gate ``state`` names (``None`` for a state without a seed)."""
    if not state.has_seed:
        return None, None
    return site.seed(state.blueprint_id), site.gate(state.blend_algorithm_id)
