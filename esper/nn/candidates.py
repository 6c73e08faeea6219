"""K candidate seeds of one blueprint, stacked and run as one batched computation.

A tournament germinates K seeds of one blueprint in one slot. Their weights are
stacked along a new leading dimension (:func:`torch.func.stack_module_state`):
one parameter ``[K, ...]`` per parameter of the blueprint's seed, registered
under ``stack.<the seed's own parameter name>``
(:data:`~esper.leyline.names.CANDIDATE_STACK`). :meth:`CandidateSeeds.forward`
runs all K on the same input with :func:`torch.func.vmap` over
:func:`torch.func.functional_call` and returns ``[K, *input.shape]``;
:meth:`CandidateSeeds.chunked` runs candidate ``k`` on chunk ``k`` of a batch
repeated K times (scoring). :meth:`CandidateSeeds.member` gives candidate ``k``
back as an ordinary seed module (the winner of a selection).

Each candidate is built by the blueprint under its own generator (seeded from
one draw of the CPU generator plus its index), so a seeded run builds the same
candidates. Parameters the blueprint leaves all zero (the zero-initialised last
layer that makes a residual seed start as the identity) get noise of standard
deviation :data:`CANDIDATE_INIT_JITTER` from the same generator: without it the
candidates of a blueprint whose every random draw lands in such layers would
be K copies of one seed and train identically. The jitter cannot reach the
host while the candidates incubate (alpha is 0 until one is selected).

``live`` is a float32 buffer of K ones; the training step sets a candidate's
entry to 0 when its output or gradients stop being finite (it is dropped: no
gradient and no update reach it again), the way a BatchNorm's statistics are
buffers the step writes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..leyline.constants import CANDIDATE_INIT_JITTER
from ..leyline.names import CANDIDATE_STACK
from ..validation import check_int


def candidate_generator(base: int, index: int) -> torch.Generator:
    """The CPU generator candidate ``index`` of a tournament seeded with ``base`` is drawn from."""
    return torch.Generator().manual_seed((base + 7919 * (index + 1)) % 2**63)


def build_candidates(make: Callable[[], nn.Module], count: int, base: int) -> list[nn.Module]:
    """``count`` seeds from ``make``, candidate ``k`` built under :func:`candidate_generator`
    ``(base, k)``; the CPU generator is left as it was."""
    seeds = []
    for index in range(count):
        generator = candidate_generator(base, index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
            seed = make()
        with torch.no_grad():
            for param in seed.parameters():
                if param.is_floating_point() and not bool(param.any()):
                    noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                    param.copy_(noise.to(param.device, param.dtype) * CANDIDATE_INIT_JITTER)
        seeds.append(seed)
    return seeds


class CandidateSeeds(nn.Module):
    """K seeds of one blueprint with stacked weights (see the module docstring).

    Arguments:
        seeds: the candidates, K >= 2 modules of one class with parameters and
            buffers of equal shapes (a blueprint's seeds for one slot).

    Raises:
        ValueError: fewer than 2 seeds, or seeds whose parameters differ in name
            or shape.
    """

    def __init__(self, seeds: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(seeds) < 2:
            raise ValueError(f"a tournament needs at least 2 candidates, got {len(seeds)}")
        shapes = {tuple((n, p.shape) for n, p in s.state_dict().items()) for s in seeds}
        if len(shapes) != 1:
            raise ValueError("candidates must be seeds of one blueprint: their parameters and "
                             "buffers differ in name or shape")
        params, buffers = torch.func.stack_module_state(list(seeds))
        self.count = len(seeds)
        template = copy.deepcopy(seeds[0])
        stack = copy.deepcopy(seeds[0])  # its tensors are replaced by the stacked ones
        for name, value in params.items():
            _set(stack, name, nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            _set(stack, name, value.detach().clone())
        self.add_module(CANDIDATE_STACK, stack)
        self.register_buffer("live", torch.ones(self.count, dtype=torch.float32,
                                                device=_device_of(seeds[0])))
        object.__setattr__(self, "_template", template)  # not a submodule: no parameters

    def _weights(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return dict(self.stack.named_parameters()), dict(self.stack.named_buffers())

    def _one(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.func.functional_call(self._template, (params, buffers), (x,))

    def forward(self, x: Tensor) -> Tensor:
        """Every candidate on ``x``: ``[K, *x.shape]``."""
        params, buffers = self._weights()
        return torch.func.vmap(self._one, in_dims=(0, 0, None))(params, buffers, x)

    def chunked(self, x: Tensor) -> Tensor:
        """Candidate ``k`` on the ``k``-th of K equal chunks of ``x``'s batch; ``x``'s shape.

        Raises:
            ValueError: the batch does not split into K equal chunks.
        """
        if x.shape[0] % self.count:
            raise ValueError(f"a batch of {x.shape[0]} does not split into {self.count} "
                             "equal chunks, one per candidate")
        params, buffers = self._weights()
        # Contiguous chunks: a seed's layout queries (channels_last checks) have no vmap rule.
        chunks = x.reshape(self.count, x.shape[0] // self.count, *x.shape[1:]).contiguous()
        out = torch.func.vmap(self._one, in_dims=(0, 0, 0))(params, buffers, chunks)
        return out.reshape(x.shape)

    def member(self, index: int) -> nn.Module:
        """Candidate ``index`` as an ordinary seed module (copies of its weights)."""
        check_int("index", index, minimum=0, maximum=self.count - 1)
        seed = copy.deepcopy(self._template)
        state = {name: value[index].detach().clone()
                 for name, value in self.stack.state_dict().items()}
        seed.load_state_dict(state)
        return seed

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> CandidateSeeds:
        super()._apply(fn, recurse)
        self._template._apply(fn, recurse)  # the structure functional_call runs follows
        return self

    def train(self, mode: bool = True) -> CandidateSeeds:
        super().train(mode)
        self._template.train(mode)
        return self

    def extra_repr(self) -> str:
        return f"candidates={self.count}, {type(self._template).__name__}"


def _set(module: nn.Module, name: str, value: Tensor) -> None:
    """Replace the parameter or buffer at dotted ``name`` in ``module`` by ``value``."""
    owner_path, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    if isinstance(value, nn.Parameter):
        owner.register_parameter(attr, value)
    else:
        owner.register_buffer(attr, value)


def _device_of(module: nn.Module) -> torch.device:
    tensors = [*module.parameters(), *module.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")


__all__ = ["CandidateSeeds", "build_candidates", "candidate_generator"]
