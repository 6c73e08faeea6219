"""MorphogeneticModel: a host network with seed slots at its injection points."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple, overload

import torch
from torch import Tensor, nn

from ..core.alpha import check_alpha
from ..core.state import AlphaMode, SlotState
from ..core.tournament import is_candidate_id
from ..errors import StateDictMismatchError, TelemetryTypeError, UnknownSlotError
from ..leyline import QualityGates, SlotTelemetry, TaskConfig
from ..leyline.constants import DEFAULT_BLEND_ALGORITHM, DEFAULT_CANDIDATES
from ..ops.health import SeedHealth
from ..ops.isolation import IsolationReport, ProbeSquares, probe_squares
from ..ops.telemetry import GradientCapture, GradientEMA, GradientStats, materialize
from .graft_description import describe, input_spec
from .graft_hooks import Frame, GraftContext, attach, detach
from .graft_points import GraftPoint
from .graft_record import (
    as_args,
    device_of,
    record_points,
    resolve_points,
    takes_one_input,
    task_for,
)
from .model_state import restore, snapshot_tensors
from .protocol import HostProtocol
from .slot import SeedSlot, TelemetryCallback
from .slot_dict import SlotDict

_COMPILED_PREFIX = "_orig_mod."


class ForwardOutput(NamedTuple):
    """A forward's logits and what it saw at the seeded slots (``aux=True``).

    Attributes:
        logits: the host's output, as ``model(x)`` returns it.
        features: slot name -> the host features arriving at each slot that
            holds a seed (part of the graph).
        health: slot name -> the :class:`~esper.ops.health.SeedHealth` of each
            seeded slot: 0-d bool flags for a non-finite seed output and for a
            blown-up blend (device tensors; no host sync).
    """

    logits: Any
    features: dict[str, Tensor]
    health: dict[str, SeedHealth]


class MorphogeneticModel(nn.Module):
    """A host module plus one :class:`SeedSlot` per graft point.

    The host keeps its structure and its parameter names (``host.<name>``):
    each slot sits in a forward hook on the module whose output it takes
    (see :mod:`esper.nn.graft_hooks`), and the host's own forward runs as
    written. :func:`esper.graft` builds one from any module by module paths;
    a built-in host names its points itself.

    Arguments:
        host: any ``nn.Module``; with :class:`~esper.nn.protocol.HostProtocol`
            (``CNNHost``, ``TransformerHost``) its points go by name.
        device: where the host, seeds and slot states live (``None``: where the
            host's parameters are).
        slots: on a :class:`HostProtocol` host, its point names (see
            ``host.injection_points()``); on any other module (or as a mapping)
            module paths -> :class:`~esper.nn.graft_points.GraftPoint` options.
        task_config: lifecycle timing; its topology becomes each point's layout.
        fast_mode: skip event delivery.
        on_telemetry: called with every lifecycle event of every slot.
        gates: gate thresholds shared by the slots.
        alpha_mode: ``"scalar"`` or ``"channel"`` blending for every slot.
        example_input: the input of the dry run that measures each point (a
            tensor, or a tuple of positional arguments); a ``HostProtocol`` host
            brings its own.

    Raises:
        UnknownSlotError, GraftPointError (and its subclasses), AlreadyGraftedError,
        ExampleInputError: see the README's "Bad input" table; nothing is changed.

    Example:
        >>> model = MorphogeneticModel(CNNHost(), slots=("mid",))
        >>> model.germinate_seed("norm", "seed-1", slot="mid")
        >>> logits = model(torch.randn(8, 3, 32, 32))
    """

    def __init__(
        self,
        host: nn.Module,
        device: torch.device | str | None = "cpu",
        slots: Sequence[str] | Mapping[str, GraftPoint | None] = ("mid",),
        task_config: TaskConfig | None = None,
        fast_mode: bool = False,
        on_telemetry: TelemetryCallback | None = None,
        gates: QualityGates | None = None,
        alpha_mode: AlphaMode = "scalar",
        *,
        example_input: Any = None,
    ) -> None:
        super().__init__()
        named = host.injection_points() if isinstance(host, HostProtocol) else None
        if named is None and example_input is None:
            raise TypeError(f"host {type(host).__name__} names no injection points (it does not "
                            "satisfy HostProtocol: injection_points, example_input): graft any "
                            "module by module path with esper.graft(model, points, "
                            "example_input=...)")
        points = resolve_points(host, slots, named)
        example = example_input if example_input is not None else host.example_input()
        specs = record_points(host, points, example)
        self._example = input_spec(example)
        self.host = host if device is None else host.to(device)
        where = torch.device(device) if device is not None else device_of(self.host)
        self.seed_slots = SlotDict(
            (name, SeedSlot(name, spec.channels, topology=spec.layout, device=where,
                            task_config=task_for(task_config, spec.layout), gates=gates,
                            alpha_mode=alpha_mode, memory_format=spec.memory_format,
                            on_telemetry=on_telemetry, fast_mode=fast_mode,
                            isolate=spec.isolate, feature_shape=spec.feature_shape,
                            dtype=spec.dtype))
            for name, spec in specs.items())
        for slot in self.seed_slots.values():
            slot.attach_host(self.host.parameters)
        self._alpha_mode: AlphaMode = alpha_mode
        self._points = specs
        self._context = GraftContext()
        self._hook_ids: dict[str, int] | None = attach(self.host, self._context,
                                                       self.seed_slots, specs)
        self._single_input = takes_one_input(host)

    # ------------------------------------------------------------------ forward

    @overload
    def forward(self, *args: Any, alpha_overrides: Mapping[str, float | Tensor] | None = None,
                states: Mapping[str, SlotState] | None = None,
                aux: Literal[False] = False, **kwargs: Any) -> Any: ...

    @overload
    def forward(self, *args: Any, alpha_overrides: Mapping[str, float | Tensor] | None = None,
                states: Mapping[str, SlotState] | None = None,
                aux: Literal[True], **kwargs: Any) -> ForwardOutput: ...

    def forward(self, *args: Any, alpha_overrides: Mapping[str, float | Tensor] | None = None,
                states: Mapping[str, SlotState] | None = None, aux: bool = False,
                **kwargs: Any) -> Any:
        """Run the host with every slot in place: what it returns, or a :class:`ForwardOutput`.

        Arguments:
            args, kwargs: the host's inputs, passed to its forward as they are. On
                a host whose forward takes one input (the built-in ones),
                ``model(x, overrides)`` still means ``alpha_overrides=overrides``.
            alpha_overrides: slot name -> alpha for this call only (counterfactuals);
                no state changes. Under ``torch.compile`` prefer
                :meth:`functional_forward` with ``state.with_alpha(...)``, which
                reuses the training graph.
            states: slot name -> state to run with instead of the slots' own.
            aux: also return the host features and the seed health at each
                seeded slot (a :class:`ForwardOutput`); the logits are the same.

        Raises:
            InputDtypeError, InputShapeError: a built-in host's input checks.
            GraftShapeError: features at a point changed rank or channels.
            UnknownSlotError: an override names no slot (a ``ValueError``).
            AlphaValueError: an override outside [0, 1] or non-finite (a ``ValueError``).
            AlphaShapeError: an override of the wrong shape (a ``ValueError``).
        """
        if self._single_input and alpha_overrides is None and len(args) == 2 and (
                args[1] is None or isinstance(args[1], Mapping)):
            args, alpha_overrides = args[:1], args[1]
        if self._hook_ids is None:
            raise RuntimeError("this model was ungrafted: its host runs alone; graft it again")
        overrides = self._check_overrides(alpha_overrides) if alpha_overrides else {}
        features: dict[str, Tensor] | None = {} if aux else None
        health: dict[str, SeedHealth] | None = {} if aux else None
        before = self._context.frame
        self._context.frame = Frame(states, overrides, features, health)
        try:
            out = self.host(*args, **kwargs)
        finally:
            self._context.frame = before
        if features is not None and health is not None:
            return ForwardOutput(out, features, health)
        return out

    @overload
    def functional_forward(self, params: Mapping[str, Tensor], states: Mapping[str, SlotState],
                           x: Any, buffers: Mapping[str, Tensor] | None = None, *,
                           aux: Literal[False] = False) -> Any: ...

    @overload
    def functional_forward(self, params: Mapping[str, Tensor], states: Mapping[str, SlotState],
                           x: Any, buffers: Mapping[str, Tensor] | None = None, *,
                           aux: Literal[True]) -> ForwardOutput: ...

    def functional_forward(self, params: Mapping[str, Tensor], states: Mapping[str, SlotState],
                           x: Any, buffers: Mapping[str, Tensor] | None = None, *,
                           aux: bool = False) -> Any:
        """The forward as a pure function of parameters and slot states.

        Arguments:
            params: name -> tensor, as from ``dict(model.named_parameters())``
                (missing names fall back to the module's own tensors).
            states: slot name -> :class:`SlotState` (missing slots use their own state).
            x: the host's input (a tuple: its positional arguments).
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
        return torch.func.functional_call(self, tensors, as_args(x), {"states": states, "aux": aux})

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
                       blend_algorithm_id: str = DEFAULT_BLEND_ALGORITHM,
                       candidates: int = DEFAULT_CANDIDATES) -> SlotState:
        """Germinate a seed, or a tournament of ``candidates`` seeds, in ``slot`` (see
        :meth:`SeedSlot.germinate`)."""
        return self._slot(slot).germinate(blueprint_id, seed_id,
                                          blend_algorithm_id=blend_algorithm_id,
                                          candidates=candidates)

    def select_candidate(self, *, slot: str, scores: Sequence[float | None],
                         gradient_ratios: Sequence[float | None] = ()) -> SlotState:
        """End the tournament in ``slot``: the best-scoring live candidate stays (see
        :meth:`SeedSlot.select`; :func:`~esper.tolaria.evaluate.candidate_scores`
        measures the scores the trainer uses)."""
        return self._slot(slot).select(list(scores), list(gradient_ratios))

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
        """Materialize a capture or average (one sync) into each seed's metrics; a
        tournament candidate's (``"<slot>#<k>"``) is returned, not recorded."""
        stats = materialize(source)
        for name, measured in stats.items():
            if is_candidate_id(name):
                continue
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
        """Host features at each of ``slots`` that holds a seed (no grad, eval mode)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                features = self(x, aux=True).features
        finally:
            self.train(was_training)
        return {name: features[name] for name in slots if name in features}

    # ------------------------------------------------------------------ the graft

    def graft_description(self) -> dict[str, Any]:
        """The graft as JSON types: ``alpha_mode``, the ``example_input``'s shapes and dtypes
        (``None`` if an argument was not a tensor) and, per slot in forward order, its module
        path, ``select``, ``isolate``, ``layout``, ``channels``, ``feature_shape``, ``dtype``
        and ``memory_format`` (what re-grafting a fresh copy of the host needs)."""
        return describe(self._points, self.seed_slots, self._alpha_mode, self._example)

    def ungraft(self) -> nn.Module:
        """Remove the slots' hooks and return the host, which then runs alone (and may be
        grafted again); this model refuses to run afterwards. Seeds are not folded in."""
        if self._hook_ids is not None:
            detach(self.host, self._points, self._hook_ids)
        self._hook_ids = None
        return self.host

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
        tensors = snapshot_tensors(self)
        try:
            return super().load_state_dict(cleaned, strict=strict, assign=assign)
        except (RuntimeError, ValueError, TypeError, KeyError) as error:
            restore(slots, tensors)
            raise StateDictMismatchError(
                f"state_dict does not fit this model, nothing was loaded: "
                f"{str(error).strip().rstrip('.')}; build the model with the host and slots "
                "of the one that saved it") from error
