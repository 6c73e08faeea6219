"""Blueprints: every seed shape-preserving, the registry, the probe, the GroupNorm crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper.kasmina import blueprints
from esper.nn.blueprints import BlueprintSpec, create, get, names, register, validate_seed
from esper.nn.blueprints.norm import group_norm
from esper.nn.blueprints.probe import _probe

CL = torch.channels_last
CNN_NAMES = ("noop", "norm", "attention", "depthwise", "conv_light", "conv_heavy")
TRANSFORMER_NAMES = ("noop", "norm", "lora", "attention", "mlp")
MLP_NAMES = ("noop", "norm", "lowrank")


def test_builtin_catalog() -> None:
    assert names("cnn") == CNN_NAMES
    assert names("transformer") == TRANSFORMER_NAMES
    assert names("mlp") == MLP_NAMES
    assert all(get("cnn", name).description for name in CNN_NAMES)
    assert list(create("cnn", "noop", 8).parameters()) == []


@pytest.mark.parametrize("name", CNN_NAMES)
@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format])
def test_cnn_seed_preserves_shape_layout_and_starts_as_identity(name, memory_format) -> None:
    seed = create("cnn", name, 16)
    x = torch.randn(2, 16, 6, 6).to(memory_format=memory_format).requires_grad_()
    out = seed(x)
    assert out.shape == x.shape and out.is_contiguous(memory_format=memory_format)
    assert torch.equal(out, x)
    out.backward(torch.randn_like(out))
    assert x.grad is not None and x.grad.shape == x.shape
    grads = [p.grad for p in seed.parameters()]
    assert all(g is not None for g in grads) and (not grads or any(g.abs().sum() > 0
                                                                   for g in grads))


@pytest.mark.parametrize("name", TRANSFORMER_NAMES)
def test_transformer_seed_preserves_shape_identity_and_causality(name) -> None:
    torch.manual_seed(0)
    seed = create("transformer", name, 16)
    x = torch.randn(2, 7, 16, requires_grad=True)
    out = seed(x)
    assert out.shape == x.shape and torch.equal(out, x)
    out.sum().backward()
    assert all(p.grad is not None for p in seed.parameters())
    with torch.no_grad():  # leave the identity start, then check causality
        for p in seed.parameters():
            p.normal_()
        changed = x.detach().clone()
        changed[:, 4:] += 1.0
        assert torch.equal(seed(x)[:, :4], seed(changed)[:, :4])


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="known cnn blueprints: noop, norm, attention"):
        get("cnn", "resnet")
    with pytest.raises(ValueError, match="it is a transformer blueprint"):
        create("cnn", "lora", 8)
    with pytest.raises(ValueError, match="unknown topology 'rnn'"):
        names("rnn")
    with pytest.raises(ValueError, match="already registered"):
        register(BlueprintSpec("norm", "cnn", lambda c: nn.Identity()))
    with pytest.raises(ValueError, match="channels"):
        create("cnn", "norm", 0)
    with pytest.raises(ValueError, match="topology"):
        BlueprintSpec("x", "rnn", lambda c: nn.Identity())  # type: ignore[arg-type]


def test_user_registration_replace_and_unregister() -> None:
    spec = BlueprintSpec("scale", "cnn", lambda c: nn.Conv2d(c, c, 1), "1x1 conv")
    assert register(spec) is spec
    try:
        assert names("cnn")[-1] == "scale" and isinstance(create("cnn", "scale", 4), nn.Conv2d)
        register(BlueprintSpec("scale", "cnn", lambda c: nn.Identity()), replace=True)
        assert isinstance(create("cnn", "scale", 4), nn.Identity)
        assert "scale" not in names("transformer")
    finally:
        blueprints.unregister("cnn", "scale")
    assert "scale" not in names("cnn")


def test_shape_changing_seed_is_rejected_naming_both_shapes() -> None:
    register(BlueprintSpec("shrink", "cnn", lambda c: nn.Conv2d(c, c // 2, 1)))
    register(BlueprintSpec("not_a_module", "cnn", lambda c: "seed"))  # type: ignore[arg-type]
    try:
        with pytest.raises(ValueError, match=r"'shrink'.*\(2, 8, 8, 8\).*\(2, 4, 8, 8\)"):
            create("cnn", "shrink", 8)
        with pytest.raises(TypeError, match="not_a_module"):
            create("cnn", "not_a_module", 8)
    finally:
        blueprints.unregister("cnn", "shrink")
        blueprints.unregister("cnn", "not_a_module")
    with pytest.raises(ValueError, match=r"'pool'.*\(2, 8, 16\).*\(2, 8, 8\)"):
        validate_seed(nn.AvgPool1d(2), topology="transformer", channels=16, device="cpu",
                      name="pool")


def test_probe_is_cached_and_restores_modes() -> None:
    assert _probe("cnn", 8) is _probe("cnn", 8)
    seed = nn.Sequential(nn.BatchNorm2d(8), nn.Dropout()).train()
    seed[1].eval()
    validate_seed(seed, topology="cnn", channels=8, device="cpu", name="bn")
    assert seed.training and not seed[1].training
    assert int(seed[0].num_batches_tracked) == 0  # ran in eval mode


def test_safe_group_norm_matches_native() -> None:
    x = torch.randn(3, 16, 5, 5).to(memory_format=CL)  # the once-crashing case
    weight, bias = torch.randn(16, requires_grad=True), torch.randn(16, requires_grad=True)
    out = group_norm(x, 4, weight, bias)
    assert out.is_contiguous(memory_format=CL)
    cotangent = torch.randn_like(out)
    got = torch.autograd.grad(out, [weight, bias], cotangent)
    reference = F.group_norm(x.contiguous(), 4, weight, bias)
    want = torch.autograd.grad(reference, [weight, bias], cotangent)
    torch.testing.assert_close(out, reference)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=240, check=False)


RAW_CRASH = """
    import torch
    x = torch.randn(2, 16, 4, 4).to(memory_format=torch.channels_last)
    torch.nn.GroupNorm(4, 16)(x).sum().backward()
    print("survived")
