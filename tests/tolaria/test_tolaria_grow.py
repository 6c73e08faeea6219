"""End to end: ``esper grow`` through its entry point, and exact resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from esper.checkpoint import load_checkpoint
from esper.cli import main
from esper.leyline import QualityGates, SeedStage, is_valid_transition
from esper.tamiyo import ControllerConfig
from esper.tolaria.config import GrowConfig
from esper.tolaria.run import grow

EAGER_CONTROLLER = ControllerConfig(warmup_epochs=0, plateau_patience=1, plateau_delta=100.0)


def tiny(out: Path, epochs: int, **changes) -> GrowConfig:
    # blending and embargo shorter than the contract's 5 and 5, for lifecycles in a few epochs
    options = {"limit": 96, "compile": False, "quiet": True, "max_seeds": 2,
               "controller": EAGER_CONTROLLER, "blending_steps": 3, "embargo_epochs": 2,
               **changes}
    return GrowConfig(epochs=epochs, out=out, **options)


def check_lifecycle(events: list[dict]) -> dict[str, list[str]]:
    """Every slot's stage changes chain from DORMANT through valid transitions."""
    stages: dict[str, list[str]] = {}
    for event in events:
        if event["kind"] == "lifecycle" and event["type"] == "SEED_STAGE_CHANGED":
            path = stages.setdefault(event["slot_id"], ["DORMANT"])
            source, target = event["payload"]["from"], event["payload"]["to"]
            assert source == path[-1], f"{event['slot_id']}: {source} does not follow {path}"
            assert is_valid_transition(SeedStage[source], SeedStage[target])
            path.append(target)
    check_fossils_follow_holding(events)
    return stages


def check_fossils_follow_holding(events: list[dict]) -> list[tuple[str, int]]:
    """Every SEED_FOSSILIZED comes at least one epoch after its seed entered HOLDING.

    Returns each fossil's slot and epoch. G5 judges the counterfactual measured
    during a whole epoch in HOLDING at full alpha, never the one of the epoch that
    reached HOLDING (measured while the seed was still BLENDING).
    """
    entered: dict[tuple[str, str], int] = {}
    fossils = []
    for event in events:
        if event["kind"] != "lifecycle":
            continue
        seed = (event["slot_id"], event["seed_id"])
        if event["type"] == "SEED_STAGE_CHANGED" and event["payload"]["to"] == "HOLDING":
            entered[seed] = event["epoch"]
        elif event["type"] == "SEED_FOSSILIZED":
            assert seed in entered, f"{seed} fossilized without entering HOLDING"
            assert event["epoch"] >= entered[seed] + 1, (
                f"{seed} fossilized at epoch {event['epoch']}, entered HOLDING at "
                f"{entered[seed]}")
            fossils.append((seed[0], event["epoch"]))
    return fossils


def test_grow_cli_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["grow", "--epochs", "8", "--limit", "96", "--no-compile", "--quiet",
                 "--max-seeds", "2", "--out", str(out)]) == 0
    for name in ("events.jsonl", "metrics.csv", "growth.png", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "growth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    summary = json.loads((out / "summary.json").read_text())
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    stages = check_lifecycle(events)
    assert summary["epochs"] == 8 and summary["seeds_germinated"] == len(stages) >= 1
    assert {r["early_stage"] for r in rows} >= {"DORMANT"}
    assert "final accuracy" in capsys.readouterr().out


def test_grown_run_events_describe_a_valid_lifecycle(tmp_path):
    out = tmp_path / "run"
    summary = grow(tiny(out, epochs=6))
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    stages = check_lifecycle(events)
    assert summary.seeds_germinated >= 1 and stages
    decisions = [e for e in events if e["kind"] == "decision"]
    assert decisions and all(e["outcome"] for e in decisions)
    checkpoint = load_checkpoint(out / "checkpoint")
    assert checkpoint.trainer_state["epoch"] == 6


def test_seeds_fossilize_only_after_a_full_epoch_in_holding(tmp_path):
    """A run that fossilizes: every fossil spent an epoch in HOLDING first."""
    out = tmp_path / "run"
    # lr 0.2 lets the seeds pass G2 on this small sample; G5 at 0 points fossilizes
    # whatever the (noisy, 96-sample) counterfactual, so only the timing is tested.
    summary = grow(tiny(out, epochs=10, lr=0.2, gates=QualityGates(min_fossilize_contribution=0.0)))
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    check_lifecycle(events)
    fossils = check_fossils_follow_holding(events)
    assert fossils and summary.seeds_fossilized == len(fossils)
    fossilize = [e for e in events if e["kind"] == "decision" and e["action"] == "fossilize"]
    assert all(e["outcome"] == "fossilized" for e in fossilize)  # asked only when G5 passes
    assert sorted((e["slot"], e["epoch"]) for e in fossilize) == sorted(fossils)


def without_seconds(rows: list[dict]) -> list[dict]:
    """Records and CSV rows less their wall-clock time."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_resume_continues_exactly(tmp_path):
    straight = tmp_path / "straight"
    grow(tiny(straight, epochs=6))
    split = tmp_path / "split"
    grow(tiny(split, epochs=6, stop_after=3))
    grow(tiny(split, epochs=6), resume=split)
    a, b = load_checkpoint(straight / "checkpoint"), load_checkpoint(split / "checkpoint")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert torch.equal(sa[key], sb[key]), key
    assert a.model.slot_states() == b.model.slot_states()
    assert without_seconds(a.trainer_state["records"]) == without_seconds(
        b.trainer_state["records"])
    assert without_seconds(list(csv.DictReader((straight / "metrics.csv").open()))) == \
        without_seconds(list(csv.DictReader((split / "metrics.csv").open())))
    assert (straight / "events.jsonl").read_text() == (split / "events.jsonl").read_text()
    ours, theirs = a.optimizer.buffers["momentum"], b.optimizer.buffers["momentum"]
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_compiled_run_recompiles_only_on_germinate_and_prune(tmp_path):
    out = tmp_path / "compiled"
    summary = grow(tiny(out, epochs=6, compile=True, compile_backend="aot_eager"))
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    structural = {e["epoch"] for e in events if e["kind"] == "decision"
                  and e["outcome"] in ("germinated", "pruned")}
    structural |= {e["epoch"] for e in events if e["kind"] == "lifecycle"
                   and e["type"] == "SEED_PRUNED"}
    germinated = [e["epoch"] for e in events if e["kind"] == "decision"
                  and e["outcome"] == "germinated"]
    assert summary.seeds_germinated >= 1
    # One graph to start, then at most one per epoch whose end changed the topology.
    assert summary.compile_count == 1 + len({epoch for epoch in structural if epoch < 6})
    # The probe: one small graph per seed, built at its first probe (the next epoch).
    assert summary.probe_compile_count == len([e for e in germinated if e < 6])
    # The compiling calls took time, and no more than the whole run did.
    assert 0 < summary.probe_compile_seconds < summary.compile_seconds < summary.wall_seconds
    assert json.loads((out / "summary.json").read_text())["compile_seconds"] == \
        summary.compile_seconds


@pytest.mark.parametrize("argv, message", [
    (["grow", "--epochs", "0"], "must be >= 1"),
    (["grow", "--task", "mnist"], "invalid choice"),
    (["grow", "--blueprints", "nope", "--epochs", "1"], "unknown cnn blueprints"),
    (["grow", "--task", "cifar10", "--data-dir", "/nonexistent/cifar"], "nonexistent"),
    (["grow", "--slots", "middle", "--epochs", "1", "--limit", "8"], "injection points"),
])
def test_bad_cli_input_exits_2_with_a_message(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
