"""Data-parallel training on ``torch.distributed``: the process group and its collectives.

``torchrun --standalone --nproc_per_node N -m esper grow ...`` starts ``N``
processes (ranks) that each hold a full replica of the model and train on
their own shard of the data. This module is everything they say to each
other, all through ``torch.distributed`` (gloo on CPU; on a machine with CUDA
the group is ``cpu:gloo,cuda:nccl``, so CUDA tensors go through NCCL):

* :meth:`Replicas.reduce_step`: inside the training step, one all-reduce per
  step of one flat bucket (float32 unless a gradient is float64) holding
  every gradient, the loss and the seeds' fault flags; gradients and loss come
  back averaged, a fault on any rank is a fault on all. It uses
  ``torch.distributed._functional_collectives``, which trace under
  ``torch.compile(fullgraph=True)`` (checked on torch 2.13 CPU with gloo:
  eager, aot_eager and inductor, one frame), so the compiled step stays one
  graph per topology. DDP is not usable here: it hooks the autograd of module
  parameters (``.grad``), which ``torch.func.grad`` over a functional call
  never touches.
* :meth:`Replicas.average_buffers`: BatchNorm statistics averaged once an epoch.
* :meth:`Replicas.sum`: metric counts and totals (never averaged ratios).
* :meth:`Replicas.gather_codes`: every rank's integer codes, by one MIN
  all-reduce (each rank fills its own row, the other rows hold the largest
  int64), which :mod:`esper.tolaria.consensus` turns into a unanimous vote.

:func:`session` sets the group up from the torchrun environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and yields ``None``
when there is no such environment or ``WORLD_SIZE`` is 1: a plain
``esper grow`` creates no process group and pays nothing.

A rank that stops answering (stalled, hung, dead without closing its
connections) makes the others wait in their next collective for the group's
timeout (``esper grow --dist-timeout``, :data:`DEFAULT_TIMEOUT`), after which
gloo raises a ``RuntimeError`` ("Timed out waiting ...ms for recv operation").
:func:`session` turns it into a :class:`~esper.errors.DistributedTimeoutError`
naming the silent ranks: each rank that times out says so in the group's
key-value store (served by torchrun's agent, so it outlives any rank) and
waits a moment (:data:`REPORT_GRACE_SECONDS`, at most the timeout) for the
others' reports; the ranks that sent none are the silent ones.
(``dist.monitored_barrier`` names them too, but only on rank 0 and only if
every live rank enters it: a rank blocked in the step's all-reduce never does.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fcol
from torch import Tensor, nn

from ..data import TaskData, shard
from ..errors import DistributedTimeoutError

INT64_MAX = torch.iinfo(torch.int64).max
# How long a collective waits for the other ranks (esper grow --dist-timeout): long enough
# for a rank-0 checkpoint save or a recompilation on CPU, short enough not to idle for long.
DEFAULT_TIMEOUT = timedelta(minutes=2)
# How long a rank that timed out waits for the others' reports before naming the silent ones.
REPORT_GRACE_SECONDS = 5.0
_TIMED_OUT_KEY = "esper/timed-out/"


class DistributedSetupError(ValueError):
    """The torchrun environment is incomplete or the backend it needs is unavailable."""


def fingerprint(*chunks: bytes | str) -> int:
    """A 56-bit digest of ``chunks`` (fits an int64 with room for a tag in the top byte)."""
    digest = hashlib.blake2b(digest_size=7)
    for chunk in chunks:
        digest.update(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        digest.update(b"\x00")
    return int.from_bytes(digest.digest(), "big")


def tensor_fingerprint(tensors: Iterable[tuple[str, Tensor]]) -> int:
    """A digest of named tensors: names, dtypes, shapes and every byte of their values."""
    chunks: list[bytes | str] = []
    for name, tensor in tensors:
        value = tensor.detach().cpu().contiguous()
        chunks += [f"{name}:{value.dtype}:{tuple(value.shape)}",
                   value.reshape(-1).view(torch.uint8).numpy().tobytes()]
    return fingerprint(*chunks)


@dataclass(frozen=True, eq=False)
class Replicas:
    """This process's place among the ranks, and the collectives the trainer uses.

    Attributes:
        rank: this process's rank, in ``[0, world_size)``.
        world_size: the number of ranks (:func:`session` makes none for one process).
        group: the process group every collective runs in.
        backend: the group's backend (``"gloo"`` or ``"cpu:gloo,cuda:nccl"``).
        timeout: how long a collective waits for the other ranks.
        store: the group's key-value store, where a rank that timed out says so
            (``None``: the silent ranks cannot be named).
    """

    rank: int
    world_size: int
    group: dist.ProcessGroup
    backend: str
    timeout: timedelta = DEFAULT_TIMEOUT
    store: dist.Store | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only rank that writes the run directory."""
        return self.rank == 0

    # ------------------------------------------------------------------ data

    def shard_task(self, task: TaskData) -> TaskData:
        """This rank's part of ``task``.

        Training: :func:`esper.data.shard` (disjoint, equal sizes, so every rank
        runs the same number of steps and the step collectives pair up).
        Validation: every ``world_size``-th example from ``rank``, sizes may
        differ by one; counts and totals are summed, so the reduced accuracy
        covers the whole split exactly.
        """
        (tx, ty), (vx, vy) = task.train, task.val
        train = shard(tx, ty, self.rank, self.world_size)
        val = (vx[self.rank::self.world_size], vy[self.rank::self.world_size])
        return dataclasses.replace(task, train=train, val=val)

    # ------------------------------------------------------------------ in the step

    def reduce_step(self, grads: Mapping[str, Tensor], loss: Tensor,
                    faults: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor,
                                                          dict[str, Tensor]]:
        """Average gradients and loss over the ranks, OR the fault flags: one all-reduce.

        Traceable by ``torch.compile(fullgraph=True)``. The bucket's layout
        follows the order of ``grads`` (the model's parameter order, the same
        on every rank); a germinated or pruned seed changes the names, the
        step compiles its new graph and the bucket follows.

        Arguments:
            grads: parameter name -> gradient of this rank's batch.
            loss: this rank's 0-d batch loss.
            faults: slot name -> 0-d bool, a seed's activation fault on this rank.

        Returns:
            The averaged gradients (contiguous, same dtypes), the averaged loss
            (non-finite if any rank's is) and each fault flag set on any rank.
        """
        names, flagged = list(grads), list(faults)
        dtype = functools.reduce(torch.promote_types, [g.dtype for g in grads.values()],
                                 torch.float32)  # the bucket: float32 unless float64 grads
        parts = [grads[n].reshape(-1).to(dtype) for n in names]
        parts.append(loss.detach().reshape(1).to(dtype))
        parts += [faults[n].reshape(1).to(dtype) for n in flagged]
        total = fcol.all_reduce(torch.cat(parts), "sum", self.group)
        mean = total / self.world_size
        out: dict[str, Tensor] = {}
        offset = 0
        for name in names:
            grad = grads[name]
            out[name] = mean[offset:offset + grad.numel()].view(grad.shape).to(grad.dtype)
            offset += grad.numel()
        averaged_loss = mean[offset].to(loss.dtype).reshape(loss.shape)
        offset += 1
        flags = {n: (total[offset + i] > 0).reshape(faults[n].shape)
                 for i, n in enumerate(flagged)}
        return out, averaged_loss, flags

    # ------------------------------------------------------------------ between steps

    def average_buffers(self, module: nn.Module) -> None:
        """Average ``module``'s floating-point buffers (BatchNorm statistics) in place.

        Each rank's running statistics saw only its own batches; once averaged
        (one all-reduce), evaluation and checkpoints agree on every rank.
        """
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
        dist.all_reduce(flat, group=self.group)
        flat /= self.world_size
        offset = 0
        with torch.no_grad():
            for buffer in buffers:
                buffer.copy_(flat[offset:offset + buffer.numel()].view(buffer.shape))
                offset += buffer.numel()

    def sum(self, values: Sequence[int]) -> list[int]:
        """Element-wise sum of integer ``values`` over the ranks (counts, totals)."""
        return [int(v) for v in self._sum(values, torch.int64)]

    def sum_real(self, values: Sequence[float]) -> list[float]:
        """Element-wise float64 sum of ``values`` over the ranks (summed losses)."""
        return [float(v) for v in self._sum(values, torch.float64)]

    def _sum(self, values: Sequence[float], dtype: torch.dtype) -> list[float]:
        if not values:
            return []
        tensor = torch.tensor(list(values), dtype=dtype)
        dist.all_reduce(tensor, group=self.group)
        return tensor.tolist()

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's ``text`` on every rank (the other ranks pass ``None``); two broadcasts."""
        data = (text or "").encode("utf-8") if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, src=0, group=self.group)
        count = int(size.item())
        if count == 0:
            return ""
        buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.is_main
                  else torch.empty(count, dtype=torch.uint8))
        dist.broadcast(buffer, src=0, group=self.group)
        return buffer.numpy().tobytes().decode("utf-8")

    def gather_codes(self, codes: Sequence[int]) -> list[list[int]]:
        """Every rank's ``codes`` (non-negative int64s), by one MIN all-reduce.

        Rank ``r`` writes row ``r`` of a ``[world_size, len(codes)]`` table
        whose other rows hold the largest int64; the element-wise minimum is
        the table of all ranks' codes. Every rank must pass as many codes.

        Returns:
            ``table[r]``: the codes of rank ``r``.

        Raises:
            ValueError: a code outside ``[0, 2**63 - 1)``.
        """
        bad = [c for c in codes if not 0 <= c < INT64_MAX]
        if bad:
            raise ValueError(f"consensus codes must be in [0, 2**63 - 1), got {bad}")
        if not codes:  # every rank has as many codes: all skip the collective alike
            return [[] for _ in range(self.world_size)]
        table = torch.full((self.world_size, len(codes)), INT64_MAX, dtype=torch.int64)
        table[self.rank] = torch.tensor(list(codes), dtype=torch.int64)
        dist.all_reduce(table, op=dist.ReduceOp.MIN, group=self.group)
        return table.tolist()

    def check_same(self, what: str, code: int) -> None:
        """Raise on every rank unless all ranks pass the same ``code`` (one collective).

        Raises:
            RuntimeError: naming ``what`` and the ranks that differ from rank 0.
        """
        codes = [row[0] for row in self.gather_codes([code])]
        differ = [r for r, c in enumerate(codes) if c != codes[0]]
        if differ:
            raise RuntimeError(f"ranks {differ} differ from rank 0 in {what}; every rank must "
                               "run the same command with the same seed (launch with torchrun)")


    # ------------------------------------------------------------------ failure

    def timed_out(self, error: BaseException,
                  grace: float = REPORT_GRACE_SECONDS) -> DistributedTimeoutError:
        """The error for a collective of this rank that timed out (``error``, from gloo).

        Says in the store that this rank timed out, then waits up to ``grace``
        seconds (never more than the timeout) for every other rank's report:
        the ranks that sent none are named silent. Ranks that did report timed
        out as well, waiting for someone else.
        """
        seconds = self.timeout.total_seconds()
        silent = self._silent_ranks(min(grace, seconds))
        waited = f"{seconds:g} s (--dist-timeout)"
        if silent is None:
            who = (f"rank {self.rank} waited {waited} for the other ranks in a collective; "
                   "which of them stopped answering could not be found out")
        elif silent:
            names = ", ".join(map(str, silent))
            rank_s = "rank" if len(silent) == 1 else "ranks"
            verb = "is" if len(silent) == 1 else "are"
            who = (f"rank {self.rank} waited {waited} for {rank_s} {names}, which {verb} silent "
                   f"(stalled, hung or dead): no answer in a collective and no report of a "
                   f"timeout of {'its' if len(silent) == 1 else 'their'} own")
        else:
            who = (f"rank {self.rank} waited {waited} in a collective, and every other rank "
                   "timed out too: the ranks are waiting in different collectives (a "
                   "rank took another path) or the network between them failed")
        first = (_timeouts(error) or [error])[-1]  # gloo's "Timed out waiting ...ms"
        return DistributedTimeoutError(f"{who} [{' '.join(str(first).split())[:300]}]",
                                       rank=self.rank, silent=silent, seconds=seconds)

    def _silent_ranks(self, grace: float) -> tuple[int, ...] | None:
        if self.store is None:
            return None
        others = [r for r in range(self.world_size) if r != self.rank]
        try:
            self.store.set(f"{_TIMED_OUT_KEY}{self.rank}", b"1")
            deadline = time.monotonic() + grace
            while True:
                silent = tuple(r for r in others if not self.store.check([f"{_TIMED_OUT_KEY}{r}"]))
                if not silent or time.monotonic() >= deadline:
                    return silent
                time.sleep(0.05)
        except (RuntimeError, OSError):  # the store itself is gone: nobody can be named
            return None


