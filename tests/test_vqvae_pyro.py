"""VQ-VAE as a Pyro program: with the Delta posterior on the nearest codes its ELBO is the
VQ loss's reconstruction term plus the code prior's log-probability (the constant -hw log K
for the uniform prior), and Predictive generates from either code prior."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO

from probgen.inference import VectorQuantizedLoss
from probgen.models import VQVAE

pytestmark = pytest.mark.threads(2)


def _vqvae() -> VQVAE:
    torch.manual_seed(0)
    return VQVAE([1, 8, 8], num_codes=8, code_dim=4, channels=8, prior_channels=8).eval()


def test_the_elbo_is_the_reconstruction_plus_the_code_prior_term():
    vq = _vqvae()
    x = (torch.rand(6, 1, 8, 8) > 0.5).float()
    positions = math.prod(vq.code_shape)
    with torch.no_grad():
        recon = float(VectorQuantizedLoss(vq).autoencoder_losses(x)["recon"])
        uniform = Trace_ELBO().loss(vq.model, vq.guide, x) / 6
        learned = Trace_ELBO().loss(vq.model, vq.guide, x, code_prior="learned") / 6
        prior_nll = -float(vq.prior.log_prob(vq.encode_indices(x)[:, None].float()).mean())
    assert uniform == pytest.approx(recon + positions * math.log(8), rel=1e-5)
    assert learned == pytest.approx(recon + prior_nll, rel=1e-5)
    guide = pyro.poutine.trace(vq.guide).get_trace(x)
    assert torch.equal(guide.nodes["codes"]["value"].long(), vq.encode_indices(x))


def test_predictive_generates_from_either_code_prior():
    vq = _vqvae()
    with torch.no_grad():
        draws = Predictive(vq.model, num_samples=2)(None, 3)
        learned = Predictive(vq.model, num_samples=2)(None, 3, code_prior="learned")
    assert draws["x"].shape == (2, 3, 1, 8, 8) and set(draws["x"].unique().tolist()) <= {0, 1}
    assert draws["codes"].shape == (2, 3, *vq.code_shape)
    assert learned["codes"].shape == (2, 3, 1, *vq.code_shape)
    assert 0 <= int(draws["codes"].min()) and int(draws["codes"].max()) < 8
    with pytest.raises(ValueError, match="code_prior: expected one of"):
        vq.model(None, 2, code_prior="gaussian")
