"""Multi-process training: 2 ranks on CPU (gloo) through torchrun, consensus, set-up errors.

The two end-to-end tests launch ``python -m torch.distributed.run --standalone
--nproc_per_node 2`` in a subprocess (its own session, killed whole after
:data:`TIMEOUT` seconds, so a deadlock fails instead of hanging) and compare
what each rank saved (``ESPER_REPLICA_DUMP``) bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from esper.checkpoint import load_checkpoint
from esper.checkpoint.load import Checkpoint
from esper.data import load_task
from esper.errors import DistributedTimeoutError
from esper.kasmina import SlotState, germinate, prune, step
from esper.leyline import SeedStage, SlotTelemetry, TaskConfig
from esper.tamiyo import Decision
from esper.tolaria.commands import LifecycleCommand, sign
from esper.tolaria.config import GrowConfig
from esper.tolaria.consensus import Proposal, agree, describe
from esper.tolaria.data_parallel import REPLICA_DUMP_ENV, make_trainer
from esper.tolaria.distributed import (
    DistributedSetupError,
    Replicas,
    backend_for,
    is_timeout,
    session,
)
from esper.tolaria.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT = 240


def torchrun(args: list[str], **env: str) -> str:
    """Run 2 ranks under torchrun; their combined output. Fails on error or timeout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", *args]
    process = subprocess.Popen(command, cwd=ROOT, text=True, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1",
                                    "PYTHONPATH": str(ROOT), **env})  # this tree's esper
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks
        output, _ = process.communicate()
        pytest.fail(f"2 ranks did not finish in {TIMEOUT}s (deadlock?):\n{output[-6000:]}")
    assert process.returncode == 0, output[-6000:]
    return output


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, so that equality means bit-identical (NaN and -0.0 too)."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_identical(a: Checkpoint, b: Checkpoint) -> None:
    """Same slot states, bit-identical parameters, buffers and momenta, same progress."""
    assert a.model.slot_states() == b.model.slot_states()
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == sb[key].dtype and torch.equal(bits(value), bits(sb[key])), key
    assert a.optimizer is not None and b.optimizer is not None
    assert a.optimizer.buffers["momentum"].keys() == b.optimizer.buffers["momentum"].keys()
    for name, buffer in a.optimizer.buffers["momentum"].items():
        assert torch.equal(bits(buffer), bits(b.optimizer.buffers["momentum"][name])), name

    def progress(checkpoint: Checkpoint) -> dict[str, Any]:
        state = dict(checkpoint.trainer_state)
        state["records"] = [{k: v for k, v in r.items() if k != "seconds"}
                            for r in state["records"]]
        return state

    assert progress(a) == progress(b)


def replicas(dump: Path) -> tuple[Checkpoint, Checkpoint]:
    return load_checkpoint(dump / "rank-0"), load_checkpoint(dump / "rank-1")


