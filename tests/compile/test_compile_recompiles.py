"""One graph per grad mode for a whole seed lifecycle; only germinate and prune add graphs.

The functional path: states are passed into the product's compiled step, as the trainer
does.
Stage changes and every alpha are tensor values of the state, and everything
else in it is metadata the graph never reads, so none of them may recompile.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from compile_support import (
    FOSSILIZE_TELEMETRY,
    SEED_SLOT,
    build_tiny,
    lifecycle_states,
    make_eval_forward,
    state_in,
    step_inputs,
    telemetry,
)
from torch._dynamo.testing import CompileCounterWithBackend

from esper.kasmina import TransitionRecord, advance, set_alpha, step
from esper.leyline import SeedStage, SlotTelemetry
from esper.tolaria.compiled import build_step
from tests.seed_training import nudge_training_seeds

OVERRIDES = (0.0, 0.25, 1.0)  # counterfactual, what-if, full contribution


def test_lifecycle_is_one_training_graph_and_one_eval_graph(tiny, backend: str) -> None:
    """TRAINING -> BLENDING (every ramp alpha, set_alpha) -> HOLDING -> FOSSILIZED + overrides."""
    train_counter = CompileCounterWithBackend(backend)
    eval_counter = CompileCounterWithBackend(backend)
    train_step = build_step(True, train_counter)
    evaluate = torch.compile(make_eval_forward(tiny), backend=eval_counter, fullgraph=True)
    inputs, others = step_inputs(tiny), tiny.model.slot_states()
    params, buffers = inputs.params, inputs.buffers  # the step updates them in place

    run = lifecycle_states(tiny.slot.state)
    blending = next(s for s in run if s.stage == SeedStage.BLENDING)
    extra = [set_alpha(blending, value) for value in (0.1, 0.5, 0.9)]
    extra += [state.with_alpha(value) for state in (run[1], run[-1]) for value in OVERRIDES]
    alphas = set()
    for state in [*run, *extra]:
        states = {**others, SEED_SLOT: state}
        result = train_step(tiny.model, replace(inputs, states=states), tiny.x, tiny.y)
        assert torch.isfinite(result.loss), state
        tiny.model.eval()
        with torch.no_grad():
            for value in OVERRIDES:
                evaluate(params, buffers, {**states, SEED_SLOT: state.with_alpha(value)}, tiny.x)
            evaluate(params, buffers, states, tiny.x)
        tiny.model.train()
        alphas.add(float(state.alpha))

    assert len(alphas) >= 6, alphas  # the ramp really moved
    assert train_counter.frame_count == 1
    assert eval_counter.frame_count == 1


def test_bookkeeping_never_recompiles(backend: str) -> None:
    """Metrics, epochs, history, gate records and telemetry-only steps reuse the graph."""
    tiny = build_tiny("cnn")
    training = state_in(SeedStage.TRAINING, tiny.slot.state)
    fossilized = lifecycle_states(tiny.slot.state)[-1]
    refused, result = advance(training, SeedStage.BLENDING, SlotTelemetry(0.0))
    assert not result.passed and refused.stage == SeedStage.TRAINING
    record = TransitionRecord(SeedStage.TRAINING, SeedStage.TRAINING, 3, "note", "seed-1")
    stalled = step(training, SlotTelemetry(1.0, seed_gradient_norm_ratio=0.0))  # G2 refuses
    assert stalled.stage == SeedStage.TRAINING and stalled.metrics != training.metrics
    variants = [
        training,
        training.replace(epoch=training.epoch + 40),
        training.replace(metrics=training.metrics.replace(
            current_accuracy=12.5, best_accuracy=80.0, seed_gradient_norm_ratio=3.0,
            counterfactual_contribution=-1.0, isolation_violations=2)),
        training.replace(history=(*training.history, record)),
        refused,
        stalled,
        fossilized,
        step(fossilized, telemetry(30)),
        step(step(fossilized, FOSSILIZE_TELEMETRY), SlotTelemetry(float("nan"))),
    ]
    cnt = CompileCounterWithBackend(backend)
    train_step = build_step(True, cnt)
    inputs = step_inputs(tiny)
    for state in variants:
        result = train_step(tiny.model, replace(inputs, states={SEED_SLOT: state}), tiny.x,
                            tiny.y)
        assert torch.isfinite(result.loss)
    # Fossilized is a different stage from training but the same graph.
    assert cnt.frame_count == 1


def test_only_germinate_and_prune_add_graphs() -> None:
    """After prune one more frame at most, after re-germination another one at most.

    Recompiles are decided by dynamo's guards, whatever the backend, so one
    backend suffices. States and parameters come from the stateful model, as a
    trainer mixing both APIs would pass them. The transformer host here; the
    CNN's exact counts are :func:`test_a_scripted_run_compiles_one_graph_per_topology_it_visits`'s.
    """
    tiny = build_tiny("transformer")
    cnt = CompileCounterWithBackend("eager")
    train_step = build_step(True, cnt)
    model, slot = tiny.model, tiny.slot

    def frames_after_one_step() -> int:
        result = train_step(model, step_inputs(tiny), tiny.x, tiny.y)
        assert torch.isfinite(result.loss)
        return cnt.frame_count

    def live_epochs(first_epoch: int) -> None:  # GERMINATED -> TRAINING -> BLENDING, stepping
        for epoch in range(first_epoch, first_epoch + 4):
            nudge_training_seeds(model)  # the step trains copies: the seed's own weights move
            slot.step_epoch(telemetry(epoch))
            assert frames_after_one_step() == seeded
        assert slot.state.stage == SeedStage.BLENDING

    seeded = frames_after_one_step()
    assert seeded == 1
    live_epochs(1)

    model.prune_seed(slot=SEED_SLOT, reason="test")
    pruned = frames_after_one_step()
    assert pruned <= seeded + 1
    for epoch in range(5, 50):  # PRUNED -> EMBARGOED -> RESETTING -> DORMANT
        slot.step_epoch(telemetry(epoch))
        assert frames_after_one_step() == pruned, slot.state
        if slot.state.stage == SeedStage.DORMANT:
            break
    assert slot.state.stage == SeedStage.DORMANT

    model.germinate_seed("norm", "seed-2", slot=SEED_SLOT)
    regerminated = frames_after_one_step()
    assert regerminated <= pruned + 1
    seeded = regerminated
    live_epochs(50)


def test_a_scripted_run_compiles_one_graph_per_topology_it_visits() -> None:
    """Two germinations and a prune, every stage walked between them: the product step
    compiles one graph for each distinct set of live seeds and reuses it when that set
    comes back. Today's number for this script is 4 (no seed; norm@mid; norm@mid with
    conv_light@early; conv_light@early alone), the 5th topology being the 3rd again.
    Dynamo's guards decide it, whatever the backend: the cheapest one counts."""
    tiny = build_tiny("cnn", germinate=False)
    counter = CompileCounterWithBackend("eager")
    train_step = build_step(True, counter)
    model = tiny.model

    def steps_through(epochs: int) -> int:
        for epoch in range(epochs):
            result = train_step(model, step_inputs(tiny), tiny.x, tiny.y)
            assert torch.isfinite(result.loss)
            for name, slot in model.seed_slots.items():
                if slot.seed is not None:
                    nudge_training_seeds(model)
                    model.seed_slots[name].step_epoch(telemetry(epoch))
        return counter.frame_count

    assert steps_through(2) == 1  # dormant slots: the bare host
    model.germinate_seed("norm", "a", slot=SEED_SLOT)
    assert steps_through(4) == 2  # germinated -> training -> blending: one graph
    model.germinate_seed("conv_light", "b", slot="early")
    assert steps_through(4) == 3
    model.prune_seed(slot=SEED_SLOT, reason="test")
    assert steps_through(2) == 4  # the pruned seed's parameters left the step
    for epoch in range(50):  # the pruned slot waits out its embargo: still graph 4
        model.seed_slots[SEED_SLOT].step_epoch(telemetry(epoch))
        if model.seed_slots[SEED_SLOT].state.stage == SeedStage.DORMANT:
            break
    model.germinate_seed("norm", "c", slot=SEED_SLOT)
    assert steps_through(2) == 4  # the same live set as graph 3: reused
    assert counter.frame_count == 4
