"""SeedSlot: the stateful shell around one slot's immutable state and seed module.

The slot holds ``nn.Module``s (so optimizers, ``state_dict`` and DDP work the
PyTorch way) and swaps immutable :class:`SlotState`s produced by the pure
lifecycle. Every swap is turned into events delivered to ``on_telemetry``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core import lifecycle as L
from ..core import tournament as T
from ..core.alpha import check_alpha
from ..core.events import events
from ..core.serialize import state_from_dict, state_to_dict
from ..core.state import AlphaMode, SlotState
from ..core.transitions import check_telemetry
from ..errors import TopologyMismatchError
from ..leyline import GateResult, QualityGates, SeedStage, SlotTelemetry, TaskConfig, Topology
from ..leyline.constants import DEFAULT_BLEND_ALGORITHM, DEFAULT_CANDIDATES
from ..ops.formula import slot_forward, slot_forward_checked
from ..ops.health import SeedHealth
from ..ops.telemetry import GradientReport, latest_telemetry, record
from .assignment import check_assignable
from .delivery import TelemetryCallback, TelemetryCallbackWarning, deliver
from .movement import measured, warn_if_frozen, with_baseline
from .seed_parts import SeedSite, build_seed, build_tournament, rebuild_seed
from .slot_probes import SlotProbes
from .slot_tournament import TournamentSlot


@dataclass(frozen=True, slots=True)
class SlotContents:
    """A slot's seed, blend gate and state as :meth:`SeedSlot.contents` took them."""

    seed: nn.Module | None
    gate: nn.Module | None
    state: SlotState

