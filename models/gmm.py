r"""Gaussian mixtures: a Distribution, a Pyro program with an amortized categorical
posterior, closed-form EM steps, and the course's 8-component "flower" mixture.

:class:`GaussianMixtureModel` is at once

- a density model (``distribution()`` is a Pyro ``MixtureSameFamily`` of
  ``MultivariateNormal``\ s; ``log_prob``, ``sample``), trained by gradient maximum
  likelihood with :class:`probgen.inference.MaximumLikelihood`;
- a latent-variable Pyro program: ``model(x)`` draws the component
  :math:`c \sim \mathrm{Cat}(\pi)` and :math:`x \sim N(\mu_c, \Sigma_c)`; ``guide(x)`` is an
  amortized categorical posterior :math:`q(c \mid x) = \mathrm{Cat}(\mathrm{softmax}(f(x)))`
  (an MLP), enumerated in parallel so Pyro's ``TraceEnum_ELBO`` sums it exactly; trained by
  :class:`probgen.inference.VariationalEM` (alternating or joint updates);
- an EM model: ``e_step(x)`` gives the exact responsibilities
  :math:`r_{nk} = p(c = k \mid x_n)`, ``m_step(x, r)`` sets weights, means and covariances
  to their closed-form maximizers; :class:`probgen.inference.ExactEM` runs them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from probgen.data.toy import flower_parameters
from probgen.nn import MLP
from probgen.utils import check_choice, check_int, check_tensor, drawing_from

__all__ = ["GaussianMixtureModel", "flower_mixture", "GMM_MODELS"]

_COVARIANCES = ("full", "diag")


class GaussianMixtureModel(PyroModule):
    r"""Creates a mixture of ``components`` Gaussians in ``features`` dimensions.

    Parameters (unconstrained): mixture logits, means, and the Cholesky factor of each
    covariance (log-diagonal plus strictly lower part; ``covariance="diag"`` keeps only the
    diagonal).

    Args:
        features: dimension D.
        components: K.
        covariance: ``"full"`` or ``"diag"``.
        hidden_features: hidden sizes of the amortized posterior network ``x -> logits``.
        min_covariance: added to the diagonal of covariances set by :meth:`m_step`.

    Example:
        >>> gmm = GaussianMixtureModel(2, 3)
        >>> gmm.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        features: int,
        components: int,
        covariance: str = "full",
        hidden_features: Sequence[int] = (64, 64),
        min_covariance: float = 1e-6,
    ) -> None:
        super().__init__()
        for name, value in {"features": features, "components": components}.items():
            check_int(name, value)
        check_choice("covariance", covariance, _COVARIANCES)
        self.features, self.components, self.covariance_kind = features, components, covariance
        self.min_covariance = float(min_covariance)
        self.logits = nn.Parameter(torch.zeros(components))
        angles = torch.arange(components) * (2 * math.pi / components)
        loc = torch.zeros(components, features)
        loc[:, 0] = angles.cos()
        if features > 1:
            loc[:, 1] = angles.sin()
        self.loc = nn.Parameter(loc)
        self.log_diag = nn.Parameter(torch.zeros(components, features))
        self.lower = nn.Parameter(torch.zeros(components, features * (features - 1) // 2),
                                  requires_grad=covariance == "full")
        self.register_buffer("_rows", torch.tril_indices(features, features, -1)[0],
                             persistent=False)
        self.register_buffer("_cols", torch.tril_indices(features, features, -1)[1],
                             persistent=False)
        self.register_buffer("initialized", torch.tensor(False))
        self.encoder = MLP(features, components, [int(h) for h in hidden_features])

    # ----------------------------------------------------------------- parameters
    @property
    def weights(self) -> Tensor:
        """Mixture weights :math:`\\pi`, ``(K,)``."""
        return self.logits.softmax(-1)

    def scale_tril(self) -> Tensor:
        """Cholesky factors :math:`L_k` (``Sigma_k = L_k L_k^T``), ``(K, D, D)``."""
        tril = torch.diag_embed(self.log_diag.exp())
        if self.covariance_kind == "full" and self.features > 1:
            lower = self.lower.new_zeros(self.components, self.features, self.features)
            lower[:, self._rows, self._cols] = self.lower
            tril = tril + lower
        return tril

    def covariance(self) -> Tensor:
        """Covariances :math:`\\Sigma_k`, ``(K, D, D)``."""
        tril = self.scale_tril()
        return tril @ tril.transpose(-1, -2)

    @torch.no_grad()
    def set_parameters(self, weights: Tensor, loc: Tensor, covariance: Tensor) -> None:
        """Sets weights ``(K,)``, means ``(K, D)`` and covariances ``(K, D, D)``."""
        k, d = self.components, self.features
        for name, value, shape in (("weights", weights, (k,)), ("loc", loc, (k, d)),
                                   ("covariance", covariance, (k, d, d))):
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name}: expected shape {shape}, got {got}.")
        if self.covariance_kind == "diag":
            covariance = torch.diag_embed(covariance.diagonal(dim1=-2, dim2=-1))
        tril = torch.linalg.cholesky(covariance.to(self.loc.dtype))
        self.logits.copy_(weights.clamp_min(1e-30).log())
        self.loc.copy_(loc)
        self.log_diag.copy_(tril.diagonal(dim1=-2, dim2=-1).log())
        if self.features > 1:
            self.lower.copy_(tril[:, self._rows, self._cols])
        self.initialized.fill_(True)

    @torch.no_grad()
    def initialize(self, x: Tensor, generator: torch.Generator | None = None,
                   kmeans_iterations: int = 100, kmeans_restarts: int = 10) -> None:
        """Data-based start, as scikit-learn's ``GaussianMixture(init_params="kmeans")``:
        scikit-learn's k-means (k-means++ seeding, at most ``kmeans_iterations`` Lloyd
        iterations; 0: the seeds alone), the best of ``kmeans_restarts`` runs by inertia,
        then each cluster's share, mean and covariance (the data covariance for clusters of
        fewer than D + 1 points).

        One k-means run often settles with two centres in one elongated cluster (two of
        the flower's petals then share a Gaussian); restarts make that unlikely, and EM
        cannot undo it later.

        References:
            k-means++: the advantages of careful seeding (Arthur & Vassilvitskii, 2007),
            https://dl.acm.org/doi/10.5555/1283383.1283494
        """
        from sklearn.cluster import KMeans, kmeans_plusplus

        x = self._check(x)
        if x.shape[0] < self.components:
            raise ValueError(f"x: need at least {self.components} points to initialize, "
                             f"got {x.shape[0]}.")
        for value, name, least in ((kmeans_iterations, "kmeans_iterations", 0),
                                   (kmeans_restarts, "kmeans_restarts", 1)):
            check_int(name, value, low=least)
        data = x.double()
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        if kmeans_iterations == 0:  # the k-means++ seeds alone
            centres, _ = kmeans_plusplus(data.cpu().numpy(), self.components, random_state=seed)
        else:
            centres = KMeans(self.components, init="k-means++", n_init=kmeans_restarts,
                             max_iter=kmeans_iterations, random_state=seed
                             ).fit(data.cpu().numpy()).cluster_centers_
        centres = torch.as_tensor(centres, dtype=data.dtype, device=data.device)
        assign = torch.cdist(data, centres).argmin(-1)
        eye = torch.eye(self.features, dtype=data.dtype)
        overall = torch.cov(data.T).reshape(self.features, self.features)
        counts = torch.bincount(assign, minlength=self.components).double()
        cov = torch.stack([
            torch.cov(data[assign == k].T).reshape(self.features, self.features)
            if counts[k] > self.features else overall for k in range(self.components)])
        weights = (counts + 1.0) / (counts.sum() + self.components)
        self.set_parameters(weights, centres, cov + self.min_covariance * eye)

    # -------------------------------------------------------------- distribution
    def _check(self, x: Tensor) -> Tensor:
        return check_tensor(x, "x", event_shape=(self.features,))

    def component_distribution(self) -> dist.MultivariateNormal:
        """The K Gaussians as one batched ``MultivariateNormal`` (batch shape ``(K,)``)."""
        return dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril(),
                                       validate_args=False)

    def distribution(self, context: Tensor | None = None) -> dist.MixtureSameFamily:
        """The mixture as a Pyro ``MixtureSameFamily`` (``context`` must be ``None``)."""
        if context is not None:
            raise ValueError("context: a GaussianMixtureModel is unconditional, got a tensor.")
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits, validate_args=False),
                                      self.component_distribution(), validate_args=False)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log-density, ``(*batch, D)`` -> ``(*batch,)``."""
        return self.distribution(context).log_prob(self._check(x))

    @torch.no_grad()
    def sample(self, shape: Sequence[int] = (), context: Tensor | None = None, *,
               generator: torch.Generator | None = None) -> Tensor:
        """Samples, ``(*shape, D)``, drawn from ``generator`` when one is given."""
        with drawing_from(generator):
            return self.distribution(context).sample(torch.Size(shape))

    def joint_log_prob(self, x: Tensor) -> Tensor:
        """:math:`\\log \\pi_k + \\log N(x_n; \\mu_k, \\Sigma_k)`, ``(N, K)``."""
        comp = self.component_distribution().log_prob(self._check(x).unsqueeze(-2))
        return comp + self.logits.log_softmax(-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Exact posterior :math:`p(c = k \\mid x_n)`, ``(N, K)``."""
        return self.joint_log_prob(x).softmax(-1)

    @torch.no_grad()
    def assign(self, x: Tensor) -> Tensor:
        """The most probable component of each point, ``(N,)`` (long)."""
        return self.joint_log_prob(x).argmax(-1)

    # ------------------------------------------------------------------------ EM
    @torch.no_grad()
    def e_step(self, x: Tensor) -> Tensor:
        """E-step: the responsibilities ``(N, K)`` (the exact posterior over components)."""
        return self.responsibilities(x)

    @torch.no_grad()
    def m_step(self, x: Tensor, responsibilities: Tensor) -> None:
        r"""M-step in closed form: :math:`N_k = \sum_n r_{nk}`, :math:`\pi_k = N_k / N`,
        :math:`\mu_k = \sum_n r_{nk} x_n / N_k`,
        :math:`\Sigma_k = \sum_n r_{nk} (x_n - \mu_k)(x_n - \mu_k)^T / N_k + \epsilon I`.
        Computed in float64."""
        x = self._check(x).double()
        r = responsibilities.double()
        if r.shape != (x.shape[0], self.components):
            raise ValueError(f"responsibilities: expected shape ({x.shape[0]}, "
                             f"{self.components}), got {tuple(r.shape)}.")
        nk = r.sum(0) + 1e-12
        loc = (r.T @ x) / nk[:, None]
        diff = x.unsqueeze(1) - loc  # (N, K, D)
        cov = torch.einsum("nk,nki,nkj->kij", r, diff, diff) / nk[:, None, None]
        cov = cov + self.min_covariance * torch.eye(self.features, dtype=cov.dtype)
        self.set_parameters(nk / nk.sum(), loc, cov)

    def fit_em(self, x: Tensor, iterations: int = 100, tol: float = 1e-6) -> list[float]:
        """Runs exact EM on ``x`` until the mean log-likelihood gains less than ``tol``;
        returns the mean log-likelihood before each iteration and after the last one."""
        x = self._check(x)
        if not bool(self.initialized):
            self.initialize(x)
        history: list[float] = []
        with torch.no_grad():
            for _ in range(iterations):
                history.append(float(self.log_prob(x).mean()))
                self.m_step(x, self.e_step(x))
                if len(history) > 1 and history[-1] - history[-2] < tol:
                    break
            history.append(float(self.log_prob(x).mean()))
        return history

    # --------------------------------------------------------------- Pyro program
    def model(self, x: Tensor | None = None, n: int = 1) -> Tensor:
        """``c ~ Cat(pi)``, ``x ~ N(mu_c, Sigma_c)`` in a plate over the batch; the mixture's
        trainable tensors are ``pyro.param`` sites (plain ``pyro.infer.SVI`` with
        ``TraceEnum_ELBO`` trains them).

        Args:
            x: observed points ``(N, D)``; ``None`` generates ``n`` points (so
                ``pyro.infer.Predictive(gmm.model, num_samples=S)()`` draws from the mixture).
            n: points to generate when ``x`` is None.

        Returns:
            ``x`` (observed), or the generated points ``(n, D)``.
        """
        if x is not None:
            x = self._check(x)
            n = x.shape[0]
        else:
            check_int("n", n)
        for name in ("logits", "loc", "log_diag", "lower"):
            value = getattr(self, name)
            if value.requires_grad:
                pyro.param(name, value)
        tril, loc = self.scale_tril(), self.loc
        with pyro.plate("data", n, dim=-1):
            c = pyro.sample("c", dist.Categorical(logits=self.logits, validate_args=False))
            return pyro.sample("x", dist.MultivariateNormal(loc[c], scale_tril=tril[c],
                                                            validate_args=False), obs=x)

    def guide(self, x: Tensor, n: int = 1) -> None:
        """Amortized ``q(c | x) = Cat(softmax(encoder(x)))``, enumerated in parallel (``n``
        is the model's, unused here); the encoder is registered with ``pyro.module``."""
        pyro.module("encoder", self.encoder)
        logits = self.encoder(self._check(x))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("c", dist.Categorical(logits=logits, validate_args=False),
                        infer={"enumerate": "parallel"})

    def guide_parameters(self) -> list[nn.Parameter]:
        """The amortized posterior's parameters (variational EM's E-step updates these)."""
        return list(self.encoder.parameters())

    def model_parameters(self) -> list[nn.Parameter]:
        """The mixture's parameters (variational EM's M-step updates these)."""
        return [p for p in (self.logits, self.loc, self.log_diag, self.lower) if p.requires_grad]

    def extra_repr(self) -> str:  # noqa: D102
        return (f"features={self.features}, components={self.components}, "
                f"covariance={self.covariance_kind!r}")


def flower_mixture(dtype: torch.dtype = torch.float32) -> GaussianMixtureModel:
    r"""The course's 8-component "flower" mixture in 2-D: equal weights, one component
    :math:`N(0, I)` at the centre and 7 petals at radius 6, angles :math:`2\pi k / 7`, each
    with variance 3 along its radius and 1 across it (``toy_sample("flower", n)`` draws
    from it).

    Example:
        >>> gmm = flower_mixture()
        >>> gmm.sample((4,)).shape, round(gmm.weights[0].item(), 3)
        (torch.Size([4, 2]), 0.125)
    """
    weights, loc, cov = flower_parameters()
    gmm = GaussianMixtureModel(2, 8).to(dtype)
    gmm.set_parameters(weights.to(dtype), loc.to(dtype), cov.to(dtype))
    return gmm


GMM_MODELS: dict[str, type[nn.Module]] = {"GaussianMixtureModel": GaussianMixtureModel}
