"""One optimizer step over the step's groups, where each group may be skipped.

The circuit breaker needs what AMP's gradient scaler does, per group and on
the device: a group whose update is not vouched for keeps its parameters and
buffers bit for bit. Each group's update runs on copies (torch's functional
optimizer, in place on them) and a select commits it; compiled, inductor
fuses copy, update and select into one pass over each parameter. Eagerly on
the CPU, where reading the flag costs no device sync, the update runs in place
or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .config import OptimizerConfig
from .state import Buffers


def masked_update(config: OptimizerConfig, params: Mapping[str, Tensor],
                  grads: Mapping[str, Tensor], buffers: Buffers,
                  groups: Sequence[tuple[str, ...]], lrs: Sequence[Tensor],
                  decayed: frozenset[str], ok: Sequence[Tensor]) -> None:
    """Update ``params`` and ``buffers`` in place, group by group.

    Arguments:
        config: the optimizer (its ``update`` and ``weight_decay``).
        params, grads: parameter name -> tensor.
        buffers: buffer kind -> parameter name -> tensor.
        groups: the parameter names of each group.
        lrs: each group's 0-d learning rate (a tensor: a new value never recompiles).
        decayed: the parameters weight decay applies to (the others get none).
        ok: each group's 0-d bool; where false, the group keeps its values.
    """
    with torch.no_grad():
        for names, lr, flag in zip(groups, lrs, ok, strict=True):
            for decay in (True, False):
                subset = [n for n in names if (n in decayed) == decay]
                if subset:
                    _update_subset(config, params, grads, buffers, subset, lr,
                                   config.weight_decay if decay else 0.0, flag)


def _update_subset(config: OptimizerConfig, params: Mapping[str, Tensor],
                   grads: Mapping[str, Tensor], buffers: Buffers, subset: list[str],
                   lr: Tensor, weight_decay: float, flag: Tensor) -> None:
    if flag.device.type == "cpu" and not torch.compiler.is_compiling():
        # Eagerly on the CPU, reading the flag costs no device sync: update in place, or
        # not at all, instead of paying for copies and selects (the same values either way).
        if bool(flag):
            config.update([params[n] for n in subset], [grads[n] for n in subset],
                          {kind: [owned[n] for n in subset] for kind, owned in buffers.items()},
                          lr, weight_decay)
        return
    new_params = [params[n].clone() for n in subset]
    new_buffers = {kind: [owned[n].clone() for n in subset] for kind, owned in buffers.items()}
    config.update(new_params, [grads[n] for n in subset], new_buffers, lr, weight_decay)
    for i, name in enumerate(subset):
        params[name].copy_(torch.where(flag, new_params[i], params[name]))
        for kind, owned in buffers.items():
            owned[name].copy_(torch.where(flag, new_buffers[kind][i], owned[name]))