# --------------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_torchrun_esper_grow_keeps_the_replicas_bit_identical(tmp_path):
    out, dump = tmp_path / "run", tmp_path / "replicas"
    log = torchrun(["-m", "esper", "grow", "--epochs", "7", "--limit", "96", "--max-seeds", "1",
                    "--lr", "0.02", "--blending-steps", "3", "--embargo-epochs", "2",
                    "--compile", "always", "--compile-backend", "aot_eager", "--quiet",
                    "--out", str(out)],
                   **{REPLICA_DUMP_ENV: str(dump)})
    rank0, rank1 = replicas(dump)
    assert_identical(rank0, rank1)
    # Only rank 0 wrote the run directory and showed progress; its checkpoint is the replica.
    assert log.count("final accuracy") == 1
    assert_identical(load_checkpoint(out / "checkpoint"), rank0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 7 and summary["seeds_germinated"] == 1
    assert summary["compile_count"] == 2  # one graph per topology, collective included
    assert any(s.has_seed for s in rank0.model.slot_states().values())


@pytest.mark.slow
def test_a_refused_run_directory_stops_every_rank_at_once(tmp_path):
    """Rank 0 alone claims the directory; when it cannot, every rank exits with its reason
    (one broadcast) instead of waiting in the next collective."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("another run\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "esper", "grow", "--epochs", "1", "--limit", "32",
               "--no-compile", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(command, cwd=ROOT, text=True, capture_output=True, timeout=TIMEOUT,
                         env=env)
    log = run.stdout + run.stderr
    assert run.returncode != 0
    assert log.count(f"--out {out}: the directory already holds a run (metrics.csv)") == 2, log
    assert "esper: error: rank 0: --out" in log
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv"]
    assert (out / "metrics.csv").read_text() == "another run\n"


@pytest.mark.slow
def test_ranks_go_through_training_and_blending_and_apply_nothing_alone(tmp_path):
    dump = tmp_path / "replicas"
    log = torchrun([str(WORKER), str(dump)])
    rank0, rank1 = replicas(dump)
    assert_identical(rank0, rank1)
    runs = [json.loads((dump / f"rank-{r}" / "events.json").read_text()) for r in (0, 1)]
    assert runs[0] == runs[1]  # every rank emitted the same records
    events, stages = runs[0]["events"], runs[0]["stages"]
    assert "TRAINING" in stages and "BLENDING" in stages
    assert stages.index("TRAINING") < stages.index("BLENDING")

    # Rank 1 withheld its first germination and proposed one prune: both refused, logged.
    votes = [e for e in events if e["kind"] == "consensus"]
    assert [(v["item"], v["dissenting"], v["applied"]) for v in votes] == [
        ("decisions", [1], False), ("lifecycle", [1], False)]
    assert votes[0]["proposals"] == {"0": "germinate", "1": "none"}
    assert votes[1]["proposals"] == {"0": "TRAINING", "1": "PRUNED"}
    assert log.count("rank 1 disagrees") == 2 and "rank 0 disagrees" not in log
    germinated = [e for e in events if e["kind"] == "decision" and e["outcome"] == "germinated"]
    assert [(e["epoch"], e["seed_id"]) for e in germinated] == [(votes[0]["epoch"] + 1, "seed-1")]
    assert not any(e.get("type") == "SEED_PRUNED" for e in events)
    assert stages[votes[1]["epoch"] - 1] == stages[votes[1]["epoch"] - 2] == "TRAINING"


@pytest.mark.slow
def test_rank_0_reads_the_external_commands_and_every_rank_applies_them(tmp_path):
    key = "distributed-test-key"
    commands = tmp_path / "commands.jsonl"
    command = LifecycleCommand("germinate", "mid", "norm", "ext-1", time.time(), "n-1")
    commands.write_text(sign(command, key.encode()).to_json() + "\n")
    out, dump = tmp_path / "run", tmp_path / "replicas"
    # --compile auto (the default): the ranks time their first steps and choose from their
    # mean pace, one collective; a short run like this one trains eagerly on both.
    torchrun(["-m", "esper", "grow", "--epochs", "3", "--limit", "96", "--batch-size", "8",
              "--quiet", "--out", str(out), "--controller", "external", "--commands",
              str(commands)], **{REPLICA_DUMP_ENV: str(dump), "ESPER_COMMAND_KEY": key})
    rank0, rank1 = replicas(dump)
    assert_identical(rank0, rank1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile_choice"].startswith("auto: eager, about "), summary
    assert summary["compile_count"] == 0
    assert rank0.model.slot_states()["mid"].seed_id == "ext-1"
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert [(e["slot"], e["outcome"]) for e in events if e["kind"] == "decision"] == [
        ("mid", "germinated")]
    assert not any(e["kind"] == "consensus" for e in events)


# --------------------------------------------------------------------------- consensus


def _training() -> SlotState:
    state = germinate(SlotState.dormant("mid", channels=4, task=TaskConfig(max_epochs=5)),
                      "norm", "seed-1")
    return step(state, SlotTelemetry(50.0, seed_gradient_norm_ratio=0.5,
                                     probe_loss_reduction=0.01))


def _proposal(decisions: tuple[Decision, ...] = ()) -> Proposal:
    early = SlotState.dormant("early", channels=4, task=TaskConfig(max_epochs=5))
    return Proposal({"early": early, "mid": _training()}, decisions)


GERMINATE = Decision("germinate", "early", "plateau", "norm", "seed-2")


def test_unanimous_codes_apply_every_step_and_decision():
    proposal = _proposal((GERMINATE,))
    agreement = agree(proposal, [proposal.codes()] * 3)
    assert agreement.unanimous
    assert agreement.stepped == ("early", "mid") and agreement.decisions == (GERMINATE,)


def test_a_different_lifecycle_proposal_holds_its_slot_and_every_decision():
    mine = _proposal((GERMINATE,))
    theirs = Proposal({**mine.states, "mid": prune(mine.states["mid"], "dissent")},
                      mine.decisions)
    agreement = agree(mine, [mine.codes(), theirs.codes(), mine.codes()])
    assert agreement.stepped == ("early",) and agreement.decisions == ()
    [disagreement] = agreement.disagreements
    assert (disagreement.item, disagreement.slot, disagreement.dissenting) == (
        "lifecycle", "mid", (1,))
    assert disagreement.proposals == ("TRAINING", "PRUNED", "TRAINING")


def test_a_different_decision_is_applied_nowhere_and_names_the_dissenter():
    mine, theirs = _proposal((GERMINATE,)), _proposal()
    agreement = agree(theirs, [mine.codes(), theirs.codes()])
    assert agreement.stepped == ("early", "mid") and agreement.decisions == ()
    [disagreement] = agreement.disagreements
    assert disagreement.to_dict()["proposals"] == {"0": "germinate", "1": "none"}
    assert disagreement.dissenting == (1,)  # a tie: the lowest rank's proposal is the reference
    other = Decision("germinate", "early", "plateau", "norm", "seed-3")  # same action, other seed
    assert agree(mine, [mine.codes(), _proposal((other,)).codes()]).decisions == ()


def test_a_malformed_table_or_proposal_is_refused():
    proposal = _proposal()
    with pytest.raises(ValueError, match="one row of 4 codes per rank"):
        agree(proposal, [proposal.codes(), proposal.codes()[:3]])
    with pytest.raises(ValueError, match="one row of 4 codes per rank"):
        agree(proposal, [])
    with pytest.raises(ValueError, match="unknown slots"):
        _proposal((Decision("prune", "late", "stalled"),)).codes()
    assert describe("lifecycle", int(SeedStage.BLENDING) << 56) == "BLENDING"
    assert describe("decisions", 0) == "none"


# --------------------------------------------------------------------------- one rank


@pytest.fixture
def one_rank(tmp_path):
    """A gloo group of this process alone (the collectives' layout, without a second rank)."""
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        group = torch.distributed.group.WORLD
        assert group is not None
        yield Replicas(0, 1, group, "gloo")
    finally:
        torch.distributed.destroy_process_group()


def test_the_step_bucket_gives_back_every_gradient_the_loss_and_the_faults(one_rank):
    grads = {"conv": torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last),
             "bias": torch.randn(3), "half": torch.randn(5).half()}
    faults = {"mid": torch.tensor(True), "late": torch.tensor(False)}
    out, loss, flags = one_rank.reduce_step(grads, torch.tensor(1.25), faults)
    assert list(out) == list(grads)
    for name, grad in grads.items():
        assert out[name].dtype == grad.dtype and torch.equal(out[name], grad), name
    assert loss.item() == 1.25 and loss.shape == ()
    assert {n: bool(f) for n, f in flags.items()} == {"mid": True, "late": False}
    wide = {"w": torch.randn(4, dtype=torch.float64) / 3}
    assert torch.equal(one_rank.reduce_step(wide, torch.tensor(0.0), {})[0]["w"], wide["w"])


def test_metric_sums_codes_and_buffers_with_one_rank(one_rank):
    assert one_rank.sum([3, 4]) == [3, 4] and one_rank.sum([]) == []
    assert one_rank.gather_codes([5, 2**62]) == [[5, 2**62]]
    with pytest.raises(ValueError, match="consensus codes"):
        one_rank.gather_codes([-1])
    norm = torch.nn.BatchNorm1d(3)
    norm.running_mean.fill_(0.5)
    one_rank.average_buffers(norm)
    assert torch.equal(norm.running_mean, torch.full((3,), 0.5))
    one_rank.check_same("nothing", 7)
    assert one_rank.broadcast_text("décision") == "décision"
    assert one_rank.broadcast_text("") == "" and one_rank.broadcast_text(None) == ""


# --------------------------------------------------------------------------- set-up


@pytest.mark.parametrize("env", [{}, {"WORLD_SIZE": "1"}])
def test_one_process_needs_no_process_group(env):
    with session(env) as ranks:
        assert ranks is None
    assert not torch.distributed.is_initialized()
    config = GrowConfig(epochs=1, limit=32, compile=False, quiet=True)
    assert type(make_trainer(config, load_task("digits", limit=32))) is Trainer


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, "RANK is not: launch with torchrun"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be >= 1"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "outside"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, "MASTER_ADDR is not"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost",
      "MASTER_PORT": "x"}, "MASTER_PORT must be an integer"),
])
def test_an_incomplete_torchrun_environment_is_a_clear_error(env, message):
    with pytest.raises(DistributedSetupError, match=message), session(env):
        pass
    assert not torch.distributed.is_initialized()