class SeedSlot(TournamentSlot, SlotProbes, nn.Module):
    """One injection slot: its state, its seed module and its optional gate network.

    Arguments:
        slot_id: the injection point's name (``"mid"``).
        channels: feature channels at the injection point.
        topology: the feature layout, ``"cnn"`` ``[B, C, H, W]``, ``"transformer"``
            ``[B, T, C]`` or ``"mlp"`` ``[B, C]`` (blueprints follow it).
        device: where seeds and state tensors live.
        task_config: lifecycle timing (its topology must match ``topology``).
        gates: gate thresholds.
        alpha_mode: ``"scalar"`` or ``"channel"`` blending.
        memory_format: layout of 4-D seed weights (match the host's).
        on_telemetry: called with each :class:`~esper.leyline.TelemetryEvent`.
        fast_mode: skip event delivery (for throughput runs).
        isolate: keep the seed's input detached from the host while blended; ``None``:
            the layout's default (``TaskConfig.isolate_while_blending``).
        feature_shape, dtype: the features at the slot (batch first) as a graft recorded them.
    """

    def __init__(
        self,
        slot_id: str,
        channels: int,
        *,
        topology: Topology = "cnn",
        device: torch.device | str = "cpu",
        task_config: TaskConfig | None = None,
        gates: QualityGates | None = None,
        alpha_mode: AlphaMode = "scalar",
        memory_format: torch.memory_format = torch.contiguous_format,
        on_telemetry: TelemetryCallback | None = None,
        fast_mode: bool = False,
        isolate: bool | None = None,
        feature_shape: tuple[int, ...] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        task = task_config if task_config is not None else TaskConfig(topology=topology)
        if task.topology != topology:
            raise TopologyMismatchError(
                f"task_config.topology {task.topology!r} does not match the slot's topology "
                f"{topology!r}: build the TaskConfig with topology={topology!r}")
        self.slot_id = slot_id
        self.channels = channels
        self.topology: Topology = topology
        self.device = torch.device(device)
        self.memory_format = memory_format
        self.feature_shape = None if feature_shape is None else tuple(feature_shape)
        self.dtype = dtype
        self.on_telemetry = on_telemetry
        self.fast_mode = fast_mode
        self.seed: nn.Module | None = None
        self.gate: nn.Module | None = None
        self._state = SlotState.dormant(slot_id, channels=channels, task=task, gates=gates,
                                        alpha_mode=alpha_mode, device=self.device,
                                        isolate=isolate)
        self._forced = 0
        self._host_parameters: Callable[[], Iterable[nn.Parameter]] | None = None

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> SlotState:
        """The slot's current immutable state."""
        return self._state

    @state.setter
    def state(self, new: SlotState) -> None:
        self._commit(new)

    def _require_unforced(self) -> None:
        if self._forced:
            raise RuntimeError(f"slot {self.slot_id!r}: lifecycle changes are not allowed inside "
                               "force_alpha() (they would be lost when it restores the state)")

    def _commit(self, new: SlotState) -> SlotState:
        """Swap in ``new`` (already validated), then report the implied events.

        A seed entering TRAINING has its weights fingerprinted into the state here
        (see :meth:`record_movement`); a seed just found frozen also gets a warning.
        """
        self._require_unforced()
        before = self._state
        new = check_assignable(new, before, self.seed is not None).to(self.device)
        self._state = with_baseline(new, self.parameters())
        if not self.fast_mode and self.on_telemetry is not None:
            deliver(self.on_telemetry, events(before, self._state), self.slot_id)
        warn_if_frozen(before, self._state)
        return self._state

    def record(self, *, seed_gradient_norm_ratio: float | None = None,
               isolation_violations: int = 0) -> SlotState:
        """Commit new gradient measurements to the state's metrics (see
        :func:`~esper.ops.telemetry.record`); no epoch passes.

        Raises:
            ValueError: a negative count or a non-finite ratio.
            RuntimeError: inside ``force_alpha``.
        """
        return self._commit(record(self._state, seed_gradient_norm_ratio=seed_gradient_norm_ratio,
                                   isolation_violations=isolation_violations))

    def record_movement(self) -> SlotState:
        """Commit whether the TRAINING seed's weights moved since it began TRAINING
        (``metrics.weights_moved``, which G2 reads; one host sync); no epoch passes.

        :meth:`step_epoch` and :meth:`advance_stage` call it first. It measures only
        while the seed has not been seen to move; the first time it finds the seed
        frozen, a ``SEED_FROZEN`` event and an :class:`~esper.errors.UnboundSeedWarning`
        say so.

        Raises:
            RuntimeError: inside ``force_alpha``.
        """
        self._require_unforced()
        new = measured(self._state, self.parameters())
        return self._state if new is self._state else self._commit(new)

    def contents(self) -> SlotContents:
        """The slot's seed, gate and state now, for :meth:`restore_contents`."""
        return SlotContents(self.seed, self.gate, self._state)

    def restore_contents(self, contents: SlotContents) -> None:
        """Put back what :meth:`contents` took (undoing a failed load; no events, no checks)."""
        self.seed, self.gate, self._state = contents.seed, contents.gate, contents.state

    @property
    def site(self) -> SeedSite:
        """Where this slot's seeds are planted (topology, channels, device, layout, and the
        feature shape and dtype a graft recorded)."""
        return SeedSite(self.slot_id, self.topology, self.channels, self.device,
                        self.memory_format, self.feature_shape, self.dtype)

    # ------------------------------------------------------------------ lifecycle

    def germinate(self, blueprint_id: str, seed_id: str, *,
                  blend_algorithm_id: str = DEFAULT_BLEND_ALGORITHM,
                  candidates: int = DEFAULT_CANDIDATES) -> SlotState:
        """Build, validate and plant a seed; the slot is unchanged if anything fails.

        With ``candidates`` = K >= 2 it plants a tournament: K seeds of the
        blueprint, stacked (:class:`~esper.nn.candidates.CandidateSeeds`), incubate
        side by side until :meth:`select` keeps the best one.

        A failed germination also leaves the CPU random number generator as it
        was (building the refused seed drew from it).

        Raises:
            SlotOccupiedError: the slot is not DORMANT (a ``RuntimeError``).
            UnknownBlueprintError: no such blueprint (a ``ValueError``).
            TopologyMismatchError: a blueprint of the other topology (a ``ValueError``).
            SeedShapeError: the seed changes the feature shape (a ``ValueError``).
            SeedRaisedError: the blueprint's code raised (a ``RuntimeError``).
            CandidatesUnsupportedError: the blueprint's seeds cannot be stacked and
                vmapped as candidates (a ``ValueError``).
            ValueError: bad ids, an unknown blend algorithm, or ``candidates`` out of
                range (1 to :data:`~esper.leyline.constants.MAX_CANDIDATES`).
            TypeError: ``candidates`` is not an int.
        """
        self._require_unforced()
        T.check_candidates(candidates)
        L.germinate(self._state, blueprint_id, seed_id, blend_algorithm_id=blend_algorithm_id,
                    candidates=candidates)
        rng = torch.get_rng_state()
        try:
            seed, gate = (build_seed(self.site, blueprint_id, blend_algorithm_id)
                          if candidates == 1 else
                          build_tournament(self.site, blueprint_id, blend_algorithm_id,
                                           candidates))
        except BaseException:
            torch.set_rng_state(rng)
            raise
        params = sum(p.numel() for m in (seed, gate) if m is not None for p in m.parameters())
        new = L.germinate(self._state, blueprint_id, seed_id,
                          blend_algorithm_id=blend_algorithm_id, seed_params=params,
                          candidates=candidates)
        self.seed, self.gate = seed, gate
        try:
            return self._commit(new)
        except BaseException:
            self.seed = self.gate = None
            raise

    def prune(self, reason: str = "manual", detail: str | None = None) -> SlotState:
        """Remove the live seed (its parameters leave the module).

        ``detail`` says what went wrong, in words; it is carried on the
        SEED_PRUNED event.

        Raises:
            FossilizedSeedError: the seed is FOSSILIZED (a ``ValueError``).
            NoLiveSeedError: there is no live seed (a ``ValueError``).
        """
        self._require_unforced()
        new = L.prune(self._state, reason, detail)
        self._drop_seed()
        return self._commit(new)

    cull = prune

    def _drop_seed(self) -> None:
        self.seed = self.gate = None

    def advance_stage(self, target: SeedStage | str,
                      telemetry: SlotTelemetry | None = None) -> GateResult:
        """Request ``target`` through its gate (telemetry defaults to the latest metrics;
        a request for BLENDING measures the weights' movement G2 reads first)."""
        self._require_unforced()
        if telemetry is not None:
            check_telemetry(telemetry)  # refused before anything is measured
        if SeedStage.parse(target) == SeedStage.BLENDING:
            self.record_movement()
        latest = latest_telemetry(self._state) if telemetry is None else telemetry
        new, result = L.advance(self._state, target, latest)
        self._commit(new)
        return result

    def fossilize(self, telemetry: SlotTelemetry | None = None) -> GateResult:
        """Make a HOLDING seed permanent if G5 passes; the graph does not change."""
        self._require_unforced()
        latest = latest_telemetry(self._state) if telemetry is None else telemetry
        new, result = L.fossilize(self._state, latest)
        self._commit(new)
        return result

    def step_epoch(self, telemetry: SlotTelemetry) -> SlotState:
        """One epoch of mechanics (weights' movement measured first, see
        :meth:`record_movement`); a seed pruned by it leaves the module."""
        check_telemetry(telemetry)  # refused before anything is measured
        self.record_movement()
        new = L.step(self._state, telemetry)
        if self.seed is not None and not new.has_seed:
            self._drop_seed()
        return self._commit(new)

    # ------------------------------------------------------------------ alpha

    @contextlib.contextmanager
    def force_alpha(self, value: float | Tensor) -> Iterator[SlotState]:
        """Evaluate with alpha forced to ``value``; nests, restores on exit.

        Lifecycle changes inside the block raise ``RuntimeError`` (they would
        be lost on restore). Prefer ``forward(host, alpha=...)`` or
        ``SlotState.with_alpha`` where another thread may run the model.
        """
        saved = self._state
        self._state = saved.with_alpha(value)
        self._forced += 1
        try:
            yield self._state
        finally:
            self._forced -= 1
            self._state = saved

    # ------------------------------------------------------------------ forward

    def forward(self, host: Tensor, state: SlotState | None = None,
                alpha: Tensor | float | None = None) -> Tensor:
        """Run the slot formula on host features (identity while the slot has no seed).

        Arguments:
            host: features at the injection point.
            state: the state to run with (the functional API passes its own);
                defaults to the slot's.
            alpha: replaces the effective blend weight for this call only (a
                gated blend's gate is bypassed: the weight is exactly ``alpha``).

        Raises:
            AlphaValueError: a number ``alpha`` outside [0, 1] or NaN (a
                ``ValueError``; tensors are checked by ``MorphogeneticModel.forward``).
        """
        if self.seed is None:
            return host
        state, alpha = self._inputs(host, state, alpha)
        if self.candidates is not None:
            return self._tournament(host, state, alpha)[0]
        if alpha is None:
            return slot_forward(state, self.seed, host, gate=self.gate)
        return slot_forward(state, self.seed, host, alpha=alpha)

    def checked(self, host: Tensor, state: SlotState | None = None,
                alpha: Tensor | float | None = None) -> tuple[Tensor, SeedHealth]:
        """:meth:`forward` of a seeded slot and the seed's health flags (device tensors).

        Raises:
            RuntimeError: the slot holds no seed.
            AlphaValueError: as :meth:`forward`.
        """
        if self.seed is None:
            raise RuntimeError(f"slot {self.slot_id!r} holds no seed whose health could be "
                               "checked")
        state, alpha = self._inputs(host, state, alpha)
        if self.candidates is not None:
            return self._tournament(host, state, alpha)
        if alpha is None:
            return slot_forward_checked(state, self.seed, host, gate=self.gate)
        return slot_forward_checked(state, self.seed, host, alpha=alpha)

    def _inputs(self, host: Tensor, state: SlotState | None,
                alpha: Tensor | float | None) -> tuple[SlotState, Tensor | None]:
        """The state to run with and the alpha override as a tensor (``None``: the state's)."""
        state = self._state if state is None else state
        if alpha is None or isinstance(alpha, Tensor):
            return state, alpha
        alpha = check_alpha(alpha, where=f"slot {self.slot_id!r}", channels=self.channels)
        return state, torch.tensor(float(alpha), dtype=torch.float32, device=host.device)

    # ------------------------------------------------------------------ persistence

    def get_extra_state(self) -> dict[str, Any]:
        return {"state": state_to_dict(self._state)}

    def set_extra_state(self, extra: Any) -> None:
        """Restore the state and re-create the seed from its blueprint (before its weights load)."""
        if not isinstance(extra, dict) or set(extra) != {"state"}:
            raise ValueError(f"slot {self.slot_id!r}: extra state must be {{'state': ...}}")
        new = state_from_dict(extra["state"], device=self.device)
        if (new.slot_id, new.channels) != (self.slot_id, self.channels):
            raise ValueError(f"checkpoint state of slot {new.slot_id!r} ({new.channels} channels) "
                             f"does not fit slot {self.slot_id!r} ({self.channels} channels)")
        seed, gate = rebuild_seed(self.site, new)
        self.seed, self.gate, self._state = seed, gate, new

    def _apply(self, fn: Any, recurse: bool = True) -> SeedSlot:
        """Follow ``.to(device)``: the state's tensors move with the module (dtype stays fp32)."""
        super()._apply(fn, recurse)
        device = fn(torch.zeros(())).device
        if device != self.device:
            self.device = device
            self._state = self._state.to(device)
        return self

    def extra_repr(self) -> str:
        return f"{self.slot_id!r}, channels={self.channels}, {self._state.stage.name}"


__all__ = ["GradientReport", "SeedSlot", "SlotContents", "TelemetryCallback",
           "TelemetryCallbackWarning"]
