"""Conditional networks net(x, t, labels): shapes, the null class, per-example independence."""

from __future__ import annotations

import pytest
import torch

from probgen.nn import ConditionalMLP, DiT, UNet, sincos_positions


def _randomize_head(net: torch.nn.Module) -> None:
    """The heads start at zero (a fresh predictor outputs 0); give them weights to test."""
    torch.manual_seed(0)
    for p in net.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)


@pytest.mark.parametrize("shape,mults", [((1, 28, 28), (1, 2, 2)), ((1, 8, 8), (1, 2, 2)),
                                         ((3, 7, 9), (1, 2))])
def test_unet_shapes_and_zero_output(shape, mults):
    net = UNet(shape, base_channels=8, channel_mults=mults, attention_levels=(1,),
               num_classes=10, out_channels=2 * shape[0], num_res_blocks=2)
    x = torch.randn(3, *shape)
    out = net(x, torch.rand(3), labels=torch.tensor([0, 9, 10]))
    assert out.shape == (3, 2 * shape[0], *shape[1:])
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised head
    assert net(x, 0.3).shape == out.shape  # scalar time broadcast, labels None = null class


def test_unet_conditioning_and_null_class():
    torch.manual_seed(1)
    net = UNet((1, 8, 8), base_channels=8, num_classes=3, dropout=0.0)
    _randomize_head(net)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    null = torch.full((4,), 3)
    assert torch.equal(net(x, t), net(x, t, labels=null))
    a = net(x, t, labels=torch.tensor([0, 0, 0, 0]))
    b = net(x, t, labels=torch.tensor([1, 1, 1, 1]))
    assert (a - b).abs().amax() > 1e-4  # labels change the output
    assert (net(x, t + 0.2, labels=null) - net(x, t, labels=null)).abs().amax() > 1e-4


