"""A slot's measurements of its seed, mixed into :class:`~esper.nn.slot.SeedSlot`: the
gradient activity G2 reads and the isolation probe (both outside any compiled step)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..core.state import SlotState
from ..ops.candidates import candidates_forward
from ..ops.formula import blend_weight, isolate
from ..ops.isolation import IsolationReport, ProbeSquares, isolation_probe, probe_squares
from ..ops.telemetry import GradientReport, capture, materialize

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .candidates import CandidateSeeds


class SlotProbes:
    """What :class:`~esper.nn.slot.SeedSlot` measures of its seed (a mixin: the slot
    provides what is declared under ``TYPE_CHECKING`` here)."""

    _host_parameters: Callable[[], Iterable[nn.Parameter]] | None

    if TYPE_CHECKING:
        slot_id: str
        seed: nn.Module | None
        gate: nn.Module | None
        _state: SlotState

        @property
        def candidates(self) -> CandidateSeeds | None: ...
        def _require_unforced(self) -> None: ...
        def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
        def record(self, *, seed_gradient_norm_ratio: float | None = None,
                   isolation_violations: int = 0) -> SlotState: ...
        def __call__(self, host: Tensor, state: SlotState | None = None,
                     alpha: Tensor | float | None = None) -> Tensor: ...

    def attach_host(self, parameters: Callable[[], Iterable[nn.Parameter]]) -> None:
        """Where the host's parameters are (``MorphogeneticModel`` calls this)."""
        self._host_parameters = parameters

    def capture_gradient_telemetry(self, host_parameters: Iterable[nn.Parameter] | None = None,
                                   host_features: Tensor | None = None, *,
                                   generator: torch.Generator | None = None) -> GradientReport:
        """Measure the seed's gradient activity (and isolation) and record it in the metrics.

        Call after ``backward``. ``None`` gradients are skipped. The isolation
        probe runs when ``host_features`` (features at this slot, a few samples)
        are given; a leak while isolated counts one violation.

        Arguments:
            host_parameters: the host's parameters; needed for a slot that is
                not part of a ``MorphogeneticModel``.
            host_features: features at the slot for the isolation probe.
            generator: for the probe's random cotangent.

        Raises:
            RuntimeError: the slot has no seed, or inside ``force_alpha``.
            ValueError: a standalone slot was given no host parameters.
        """
        self._require_unforced()
        if self.seed is None:
            raise RuntimeError(f"slot {self.slot_id!r} is {self._state.stage.name}: there is "
                               "no seed whose gradients could be measured")
        if host_parameters is None:
            if self._host_parameters is None:
                raise ValueError(f"slot {self.slot_id!r} is not attached to a host: pass "
                                 "host_parameters so the gradient ratio can be normalised")
            host_parameters = self._host_parameters()
        sample = capture(host_parameters, {self.slot_id: self.parameters()})
        gradients = materialize(sample)[self.slot_id]
        probe = (self.probe_isolation(host_features, generator)
                 if host_features is not None else None)
        self.record(seed_gradient_norm_ratio=gradients.ratio,
                    isolation_violations=int(probe is not None and probe.violated))
        return GradientReport(gradients, probe)

    def probe_isolation(self, host: Tensor, generator: torch.Generator | None = None,
                        squares: ProbeSquares = probe_squares) -> IsolationReport:
        """The isolation probe of this slot on ``host`` features; records nothing.

        Runs outside any compiled step (see :func:`~esper.ops.isolation.isolation_probe`)
        in the slot's current mode: :meth:`MorphogeneticModel.probe_isolation`
        puts the slot in eval mode first so the probe moves no statistics.

        Arguments:
            host: features at the slot (a few samples).
            generator: for the random cotangents.
            squares: :func:`~esper.ops.isolation.probe_squares` or a compiled version of it.
        """
        gate_fn = self._probe_gate if self.gate is not None else None
        return isolation_probe(self._probe_slot, self._state, host, gate_fn=gate_fn,
                               generator=generator, squares=squares)

    def _probe_slot(self, host: Tensor, state: SlotState, a: Tensor) -> Tensor:
        stacked = self.candidates
        if stacked is not None:  # the incubation formula (a is the state's own 0)
            return candidates_forward(state, stacked, host, stacked.live)[0]
        return self(host, state, alpha=a)

    def _probe_gate(self, host: Tensor, state: SlotState) -> Tensor:
        assert self.gate is not None
        return self.gate(isolate(host, state.g), blend_weight(state.alpha, host))


__all__ = ["SlotProbes"]
