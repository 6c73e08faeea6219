"""A slot's seed and blend gate, built from their blueprint and blend algorithm.

:func:`build_seed` is germination's: the seed is checked (shape, dtype,
device) by a forward on the site's features, the real feature shape when the
site knows it, and a raise from the blueprint's own code becomes a
:class:`~esper.errors.SeedRaisedError`. :func:`rebuild_seed` is a checkpoint
load's: the seed the saved state names, re-created before its weights load.
Both draw from the CPU random number generator in the same order (the seed,
then the gate), so a seeded run builds the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.state import SlotState
from ..errors import CandidatesUnsupportedError, EsperError, SeedRaisedError, describe
from ..leyline import Topology
from . import blueprints
from .blending import create_blend
from .candidates import CandidateSeeds, build_candidates


@dataclass(frozen=True)
class SeedSite:
    """Where a seed is planted: what its blueprint builds for and where its weights live.

    Attributes:
        slot_id: the slot's name.
        topology: the feature layout at the slot (``"cnn"``, ``"transformer"``, ``"mlp"``).
        channels: feature channels at the slot.
        device: where the seed's weights and the features live.
        memory_format: layout of 4-D seed weights (the host's).
        feature_shape: the real feature shape at the slot, batch first (recorded by
            a graft's dry run); ``None`` when unknown: seeds are then checked on the
            layout's default probe.
        dtype: the features' floating dtype; seeds and gates are built in it.

    Raises:
        ValueError: a ``feature_shape`` that does not fit the layout and channels,
            or a ``dtype`` that is not floating point.
    """

    slot_id: str
    topology: Topology
    channels: int
    device: torch.device
    memory_format: torch.memory_format
    feature_shape: tuple[int, ...] | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if not self.dtype.is_floating_point:
            raise ValueError(f"slot {self.slot_id!r}: features of dtype {self.dtype} cannot "
                             "be blended with a seed; a slot's features must be floating point")
        shape = self.feature_shape
        if shape is not None and not blueprints.fits_layout(shape, self.topology, self.channels):
            raise ValueError(f"slot {self.slot_id!r}: feature_shape {shape!r} does not fit the "
                             f"{self.topology} layout "
                             f"{blueprints.LAYOUT_SHAPES.get(self.topology, '?')} with "
                             f"C = {self.channels} (a tuple of positive sizes, batch first)")

    def seed(self, blueprint_id: str) -> nn.Module:
        """An unchecked seed of ``blueprint_id`` on the site's device, dtype and layout."""
        seed = blueprints.build(self.topology, blueprint_id, self.channels)
        return seed.to(self.device, self.dtype, memory_format=self.memory_format)

    def gate(self, blend_algorithm_id: str) -> nn.Module | None:
        """The blend gate of ``blend_algorithm_id`` on the site's device and dtype
        (``None``: no gate)."""
        gate = create_blend(blend_algorithm_id, self.channels, self.topology)
        return gate.to(self.device, self.dtype) if gate is not None else None

    def probe(self) -> Tensor:
        """The features a new seed is checked on: zeros of the real feature shape
        (batch at most 2) when it is known, else the layout's default probe."""
        if self.feature_shape is None:
            return blueprints.default_probe(self.topology, self.channels, self.device,
                                            self.dtype)
        return blueprints.feature_probe(self.feature_shape, device=self.device,
                                        dtype=self.dtype, memory_format=self.memory_format)


def build_seed(site: SeedSite, blueprint_id: str,
               blend_algorithm_id: str) -> tuple[nn.Module, nn.Module | None]:
    """A checked seed of ``blueprint_id`` and its blend gate, for germination.

    The seed runs once on :meth:`SeedSite.probe` (eval mode, no gradients, its
    modes restored) and must return a tensor of exactly the probe's shape, dtype
    and device.

    Raises:
        UnknownBlueprintError, TopologyMismatchError: no such blueprint, or one
            that does not support the site's layout (``ValueError``).
        SeedShapeError: the seed does not give back the features' shape, dtype
            or device (a ``ValueError``).
        SeedRaisedError: the blueprint's own code raised while the seed was built
            or checked (a ``RuntimeError``).
    """
    features = site.probe()
    try:
        seed = site.seed(blueprint_id)
        blueprints.check_seed(seed, features, name=blueprint_id, slot=site.slot_id)
    except EsperError:
        raise
    except Exception as error:
        raise SeedRaisedError(f"blueprint {blueprint_id!r} raised while its seed for slot "
                              f"{site.slot_id!r} was built and checked: {describe(error)}; "
                              "the slot is unchanged") from error
    return seed, site.gate(blend_algorithm_id)


def build_tournament(site: SeedSite, blueprint_id: str, blend_algorithm_id: str,
                     count: int) -> tuple[CandidateSeeds, nn.Module | None]:
    """``count`` >= 2 checked candidates of ``blueprint_id``, stacked, and the blend gate.

    The candidates are drawn from generators seeded by one draw of the CPU
    generator (:func:`~esper.nn.candidates.build_candidates`). The first is
    checked as :func:`build_seed` checks a seed; then the stack runs forward and
    backward on the probe under ``torch.func.vmap``, and scores on K copies of it
    (eval mode), so a blueprint that cannot be vmapped is refused here, not
    mid-training.

    Raises:
        as :func:`build_seed`, and
        CandidatesUnsupportedError: the seeds have no trainable parameters, or the
            stacked forward or backward raised (a ``ValueError``).
    """
    features = site.probe()
    base = int(torch.randint(2**62, ()))
    try:
        seeds = build_candidates(lambda: site.seed(blueprint_id), count, base)
        blueprints.check_seed(seeds[0], features, name=blueprint_id, slot=site.slot_id)
    except EsperError:
        raise
    except Exception as error:
        raise SeedRaisedError(f"blueprint {blueprint_id!r} raised while its candidates for slot "
                              f"{site.slot_id!r} were built and checked: {describe(error)}; "
                              "the slot is unchanged") from error
    if not any(p.requires_grad for p in seeds[0].parameters()):
        raise CandidatesUnsupportedError(
            f"blueprint {blueprint_id!r} has no trainable parameters: its {count} candidates "
            "would all be the same seed; germinate it alone (candidates=1)")
    stacked = CandidateSeeds(seeds)
    _check_stacked(stacked, features, blueprint_id, site.slot_id)
    return stacked, site.gate(blend_algorithm_id)


def _check_stacked(stacked: CandidateSeeds, features: Tensor, blueprint_id: str,
                   slot: str) -> None:
    """Run the stacked candidates forward and backward once; refuse them if that fails."""
    modes = {module: module.training for module in stacked.modules()}
    stacked.eval()
    try:
        with torch.enable_grad():
            out = stacked(features)
            if out.shape != (stacked.count, *features.shape):
                raise ValueError(f"the stacked output has shape {tuple(out.shape)}, not "
                                 f"{(stacked.count, *features.shape)}")
            torch.autograd.grad(out.float().sum(), [p for p in stacked.parameters()],
                                allow_unused=True)
        with torch.no_grad():  # scoring: candidate k on the k-th copy of the batch
            stacked.chunked(features.repeat((stacked.count,) + (1,) * (features.dim() - 1)))
    except Exception as error:
        raise CandidatesUnsupportedError(
            f"blueprint {blueprint_id!r} cannot run as {stacked.count} stacked candidates in "
            f"slot {slot!r} (torch.func.vmap over its seeds failed: {describe(error)}); "
            "germinate it alone (candidates=1), or make its forward vmappable") from error
    finally:
        for module, mode in modes.items():
            module.train(mode)


def rebuild_seed(site: SeedSite, state: SlotState) -> tuple[nn.Module | None, nn.Module | None]:
    """The seed (the stacked candidates of a tournament) and gate ``state`` names
    (``None`` for a state without a seed), before a checkpoint's weights load."""
    if not state.has_seed:
        return None, None
    if state.in_tournament:
        seeds = build_candidates(lambda: site.seed(state.blueprint_id), state.candidates, 0)
        return CandidateSeeds(seeds), site.gate(state.blend_algorithm_id)
    return site.seed(state.blueprint_id), site.gate(state.blend_algorithm_id)