@pytest.mark.parametrize("make", [
    lambda: UNet((1, 8, 8), base_channels=8, attention_levels=(2,), num_classes=2),
    lambda: ConditionalMLP(3, [16, 16], num_classes=2),
    lambda: DiT((1, 8, 8), patch=2, hidden=16, depth=2, heads=2, num_classes=2),
])
def test_outputs_depend_only_on_their_own_example(make):
    """The Jacobian of output i with respect to input j != i is zero (GroupNorm, no batch
    statistics), so a noise predictor's samples do not interact."""
    torch.manual_seed(2)
    net = make().double()
    _randomize_head(net)
    shape = (3, *net.event_shape)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    t = torch.rand(3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    out = net(x, t, labels=labels)
    grad, = torch.autograd.grad(out[1].sum(), x)
    assert grad[1].abs().sum() > 0
    assert torch.equal(grad[0], torch.zeros_like(grad[0]))
    assert torch.equal(grad[2], torch.zeros_like(grad[2]))


def test_conditional_mlp_shapes_and_time():
    net = ConditionalMLP(2, [32, 32], out_features=4)
    _randomize_head(net)
    x = torch.randn(5, 2)
    assert net(x, torch.rand(5)).shape == (5, 4)
    assert torch.allclose(net(x, 0.5), net(x, torch.full((5,), 0.5)))
    # integer steps are accepted as times
    assert net(x, torch.arange(5)).dtype == torch.float32


def test_errors_say_what_was_expected():
    unet = UNet((1, 8, 8), base_channels=8)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 1, 8, 8\)"):
        unet(torch.randn(2, 1, 28, 28), torch.rand(2))
    with pytest.raises(ValueError, match=r"t: expected shape \(2,\)"):
        unet(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="unconditional"):
        unet(torch.randn(2, 1, 8, 8), torch.rand(2), labels=torch.tensor([0, 1]))
    mlp = ConditionalMLP(2, [8], num_classes=3)
    with pytest.raises(ValueError, match=r"labels: expected values in 0..2"):
        mlp(torch.randn(2, 2), torch.rand(2), labels=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="integer tensor"):
        mlp(torch.randn(2, 2), torch.rand(2), labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        mlp(torch.randn(2, 2), torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="channel_mults"):
        UNet((1, 8, 8), channel_mults=())


@pytest.mark.parametrize("shape,patch", [((1, 28, 28), 4), ((3, 32, 32), 2), ((2, 6, 8), 2)])
def test_dit_shapes_and_zero_output(shape, patch):
    net = DiT(shape, patch=patch, hidden=32, depth=2, heads=4, num_classes=10,
              out_channels=2 * shape[0])
    x = torch.randn(3, *shape)
    out = net(x, torch.rand(3), labels=torch.tensor([0, 9, 10]))
    assert out.shape == (3, 2 * shape[0], *shape[1:])
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised head
    assert net(x, 0.3).shape == out.shape  # scalar time broadcast, labels None = null class


def test_dit_fresh_blocks_are_identities_so_each_patch_maps_to_itself():
    """adaLN-Zero: at initialisation every block's gates are 0, so a token's output depends
    only on its own patch; with a non-zero head, a pixel's change moves exactly the output
    pixels of its patch (checks the patch layout of patchify and unpatchify)."""
    torch.manual_seed(0)
    net = DiT((2, 8, 12), patch=2, hidden=16, depth=3, heads=2).double()
    torch.nn.init.normal_(net.head.weight, std=0.3)
    x = torch.randn(1, 2, 8, 12, dtype=torch.float64, requires_grad=True)
    out = net(x, torch.tensor([0.4], dtype=torch.float64))
    for i, j in [(0, 0), (3, 7), (7, 11), (4, 2)]:
        grad, = torch.autograd.grad(out[0, 1, i, j], x, retain_graph=True)
        moved = grad[0].abs().sum(0) > 0
        expected = torch.zeros(8, 12, dtype=torch.bool)
        expected[i // 2 * 2:i // 2 * 2 + 2, j // 2 * 2:j // 2 * 2 + 2] = True
        assert torch.equal(moved, expected), (i, j)


def test_dit_conditioning_trains_every_parameter():
    torch.manual_seed(1)
    net = DiT((1, 8, 8), patch=2, hidden=16, depth=2, heads=2, num_classes=3)
    _randomize_head(net)
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    null = torch.full((4,), 3)
    assert torch.equal(net(x, t), net(x, t, labels=null))
    a = net(x, t, labels=torch.zeros(4, dtype=torch.long))
    b = net(x, t, labels=torch.ones(4, dtype=torch.long))
    assert (a - b).abs().amax() > 1e-4  # labels change the output
    # a few steps of a denoising regression reach every parameter
    net = DiT((1, 8, 8), patch=2, hidden=16, depth=2, heads=2, num_classes=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        opt.zero_grad()
        net(x, t, labels=torch.tensor([0, 1, 2, 3])).sub(x).pow(2).mean().backward()
        opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))


def test_sincos_positions_are_the_formula():
    pos = sincos_positions(8, 3, 4).double()
    omega = torch.tensor([1.0, 0.01], dtype=torch.float64)  # 10000^(-k/2), k = 0, 1
    row, col = 2, 3  # token 2 * 4 + 3
    expect = torch.cat([(row * omega).sin(), (row * omega).cos(), (col * omega).sin(),
                        (col * omega).cos()])
    assert torch.allclose(pos[row * 4 + col], expect, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_positions(6, 2, 2)


def test_dit_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="patch: expected a positive int dividing H and W"):
        DiT((1, 28, 28), patch=3)
    with pytest.raises(ValueError, match="hidden, heads"):
        DiT((1, 8, 8), hidden=30, heads=4)
    net = DiT((1, 8, 8), hidden=16, heads=2, depth=1)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 1, 8, 8\)"):
        net(torch.randn(2, 1, 6, 6), torch.rand(2))


def test_dit_serves_every_model_of_a_network_of_x_and_t():
    """The U-Net's contract: DDPM, a score SDE and flow matching train and sample with a DiT."""
    from probgen.diffusion import NoiseSchedule
    from probgen.inference import ConditionalFlowMatching, ContinuousScoreMatching, DiffusionLoss
    from probgen.models import DiffusionModel, FlowMatching, ScoreSDE
    from probgen.paths import CondOTPath
    from probgen.sde import VPSDE

    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    labels = torch.randint(0, 3, (16,))

    def dit() -> DiT:
        return DiT((1, 8, 8), patch=2, hidden=16, depth=1, heads=2, num_classes=3)

    ddpm = DiffusionModel(dit(), NoiseSchedule.linear(50), (1, 8, 8), num_classes=3)
    sde = ScoreSDE(dit(), VPSDE(), (1, 8, 8), num_classes=3)
    fm = FlowMatching(dit(), CondOTPath(), (1, 8, 8), num_classes=3)
    objectives = [DiffusionLoss(ddpm), ContinuousScoreMatching(sde, sde.sde),
                  ConditionalFlowMatching(fm, fm.path)]
    for model, objective in zip((ddpm, sde, fm), objectives, strict=True):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(2):
            opt.zero_grad()
            loss = objective((x, labels))["loss"]
            loss.backward()
            opt.step()
        assert torch.isfinite(loss)
        sample = model.sample((4,), sampler="ddim", steps=3, labels=torch.tensor([0, 1, 2, 0]),
                              generator=torch.Generator().manual_seed(0))
        sample = sample.samples if hasattr(sample, "samples") else sample
        assert sample.shape == (4, 1, 8, 8) and torch.isfinite(sample).all()
