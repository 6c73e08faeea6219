"""MorphogeneticModel: a host network with seed slots at its injection points."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..leyline import QualityGates, SlotTelemetry, TaskConfig
from ..leyline.constants import DEFAULT_BLEND_ALGORITHM
from .isolation import IsolationReport
from .protocol import HostProtocol
from .slot import SeedSlot, TelemetryCallback
from .state import AlphaMode, SlotState
from .telemetry import GradientCapture, GradientEMA, GradientStats, capture, materialize, record

_COMPILED_PREFIX = "_orig_mod."


class MorphogeneticModel(nn.Module):
    """A host plus one :class:`SeedSlot` per chosen injection point.

    Arguments:
        host: a network satisfying :class:`~esper.kasmina.protocol.HostProtocol`.
        device: where the host, seeds and slot states live.
        slots: injection point names to attach slots to (see ``host.injection_specs()``).
        task_config: lifecycle timing; defaults to the host's topology with defaults.
        fast_mode: skip event delivery.
        on_telemetry: called with every lifecycle event of every slot.
        gates: gate thresholds shared by the slots.
        alpha_mode: ``"scalar"`` or ``"channel"`` blending for every slot.

    Example:
        >>> model = MorphogeneticModel(CNNHost(), slots=("mid",))
        >>> model.germinate_seed("norm", "seed-1", slot="mid")
        >>> logits = model(torch.randn(8, 3, 32, 32))
    """

    def __init__(
        self,
        host: nn.Module,
        device: torch.device | str = "cpu",
        slots: Sequence[str] = ("mid",),
        task_config: TaskConfig | None = None,
        fast_mode: bool = False,
        on_telemetry: TelemetryCallback | None = None,
        gates: QualityGates | None = None,
        alpha_mode: AlphaMode = "scalar",
    ) -> None:
        super().__init__()
        if not isinstance(host, HostProtocol):
            raise TypeError(f"host must satisfy HostProtocol (injection_specs, segment_names, "
                            f"run_segment, run_head, ...), got {type(host).__name__}")
        specs = host.injection_specs()
        if isinstance(slots, str):
            raise TypeError(f"slots must be a sequence of names, got the string {slots!r}")
        unknown = [name for name in slots if name not in specs]
        if unknown or len(set(slots)) != len(slots):
            problem = f"unknown {unknown}" if unknown else f"duplicates in {list(slots)}"
            raise ValueError(f"bad slots: {problem}; this host's injection points are "
                             f"{list(specs)}")
        task = task_config if task_config is not None else TaskConfig(topology=host.topology)
        memory_format = getattr(host, "memory_format", torch.contiguous_format)
        self.host = host.to(device)
        self.seed_slots = nn.ModuleDict({
            name: SeedSlot(name, specs[name], topology=host.topology, device=device,
                           task_config=task, gates=gates, alpha_mode=alpha_mode,
                           memory_format=memory_format, on_telemetry=on_telemetry,
                           fast_mode=fast_mode)
            for name in host.segment_names() if name in slots
        })
        for slot in self.seed_slots.values():
            slot.attach_host(self.host.parameters)

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor, alpha_overrides: Mapping[str, float | Tensor] | None = None,
                *, states: Mapping[str, SlotState] | None = None) -> Tensor:
        """Run the host with every slot in place.

        Arguments:
            x: the host's input.
            alpha_overrides: slot name -> alpha for this call only (counterfactuals);
                no state changes. Under ``torch.compile`` prefer
                :meth:`functional_forward` with ``state.with_alpha(...)``, which
                reuses the training graph.
            states: slot name -> state to run with instead of the slots' own.
        """
        overrides = self._check_overrides(alpha_overrides) if alpha_overrides else {}
        h = x
        for name in self.host.segment_names():
            h = self.host.run_segment(name, h)
            if name in self.seed_slots:
                state = states.get(name) if states is not None else None
                h = self.seed_slots[name](h, state, overrides.get(name))
        return self.host.run_head(h)

    def functional_forward(self, params: Mapping[str, Tensor], states: Mapping[str, SlotState],
                           x: Tensor, buffers: Mapping[str, Tensor] | None = None) -> Tensor:
        """The forward as a pure function of parameters and slot states.

        Arguments:
            params: name -> tensor, as from ``dict(model.named_parameters())``
                (missing names fall back to the module's own tensors).
            states: slot name -> :class:`SlotState` (missing slots use their own state).
            x: the host's input.
            buffers: name -> tensor, as from ``dict(model.named_buffers())``. Inside
                ``torch.func.grad`` pass them as an input of the transformed
                function: BatchNorm updates its running statistics in place.

        Nothing else is mutated. Compiles with ``fullgraph=True``; states
        differing only in their tensor values (every stage, every alpha) reuse
        one graph.
        """
        unknown = set(states) - set(self.seed_slots)
        if unknown:
            raise ValueError(f"states for unknown slots {sorted(unknown)}; slots are "
                             f"{list(self.seed_slots)}")
        tensors = dict(params) if buffers is None else (dict(params), dict(buffers))
        return torch.func.functional_call(self, tensors, (x,), {"states": states})

    def slot_states(self) -> dict[str, SlotState]:
        """Every slot's current state, by slot name."""
        return {name: slot.state for name, slot in self.seed_slots.items()}

    def _check_overrides(self, overrides: Mapping[str, float | Tensor]) -> dict[str, Any]:
        for name, value in overrides.items():
            if name not in self.seed_slots:
                raise ValueError(f"alpha override for unknown slot {name!r}; slots are "
                                 f"{list(self.seed_slots)}")
            if isinstance(value, bool) or not isinstance(value, int | float | Tensor):
                raise TypeError(f"alpha override for {name!r} must be a number or a tensor, "
                                f"got {type(value).__name__}")
            if isinstance(value, int | float) and not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"alpha override for {name!r} must be in [0, 1], got {value}")
        return dict(overrides)

    # ------------------------------------------------------------------ lifecycle

    def _slot(self, slot: str) -> SeedSlot:
        if slot not in self.seed_slots:
            raise ValueError(f"unknown slot {slot!r}; slots are {list(self.seed_slots)}")
        return self.seed_slots[slot]  # type: ignore[return-value]

    def germinate_seed(self, blueprint_id: str, seed_id: str, *, slot: str,
                       blend_algorithm_id: str = DEFAULT_BLEND_ALGORITHM) -> SlotState:
        """Germinate a seed in ``slot`` (see :meth:`SeedSlot.germinate`)."""
        return self._slot(slot).germinate(blueprint_id, seed_id,
                                          blend_algorithm_id=blend_algorithm_id)

    def prune_seed(self, *, slot: str, reason: str = "manual") -> SlotState:
        """Prune the seed in ``slot`` (see :meth:`SeedSlot.prune`)."""
        return self._slot(slot).prune(reason)

    cull_seed = prune_seed

    def step_epoch(self, telemetry_by_slot: Mapping[str, SlotTelemetry]) -> dict[str, SlotState]:
        """One epoch of lifecycle mechanics for each named slot (all validated first)."""
        for name, telemetry in telemetry_by_slot.items():
            self._slot(name)
            if not isinstance(telemetry, SlotTelemetry):
                raise TypeError(f"telemetry for {name!r} must be a SlotTelemetry, got "
                                f"{type(telemetry).__name__}")
        return {name: self._slot(name).step_epoch(t) for name, t in telemetry_by_slot.items()}

    # ------------------------------------------------------------------ parameters

    def get_seed_parameters(self, slot: str | None = None) -> Iterator[nn.Parameter]:
        """Parameters of the seed (and its blend gate) in ``slot``, or in every slot."""
        slots = self.seed_slots.values() if slot is None else [self._slot(slot)]
        for seed_slot in slots:
            yield from seed_slot.parameters()

    def get_host_parameters(self) -> Iterator[nn.Parameter]:
        """The host's own parameters (fossilized seeds stay with their slots)."""
        return self.host.parameters()

    # ------------------------------------------------------------------ telemetry

    def capture_gradients(self) -> GradientCapture:
        """Squared gradient norms of the host and every seed in one pass (no host sync)."""
        seeded = {name: slot.parameters() for name, slot in self.seed_slots.items()
                  if slot.seed is not None}
        return capture(self.get_host_parameters(), seeded)

    def record_gradients(self, source: GradientCapture | GradientEMA) -> dict[str, GradientStats]:
        """Materialize a capture or average (one sync) into each seed's metrics."""
        stats = materialize(source)
        for name, measured in stats.items():
            slot = self._slot(name)
            if slot.seed is not None:
                slot._commit(record(slot.state, seed_gradient_norm_ratio=measured.ratio))
        return stats

    def probe_isolation(self, x: Tensor, *, samples: int = 8,
                        generator: torch.Generator | None = None) -> dict[str, IsolationReport]:
        """Probe every seeded slot on the first ``samples`` inputs; record violations.

        Runs outside any compiled step: features are computed without grad,
        each slot is probed on its own input, and leaks while isolated add one
        violation to that slot's metrics.
        """
        reports: dict[str, IsolationReport] = {}
        h = x[:samples]
        was_training = self.training
        self.eval()  # the probe must not move BatchNorm statistics
        try:
            self._probe_segments(h, generator, reports)
        finally:
            self.train(was_training)
        return reports

    def _probe_segments(self, h: Tensor, generator: torch.Generator | None,
                        reports: dict[str, IsolationReport]) -> None:
        with torch.no_grad():
            for name in self.host.segment_names():
                h = self.host.run_segment(name, h)
                if name not in self.seed_slots:
                    continue
                slot = self.seed_slots[name]
                if slot.seed is not None:
                    report = slot._probe(h, generator)
                    reports[name] = report
                    slot._commit(record(slot.state, isolation_violations=int(report.violated)))
                h = slot(h)

    # ------------------------------------------------------------------ persistence

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Load weights and slot states; seeds are re-created from their blueprints.

        Keys saved from a ``torch.compile`` wrapper (``_orig_mod.`` prefix) are accepted.
        """
        cleaned = {k.replace(_COMPILED_PREFIX, ""): v for k, v in state_dict.items()}
        return super().load_state_dict(cleaned, strict=strict, assign=assign)
