"""MorphogeneticModel: a host network with seed slots at its injection points."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple, overload

import torch
from torch import Tensor, nn

from ..core.alpha import check_alpha
from ..core.state import AlphaMode, SlotState
from ..errors import (
    InputDtypeError,
    StateDictMismatchError,
    TelemetryTypeError,
    UnknownSlotError,
)
from ..leyline import QualityGates, SlotTelemetry, TaskConfig
from ..leyline.constants import DEFAULT_BLEND_ALGORITHM
from ..ops.health import SeedHealth
from ..ops.isolation import IsolationReport, ProbeSquares, probe_squares
from ..ops.telemetry import GradientCapture, GradientEMA, GradientStats, materialize
from .protocol import HostProtocol
from .slot import SeedSlot, SlotContents, TelemetryCallback

_COMPILED_PREFIX = "_orig_mod."
# (module, "_parameters" or "_buffers", name, the tensor object, a copy of its values)
_TensorSnapshot = list[tuple[nn.Module, str, str, Tensor, Tensor]]


class ForwardOutput(NamedTuple):
    """A forward's logits and what it saw at the seeded slots (``aux=True``).

    Attributes:
        logits: the host head's output, as ``model(x)`` returns it.
        features: slot name -> the host features arriving at each slot that
            holds a seed (part of the graph).
        health: slot name -> the :class:`~esper.ops.health.SeedHealth` of each
            seeded slot: 0-d bool flags for a non-finite seed output and for a
            blown-up blend (device tensors; no host sync).
    """

    logits: Tensor
    features: dict[str, Tensor]
    health: dict[str, SeedHealth]


class MorphogeneticModel(nn.Module):
    """A host plus one :class:`SeedSlot` per chosen injection point.

    Arguments:
        host: a network satisfying :class:`~esper.nn.protocol.HostProtocol`.
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
            raise UnknownSlotError(f"bad slots: {problem}; this host's injection points are "
                                   f"{list(specs)}: choose slots among them, each once")
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

    @overload
    def forward(self, x: Tensor, alpha_overrides: Mapping[str, float | Tensor] | None = None,
                *, states: Mapping[str, SlotState] | None = None,
                aux: Literal[False] = False) -> Tensor: ...

    @overload
    def forward(self, x: Tensor, alpha_overrides: Mapping[str, float | Tensor] | None = None,
                *, states: Mapping[str, SlotState] | None = None,
                aux: Literal[True]) -> ForwardOutput: ...

    def forward(self, x: Tensor, alpha_overrides: Mapping[str, float | Tensor] | None = None,
                *, states: Mapping[str, SlotState] | None = None,
                aux: bool = False) -> Tensor | ForwardOutput:
        """Run the host with every slot in place; the logits, or a :class:`ForwardOutput`.

        Arguments:
            x: the host's input.
            alpha_overrides: slot name -> alpha for this call only (counterfactuals);
                no state changes. Under ``torch.compile`` prefer
                :meth:`functional_forward` with ``state.with_alpha(...)``, which
                reuses the training graph.
            states: slot name -> state to run with instead of the slots' own.
            aux: also return the host features and the seed health at each
                seeded slot (a :class:`ForwardOutput`); the logits are the same.

        Raises:
            InputDtypeError: ``x`` is not a tensor, or not of the dtype the host
                computes in (a ``TypeError``).
            InputShapeError: ``x`` has the wrong shape for the host (a ``ValueError``).
            UnknownSlotError: an override names no slot (a ``ValueError``).
            AlphaValueError: an override outside [0, 1] or non-finite (a ``ValueError``).
            AlphaShapeError: an override of the wrong shape (a ``ValueError``).
        """
        if not isinstance(x, Tensor):
            raise InputDtypeError(f"the model's input must be a tensor, got {type(x).__name__}: "
                                  "convert it with torch.as_tensor")
        overrides = self._check_overrides(alpha_overrides) if alpha_overrides else {}
        features: dict[str, Tensor] = {}
        health: dict[str, SeedHealth] = {}
        h = x
        for name in self.host.segment_names():
            h = self.host.run_segment(name, h)
            if name in self.seed_slots:
                slot = self.seed_slots[name]
                state = states.get(name) if states is not None else None
                if aux and slot.seed is not None:
                    features[name] = h
                    h, health[name] = slot.checked(h, state, overrides.get(name))
                else:
                    h = slot(h, state, overrides.get(name))
        logits = self.host.run_head(h)
        return ForwardOutput(logits, features, health) if aux else logits

    @overload
    def functional_forward(self, params: Mapping[str, Tensor], states: Mapping[str, SlotState],
                           x: Tensor, buffers: Mapping[str, Tensor] | None = None, *,
                           aux: Literal[False] = False) -> Tensor: ...

    @overload
    def functional_forward(self, params: Mapping[str, Tensor], states: Mapping[str, SlotState],
                           x: Tensor, buffers: Mapping[str, Tensor] | None = None, *,
                           aux: Literal[True]) -> ForwardOutput: ...

    def functional_forward(self, params: Mapping[str, Tensor], states: Mapping[str, SlotState],
                           x: Tensor, buffers: Mapping[str, Tensor] | None = None, *,
                           aux: bool = False) -> Tensor | ForwardOutput:
        """The forward as a pure function of parameters and slot states.

        Arguments:
            params: name -> tensor, as from ``dict(model.named_parameters())``
                (missing names fall back to the module's own tensors).
            states: slot name -> :class:`SlotState` (missing slots use their own state).
            x: the host's input.
            buffers: name -> tensor, as from ``dict(model.named_buffers())``. Inside
                ``torch.func.grad`` pass them as an input of the transformed
                function: BatchNorm updates its running statistics in place.
            aux: return a :class:`ForwardOutput` (see :meth:`forward`): the
                training step reads the seeds' health and keeps a few samples
                of the features for :meth:`probe_isolation`.

        Nothing else is mutated. Compiles with ``fullgraph=True``; states
        differing only in their tensor values (every stage, every alpha) reuse
        one graph.
        """
        unknown = set(states) - set(self.seed_slots)
        if unknown:
            raise UnknownSlotError(f"states for unknown slots {sorted(unknown)}; slots are "
                                   f"{list(self.seed_slots)}")
        tensors = dict(params) if buffers is None else (dict(params), dict(buffers))
        return torch.func.functional_call(self, tensors, (x,), {"states": states, "aux": aux})

    def slot_states(self) -> dict[str, SlotState]:
        """Every slot's current state, by slot name."""
        return {name: slot.state for name, slot in self.seed_slots.items()}

    def _check_overrides(self, overrides: Mapping[str, float | Tensor]) -> dict[str, Any]:
        """Check every alpha override before the forward runs (see :meth:`forward`).

        Shapes and dtypes are always checked; a tensor's values only when not
        compiling (that check reads the tensor, a host sync dynamo cannot trace).
        """
        for name, value in overrides.items():
            if name not in self.seed_slots:
                raise UnknownSlotError(f"alpha override for unknown slot {name!r}; slots are "
                                       f"{list(self.seed_slots)}")
            check_alpha(value, where=f"slot {name!r}", channels=self.seed_slots[name].channels)
        return dict(overrides)

    # ------------------------------------------------------------------ lifecycle

    def _slot(self, slot: str) -> SeedSlot:
        if slot not in self.seed_slots:
            raise UnknownSlotError(f"unknown slot {slot!r}; slots are {list(self.seed_slots)}: "
                                   "name one of those")
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
                raise TelemetryTypeError(f"telemetry for {name!r} must be a SlotTelemetry, got "
                                         f"{type(telemetry).__name__}: build one with "
                                         "SlotTelemetry(accuracy, ...)")
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

    def record_gradients(self, source: GradientCapture | GradientEMA) -> dict[str, GradientStats]:
        """Materialize a capture or average (one sync) into each seed's metrics."""
        stats = materialize(source)
        for name, measured in stats.items():
            slot = self._slot(name)
            if slot.seed is not None:
                slot.record(seed_gradient_norm_ratio=measured.ratio)
        return stats

    def probe_isolation(self, x: Tensor | None = None, *,
                        features: Mapping[str, Tensor] | None = None, samples: int = 8,
                        generator: torch.Generator | None = None,
                        squares: ProbeSquares = probe_squares) -> dict[str, IsolationReport]:
        """Probe every seeded slot on ``samples`` inputs; record violations.

        Runs outside any compiled step, on the host features at each slot:
        either computed here from the model input ``x`` (a no-grad host
        forward), or ``features`` as the training step returns them (slot name
        -> features, which skips the host forward). Each slot's seed runs in
        eval mode so the probe moves no statistics; a leak while isolated adds
        one violation to that slot's metrics.

        Arguments:
            x: the model's input (exclusive with ``features``).
            features: slot name -> host features at that slot, for every seeded slot.
            samples: how many leading samples to probe on.
            generator: for the random cotangents.
            squares: :func:`~esper.ops.isolation.probe_squares` or a
                compiled version of it (the trainer compiles it like its step).
        """
        if (x is None) == (features is None):
            raise ValueError("probe_isolation needs exactly one of x (model input) or "
                             "features (slot name -> host features at the slot)")
        seeded = [name for name, slot in self.seed_slots.items() if slot.seed is not None]
        if features is None:
            assert x is not None
            features = self._features_at(seeded, x[:samples])
        missing = [name for name in seeded if name not in features]
        if missing:
            raise ValueError(f"features missing for seeded slots {missing}; got {list(features)}")
        reports: dict[str, IsolationReport] = {}
        for name in seeded:
            slot = self._slot(name)
            was_training = slot.training
            slot.eval()
            try:
                report = slot.probe_isolation(features[name][:samples], generator, squares)
            finally:
                slot.train(was_training)
            reports[name] = report
            if report.violated:
                slot.record(isolation_violations=1)
        return reports

    def _features_at(self, slots: Sequence[str], x: Tensor) -> dict[str, Tensor]:
        """Host features at each of ``slots`` (no grad, eval mode; stops after the last)."""
        features: dict[str, Tensor] = {}
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                h = x
                for name in self.host.segment_names():
                    if len(features) == len(slots):
                        break
                    h = self.host.run_segment(name, h)
                    if name in self.seed_slots:
                        if name in slots:
                            features[name] = h
                        h = self.seed_slots[name](h)
        finally:
            self.train(was_training)
        return features

    # ------------------------------------------------------------------ persistence

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Load weights and slot states; seeds are re-created from their blueprints.

        Keys saved from a ``torch.compile`` wrapper (``_orig_mod.`` prefix) are accepted.
        All or nothing: when loading fails, every tensor, seed and slot state is
        put back as it was.

        Raises:
            StateDictMismatchError: ``state_dict`` does not fit this model (a
                ``RuntimeError``, as ``nn.Module`` raises, and a ``ValueError``).
        """
        cleaned = {k.replace(_COMPILED_PREFIX, ""): v for k, v in state_dict.items()}
        slots = {slot: slot.contents() for slot in self.seed_slots.values()}
        tensors = self._snapshot_tensors()
        try:
            return super().load_state_dict(cleaned, strict=strict, assign=assign)
        except (RuntimeError, ValueError, TypeError, KeyError) as error:
            self._restore(slots, tensors)
            raise StateDictMismatchError(
                f"state_dict does not fit this model, nothing was loaded: "
                f"{str(error).strip().rstrip('.')}; build the model with the host and slots "
                "of the one that saved it") from error

    def _snapshot_tensors(self) -> _TensorSnapshot:
        """Every parameter and buffer of every submodule, with a copy of its values."""
        with torch.no_grad():
            return [(module, kind, name, tensor, tensor.detach().clone())
                    for module in self.modules()
                    for kind in ("_parameters", "_buffers")
                    for name, tensor in getattr(module, kind).items() if tensor is not None]

    def _restore(self, slots: dict[SeedSlot, SlotContents], tensors: _TensorSnapshot) -> None:
        """Undo a failed load: seeds, gates and states, then each tensor's object and values."""
        for slot, contents in slots.items():
            slot.restore_contents(contents)
        with torch.no_grad():
            for module, kind, name, tensor, values in tensors:
                getattr(module, kind)[name] = tensor
                tensor.copy_(values)
