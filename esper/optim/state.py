"""The training step's optimizer state, which follows the model's topology.

State is keyed by parameter name and grouped by slot: the host's parameters
form group ``"host"``, each seed's (gate included) the group named after its
slot. A germinated seed joins with fresh state, a pruned seed's group and
buffers leave, and nothing else is touched (:meth:`OptimizerState.synced`).
The update itself runs inside the compiled training step
(:func:`~esper.optim.update.masked_update`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from ..leyline.names import is_stacked, slot_of
from .config import HOST_GROUP, OptimizerConfig, SGDConfig

Buffers = Mapping[str, Mapping[str, Tensor]]
"""Buffer kind (``"momentum"``, ``"exp_avg"``...) -> parameter name -> tensor."""


def group_of(parameter_name: str) -> str:
    """The optimizer group of a model parameter: ``"host"`` or its slot's name."""
    slot = slot_of(parameter_name)
    return HOST_GROUP if slot is None else slot


def decays(name: str, param: Tensor) -> bool:
    """Whether weight decay applies to parameter ``name``: matrices and kernels yes, norms
    and biases (fewer than 2 dimensions) no; a tournament's stacked parameter is judged
    by one candidate's slice, as that candidate alone would be."""
    return param.dim() - is_stacked(name) >= 2


@dataclass(frozen=True)
class OptimizerState:
    """The optimizer's configuration, the parameter names of each group and their buffers."""

    config: OptimizerConfig = field(default_factory=SGDConfig)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    buffers: Buffers = field(default_factory=dict)

    def synced(self, model: nn.Module) -> OptimizerState:
        """Groups and buffers matching ``model``'s parameters now.

        New groups (a germinated seed) start with zeroed buffers; groups whose
        parameters are gone (a pruned seed) leave with their buffers; existing
        buffers are kept as they are.
        """
        named = dict(model.named_parameters())
        groups: dict[str, list[str]] = {}
        for name in named:
            groups.setdefault(group_of(name), []).append(name)
        buffers: dict[str, dict[str, Tensor]] = {kind: {} for kind in self.config.buffers}
        for name, param in named.items():
            fresh = None
            for kind, kept in buffers.items():
                old = self.buffers.get(kind, {}).get(name)
                if old is None:
                    fresh = fresh if fresh is not None else self.config.fresh(param)
                    old = fresh[kind]
                kept[name] = old
        return OptimizerState(self.config, {g: tuple(n) for g, n in groups.items()}, buffers)

    def handed_over(self, renames: Mapping[str, tuple[str, int]]) -> OptimizerState:
        """These buffers plus, for each ``new name -> (stacked name, index)``, the stacked
        parameter's buffers at row ``index`` (copies; a 0-d buffer, such as AdamW's step
        count, is copied whole): a tournament's winner goes on with the optimizer state
        it had as a candidate. :meth:`synced` then drops the stacked names.

        Raises:
            KeyError: a stacked name this state has no buffers for.
        """
        buffers = {kind: dict(owned) for kind, owned in self.buffers.items()}
        for new, (stacked, index) in renames.items():
            for owned in buffers.values():
                value = owned[stacked]
                owned[new] = (value if value.dim() == 0 else value[index]).detach().clone()
        return OptimizerState(self.config, self.groups, buffers)

    def group_order(self) -> tuple[str, ...]:
        """The groups in the step's order: the host's first, then each seed's."""
        return (HOST_GROUP, *(g for g in self.groups if g != HOST_GROUP))
