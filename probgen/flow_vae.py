r"""A normalizing flow as a VAE with deterministic (Delta) sites, whose ELBO is exact.

A flow :math:`x = f(z)`, :math:`z \sim \mathcal N(0, I)` is the latent-variable model whose
decoder is the point mass :math:`p(x \mid z) = \delta(x - f(z))`, with the encoder
:math:`q(z \mid x) = \delta(z - f^{-1}(x))` as its guide. Since ``q`` is a point mass, the ELBO
:math:`E_q[\log p(z) + \log p(x \mid z) - \log q(z \mid x)]` has a single term, and the
ratio of the two Dirac deltas is the change of variables: composing a delta with an
invertible map gives :math:`\delta(x - f(z)) = |\det J_{f^{-1}}(x)|\,\delta(z - f^{-1}(x))`,
so

.. math::
    \text{ELBO}(x) = \log \mathcal N(f^{-1}(x)) + \log|\det J_{f^{-1}}(x)| = \log p(x),

exactly: no gap (the encoder is the true posterior) and no variance (one particle).

In Pyro (:class:`FlowVAE`): the guide's ``"z"`` is a point mass at :math:`f^{-1}(x)`
carrying ``log_density`` :math:`= -\log|\det J_{f^{-1}}(x)|` (the weight of the
:math:`z`-space delta relative to the :math:`x`-space one), and the model's ``"x"`` is a
point mass at :math:`f(z)` with log-density 0, so :math:`\log p(x \mid z) - \log q(z \mid x)`
is the change of variables above. Both are :class:`TolerantDelta`\ s, for two reasons:

- **Rounding.** Pyro's ``Delta`` scores an observation by exact equality, and
  :math:`f(f^{-1}(x)) \ne x` in floating point. Within one ELBO evaluation the model gets
  the guide's ``z`` and the same ``x``; the pair the guide just inverted is remembered, so
  the decoder maps that very ``z`` back to that very ``x`` without a second pass, as a torch
  ``Transform`` with ``cache_size=1`` returns its cached output (how
  ``TransformedDistribution`` scores its own samples exactly). This costs nothing (MAF's
  D-pass sampling direction is never run in training) and keeps a batch-dependent layer
  consistent: Pyro's ``BatchNorm`` in training mode inverts with the batch's statistics but
  maps forward with its running averages, so a recomputed :math:`f(z)` would not be ``x``.
  Any other ``z`` (prior draws under ``Predictive``, a ``z`` from another trace, another
  ``x``) goes through :math:`f`, and :class:`TolerantDelta` accepts the observation within
  an explicit tolerance relative to the dtype's epsilon and the values' scale; beyond it the
  site scores :math:`-\infty`, as a point mass does off its point.
- **KL.** Pyro's ``KL(Delta || p)`` is :math:`-\log p(v)`, dropping the delta's
  ``log_density``; :class:`TolerantDelta`'s is :math:`\text{log\_density} - \log p(v)`, so
  ``TraceMeanField_ELBO`` (probgen's default ELBO estimator) gives the same exact bound as
  ``Trace_ELBO``.
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.distribution import Distribution
from pyro.nn import PyroModule
from torch import Tensor
from torch.distributions import register_kl

from probgen.flows import NormalizingFlow
from probgen.utils import check_int, check_tensor

__all__ = ["FlowVAE", "TolerantDelta"]


class TolerantDelta(dist.Delta):
    r"""Creates a point mass whose observed-value check tolerates floating-point rounding.

    Like Pyro's ``Delta(v, log_density, event_dim)`` (draws are ``v``), but ``log_prob(x)``
    is ``log_density`` when every entry of the event satisfies

    .. math::
        |x_i - v_i| \le \text{rtol} \cdot \max\big(1, \max_j |v_j|\big),

    and :math:`-\infty` otherwise (NaN included), where Pyro's ``Delta`` asks for exact
    equality. The scale is the largest magnitude in the event, at least 1 (the standard-normal
    base's scale: the rounding of a computation is relative to the magnitudes it went
    through). The default ``rtol`` is :math:`\sqrt{\epsilon}` of ``v``'s dtype (about
    ``3.5e-4`` in float32, ``1.5e-8`` in float64): it leaves room for the error of a round
    trip through many layers, amplified by their conditioning, while any visibly different
    observation scores :math:`-\infty`.

    Its KL divergence to any distribution ``p`` is :math:`\text{log\_density} - \log p(v)`
    (Pyro's ``Delta`` drops the ``log_density``), so closed-form-KL estimators agree with
    ``Trace_ELBO`` on a point mass that carries a density.

    Args:
        v: the point, ``(*batch, *event)``.
        log_density: the log-density of the point, a number or ``(*batch,)``.
        event_dim: how many rightmost dimensions of ``v`` form one event.
        rtol: the relative tolerance (``None``: :math:`\sqrt{\epsilon}` of ``v``'s dtype).
        validate_args: Pyro's argument validation.

    Raises:
        TypeError: ``v`` is not a floating tensor.
        ValueError: ``rtol`` is not a positive finite number.

    Example:
        >>> d = TolerantDelta(torch.tensor([1.0, 2.0]), event_dim=1)
        >>> d.log_prob(torch.tensor([1.0, 2.0 + 1e-6])).item() == 0.0  # within: log_density
        True
        >>> d.log_prob(torch.tensor([1.0, 2.1])).isneginf().item()  # beyond the tolerance
        True
    """

    def __init__(self, v: Tensor, log_density: Tensor | float = 0.0, event_dim: int = 0,
                 rtol: float | None = None, validate_args: bool | None = None) -> None:
        if not isinstance(v, Tensor) or not v.is_floating_point():
            raise TypeError(f"v: expected a floating-point tensor, got "
                            f"{getattr(v, 'dtype', type(v).__name__)}.")
        self.rtol = _check_rtol(rtol, v.dtype)
        super().__init__(v, log_density, event_dim, validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> TolerantDelta:
        """Pyro's ``Delta.expand``, keeping ``rtol``."""
        new = self._get_checked_instance(TolerantDelta, _instance)
        new.rtol = self.rtol
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log_density`` where ``x`` is within the tolerance of ``v``, else ``-inf``; shape
        ``(*sample, *batch)``."""
        v = self.v.expand(self.shape())
        err, scale = (x - v).abs(), v.abs()
        if self.event_dim:
            err = err.flatten(err.dim() - self.event_dim).amax(-1)
            scale = scale.flatten(scale.dim() - self.event_dim).amax(-1)
        close = err <= self.rtol * scale.clamp(min=1.0)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return torch.where(close, zero, zero - math.inf) + self.log_density


@register_kl(TolerantDelta, Distribution)
def _kl_tolerant_delta(p: TolerantDelta, q: Distribution) -> Tensor:
    """KL of a point mass with a log-density: ``log_density - log q(v)``."""
    return p.log_density - q.log_prob(p.v)


def _check_rtol(rtol: float | None, dtype: torch.dtype) -> float:
    if rtol is None:
        return math.sqrt(torch.finfo(dtype).eps)
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not (
            0 < rtol < math.inf):
        raise ValueError(f"rtol: expected a positive finite tolerance or None, got {rtol!r}.")
    return float(rtol)


class FlowVAE(PyroModule):
    r"""Creates the VAE view of a normalizing flow: Pyro ``model``/``guide`` with point masses.

    ``model(x=None, n=1, y=None)``: in ``pyro.plate("data", N, dim=-1)``, ``"z" ~ N(0, I)``
    (the flow's base) and ``"x" ~ δ(x − f(z))``; ``guide(x, n=1, y=None)``:
    ``"z" ~ δ(z − f^{-1}(x))`` with log-density :math:`-\log|\det J_{f^{-1}}(x)|`; ``y`` is
    the context of a conditional flow (named as :class:`probgen.inference.ELBO` passes the
    second element of ``(x, y)`` batches). Their ELBO is exactly the flow's ``log_prob(x)``
    (one particle; see the module docstring for the derivation and for how the decoder's
    observation check tolerates rounding), so plain ``pyro.infer.SVI`` with ``Trace_ELBO``,
    :class:`probgen.inference.ELBO` and :func:`probgen.inference.fit` train the flow by
    maximum likelihood, and ``pyro.infer.Predictive(vae.model, num_samples=k)(None, n)``
    draws from the flow. The flow is a submodule (registered with
    ``pyro.module("flow", ...)``): training this trains it.

    The decoder's check uses the flow as it is: a flow with a batch-dependent layer (Pyro's
    ``BatchNorm``) should be in ``eval()`` mode for a ``z`` that the guide did not just
    produce (in training mode it maps forward with running averages, not the batch's).

    Args:
        flow: a :class:`probgen.flows.NormalizingFlow` (any named flow of
            :mod:`probgen.models`, or one over Pyro's own transforms).
        rtol: tolerance of the decoder's check (:class:`TolerantDelta`; ``None``:
            :math:`\sqrt{\epsilon}` of the flow's dtype).

    Example:
        >>> from probgen.models import RealNVP
        >>> from pyro.infer import Predictive, Trace_ELBO
        >>> flow = RealNVP(2, transforms=2, hidden_features=[8])
        >>> vae = flow.as_vae()
        >>> x = torch.randn(5, 2)
        >>> loss = Trace_ELBO().loss(vae.model, vae.guide, x)
        >>> abs(loss + float(flow.log_prob(x).detach().sum())) < 1e-4
        True
        >>> Predictive(vae.model, num_samples=3)(None, 4)["x"].shape
        torch.Size([3, 4, 2])
    """

    def __init__(self, flow: NormalizingFlow, rtol: float | None = None) -> None:
        super().__init__()
        if not isinstance(flow, NormalizingFlow):
            raise TypeError(f"flow: expected a probgen NormalizingFlow, got "
                            f"{type(flow).__name__}.")
        if rtol is not None:
            _check_rtol(rtol, torch.float64)
        self.flow, self.rtol = flow, rtol

    # ---------------------------------------------------------------------------- checks
    def _check_x(self, x: Tensor) -> Tensor:
        event = tuple(self.flow.event_shape)
        x = check_tensor(x, "x", event_shape=event)
        if x.dim() != len(event) + 1:
            raise ValueError(f"x: expected a batch of shape (N, {', '.join(map(str, event))}), "
                             f"got {tuple(x.shape)}.")
        return x

    def _check_context(self, y: Tensor | None, n: int) -> Tensor | None:
        c = self.flow.context
        if not c:
            if y is not None:
                raise ValueError("y: this flow is unconditional (context=0), got a tensor.")
            return None
        if y is None:
            raise ValueError(f"y: this flow is conditional; expected its context of shape "
                             f"({n}, {c}), got None.")
        y = check_tensor(y, "y")
        if tuple(y.shape) != (n, c):
            raise ValueError(f"y: expected the context of shape ({n}, {c}) (one row per "
                             f"example), got {tuple(y.shape)}.")
        return y

    # --------------------------------------------------------------------- Pyro program
    def model(self, x: Tensor | None = None, n: int = 1, y: Tensor | None = None) -> Tensor:
        """The generative model: ``z ~ N(0, I)``, ``x ~ δ(x − f(z))`` in ``pyro.plate("data")``.

        Args:
            x: observed data ``(N, *event_shape)``; ``None`` generates ``n`` examples
                (``pyro.infer.Predictive`` works).
            n: examples to generate when ``x`` is None.
            y: the context ``(N, context)`` of a conditional flow, else None.

        Returns:
            ``x`` (observed) or the generated ``f(z)`` of shape ``(n, *event_shape)``.

        Raises:
            ValueError: ``x`` of the wrong shape, ``n`` not a positive int, a missing,
                unexpected or misshapen context.
        """
        if x is not None:
            n = self._check_x(x).shape[0]
        else:
            check_int("n", n)
        context = self._check_context(y, n)
        encoded = self.__dict__.pop("_encoded", None)
        pyro.module("flow", self.flow)
        k = len(self.flow.event_shape)
        with pyro.plate("data", n, dim=-1):
            z = pyro.sample("z", self.flow._base())
            if x is not None and encoded is not None and encoded[0] is x \
                    and encoded[1] is z and encoded[2] is y:
                value = x  # f(z) for the z the guide computed as f^{-1}(x): exactly x
            elif x is not None:
                with torch.no_grad():  # only compared with x: log_prob has no gradient in it
                    value = self.flow.from_base(z, context)
            else:
                value = self.flow.from_base(z, context)
            return pyro.sample("x", TolerantDelta(value, event_dim=k, rtol=self.rtol), obs=x)

    def guide(self, x: Tensor, n: int = 1, y: Tensor | None = None) -> Tensor:
        r"""The encoder: ``z ~ δ(z − f^{-1}(x))`` with log-density
        :math:`-\log|\det J_{f^{-1}}(x)|`, in ``pyro.plate("data")`` (``n`` is the model's,
        unused here).

        Returns:
            the encoding ``z`` of shape ``(N, *base_shape)``.

        Raises:
            ValueError: ``x`` of the wrong shape, a missing, unexpected or misshapen context.
        """
        self._check_x(x)
        context = self._check_context(y, x.shape[0])
        pyro.module("flow", self.flow)
        z, ladj = self.flow.to_base(x, context)
        k = len(self.flow.base_loc.shape)
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", TolerantDelta(z, log_density=-ladj, event_dim=k,
                                               rtol=self.rtol))
        self.__dict__["_encoded"] = (x, z, y)
        return z

    def extra_repr(self) -> str:  # noqa: D102
        return f"rtol={self.rtol}"