"""

NORM_SEED_SCENARIOS = """
    import torch
    import torch.nn.functional as F
    from esper.nn.blueprints import create
    torch.manual_seed(0)
    seed = create("cnn", "norm", 16)
    with torch.no_grad():  # off the identity start: every gradient non-trivial
        seed.weight.normal_()
        seed.bias.normal_()
    x = torch.randn(2, 16, 4, 4).to(memory_format=torch.channels_last)

    def check(x, grads, reduce):
        # The same loss through F.group_norm on contiguous copies: every gradient equal.
        xc = x.detach().contiguous().requires_grad_(x.requires_grad)
        w, b = (p.detach().clone().requires_grad_() for p in (seed.weight, seed.bias))
        out = F.group_norm(xc, seed.groups, w, b, seed.eps) + xc
        inputs = [w, b] + ([xc] if x.requires_grad else [])
        want = torch.autograd.grad(reduce(out), inputs)
        names = ["weight", "bias", "x"][:len(want)]
        for name, g, ref in zip(names, grads, want, strict=True):
            print(name, f"{g.abs().max().item():.6g}", f"{ref.abs().max().item():.6g}")
            torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5)

    def eager_grads(forward, x):
        seed.zero_grad()
        forward(x).sum().backward()           # the upstream gradient: stride 0 everywhere
        return [seed.weight.grad, seed.bias.grad] + ([x.grad] if x.requires_grad else [])

    check(x, eager_grads(seed, x), torch.sum)                    # eager
    x_grad = x.clone().requires_grad_()
    check(x_grad, eager_grads(seed, x_grad), torch.sum)          # eager, input requires grad
    compiled = torch.compile(seed, backend="aot_eager", fullgraph=True)
    check(x, eager_grads(compiled, x), torch.sum)                # compiled, autograd
    params = dict(seed.named_parameters())
    loss = lambda p: torch.func.functional_call(seed, p, (x,)).square().sum()
    grads = torch.compile(torch.func.grad(loss), backend="aot_eager", fullgraph=True)(params)
    check(x, [grads["weight"], grads["bias"]], lambda out: out.square().sum())
    from esper.nn.blueprints.norm import group_norm
    affine = lambda w, b: group_norm(x, seed.groups, w, b, seed.eps).square().sum()  # primals
    got = torch.compile(torch.func.grad(affine, argnums=(0, 1)), backend="aot_eager",
                        fullgraph=True)(seed.weight.detach(), seed.bias.detach())
    check(x, list(got), lambda out: (out - x).square().sum())
    print("ok")
"""


@pytest.mark.slow
def test_raw_group_norm_hazard_is_real() -> None:
    """The DESIGN.md scenario: native GroupNorm, channels_last input without grad."""
    result = _run(RAW_CRASH)
    if result.returncode == 0:
        pytest.skip("raw nn.GroupNorm channels_last backward did not crash on this torch "
                    f"({torch.__version__}); the hazard is not reproducible here")
    assert result.returncode in (-11, 139), result.stderr[-2000:]


@pytest.mark.slow
def test_norm_seed_survives_the_crashing_scenario() -> None:
    """No crash, and gradients equal to ``F.group_norm``'s (once ~1e30 from a stride-0 grad)."""
    result = _run(NORM_SEED_SCENARIOS)
    assert result.returncode == 0, (f"exit {result.returncode}: {result.stdout[-2000:]}\n"
                                    f"{result.stderr[-2000:]}")
    assert result.stdout.strip().endswith("ok")