def test_the_cpu_backend_is_gloo():
    assert backend_for(cuda=False) == "gloo"


# --------------------------------------------------------------------------- a silent rank


STALLING_WORKER = Path(__file__).with_name("stalling_worker.py")
DIST_TIMEOUT = 3.0


@pytest.mark.slow
@pytest.mark.parametrize("silent, compiled", [(1, False), (0, True)])
def test_a_stalled_rank_stops_the_run_within_the_timeout_naming_it(tmp_path, silent, compiled):
    """Issue 11, defect 7: a stopped rank left the other waiting 633.6 s before a raw gloo
    error. Now the live rank raises DistributedTimeoutError after --dist-timeout (plus a
    short wait for the others' reports) naming the silent rank; the checkpoint of the last
    completed epoch loads. Compiled, the step's all-reduce times out inside the graph and
    its eager re-run fails at once on the closed connection: the same error."""
    out, mark = tmp_path / "run", tmp_path / "stalled-at"
    live = 1 - silent
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(STALLING_WORKER), "grow", "--epochs", "4",
               "--limit", "64", "--max-seeds", "0", "--quiet",
               *(["--compile", "always", "--compile-backend", "aot_eager"] if compiled
                 else ["--no-compile"]),
               "--dist-timeout", str(DIST_TIMEOUT), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "ESPER_TEST_STALL_RANK": str(silent), "ESPER_TEST_STALL_EPOCH": "2",
           "ESPER_TEST_STALL_MARK": str(mark)}
    run = subprocess.run(command, cwd=ROOT, text=True, capture_output=True, timeout=TIMEOUT,
                         env=env, start_new_session=True)
    ended = time.time()
    log = run.stdout + run.stderr
    assert run.returncode != 0, log[-6000:]
    # The live rank gave up after the timeout and the report grace (min(5, 3) s); torchrun
    # then ended the stalled one. Before: 10 minutes of waiting.
    stalled_for = ended - float(mark.read_text())
    assert DIST_TIMEOUT <= stalled_for < DIST_TIMEOUT + 3.0 + 20.0, (stalled_for, log[-6000:])
    assert (f"esper: error: rank {live} waited 3 s (--dist-timeout) for rank {silent}, which "
            "is silent (stalled, hung or dead)") in log, log[-6000:]
    assert f"continue with --resume {out}" in log
    assert "Timed out waiting 3000ms" in log  # gloo's own words, kept in brackets
    assert "RuntimeError" not in log  # no raw gloo traceback from either rank
    checkpoint = load_checkpoint(out / "checkpoint")
    assert checkpoint.trainer_state["epoch"] == 1  # epoch 2 never completed
    assert checkpoint.optimizer is not None


