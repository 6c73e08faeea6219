"""A run's configuration: kept by its checkpoint, continued by ``--resume``, its defaults
from one source, its departures from the contract listed, its blend algorithm chosen."""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from esper.checkpoint import load_checkpoint
from esper.checkpoint.layout import current
from esper.cli import _FIELDS, build_parser, main
from esper.core.state import SlotState
from esper.errors import CheckpointError, ResumeConflictError
from esper.leyline import SeedStage
from esper.leyline import constants as C
from esper.optim import optimizer_config
from esper.tamiyo import ControllerConfig, ControllerMemory, HeuristicController
from esper.tolaria.commands import CommandVerifier, LifecycleCommand, sign
from esper.tolaria.config import GrowConfig
from esper.tolaria.progress import check_progress
from esper.tolaria.run import grow
from esper.tolaria.runconfig import config_from_record, config_record
from tests.checkpoint.checkpoint_support import tamper

KEY = b"k" * 32
# A run made with settings other than the defaults, stopped after its first epoch.
FIRST = ["grow", "--epochs", "2", "--limit", "40", "--no-compile", "--quiet", "--lr", "0.1",
         "--width", "6", "--seed", "7", "--batch-size", "16", "--max-seeds", "1",
         "--slots", "early", "mid", "--blend", "linear", "--blending-steps", "3",
         "--embargo-epochs", "2"]


def tree_of(directory: Path) -> dict[str, bytes | None]:
    """Every path under ``directory`` and its bytes (``None`` for a directory)."""
    return {str(p.relative_to(directory)): None if p.is_dir() else p.read_bytes()
            for p in sorted(directory.rglob("*"))}


def stored(run: Path) -> GrowConfig:
    state = load_checkpoint(run / "checkpoint").trainer_state
    return config_from_record(state["config"])


@pytest.fixture()
def in_tmp(tmp_path: Path):
    """Run in ``tmp_path`` as the current directory (where ``runs/grow`` would go)."""
    here = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(here)


