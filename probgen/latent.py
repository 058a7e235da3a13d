r"""Latent-variable helpers: Gaussian KL and NLL, KL per dimension, active units, ELBO surgery
(index-code mutual information and marginal KL), and importance-sampled log-likelihoods of
any Pyro model/guide pair.

**Parametrization of the Gaussian helpers.** :func:`gaussian_kl` and :func:`gaussian_nll`
take a mean and a *log standard deviation* (the course's convention): ``N(2, e^3)`` is the
normal with mean 2 and standard deviation :math:`e^3` (variance :math:`e^6`). With it,
``KL(N(2, e^3) || N(0, 1)) = (e^6 + 4 - 1 - 6) / 2 = 200.2144``,
``KL(N(2, e^3) || N(4, e^5)) = 2 + (e^6 + 4) / (2 e^{10}) - 1/2 = 1.50925`` and the NLL of 2
under ``N(2, e^3)`` is :math:`3 + \tfrac12 \log 2\pi = 3.9189`; reading ``e^3`` as a
variance or ``3`` as a log-variance gives none of these numbers.

**Importance sampling.** For a model :math:`p(x, z)` and a guide :math:`q(z \mid x)`, the
``k``-sample bound :math:`\log \frac1k \sum_{i} p(x, z_i) / q(z_i \mid x)`,
:math:`z_i \sim q`, is the IWAE bound; it rises with ``k`` to :math:`\log p(x)` (Burda et
al., 2016). :func:`importance_log_likelihood` evaluates it with ``k`` up to thousands by
drawing the particles in chunks (one vectorized Pyro trace per chunk, a ``pyro.plate`` of
particles to the left of the model's plates) and combining the chunks with a streaming
log-sum-exp, so memory is bounded by ``chunk_size`` times the batch.

Protocol (DESIGN.md's latent-variable models): ``model(x, **kwargs)`` and
``guide(x, **kwargs)`` put every sample site inside a ``pyro.plate`` over the batch at
``dim=-1`` (more plates are allowed with ``max_plate_nesting``; sites' log-densities are
summed over every plate but the batch one).
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from probgen.utils import check_int, drawing_from

__all__ = [
    "gaussian_kl",
    "gaussian_nll",
    "kl_per_dimension",
    "active_units",
    "log_importance_weights",
    "importance_log_likelihood",
    "evidence_lower_bound",
    "elbo_surgery",
]


def _as_tensor(x: Tensor | float, like: Tensor) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(x, dtype=like.dtype,
                                                           device=like.device)


def gaussian_kl(
    mean_1: Tensor,
    log_std_1: Tensor,
    mean_2: Tensor | float = 0.0,
    log_std_2: Tensor | float = 0.0,
) -> Tensor:
    r"""Elementwise :math:`KL(N(m_1, e^{2 s_1}) \| N(m_2, e^{2 s_2}))` in nats.

    Arguments are means and log standard deviations (see the module docstring); the result
    broadcasts them and is not summed. Computed by torch's closed-form Normal-Normal KL.

    Example:
        >>> t = torch.tensor
        >>> round(float(gaussian_kl(t(2.0), t(3.0))), 2)
        200.21
        >>> round(float(gaussian_kl(t(2.0), t(3.0), t(4.0), t(5.0))), 5)
        1.50925
    """
    mean_1 = torch.as_tensor(mean_1)
    log_std_1 = _as_tensor(log_std_1, mean_1)
    mean_2, log_std_2 = _as_tensor(mean_2, mean_1), _as_tensor(log_std_2, mean_1)
    return kl_divergence(Normal(mean_1, log_std_1.exp()), Normal(mean_2, log_std_2.exp()))


def gaussian_nll(x: Tensor, mean: Tensor | float, log_std: Tensor | float) -> Tensor:
    r"""Elementwise negative log-density of ``x`` under :math:`N(m, e^{2 s})` (log-std ``s``).

    Example:
        >>> round(float(gaussian_nll(torch.tensor(2.0), 2.0, 3.0)), 4)
        3.9189
    """
    x = torch.as_tensor(x)
    mean, log_std = _as_tensor(mean, x), _as_tensor(log_std, x)
    return -Normal(mean, log_std.exp()).log_prob(x)


def _diagonal_normal(d: Distribution, name: str) -> Normal:
    base = d.base_dist if isinstance(d, Independent) else d
    if not isinstance(base, Normal):
        raise TypeError(f"{name}: expected a (diagonal) Normal or Independent(Normal), got "
                        f"{type(d).__name__}; per-dimension KL needs a factorized Gaussian.")
    return base


def kl_per_dimension(posterior: Distribution, prior: Distribution | None = None) -> Tensor:
    r"""KL of each latent dimension, :math:`KL(q(z_d \mid x) \| p(z_d))`, averaged over the batch.

    Both distributions must be diagonal Gaussians (``Normal`` or ``Independent(Normal)``);
    the prior defaults to the standard normal. Dimensions whose KL is ~0 carry no
    information about ``x`` (posterior collapse).

    Args:
        posterior: batch shape ``(N,)`` (or ``(N, D)`` without ``to_event``), event ``(D,)``.
        prior: broadcastable to it; ``None`` means :math:`N(0, I)`.

    Returns:
        Tensor of shape ``(D,)``.

    Example:
        >>> q = Normal(torch.tensor([[2.0, 0.0]]), torch.ones(1, 2))
        >>> kl_per_dimension(q).round(decimals=4)
        tensor([2., 0.])
    """
    q = _diagonal_normal(posterior, "posterior")
    p = (Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale)) if prior is None
         else _diagonal_normal(prior, "prior"))
    kl = kl_divergence(q, p)
    return kl.reshape(-1, kl.shape[-1]).mean(0)


def active_units(means: Tensor, threshold: float = 0.01) -> tuple[int, Tensor]:
    r"""Counts active latent units: :math:`\mathrm{Var}_x(E_{q(z_d \mid x)}[z_d]) > \delta`.

    Burda et al. (2016) call unit ``d`` active when the variance over the data of its
    posterior mean exceeds ``threshold`` (0.01).

    Args:
        means: posterior means, shape ``(N, D)`` with ``N >= 2``.
        threshold: the variance threshold.

    Returns:
        ``(count, variances)``, variances of shape ``(D,)``.

    References:
        Importance weighted autoencoders (Burda et al., 2016), https://arxiv.org/abs/1509.00519

    Example:
        >>> m = torch.stack([torch.linspace(-1, 1, 10), torch.zeros(10)], -1)
        >>> active_units(m)[0]
        1
    """
    if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[0] < 2:
        shape = tuple(means.shape) if isinstance(means, Tensor) else type(means).__name__
        raise ValueError(f"means: expected a tensor of shape (N >= 2, D), got {shape}.")
    variances = means.double().var(0).to(means.dtype)
    return int((variances > threshold).sum()), variances


def _site_log_prob(site: dict, k: int, n: int) -> Tensor:
    """A site's log-density (no scale, no mask: the evaluated model as written), summed over
    every dimension except the particle and batch ones, as shape ``(k, n)``."""
    lp = site["fn"].log_prob(site["value"])
    mask = site.get("mask")
    if isinstance(mask, Tensor):
        lp = torch.where(mask, lp, lp.new_zeros(()))
    elif mask is False:
        lp = lp * 0.0
    while lp.dim() > 2:  # plates to the right of the batch plate are summed
        lp = lp.sum(-1)
    return lp.expand(k, n)


def log_importance_weights(
    model: Any,
    guide: Any,
    x: Tensor,
    num_samples: int,
    *args: Any,
    max_plate_nesting: int = 1,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> Tensor:
    r"""Log importance weights :math:`\log p(x, z_i) - \log q(z_i \mid x)`, :math:`z_i \sim q`.

    Runs ``guide`` and then ``model`` replayed on its draws once, vectorized over a
    ``pyro.plate`` of ``num_samples`` particles at ``dim=-(max_plate_nesting + 1)``.

    Args:
        model, guide: Pyro programs called as ``f(x, *args, **kwargs)``, every site in a
            plate over the batch at ``dim=-1``.
        x: the batch, ``(N, *event)``.
        num_samples: particles ``k``.
        max_plate_nesting: plates the model and guide nest (1: the batch plate).
        generator: the guide's draws come from it (:func:`probgen.utils.drawing_from`;
            ``None``: the global RNG).

    Returns:
        Tensor of shape ``(k, N)``.
    """
    check_int("num_samples", num_samples)
    n = x.shape[0]
    with drawing_from(generator), pyro.plate("_importance_particles", num_samples,
                                             dim=-(max_plate_nesting + 1)):
        guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, *args, **kwargs)
    total = x.new_zeros(num_samples, n)
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            total = total + _site_log_prob(site, num_samples, n)
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            total = total - _site_log_prob(site, num_samples, n)
    return total


@torch.no_grad()
def importance_log_likelihood(
    model: Any,
    guide: Any,
    x: Tensor,
    *args: Any,
    num_samples: int = 5000,
    chunk_size: int = 100,
    max_plate_nesting: int = 1,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> Tensor:
    r"""Importance-sampled :math:`\log p(x) \approx \log \frac1k \sum_{i=1}^k w_i` per example.

    The ``k``-sample IWAE bound, a lower bound in expectation that rises to
    :math:`\log p(x)` as ``k`` grows. Particles are drawn ``chunk_size`` at a time and
    merged with a streaming log-sum-exp, so ``k = 5000`` needs the memory of ``chunk_size``.

    Args:
        model, guide: Pyro programs (see :func:`log_importance_weights`).
        x: the batch, ``(N, *event)``.
        num_samples: ``k``.
        chunk_size: particles per vectorized pass.
        max_plate_nesting: plates the model and guide nest.
        generator: the particles' draws come from it (``None``: the global RNG).

    Returns:
        Tensor of shape ``(N,)`` (nats).

    References:
        Importance weighted autoencoders (Burda et al., 2016), https://arxiv.org/abs/1509.00519
    """
    for name, value in {"num_samples": num_samples, "chunk_size": chunk_size}.items():
        check_int(name, value)
    running = None
    done = 0
    while done < num_samples:
        k = min(chunk_size, num_samples - done)
        lw = log_importance_weights(model, guide, x, k, *args,
                                    max_plate_nesting=max_plate_nesting, generator=generator,
                                    **kwargs)
        chunk = torch.logsumexp(lw.double(), 0)
        running = chunk if running is None else torch.logaddexp(running, chunk)
        done += k
    return (running - math.log(num_samples)).to(x.dtype if x.is_floating_point()
                                                else torch.get_default_dtype())


@torch.no_grad()
def evidence_lower_bound(
    model: Any,
    guide: Any,
    x: Tensor,
    *args: Any,
    num_samples: int = 1,
    max_plate_nesting: int = 1,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> Tensor:
    r"""Monte Carlo ELBO :math:`E_q[\log p(x, z) - \log q(z \mid x)]` per example, ``(N,)``,
    averaged over ``num_samples`` draws (from ``generator`` when given)."""
    lw = log_importance_weights(model, guide, x, num_samples, *args,
                                max_plate_nesting=max_plate_nesting, generator=generator,
                                **kwargs)
    return lw.mean(0)


@torch.no_grad()
def elbo_surgery(
    posterior: Distribution,
    prior: Distribution,
    num_samples: int = 10,
    *,
    chunk_size: int = 256,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    r"""ELBO surgery: splits the average KL term into index-code mutual information and the
    aggregate posterior's KL to the prior (Hoffman & Johnson, 2016).

    With the data's index :math:`n` uniform on ``1..N``, :math:`q(n, z) = q(z \mid x_n)/N`
    and the aggregate posterior :math:`q(z) = \frac1N \sum_n q(z \mid x_n)`,

    .. math:: \frac1N \sum_n KL(q(z \mid x_n) \| p(z))
        = \underbrace{E_{q(n, z)}\Big[\log \frac{q(z \mid x_n)}{q(z)}\Big]}_{I_q(n; z)}
        + \underbrace{E_{q(z)}\Big[\log \frac{q(z)}{p(z)}\Big]}_{KL(q(z) \| p(z))}.

    Both terms are estimated with ``num_samples`` draws :math:`z \sim q(z \mid x_n)` per
    example; :math:`\log q(z)` is the exact log-mean over all ``N`` posteriors (``N``
    log-densities per draw, evaluated ``chunk_size`` draws at a time), so the only error is
    the Monte Carlo average. :math:`0 \le I_q \le \log N`.

    Args:
        posterior: :math:`q(z \mid x_n)` for the ``N`` examples, batch shape ``(N,)``
            (e.g. ``vae.posterior(x)`` of a trained VAE).
        prior: :math:`p(z)` on the same event shape (e.g. ``vae.prior_distribution()``).
        num_samples: draws per example.
        chunk_size: draws whose ``N`` posterior densities are evaluated in one pass.
        generator: the draws come from it (``None``: the global RNG).

    Returns:
        Scalars (nats): ``kl`` (the average KL: closed form where torch knows it, else the
        estimate), ``mutual_information``, ``marginal_kl`` and ``kl_estimate``
        (their sum, the Monte Carlo average KL).

    References:
        ELBO surgery: yet another way to carve up the variational evidence lower bound
        (Hoffman & Johnson, 2016), NIPS Workshop on Advances in Approximate Bayesian
        Inference.
    """
    if len(posterior.batch_shape) != 1:
        raise ValueError(f"posterior: expected batch shape (N,), got "
                         f"{tuple(posterior.batch_shape)}.")
    if tuple(prior.event_shape) != tuple(posterior.event_shape):
        raise ValueError(f"prior: expected event shape {tuple(posterior.event_shape)} (the "
                         f"posterior's), got {tuple(prior.event_shape)}.")
    for name, value in {"num_samples": num_samples, "chunk_size": chunk_size}.items():
        check_int(name, value)
    n = posterior.batch_shape[0]
    event = posterior.event_shape
    with drawing_from(generator):
        z = posterior.sample((num_samples,))                    # (S, N, *event)
    log_q_own = posterior.log_prob(z).double()                 # (S, N)
    log_p = prior.log_prob(z).double()                         # (S, N)
    flat = z.reshape(-1, *event)
    pieces = []
    for start in range(0, flat.shape[0], chunk_size):
        chunk = flat[start:start + chunk_size]                 # (c, *event)
        dens = posterior.log_prob(chunk.unsqueeze(1)).double()  # (c, N): every posterior
        pieces.append(torch.logsumexp(dens, -1) - math.log(n))
    log_q_marginal = torch.cat(pieces).reshape(num_samples, n)
    mi = (log_q_own - log_q_marginal).mean()
    marginal = (log_q_marginal - log_p).mean()
    estimate = (log_q_own - log_p).mean()
    try:
        kl = kl_divergence(posterior, prior).double().mean()
    except NotImplementedError:
        kl = estimate
    dtype = z.dtype if z.is_floating_point() else torch.get_default_dtype()
    return {"kl": kl.to(dtype), "mutual_information": mi.to(dtype),
            "marginal_kl": marginal.to(dtype), "kl_estimate": estimate.to(dtype)}