def test_a_timed_out_rank_names_the_ranks_that_reported_no_timeout():
    store = torch.distributed.HashStore()
    replicas = [Replicas(r, 4, None, "gloo", timeout=timedelta(seconds=7),  # type: ignore
                         store=store) for r in range(4)]
    store.set("esper/timed-out/2", b"1")  # rank 2 timed out as well: it is not silent
    started = time.monotonic()
    error = replicas[0].timed_out(RuntimeError("[gloo] Timed out waiting 7000ms for recv"),
                                  grace=0.3)
    assert 0.3 <= time.monotonic() - started < 5.0
    assert isinstance(error, DistributedTimeoutError) and isinstance(error, TimeoutError)
    assert (error.rank, error.silent, error.seconds) == (0, (1, 3), 7.0)
    assert str(error).startswith("rank 0 waited 7 s (--dist-timeout) for ranks 1, 3, which "
                                 "are silent")
    assert str(error).endswith("[[gloo] Timed out waiting 7000ms for recv]")
    store.set("esper/timed-out/1", b"1")
    store.set("esper/timed-out/3", b"1")
    everyone = replicas[2].timed_out(RuntimeError("Timed out"), grace=0.0)
    assert everyone.silent == () and "every other rank timed out too" in str(everyone)
    unknown = Replicas(1, 2, None, "gloo").timed_out(RuntimeError("Timed out"))  # type: ignore
    assert unknown.silent is None and "could not be found out" in str(unknown)
    assert is_timeout(RuntimeError("[x.cc:78] Timed out waiting 3000ms for recv operation"))
    assert not is_timeout(RuntimeError("Connection closed by peer"))
    assert not is_timeout(ValueError("timed out"))
    try:  # a compiled step that timed out is re-run eagerly, which fails at once
        try:
            raise RuntimeError("Timed out waiting 3000ms for recv operation to complete")
        except RuntimeError:
            raise RuntimeError("Application timeout caused pair closure") from None
    except RuntimeError as closure:
        assert is_timeout(closure)
        error = Replicas(1, 2, None, "gloo").timed_out(closure)  # type: ignore[arg-type]
        assert str(error).endswith("[Timed out waiting 3000ms for recv operation to complete]")


def test_the_cli_default_dist_timeout_is_the_library_default():
    from esper.cli import build_parser
    from esper.tolaria.distributed import DEFAULT_TIMEOUT

    args = build_parser().parse_args(["grow"])
    assert args.dist_timeout == DEFAULT_TIMEOUT.total_seconds() == 120.0