@pytest.fixture()
def stopped(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    run = in_tmp / "run"
    assert main([*FIRST, "--out", str(run), "--stop-after", "1"]) == 0
    capsys.readouterr()
    return run


def test_the_checkpoint_keeps_the_runs_configuration(stopped: Path) -> None:
    config = stored(stopped)
    assert (config.epochs, config.limit, config.lr, config.width, config.seed,
            config.batch_size, config.max_seeds, config.slots, config.blend_algorithm,
            config.blending_steps, config.embargo_epochs, config.compile) == (
        2, 40, 0.1, 6, 7, 16, 1, ("early", "mid"), "linear", 3, 2, "never")
    assert config == GrowConfig(epochs=2, limit=40, compile=False, lr=0.1, width=6, seed=7,
                                batch_size=16, max_seeds=1, slots=("early", "mid"),
                                blend_algorithm="linear", blending_steps=3, embargo_epochs=2)


def test_resume_alone_continues_the_run_with_its_configuration_in_its_directory(
        stopped: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = stored(stopped)
    outside = sorted(p.name for p in in_tmp.iterdir())
    assert main(["grow", "--resume", str(stopped)]) == 0  # no --out, no other option
    assert sorted(p.name for p in in_tmp.iterdir()) == outside == ["run"]  # no runs/grow
    assert stored(stopped) == before
    checkpoint = load_checkpoint(stopped / "checkpoint")
    assert checkpoint.trainer_state["epoch"] == 2  # the run's 2 epochs, not the default 30
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["out_dir"] == str(stopped)
    assert summary["contract_departures"] == {
        "blend_algorithm": {"value": "linear", "contract": "sigmoid"},
        "blending_steps": {"value": 3, "contract": 5},
        "embargo_epochs": {"value": 2, "contract": 5}}
    # the run's width 6 and slots: the host's first convolution has 6 channels
    assert checkpoint.model.host.blocks[0][0].out_channels == 6
    assert list(checkpoint.model.seed_slots) == ["early", "mid"]
    assert len((stopped / "metrics.csv").read_text().splitlines()) == 3


def test_resume_through_the_checkpoint_directory_writes_into_the_run(
        stopped: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grow", "--resume", str(stopped / "checkpoint")]) == 0
    assert sorted(p.name for p in in_tmp.iterdir()) == ["run"]
    assert json.loads((stopped / "summary.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("option, given, theirs", [
    (["--lr", "0.2"], "--lr 0.2", "--lr 0.1"),
    (["--lr", str(C.DEFAULT_RUN_LR)], f"--lr {C.DEFAULT_RUN_LR}", "--lr 0.1"),  # a default, given
    (["--width", "8"], "--width 8", "--width 6"),
    (["--seed", "3"], "--seed 3", "--seed 7"),
    (["--batch-size", "32"], "--batch-size 32", "--batch-size 16"),
    (["--limit", "50"], "--limit 50", "--limit 40"),
    (["--max-seeds", "2"], "--max-seeds 2", "--max-seeds 1"),
    (["--slots", "mid"], "--slots mid", "--slots early mid"),
    (["--task", "chars"], "--task chars", "--task digits"),
    (["--blend", "gated"], "--blend gated", "--blend linear"),
    (["--blending-steps", "5"], "--blending-steps 5", "--blending-steps 3"),
    (["--embargo-epochs", "5"], "--embargo-epochs 5", "--embargo-epochs 2"),
    (["--baseline"], "--baseline", "no --baseline"),
    (["--controller", "external", "--commands", "c.jsonl"], "--commands c.jsonl",
     "no --commands"),
])
def test_resume_refuses_an_option_that_conflicts_with_the_run(
        stopped: Path, capsys: pytest.CaptureFixture[str], option: list[str], given: str,
        theirs: str) -> None:
    before = tree_of(stopped)
    with pytest.raises(SystemExit) as info:
        main(["grow", "--resume", str(stopped), *option])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--resume {stopped}: {given} conflicts with the run's {theirs}" in err
    assert "only --compile, --compile-backend, --data-dir, --device, --epochs, --quiet, " \
           "--stop-after may change" in err
    assert tree_of(stopped) == before


def test_resume_names_every_conflict_at_once(stopped: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["grow", "--resume", str(stopped), "--lr", "0.3", "--width", "4"])
    err = capsys.readouterr().err
    assert "--lr 0.3 conflicts with the run's --lr 0.1" in err
    assert "--width 4 conflicts with the run's --width 6" in err


def test_resume_refuses_another_out(stopped: Path, in_tmp: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_of(in_tmp)
    with pytest.raises(SystemExit) as info:
        main(["grow", "--resume", str(stopped), "--out", str(in_tmp / "elsewhere")])
    assert info.value.code == 2
    assert (f"--out {in_tmp / 'elsewhere'} conflicts with the run's directory {stopped}: a "
            "resumed run continues in its own directory" in capsys.readouterr().err)
    assert tree_of(in_tmp) == before
    # naming its own directory is fine
    assert main(["grow", "--resume", str(stopped), "--out", str(stopped)]) == 0


def test_resume_with_the_runs_own_values_and_changeable_options(
        stopped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grow", "--resume", str(stopped), "--lr", "0.1", "--width", "6", "--quiet",
                 "--no-compile", "--compile-backend", "aot_eager"]) == 0
    assert stored(stopped).compile_backend == "aot_eager"  # allowed to change
    assert load_checkpoint(stopped / "checkpoint").trainer_state["epoch"] == 2


def test_epochs_extends_a_run_and_may_not_shorten_it(
        stopped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grow", "--resume", str(stopped), "--epochs", "3"]) == 0
    assert load_checkpoint(stopped / "checkpoint").trainer_state["epoch"] == 3
    assert stored(stopped).epochs == 3
    assert json.loads((stopped / "summary.json").read_text())["epochs"] == 3
    assert len((stopped / "metrics.csv").read_text().splitlines()) == 4
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["grow", "--resume", str(stopped), "--epochs", "2"])
    assert info.value.code == 2
    assert "--epochs 2 is fewer than the 3 epochs the run has done" in capsys.readouterr().err


def test_the_api_refuses_a_resume_with_another_configuration(stopped: Path) -> None:
    config = stored(stopped)
    message = "--lr 0.5 conflicts with the run's --lr 0.1"
    with pytest.raises(ResumeConflictError, match=re.escape(message)):
        grow(replace(config, lr=0.5, out=stopped, quiet=True), resume=stopped)


def test_the_checkpoints_configuration_is_validated(stopped: Path) -> None:
    state = load_checkpoint(stopped / "checkpoint").trainer_state
    assert check_progress(state)["config"] == stored(stopped)
    for key, value, message in (("lr", "fast", "config.lr must be null or a number in (0, 10]"),
                                ("lr", float("nan"), "config.lr must be null or a number"),
                                ("optimizer", "adam", "unknown optimizer 'adam'"),
                                ("precision", 16, "config.precision must be a non-empty string"),
                                ("seed", -1, "config.seed must be an int in [0, 4294967295]"),
                                ("blend_algorithm", "cubic", "blend_algorithm must be one of"),
                                ("slots", "mid", "config.slots must be a list of names")):
        edited = {**state, "config": {**state["config"], key: value}}
        with pytest.raises(CheckpointError, match=re.escape(message)):
            check_progress(edited)
    with pytest.raises(CheckpointError, match=r"unexpected \['extra'\]"):
        check_progress({**state, "config": {**state["config"], "extra": 1}})


def test_a_tampered_configuration_is_refused_on_resume(
        stopped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    version = current(stopped / "checkpoint")
    assert version is not None
    tamper(version, document=lambda d: d["trainer"]["config"].update(epochs=0))
    with pytest.raises(SystemExit) as info:
        main(["grow", "--resume", str(stopped)])
    assert info.value.code == 2
    assert "config.epochs must be an int in [1, " in capsys.readouterr().err


def test_a_checkpoint_without_a_configuration_resumes_with_the_options_given(
        stopped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    version = current(stopped / "checkpoint")
    assert version is not None
    tamper(version, document=lambda d: d["trainer"].pop("config"))
    assert main([*FIRST, "--resume", str(stopped)]) == 0
    assert load_checkpoint(stopped / "checkpoint").trainer_state["epoch"] == 2


# --------------------------------------------------------------------------- defaults


def test_one_source_for_each_default() -> None:
    args = build_parser().parse_args(["grow"])
    config = GrowConfig()
    assert (args.epochs, args.max_seeds, args.lr, args.batch_size, args.seed, args.task,
            tuple(args.slots), args.compile_backend) == (
        config.epochs, config.max_seeds, config.lr, config.batch_size, config.seed,
        config.task, config.slots, config.compile_backend) == (
        C.DEFAULT_RUN_EPOCHS, C.DEFAULT_RUN_MAX_SEEDS, None,
        C.DEFAULT_RUN_BATCH_SIZE, C.DEFAULT_RUN_SEED, C.DEFAULT_RUN_TASK, C.DEFAULT_RUN_SLOTS,
        C.DEFAULT_COMPILE_BACKEND)
    assert (args.blending_steps, args.embargo_epochs, args.blend) == (5, 5, "sigmoid")
    task = config.task_config("cnn")
    assert (task.blending_steps, task.embargo_epochs) == (
        C.DEFAULT_BLENDING_STEPS, C.DEFAULT_EMBARGO_EPOCHS) == (5, 5)
    assert config.departures() == {}
    assert config.blueprints_for("cnn") == ControllerConfig().blueprints \
        == C.DEFAULT_RUN_BLUEPRINTS["cnn"]
    assert args.dist_timeout == C.DEFAULT_DIST_TIMEOUT_S
    assert (args.optimizer, args.schedule, args.warmup_steps, args.precision, args.device) == (
        config.optimizer, config.schedule, config.warmup_steps, config.precision,
        config.device) == (C.DEFAULT_OPTIMIZER, C.DEFAULT_SCHEDULE, C.DEFAULT_WARMUP_STEPS,
                           C.DEFAULT_PRECISION, C.DEFAULT_DEVICE)
    assert optimizer_config(config.optimizer, lr=config.lr).lr == C.DEFAULT_RUN_LR
    assert optimizer_config("adamw", lr=config.lr).lr == C.DEFAULT_ADAMW_LR
    assert args.compile == config.compile == C.DEFAULT_COMPILE_MODE == "auto"


def test_compile_modes_on_the_command_line_and_in_records() -> None:
    parser = build_parser()
    for argv, mode in ((["--no-compile"], "never"), (["--compile", "always"], "always"),
                       (["--compile", "never"], "never"), ([], "auto")):
        args = parser.parse_args(["grow", *argv])
        assert args.compile == mode
        assert ("compile" in getattr(args, "given", ())) == bool(argv)
    with pytest.raises(SystemExit):
        parser.parse_args(["grow", "--compile", "sometimes"])
    assert GrowConfig(compile=True).compile == "always"
    assert GrowConfig(compile=False).compile == "never"
    with pytest.raises(ValueError, match=r"unknown compile 'sometimes'; known: \['auto'"):
        GrowConfig(compile="sometimes")
    record = config_record(GrowConfig())
    assert record["compile"] == "auto"
    for old, mode in ((True, "always"), (False, "never")):  # a run recorded before the modes
        assert config_from_record({**record, "compile": old}).compile == mode
    with pytest.raises(CheckpointError, match=r"config\.compile must be a non-empty string"):
        config_from_record({**record, "compile": 1})


def _grow_help_by_option() -> tuple[dict[str, str], list[argparse.Action]]:
    """``esper grow --help``'s text of each option (by its first flag) and the parser's actions."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    grow_parser = commands.choices["grow"]
    text = grow_parser.format_help().split("\noptions:\n", 1)[1]
    entries = re.split(r"\n  (?=-)", "\n" + text)
    by_flag = {entry.split()[0].rstrip(","): " ".join(entry.split()) for entry in entries if entry}
    return by_flag, grow_parser._actions


def test_help_shows_growconfigs_default_for_every_option_that_has_one() -> None:
    by_flag, actions = _grow_help_by_option()
    config = GrowConfig()
    checked = set()
    for action in actions:
        if action.dest not in _FIELDS or action.default is argparse.SUPPRESS:  # an alias
            continue
        name, convert = _FIELDS[action.dest]
        value = getattr(config, name)
        assert (convert(action.default) if convert else action.default) == value, action.dest
        shown = by_flag[action.option_strings[0]]
        if action.default is None:  # the help says what happens without it
            assert "(default: None)" not in shown, shown
            checked.add(name)
            continue
        assert shown.endswith(f"(default: {action.default})"), shown
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            assert shown.endswith(f"(default: {value})"), shown
        checked.add(name)
    assert checked == {name for name, _ in _FIELDS.values()}
    assert f"(default: {config.out};" in by_flag["--out"]


def test_help_shows_the_contract_and_its_departures(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["grow", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--blending-steps BLENDING_STEPS epochs of a seed's alpha ramp; the contract's " \
           "value is 5: another is a departure listed in summary.json (default: 5)" in text
    assert "the contract's value is 5: another is a departure listed in summary.json " \
           "(default: 5)" in text.split("--embargo-epochs EMBARGO_EPOCHS")[1]
    assert "--blend {linear,sigmoid,gated}" in text
    assert "--epochs EPOCHS epochs to train (with --resume: extends the run) (default: 30)" in text
    assert "--lr LR learning rate, in (0, 10] (default: 0.05 for sgd, 0.001 for adamw)" in text
    assert "--optimizer {sgd,adamw}" in text and "(default: sgd)" in text


def test_summary_lists_departures_and_none_on_the_contract(in_tmp: Path,
                                                           capsys: pytest.CaptureFixture[str]):
    assert main(["grow", "--epochs", "1", "--limit", "16", "--no-compile", "--quiet",
                 "--out", "plain"]) == 0
    assert json.loads(Path("plain/summary.json").read_text())["contract_departures"] == {}
    assert main(["grow", "--epochs", "1", "--limit", "16", "--no-compile", "--quiet",
                 "--out", "departs", "--blending-steps", "3", "--embargo-epochs", "2"]) == 0
    assert json.loads(Path("departs/summary.json").read_text())["contract_departures"] == {
        "blending_steps": {"value": 3, "contract": 5},
        "embargo_epochs": {"value": 2, "contract": 5}}
    assert "departures from the contract" in capsys.readouterr().out
    state = load_checkpoint("departs/checkpoint").model.slot_states()["mid"]
    assert (state.task.blending_steps, state.task.embargo_epochs) == (3, 2)


# --------------------------------------------------------------------------- blend algorithms


def test_the_controller_germinates_with_its_blend_algorithm() -> None:
    for algorithm in C.BLEND_ALGORITHMS:
        controller = HeuristicController(ControllerConfig(
            blend_algorithm=algorithm, warmup_epochs=0, plateau_patience=1, plateau_delta=100.0))
        states = {"mid": SlotState.dormant("mid", channels=8)}
        decisions, _ = controller.decide(2, 50.0, states, ControllerMemory(accuracies=(50.0,)))
        assert [(d.action, d.blend_algorithm_id) for d in decisions] == [("germinate", algorithm)]
    message = "ControllerConfig.blend_algorithm must be one of"
    with pytest.raises(ValueError, match=re.escape(message)):
        ControllerConfig(blend_algorithm="cubic")


@pytest.mark.parametrize("algorithm", C.BLEND_ALGORITHMS)
def test_a_run_germinates_with_the_configured_blend_algorithm(tmp_path: Path,
                                                              algorithm: str) -> None:
    """The heuristic controller of a run set up with ``blend_algorithm`` (``--blend``)."""
    out = tmp_path / "run"
    controller = ControllerConfig(warmup_epochs=0, plateau_patience=1, plateau_delta=100.0)
    grow(GrowConfig(epochs=2, limit=16, compile=False, quiet=True, slots=("mid",),
                    max_seeds=1, controller=controller, blend_algorithm=algorithm, out=out))
    state = load_checkpoint(out / "checkpoint").model.slot_states()["mid"]
    assert state.stage != SeedStage.DORMANT and state.blend_algorithm_id == algorithm
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    germinated = [e for e in events if e["kind"] == "decision" and e["action"] == "germinate"]
    assert [e["blend_algorithm_id"] for e in germinated] == [algorithm]


@pytest.mark.parametrize("algorithm", C.BLEND_ALGORITHMS)
def test_commands_and_the_cli_choose_the_blend_algorithm(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        algorithm: str) -> None:
    """A signed germinate naming ``algorithm`` gets it; one naming none gets ``--blend``."""
    others = [a for a in C.BLEND_ALGORITHMS if a != algorithm]
    commands, out = tmp_path / "commands.jsonl", tmp_path / "run"
    lines = [LifecycleCommand("germinate", "early", "norm", "s1", time.time(), "n-1",
                              blend_algorithm_id=algorithm),
             LifecycleCommand("germinate", "mid", "norm", "s2", time.time(), "n-2")]
    commands.write_text("".join(sign(c, KEY).to_json() + "\n" for c in lines))
    monkeypatch.setenv("ESPER_COMMAND_KEY", KEY.decode())
    assert main(["grow", "--epochs", "1", "--limit", "16", "--no-compile", "--quiet",
                 "--slots", "early", "mid", "--controller", "external", "--commands",
                 str(commands), "--blend", others[0], "--out", str(out)]) == 0
    states = load_checkpoint(out / "checkpoint").model.slot_states()
    assert (states["early"].seed_id, states["early"].blend_algorithm_id) == ("s1", algorithm)
    assert (states["mid"].seed_id, states["mid"].blend_algorithm_id) == ("s2", others[0])


def test_a_signed_blend_algorithm_is_signed_and_checked() -> None:
    verifier = CommandVerifier(KEY, clock=lambda: 100.0)
    plain = LifecycleCommand("germinate", "mid", "norm", "s1", 100.0, "n-1")
    assert '"blend_algorithm_id"' not in sign(plain, KEY).to_json()  # as before the field
    assert plain.canonical_bytes() == (b'{"action":"germinate","blueprint_id":"norm",'
                                       b'"issued_at":100.0,"nonce":"n-1","seed_id":"s1",'
                                       b'"slot":"mid"}')
    named = LifecycleCommand("germinate", "mid", "norm", "s1", 100.0, "n-2", "gated")
    line = sign(named, KEY).to_json()
    verdict = verifier.verify(line)
    assert verdict.accepted and verdict.command == named
    assert verdict.command.to_decision().blend_algorithm_id == "gated"
    assert verifier.verify(line.replace('"gated"', '"linear"').replace("n-2", "n-3")).reason \
        == "bad_signature"
    stripped = sign(named, KEY).to_json().replace(',"blend_algorithm_id":"gated"', "")
    assert verifier.verify(stripped.replace("n-2", "n-4")).reason == "bad_signature"
    for bad in ('"blend_algorithm_id":null', '"blend_algorithm_id":"cubic"'):
        text = line.replace('"blend_algorithm_id":"gated"', bad).replace("n-2", "n-5")
        assert verifier.verify(text).reason == "malformed"
    with pytest.raises(ValueError, match="only a germinate command names a blend_algorithm_id"):
        LifecycleCommand("prune", "mid", None, "s1", 100.0, "n-6", "linear")
    with pytest.raises(ValueError, match="unknown blend_algorithm_id 'cubic'"):
        LifecycleCommand("germinate", "mid", "norm", "s1", 100.0, "n-7", "cubic")


def test_the_record_round_trips() -> None:
    config = GrowConfig(controller=ControllerConfig(blueprints=("norm",)), limit=5,
                        blueprints=("norm",), data_dir=Path("/data"), commands=Path("c"),
                        blend_algorithm="gated", embargo_epochs=0)
    assert config_from_record(json.loads(json.dumps(config_record(config)))) == config
