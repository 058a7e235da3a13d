"""VQ-VAE: straight-through gradients, nearest codes, codebook/commitment gradients, the EMA
codebook's closed form, perplexity, the one-hot PixelCNN prior, the two-stage objective."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import entropy

from probgen.inference import (
    TwoStageVQLoss,
    VectorQuantizedLoss,
    code_perplexity,
    code_usage,
    encode_codes,
    fit,
    fit_code_prior,
    straight_through,
    vq_losses,
)
from probgen.models import MODELS, VQVAE, GatedPixelCNN, PixelCNN, VectorQuantizer


def test_straight_through_value_and_gradient_exact():
    z_e = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    z_q = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    weight = torch.randn(3, 5, 5, dtype=torch.float64)

    def loss_fn(z):  # non-linear, so the gradient depends on where it is taken
        return (torch.sin(z) * weight).pow(2).sum() + z.exp().mean()

    out = straight_through(z_e, z_q)
    assert torch.equal(out, z_q)  # the value is z_q bit for bit
    loss_fn(out).backward()
    leaf = z_q.clone().requires_grad_(True)
    (grad_at_z_q,) = torch.autograd.grad(loss_fn(leaf), leaf)
    assert torch.equal(z_e.grad, grad_at_z_q)
    # the same gradient as the usual z_e + (z_q - z_e).detach() (up to its rounding of z_q)
    z2 = z_e.detach().clone().requires_grad_(True)
    loss_fn(z2 + (z_q - z2).detach()).backward()
    assert torch.allclose(z2.grad, grad_at_z_q, rtol=1e-12, atol=1e-12)


def test_straight_through_passes_nothing_to_codes():
    z_e = torch.randn(2, 3, requires_grad=True)
    codes = torch.randn(2, 3, requires_grad=True)
    straight_through(z_e, codes).sum().backward()
    assert codes.grad is None and torch.equal(z_e.grad, torch.ones(2, 3))
    with pytest.raises(ValueError, match="one shape"):
        straight_through(z_e, codes[:1])


def test_nearest_code_matches_brute_force():
    vq = VectorQuantizer(17, 5)
    with torch.no_grad():
        vq.codebook.normal_()
    z_e = torch.randn(3, 5, 4, 6)
    out = vq.eval()(z_e)
    for n, i, j in itertools.product(range(3), range(4), range(6)):
        z = z_e[n, :, i, j]
        dist = [float(((z - vq.codebook[k].detach()) ** 2).sum()) for k in range(17)]
        best = min(range(17), key=dist.__getitem__)
        assert int(out.indices[n, i, j]) == best
        assert torch.equal(out.codes[n, :, i, j], vq.codebook[best])
        assert torch.equal(out.z_q[n, :, i, j], vq.codebook[best])
    assert torch.equal(vq.quantize(z_e), out.indices)
    assert torch.equal(vq.lookup(out.indices), out.codes)


def test_codebook_and_commitment_gradients_go_to_their_owners():
    torch.manual_seed(1)
    vq = VectorQuantizer(6, 2)
    with torch.no_grad():
        vq.codebook.normal_()
    encoder = torch.nn.Linear(3, 2)
    x = torch.randn(10, 3)
    z_e = encoder(x)[:, :, None, None]  # (10, 2, 1, 1)
    out = vq(z_e)
    codebook, commitment = vq_losses(z_e, out.codes)
    idx = out.indices.reshape(-1)
    e, z = vq.codebook.detach()[idx], z_e.detach()[:, :, 0, 0]
    assert torch.allclose(codebook, ((z - e) ** 2).sum(-1))
    assert torch.allclose(commitment, codebook)

    # codebook loss: only the codes move, d/de_k = sum over assigned 2 (e_k - z)
    codebook.sum().backward()
    assert encoder.weight.grad is None and encoder.bias.grad is None
    expected = torch.zeros(6, 2).index_add_(0, idx, 2 * (e - z))
    assert torch.allclose(vq.codebook.grad, expected, atol=1e-6)

    # commitment loss: only the encoder moves, d/dz = 2 (z - e) through the linear map
    vq.codebook.grad = None
    z_e = encoder(x)[:, :, None, None]
    out = vq(z_e)
    _, commitment = vq_losses(z_e, out.codes)
    commitment.sum().backward()
    assert vq.codebook.grad is None
    g = 2 * (z - e)
    assert torch.allclose(encoder.weight.grad, g.t() @ x, atol=1e-5)
    assert torch.allclose(encoder.bias.grad, g.sum(0), atol=1e-5)


def _set_codes(vq: VectorQuantizer, codes: list[float]) -> None:
    c = torch.tensor(codes).reshape(-1, 1)
    vq.codebook.copy_(c)
    vq.code_sum.copy_(c)


@torch.no_grad()
def test_ema_codebook_equals_closed_form_running_average():
    gamma, eps = 0.5, 0.1
    vq = VectorQuantizer(2, 1, ema=True, decay=gamma, eps=eps).train()
    _set_codes(vq, [-1.0, 1.0])
    batch1 = torch.tensor([-2.0, -1.5, 3.0]).reshape(3, 1, 1)  # codes 0, 0, 1
    vq(batch1)
    # N = g * 1 + (1 - g) n,  m = g e0 + (1 - g) s,  e = m / smoothed(N)
    n1 = torch.tensor([0.5 * 1 + 0.5 * 2, 0.5 * 1 + 0.5 * 1])  # [1.5, 1.0]
    m1 = torch.tensor([0.5 * -1 + 0.5 * -3.5, 0.5 * 1 + 0.5 * 3])  # [-2.25, 2.0]
    total = n1.sum()
    smoothed = (n1 + eps) / (total + 2 * eps) * total
    assert torch.allclose(vq.cluster_size, n1)
    assert torch.allclose(vq.codebook[:, 0], m1 / smoothed)
    batch2 = torch.tensor([0.5, 2.5]).reshape(2, 1, 1)  # codes 1, 1 (codes now ~ -1.5, 2)
    assert vq(batch2).indices.reshape(-1).tolist() == [1, 1]
    n2 = 0.5 * n1 + 0.5 * torch.tensor([0.0, 2.0])
    m2 = 0.5 * m1 + 0.5 * torch.tensor([0.0, 3.0])
    total = n2.sum()
    smoothed = (n2 + eps) / (total + 2 * eps) * total
    assert torch.allclose(vq.codebook[:, 0], m2 / smoothed)
    # eval mode leaves it alone
    before = vq.codebook.clone()
    vq.eval()(batch1)
    assert torch.equal(vq.codebook, before)


@torch.no_grad()
def test_ema_without_smoothing_converges_to_the_cluster_means():
    vq = VectorQuantizer(3, 2, ema=True, decay=0.9, eps=0.0).train()
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]]))
    vq.code_sum.copy_(vq.codebook)
    x = torch.tensor([[0.5, -0.5], [-0.3, 0.1], [4.0, 6.0], [6.0, 5.0], [5.0, 4.0],
                      [-4.0, 4.0]])
    for _ in range(300):  # fixed assignments: the running averages forget the start
        vq(x[:, :, None])
    means = torch.stack([x[:2].mean(0), x[2:5].mean(0), x[5:].mean(0)])
    assert torch.allclose(vq.codebook, means, atol=1e-6)
    assert torch.allclose(vq.cluster_size, torch.tensor([2.0, 3.0, 1.0]), atol=1e-6)


@torch.no_grad()
def test_dead_codes_restart_on_batch_vectors():
    vq = VectorQuantizer(4, 2, ema=True, decay=0.5, dead_code_threshold=0.2).train()
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-50.0, 50.0]]))
    vq.code_sum.copy_(vq.codebook)
    x = torch.tensor([[0.1, 0.0], [0.9, 1.1], [0.0, 0.2], [1.0, 0.8]])[:, :, None]
    for _ in range(3):  # codes 2 and 3 get nothing: N = 0.5^3 < 0.2 after three calls
        vq(x)
    rows = x[:, :, 0]
    for k in (2, 3):
        assert any(torch.equal(vq.codebook[k], r) for r in rows), vq.codebook[k]
        assert float(vq.cluster_size[k]) == 1.0


def test_perplexity_is_exp_entropy_of_usage():
    assert float(code_perplexity(torch.arange(8).repeat(5), 8)) == pytest.approx(8.0)
    assert float(code_perplexity(torch.full((30,), 3), 8)) == pytest.approx(1.0)
    idx = torch.randint(0, 10, (4, 7, 7)) ** 2 % 10
    counts = torch.bincount(idx.reshape(-1), minlength=10).numpy()
    assert float(code_perplexity(idx, 10)) == pytest.approx(math.exp(entropy(counts)), rel=1e-6)
    assert float(code_usage(idx, 10)) == pytest.approx((counts > 0).mean())
    with pytest.raises(ValueError, match="0..9"):
        code_perplexity(torch.tensor([10]), 10)
    with pytest.raises(TypeError, match="integer"):
        code_usage(torch.tensor([1.0]), 10)


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN])
def test_one_hot_prior_normalizes_over_all_code_maps(cls):
    """A K-category prior with one-hot inputs sums to 1 over all K^4 maps of 2x2 codes."""
    torch.set_default_dtype(torch.float64)
    try:
        prior = cls([1, 2, 2], channels=8, layers=2, kernel_size=3, first_kernel_size=3,
                    categories=3, one_hot=True)
        maps = torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(-1, 1, 2, 2)
        with torch.no_grad():
            total = prior.log_prob(maps.double()).exp().sum()
    finally:
        torch.set_default_dtype(torch.float32)
    assert float(total) == pytest.approx(1.0, abs=1e-10)
    assert prior.encode(maps[:2].float()).shape == (2, 3, 2, 2)


def test_one_hot_prior_is_autoregressive():
    prior = GatedPixelCNN([1, 4, 4], channels=8, layers=3, categories=5, one_hot=True)
    x = torch.randint(0, 5, (1, 1, 4, 4)).float()
    h = prior.encode(x).requires_grad_(True)
    logits = prior.logits_from_input(h)  # (1, 1, 4, 4, 5)
    for i in range(16):
        (g,) = torch.autograd.grad(logits[0, 0].reshape(16, 5)[i].sum(), h, retain_graph=True)
        seen = g[0].abs().sum(0).reshape(-1) > 0
        assert not seen[i:].any(), i


def _model(**kw):
    return VQVAE([1, 8, 8], num_codes=8, code_dim=4, channels=16, downsample=1, blocks=1,
                 prior_channels=8, prior_layers=2, **kw)


def test_vqvae_shapes_errors_and_loss_gradients():
    model = _model()
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3))
    assert model.encode(x).shape == (6, 4, 4, 4)
    assert model.encode_indices(x).shape == (6, 4, 4)
    assert model.reconstruct(x).shape == x.shape
    objective = VectorQuantizedLoss(model)
    out = objective(x)
    assert {"loss", "recon", "codebook", "commitment", "perplexity", "usage", "mse"} <= set(out)
    assert 1.0 <= float(out["perplexity"]) <= 8.0
    out["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith("prior."):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        model.encode(torch.zeros(2, 1, 7, 7))
    with pytest.raises(ValueError, match="divisible"):
        VQVAE([1, 6, 6], downsample=2)
    with pytest.raises(ValueError, match="likelihood"):
        VQVAE([1, 8, 8], likelihood="poisson")
    with pytest.raises(TypeError, match="VQ model"):
        VectorQuantizedLoss(torch.nn.Linear(2, 2))
    assert MODELS["VQVAE"] is VQVAE


def test_gaussian_likelihood_nll_is_scaled_squared_error():
    model = _model(likelihood="gaussian", scale=0.5)
    x = torch.rand(3, 1, 8, 8)
    px = model.decode(model(x).z_q)
    nll = -px.log_prob(x)
    sq = (x - px.mean).pow(2).flatten(1).sum(-1)
    expected = sq / (2 * 0.25) + 64 * (math.log(0.5) + 0.5 * math.log(2 * math.pi))
    assert torch.allclose(nll, expected, atol=1e-4)


def test_two_stage_objective_trains_each_stage_alone():
    torch.manual_seed(0)
    model = _model(ema=True, decay=0.9)
    objective = TwoStageVQLoss(model, prior_start=3)
    groups = objective.parameter_groups()
    prior_ids = {id(p) for p in model.prior.parameters()}
    assert {id(p) for p in groups["prior"]} == prior_ids
    assert not prior_ids & {id(p) for p in groups["autoencoder"]}
    assert len(groups["prior"]) + len(groups["autoencoder"]) == len(list(model.parameters()))
    x = torch.bernoulli(torch.full((64, 1, 8, 8), 0.4))
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    fit(objective, x, steps=3, batch_size=16, progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, snap[k])}
    assert changed and not any(k.startswith("prior.") for k in changed)
    assert "quantizer.codebook" in changed  # the EMA codebook moved in the first stage
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    fit(objective, x, steps=6, batch_size=16, progress=False)  # steps 1..6 again: fresh
    snap2 = {k: v.clone() for k, v in model.state_dict().items()}
    objective.prior_start = 0  # only the second stage now
    fit(objective, x, steps=3, batch_size=16, progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, snap2[k])}
    assert changed and all(k.startswith("prior.") for k in changed), changed
    out = objective.eval()(x)
    assert torch.allclose(out["nelbo"], out["recon"] + out["prior_nll"])
    assert model.sample((5,)).shape == (5, 1, 8, 8)
    assert model.sample(2, mean=False).unique().tolist() in ([0.0, 1.0], [0.0], [1.0])


def test_fit_code_prior_learns_the_code_distribution():
    """On data whose code maps are constant, the fitted prior puts its mass on them."""
    torch.manual_seed(0)
    model = _model().eval()
    x = torch.zeros(32, 1, 8, 8)
    x[16:] = 1.0
    codes = encode_codes(model, x)
    assert codes.shape == (32, 1, 4, 4) and codes.dtype == torch.float32
    fit_code_prior(model, x, steps=200, batch_size=32, lr=1e-2, progress=False)
    with torch.no_grad():
        nll = -model.prior.log_prob(codes).mean()
    # two equally likely maps: the best possible NLL is log 2
    assert float(nll) < math.log(2) + 0.05


def test_vqvae_preset_runs_both_stages_from_the_cli(tmp_path):
    import json

    from probgen.cli import main

    out = tmp_path / "vq"
    args = ["fit", "vqvae-digits", "--out", str(out), "--quiet"]
    for o in ("train.steps=6", "objective.prior_start=3", "train.eval_every=3",
              "train.log_every=1", "eval.num_samples=40", "sample.n=4",
              "model.channels=8", "model.prior_channels=8"):
        args += ["--set", o]
    assert main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    for key in ("test/recon", "test/perplexity", "test/usage", "test/prior_nll", "test/nelbo"):
        assert math.isfinite(result[key]), key
    assert 1.0 <= result["test/perplexity"] <= 8.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stage = {int(r["step"]): r for r in records if "eval/loss" not in r}
    assert "perplexity" in stage[1] and "prior_nll" not in stage[1]
    assert "prior_nll" in stage[6] and "perplexity" not in stage[6]
    assert main(["sample", str(out), "--n", "4"]) == 0
    assert (out / "samples_4.png").is_file()
