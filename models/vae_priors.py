r"""VAE priors with a ``distribution()``: :class:`StandardNormalPrior`, :class:`VampPrior`,
and the :class:`DiagonalNormalMixture` the VampPrior returns (its ``log_prob`` is two matrix
products). Used by :mod:`probgen.models.vae`; flow priors come from the flow models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from probgen.models.vae_blocks import _shape
from probgen.utils import check_int

__all__ = ["StandardNormalPrior", "VampPrior", "DiagonalNormalMixture"]


class StandardNormalPrior(nn.Module):
    """Creates the prior :math:`N(0, I_D)` (buffers, so it moves with ``.to``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def distribution(self) -> dist.Distribution:
        """The prior as a Pyro distribution, event shape ``(D,)``."""
        return dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)


class VampPrior(nn.Module):
    r"""Creates a VampPrior: the mixture :math:`\frac1K \sum_k q(z \mid u_k)` of the
    (diagonal Gaussian) posteriors of ``K`` learned pseudo-inputs :math:`u_k`.

    Args:
        shape: data shape (of the pseudo-inputs).
        components: K.

    References:
        VAE with a VampPrior (Tomczak & Welling, 2018), https://arxiv.org/abs/1705.07120
    """

    def __init__(self, shape: Sequence[int], components: int = 500) -> None:
        super().__init__()
        check_int("components", components)
        self.pseudo_inputs = nn.Parameter(torch.rand(components, *_shape(shape)))

    def distribution(self, encode: Callable[[Tensor], tuple[Tensor, Tensor]]
                     ) -> dist.Distribution:
        """The mixture, given ``encode(u) -> (loc, scale)`` of the posterior's Gaussian."""
        loc, scale = encode(self.pseudo_inputs)
        return DiagonalNormalMixture(loc.new_zeros(loc.shape[0]), loc, scale)


class DiagonalNormalMixture(dist.MixtureSameFamily):
    r"""Creates a mixture of diagonal Gaussians whose ``log_prob`` costs two matrix products.

    The same distribution as ``MixtureSameFamily(Categorical(logits), Normal(loc,
    scale).to_event(1))``, and sampling, mean and variance are inherited from it. Its
    ``log_prob`` is why this class exists: ``MixtureSameFamily`` broadcasts each point
    against every component, materializing a ``(*sample, K, D)`` tensor, which for a
    VampPrior (K = 500) evaluated on k = 5000 importance samples of a test batch is
    gigabytes per pass. Here the quadratic form is expanded,

    .. math:: \sum_d \frac{(z_d-\mu_{kd})^2}{\sigma_{kd}^2}
        = z^2 \cdot \sigma_k^{-2} - 2\, z \cdot \mu_k\sigma_k^{-2} + \mu_k^2 \cdot \sigma_k^{-2},

    and evaluated in float64 (the three terms can be large and nearly cancel when a scale is
    small), so memory is ``(*sample, K)`` and the work is two ``(n, D) x (D, K)`` products.

    Args:
        logits: mixture logits, shape ``(*batch, K)`` (unnormalized).
        loc, scale: component means and standard deviations, ``(*batch, K, D)``.
    """

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor,
                 validate_args: bool | None = False) -> None:
        for name, value in {"logits": logits, "loc": loc, "scale": scale}.items():
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise TypeError(f"{name}: expected a floating-point tensor, got "
                                f"{type(value).__name__}"
                                + (f" of dtype {value.dtype}" if isinstance(value, Tensor)
                                   else "") + ".")
        if loc.dim() < 2 or loc.shape != scale.shape or logits.shape != loc.shape[:-1]:
            raise ValueError("DiagonalNormalMixture: expected loc and scale of one shape "
                             "(*batch, K, D) and logits (*batch, K); got loc "
                             f"{tuple(loc.shape)}, scale {tuple(scale.shape)}, logits "
                             f"{tuple(logits.shape)}.")
        super().__init__(dist.Categorical(logits=logits, validate_args=False),
                         dist.Normal(loc, scale, validate_args=False).to_event(1),
                         validate_args=validate_args)
        # the parameters as given; ``expand`` keeps unbatched ones, so that inside a
        # pyro.plate the density is computed once per component, not copied per batch entry
        self._params = (logits, loc, scale)

    def expand(self, batch_shape, _instance=None):  # noqa: ANN001, ANN201 - torch's signature
        """The same mixture with its parameters expanded to ``batch_shape``."""
        batch_shape = torch.Size(batch_shape)
        k, d = self.component_distribution.base_dist.loc.shape[-2:]
        logits, loc, scale = self._params
        new = DiagonalNormalMixture(logits.expand(batch_shape + (k,)),
                                    loc.expand(batch_shape + (k, d)),
                                    scale.expand(batch_shape + (k, d)), validate_args=False)
        if loc.dim() == 2:
            new._params = self._params
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-density of ``value``, shape ``(*sample, *batch, D)`` -> ``(*sample, *batch)``."""
        if self._validate_args:
            self._validate_sample(value)
        logits, loc, scale = self._params
        dtype = torch.promote_types(value.dtype, loc.dtype)
        loc, scale = loc.double(), scale.double()
        d = loc.shape[-1]
        if value.shape[-1:] != (d,):
            raise ValueError(f"DiagonalNormalMixture.log_prob: expected values with last "
                             f"dimension {d}, got shape {tuple(value.shape)}.")
        z = value.double()
        precision = scale.pow(-2)                                   # (*batch, K, D)
        loc_term = (loc.pow(2) * precision).sum(-1)                 # (*batch, K)
        if loc.dim() == 2:  # no batch shape: one (n, D) x (D, K) product per term
            flat = z.reshape(-1, d)
            quad = flat.pow(2) @ precision.T - 2.0 * (flat @ (loc * precision).T)
            quad = quad.reshape(*z.shape[:-1], loc.shape[0])
        else:
            zz = z.unsqueeze(-2)
            quad = (zz.pow(2) @ precision.transpose(-1, -2)
                    - 2.0 * (zz @ (loc * precision).transpose(-1, -2))).squeeze(-2)
        mahalanobis = (quad + loc_term).clamp_min(0.0)  # rounding must not make it negative
        log_comp = -0.5 * (mahalanobis + d * math.log(2.0 * math.pi)) - scale.log().sum(-1)
        log_mix = torch.log_softmax(logits.double(), dim=-1)
        out = torch.logsumexp(log_comp + log_mix, dim=-1)
        out = out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))
        return out.to(dtype)

