"""One sampling vocabulary: every ``sample``, ``rsample``, ``rsample_and_log_prob`` and
likelihood estimator of probgen takes ``generator=``, and honours it: the same seed gives the
same output whatever the global RNG does, another seed another output. Checked on every
registered model (and the probgen distribution it returns), on ``probgen.latent``'s
estimators and on probgen's own distribution classes; a signature scan keeps new ones in
line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch
from test_model_contract import NAMES, _batch, _build, _x

import probgen
from probgen import latent
from probgen.cnf import ContinuousFlow
from probgen.diffusion import DiscretizedGaussian
from probgen.models import VAE, AutoregressiveDistribution
from probgen.models.vae_blocks import DiscretizedLogistic

SAMPLERS = ("sample", "rsample", "rsample_and_log_prob")


def _seeded(call) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``call(generator)`` with seed 5, seed 5 again after the global RNG moved, seed 6."""

    def first(out):
        out = out[0] if isinstance(out, tuple) else out
        return out.samples if hasattr(out, "samples") else out

    with torch.no_grad():
        a = first(call(torch.Generator().manual_seed(5)))
        torch.rand(7)
        b = first(call(torch.Generator().manual_seed(5)))
        c = first(call(torch.Generator().manual_seed(6)))
    return a, b, c


def _assert_honoured(label: str, call) -> None:
    a, b, c = _seeded(call)
    assert torch.equal(a, b), f"{label}: the same seed gave different outputs"
    assert not torch.equal(a, c), f"{label}: different seeds gave the same output"


@pytest.mark.parametrize("name", NAMES)
def test_every_models_samplers_and_estimators_honour_generator(name):
    config, data, model, objective = _build(name)
    model.eval()
    for method in (*SAMPLERS, "log_likelihood"):
        fn = getattr(model, method, None)
        if fn is None:
            continue
        assert "generator" in inspect.signature(fn).parameters, f"{name}.{method}"
        if method == "log_likelihood":
            x = _x(_batch(data))[:4]
            _assert_honoured(f"{name}.{method}", lambda g, f=fn, x=x: f(x, num_samples=8,
                                                                         generator=g))
        else:
            # few steps for the iterative samplers: the noise, not the accuracy, is tested
            fast = {"steps": 4} if "steps" in inspect.signature(fn).parameters else {}
            _assert_honoured(f"{name}.{method}", lambda g, f=fn, k=fast: f((2,), generator=g,
                                                                            **k))
    # (a score network has no sampler of its own: build_sampler's Langevin chain samples it,
    # seeded, as test_model_contract checks)
    if callable(getattr(model, "distribution", None)):
        d = model.distribution()
        # Pyro's and torch's own distributions take none; ContinuousFlow (the probability-
        # flow ODE of score, diffusion and flow-matching models) is checked below
        if type(d).__module__.startswith("probgen") and not isinstance(d, ContinuousFlow):
            for method in SAMPLERS:
                fn = getattr(d, method, None)
                if fn is None or not d.has_rsample and method != "sample":
                    continue
                _assert_honoured(f"{name}.distribution().{method}",
                                 lambda g, f=fn: f((2,), generator=g))


def test_latent_estimators_honour_generator():
    vae = VAE((4,), 2, hidden_features=[8], likelihood="gaussian")
    x = torch.randn(5, 4)
    calls = {
        "log_importance_weights": lambda g: latent.log_importance_weights(
            vae.model, vae.guide, x, 7, generator=g),
        "importance_log_likelihood": lambda g: latent.importance_log_likelihood(
            vae.model, vae.guide, x, num_samples=12, chunk_size=5, generator=g),
        "evidence_lower_bound": lambda g: latent.evidence_lower_bound(
            vae.model, vae.guide, x, num_samples=3, generator=g),
        "elbo_surgery": lambda g: latent.elbo_surgery(
            vae.posterior(x), vae.prior_distribution(), 4, generator=g)["kl_estimate"],
    }
    for label, call in calls.items():
        _assert_honoured(label, call)


def test_probgens_distributions_and_a_hutchinson_log_prob_honour_generator():
    base = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), 1.0), 1)
    flow = ContinuousFlow(lambda x, t: -x, base, trace="hutchinson", noise="gaussian",
                          method="euler", step_size=0.25)
    x = torch.randn(3, 2)
    for label, call in {
        "ContinuousFlow.sample": lambda g: flow.sample((2,), generator=g),
        "ContinuousFlow.rsample_and_log_prob": lambda g: flow.rsample_and_log_prob(
            (2,), generator=g)[1],
        # a field whose Jacobian is -I: every probe gives tr = -2; use a non-diagonal one
        "ContinuousFlow.log_prob": lambda g: ContinuousFlow(
            lambda x, t: x.flip(-1) * x, base, trace="hutchinson", noise="gaussian",
            method="euler", step_size=0.25).log_prob(x, generator=g),
        "DiscretizedGaussian.sample": lambda g: DiscretizedGaussian(
            torch.zeros(4), torch.ones(4), 256).sample((2,), generator=g),
        "DiscretizedLogistic.sample": lambda g: DiscretizedLogistic(
            torch.zeros(4), torch.ones(4), 256).sample((2,), generator=g),
    }.items():
        _assert_honoured(label, call)


def _public_classes():
    for info in pkgutil.walk_packages(probgen.__path__, "probgen."):
        if info.name.startswith(("probgen.run", "probgen.cli", "probgen.__main__")):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module.__name__ \
                    and not name.startswith("_"):
                yield obj
    for package in ("probgen.models", "probgen.inference"):
        for obj in vars(importlib.import_module(package)).values():
            if inspect.isclass(obj) and obj.__module__.startswith("probgen"):
                yield obj


#: ``sample`` methods that draw nothing: a path's point at given (x0, x1, t) is deterministic
DETERMINISTIC = {"probgen.paths.AffinePath.sample"}


def test_every_public_sampler_of_probgen_accepts_generator():
    lacking = sorted({
        f"{cls.__module__}.{cls.__qualname__}.{method}"
        for cls in _public_classes() for method in SAMPLERS
        if method in vars(cls) and callable(vars(cls)[method])
        and "generator" not in inspect.signature(vars(cls)[method]).parameters
    } - DETERMINISTIC)
    assert not lacking, f"add generator: torch.Generator | None = None to {lacking}"
    assert AutoregressiveDistribution in set(_public_classes())