def is_timeout(error: BaseException) -> bool:
    """Whether ``error`` is, or was raised while handling, a collective that timed out.

    gloo raises a ``RuntimeError`` (``DistBackendError`` is one) whose message
    says "Timed out waiting ...ms for recv|send operation to complete"; it then
    closes the connections, so a later collective raises at once with
    "Application timeout caused pair closure" (the trainer re-runs a compiled
    step that raised eagerly: that is the error which reaches the top, the
    timeout as its ``__context__``).
    """
    return bool(_timeouts(error))


def _timeouts(error: BaseException) -> list[BaseException]:
    """The timeout errors in ``error``'s chain (itself, its cause or context, theirs...)."""
    found: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if isinstance(current, RuntimeError) and ("timed out" in text or "timeout" in text):
            found.append(current)
        current = current.__cause__ or current.__context__
    return found


# --------------------------------------------------------------------------- set-up


def _env_int(env: Mapping[str, str], name: str) -> int:
    text = env.get(name)
    if text is None:
        raise DistributedSetupError(f"WORLD_SIZE={env.get('WORLD_SIZE')} is set but {name} is "
                                    "not: launch with torchrun (torch.distributed.run), which "
                                    "sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
    try:
        return int(text)
    except ValueError:
        raise DistributedSetupError(f"{name} must be an integer, got {text!r}") from None


def world_size_from(env: Mapping[str, str]) -> int:
    """``WORLD_SIZE`` from ``env`` (1 when unset).

    Raises:
        DistributedSetupError: not a positive integer.
    """
    if "WORLD_SIZE" not in env:
        return 1
    size = _env_int(env, "WORLD_SIZE")
    if size < 1:
        raise DistributedSetupError(f"WORLD_SIZE must be >= 1, got {size}")
    return size


def backend_for(cuda: bool) -> str:
    """The process-group backend: gloo for CPU tensors, plus NCCL for CUDA ones.

    Raises:
        DistributedSetupError: ``torch.distributed`` or a needed backend is
            missing from this build of torch.
    """
    if not dist.is_available():
        raise DistributedSetupError("WORLD_SIZE > 1 but this torch build has no "
                                    "torch.distributed; run a single process (plain "
                                    "`esper grow`) or install a torch with distributed support")
    if not dist.is_gloo_available():
        raise DistributedSetupError("this torch build has no gloo backend, which multi-process "
                                    "training needs for CPU tensors")
    if not cuda:
        return "gloo"
    if not dist.is_nccl_available():
        raise DistributedSetupError("CUDA is available but this torch build has no NCCL backend; "
                                    "hide the GPUs (CUDA_VISIBLE_DEVICES=) to train on CPU "
                                    "with gloo")
    return "cpu:gloo,cuda:nccl"


@contextmanager
def session(env: Mapping[str, str] | None = None,
            timeout: timedelta = DEFAULT_TIMEOUT) -> Iterator[Replicas | None]:
    """The ranks of this run, from the torchrun environment; ``None`` for one process.

    With ``WORLD_SIZE`` unset or 1, yields ``None`` and touches nothing.
    Otherwise joins (or reuses an already initialised) default process group,
    selects this rank's GPU when CUDA is available, yields a
    :class:`Replicas`, and destroys the group on exit if it created it.

    Arguments:
        env: the environment to read (``os.environ`` by default).
        timeout: how long a collective may wait for the other ranks before it
            fails (a rank that died or took another path raises instead of hanging).

    Raises:
        DistributedSetupError: missing or malformed variables, a rank out of
            range, or a backend this torch lacks.
        DistributedTimeoutError: a collective in the block timed out; names
            the silent ranks (see :meth:`Replicas.timed_out`).
    """
    env = os.environ if env is None else env
    world_size = world_size_from(env)
    if world_size == 1:
        yield None
        return
    rank, local_rank = _env_int(env, "RANK"), _env_int(env, "LOCAL_RANK")
    if not 0 <= rank < world_size:
        raise DistributedSetupError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    if not env.get("MASTER_ADDR"):
        raise DistributedSetupError(f"WORLD_SIZE={world_size} is set but MASTER_ADDR is not: "
                                    "launch with torchrun (torch.distributed.run)")
    _env_int(env, "MASTER_PORT")
    created = not dist.is_initialized()
    if created:
        cuda = torch.cuda.is_available()
        backend = backend_for(cuda)
        if cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise DistributedSetupError(f"the process group has rank {dist.get_rank()} of "
                                    f"{dist.get_world_size()}, the environment says {rank} of "
                                    f"{world_size}")
    group = dist.group.WORLD
    assert group is not None
    replicas = Replicas(rank, world_size, group, str(dist.get_backend(group)),
                        timeout=timeout, store=_default_store())
    try:
        yield replicas
    except RuntimeError as error:
        if not is_timeout(error):
            raise
        raise replicas.timed_out(error) from error
    finally:
        if created:
            dist.destroy_process_group()


def _default_store() -> dist.Store | None:
    """The default group's key-value store (a private torch API: ``None`` if it moved)."""
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None
