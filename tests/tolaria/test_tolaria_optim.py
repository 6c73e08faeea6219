"""The functional optimizer follows the model's topology and nothing else."""

from __future__ import annotations

import pytest
import torch

from esper.kasmina import CNNHost, MorphogeneticModel
from esper.optim.sgd import HOST_GROUP, OptimizerState, SGDConfig, group_of, sgd_update


def model() -> MorphogeneticModel:
    torch.manual_seed(0)
    return MorphogeneticModel(CNNHost(base_channels=4), slots=("early", "mid"))


def test_group_names():
    assert group_of("host.blocks.0.0.weight") == HOST_GROUP
    assert group_of("seed_slots.mid.seed.weight") == "mid"
    assert group_of("seed_slots.mid.gate.net.0.bias") == "mid"


def test_seeds_join_with_fresh_momentum_and_leave_with_their_state():
    m = model()
    state = OptimizerState(SGDConfig()).synced(m)
    assert set(state.groups) == {HOST_GROUP}
    for buffer in state.momenta.values():
        buffer.fill_(0.5)  # pretend the host has trained
    m.germinate_seed("norm", "s1", slot="mid", blend_algorithm_id="gated")
    joined = state.synced(m)
    assert set(joined.groups) == {HOST_GROUP, "mid"}
    assert all(joined.momenta[n] is state.momenta[n] for n in state.groups[HOST_GROUP])
    assert all(float(joined.momenta[n].abs().sum()) == 0.0 for n in joined.groups["mid"])
    assert any(".gate." in n for n in joined.groups["mid"])
    m.prune_seed(slot="mid")
    left = joined.synced(m)
    assert set(left.groups) == {HOST_GROUP}
    assert not any(n.startswith("seed_slots.") for n in left.momenta)
    assert all(left.momenta[n] is state.momenta[n] for n in state.groups[HOST_GROUP])


def test_momentum_keeps_seed_weight_layout():
    m = model()
    m.germinate_seed("conv_light", "s1", slot="mid")
    state = OptimizerState().synced(m)
    for name, p in m.named_parameters():
        assert state.momenta[name].stride() == p.stride()


def test_sgd_update_matches_torch_sgd():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3))
    reference = torch.nn.Parameter(p.detach().clone())
    optimizer = torch.optim.SGD([reference], lr=0.1, momentum=0.9, weight_decay=0.01)
    momenta = {"p": torch.zeros_like(p)}
    for _ in range(3):
        grad = torch.randn(5, 3)
        reference.grad = grad.clone()
        optimizer.step()
        sgd_update({"p": p.data}, {"p": grad}, momenta, {"p": torch.tensor(0.1)}, 0.9, 0.01)
    assert torch.allclose(p, reference, atol=1e-6)


def test_seed_learning_rate():
    config = SGDConfig(lr=0.1, seed_lr=0.01)
    assert config.lr_for(HOST_GROUP) == 0.1 and config.lr_for("mid") == 0.01
    with pytest.raises(ValueError, match="momentum"):
        SGDConfig(momentum=1.0)
