"""This process's place among the ranks of a data-parallel run, and their collectives.

Everything the ranks say to each other goes through :class:`Replicas`, all
through ``torch.distributed`` (gloo on CPU; on a machine with CUDA the group
is ``cpu:gloo,cuda:nccl``, so CUDA tensors go through NCCL):

* :meth:`Replicas.reduce_step`: inside the training step, one all-reduce per
  step of one flat bucket (float32 unless a gradient is float64) holding
  every gradient, the loss and the seeds' fault flags; gradients and loss come
  back averaged, a fault on any rank is a fault on all. It uses
  ``torch.distributed._functional_collectives``, which trace under
  ``torch.compile(fullgraph=True)`` (eager, aot_eager and inductor, one
  frame), so the compiled step stays one graph per topology. DDP is not
  usable here: it hooks the autograd of module parameters (``.grad``), which
  ``torch.func.grad`` over a functional call never touches.
* :meth:`Replicas.average_buffers`: BatchNorm statistics averaged once an epoch.
* :meth:`Replicas.sum`: metric counts and totals (never averaged ratios).
* :meth:`Replicas.gather_codes`: every rank's integer codes, by one MIN
  all-reduce (each rank fills its own row, the other rows hold the largest
  int64), which :mod:`esper.tolaria.consensus` turns into a unanimous vote.
* :meth:`Replicas.timed_out`: the error of a collective that timed out,
  naming the silent ranks (see :mod:`esper.tolaria.timeouts`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fcol
from torch import Tensor, nn

from ..data import TaskData, shard
from ..errors import DistributedTimeoutError
from ..leyline import constants as C
from .timeouts import REPORT_GRACE_SECONDS, timeout_error

INT64_MAX = torch.iinfo(torch.int64).max
# How long a collective waits for the other ranks (esper grow --dist-timeout): long enough
# for a rank-0 checkpoint save or a recompilation on CPU, short enough not to idle for long.
DEFAULT_TIMEOUT = timedelta(seconds=C.DEFAULT_DIST_TIMEOUT_S)


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
            faults: flag name -> bool tensor (0-d, or one per candidate of a tournament),
                a seed's activation fault on this rank.

        Returns:
            The averaged gradients (contiguous, same dtypes), the averaged loss
            (non-finite if any rank's is) and each fault flag set on any rank.
        """
        names, flagged = list(grads), list(faults)
        dtype = functools.reduce(torch.promote_types, [g.dtype for g in grads.values()],
                                 torch.float32)  # the bucket: float32 unless float64 grads
        parts = [grads[n].reshape(-1).to(dtype) for n in names]
        parts.append(loss.detach().reshape(1).to(dtype))
        parts += [faults[n].reshape(-1).to(dtype) for n in flagged]
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
        flags = {}
        for name in flagged:
            size = faults[name].numel()
            flags[name] = (total[offset:offset + size] > 0).reshape(faults[name].shape)
            offset += size
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
        the ranks that sent none are named silent (see
        :func:`~esper.tolaria.timeouts.timeout_error`).
        """
        return timeout_error(error, rank=self.rank, world_size=self.world_size,
                             timeout=self.timeout, store=self.store, grace=grace)
