r"""VQ-VAE: nearest-code quantization (gradient or EMA codebook), convolutional encoder and
decoder, a PixelCNN prior over the code maps (the second stage) for sampling, and the model
as a Pyro program (``model``/``guide``: a deterministic ``Delta`` posterior on the nearest
codes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as pdist
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pyro.distributions import Bernoulli, Independent, Normal
from torch import Tensor, nn
from torch.distributions import Distribution

from probgen.inference.vq import straight_through
from probgen.models.pixelcnn import GatedPixelCNN, PixelCNN
from probgen.nn import ConvResidualBlock
from probgen.utils import check_choice, check_int

__all__ = ["QuantizerOutput", "VectorQuantizer", "VQVAE", "VQ_MODELS", "CODE_PRIORS"]

_LIKELIHOODS = ("bernoulli", "gaussian")
_PRIORS = ("gated_pixelcnn", "pixelcnn")
#: Code priors of the Pyro program: uniform over the K codes (the first stage's), or the
#: learned autoregressive prior (the second stage's).
CODE_PRIORS = ("uniform", "learned")


@dataclass
class QuantizerOutput:
    """What :class:`VectorQuantizer` returns.

    Attributes:
        z_q: the quantized latents with the straight-through gradient to ``z_e``,
            ``(N, D, h, w)`` (feed this to the decoder).
        codes: the chosen codes, differentiable in the codebook, ``(N, D, h, w)``.
        indices: the code indices, ``(N, h, w)`` (long).
    """

    z_q: Tensor
    codes: Tensor
    indices: Tensor


class VectorQuantizer(nn.Module):
    r"""Creates a vector quantizer: each latent vector becomes its nearest of ``K`` codes.

    :math:`k(z) = \arg\min_k \|z - e_k\|^2` over the codebook ``(K, D)``; the output carries
    the straight-through gradient (:func:`probgen.inference.straight_through`).

    Two ways to learn the codebook:

    - gradient (default): the codebook is a parameter, moved by the codebook loss
      :math:`\|sg[z_e] - e\|^2` (the objective adds it);
    - EMA (``ema=True``): the codebook is a buffer of running averages (van den Oord et
      al., 2017, appendix A.1). With ``n_k`` the batch's count of vectors assigned to code
      ``k`` and ``s_k`` their sum, each training call does
      :math:`N_k \leftarrow \gamma N_k + (1 - \gamma) n_k`,
      :math:`m_k \leftarrow \gamma m_k + (1 - \gamma) s_k` and
      :math:`e_k = m_k / \tilde N_k` with the Laplace-smoothed counts
      :math:`\tilde N_k = (N_k + \epsilon) / (\sum_j N_j + K \epsilon) \sum_j N_j`
      (``N`` starts at 1 and ``m`` at the initial codes, so an unused code stays put until
      smoothing wears it down). Under ``torchrun`` the counts and sums are summed over
      processes first.

    Dead codes: with ``dead_code_threshold > 0``, codes whose running count ``N_k`` (the
    average number of vectors per batch they receive; tracked in both modes) falls below it
    are moved onto random encoder outputs of the current batch (Dhariwal et al., 2020,
    Jukebox's random restarts), with their counts reset to 1.

    Args:
        num_codes: ``K``.
        code_dim: ``D``.
        ema: learn the codebook by running averages instead of gradients.
        decay: :math:`\gamma` of the running averages (counts in both modes, codes with EMA).
        eps: :math:`\epsilon` of the Laplace smoothing.
        dead_code_threshold: restart codes whose running count falls below this (0: never).

    Shapes:
        ``z_e`` ``(N, D, h, w)`` (channels first, any number of spatial dims, including none)
        -> :class:`QuantizerOutput`.

    References:
        Neural discrete representation learning (van den Oord et al., 2017),
        https://arxiv.org/abs/1711.00937

    Example:
        >>> vq = VectorQuantizer(4, 2)
        >>> vq(torch.randn(3, 2, 5, 5)).indices.shape
        torch.Size([3, 5, 5])
    """

    def __init__(self, num_codes: int, code_dim: int, *, ema: bool = False,
                 decay: float = 0.99, eps: float = 1e-5,
                 dead_code_threshold: float = 0.0) -> None:
        super().__init__()
        self.num_codes = check_int("num_codes", num_codes)
        self.code_dim = check_int("code_dim", code_dim)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a float in [0, 1), got {decay!r}.")
        if not eps >= 0.0:
            raise ValueError(f"eps: expected a non-negative float, got {eps!r}.")
        if not dead_code_threshold >= 0.0:
            raise ValueError(f"dead_code_threshold: expected a non-negative float, got "
                             f"{dead_code_threshold!r}.")
        self.ema, self.decay, self.eps = bool(ema), float(decay), float(eps)
        self.dead_code_threshold = float(dead_code_threshold)
        init = torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if self.ema:
            self.register_buffer("codebook", init)
            self.register_buffer("code_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("cluster_size", torch.ones(num_codes))

    @property
    def learns_by_gradient(self) -> bool:
        """Whether the codebook is a parameter trained by the codebook loss."""
        return not self.ema

    def nearest(self, z: Tensor) -> Tensor:
        r"""Indices of the nearest codes to vectors ``z`` ``(M, D)``: ``(M,)`` long.

        Uses :math:`\|z\|^2 - 2 z \cdot e + \|e\|^2` (one matrix product).
        """
        e = self.codebook
        distances = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ e.t() + e.pow(2).sum(-1))
        return distances.argmin(-1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes of ``indices`` ``(N, h, w)`` as channels-first latents ``(N, D, h, w)``."""
        if indices.is_floating_point():
            indices = indices.round().long()
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_codes):
            raise ValueError(f"indices: expected values in 0..{self.num_codes - 1}, got "
                             f"[{int(indices.min())}, {int(indices.max())}].")
        return self.codebook[indices].movedim(-1, 1)

    def _flat(self, z_e: Tensor) -> Tensor:
        if z_e.dim() < 2 or z_e.shape[1] != self.code_dim:
            raise ValueError(f"z_e: expected (N, {self.code_dim}, ...) channels-first latents, "
                             f"got {tuple(z_e.shape)}.")
        return z_e.movedim(1, -1).reshape(-1, self.code_dim)

    def quantize(self, z_e: Tensor) -> Tensor:
        """Code indices of latents ``(N, D, ...)`` -> ``(N, ...)``, changing nothing."""
        flat = self._flat(z_e)
        with torch.no_grad():
            return self.nearest(flat).reshape(z_e.shape[:1] + z_e.shape[2:])

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        """Quantizes ``z_e``; in training mode also updates the counts (and EMA codes)."""
        flat = self._flat(z_e)
        with torch.no_grad():
            idx = self.nearest(flat)
        if self.training:
            self._update(flat.detach(), idx)
        indices = idx.reshape(z_e.shape[:1] + z_e.shape[2:])
        codes = self.codebook[indices].movedim(-1, 1)
        return QuantizerOutput(straight_through(z_e, codes), codes, indices)

    @torch.no_grad()
    def _update(self, flat: Tensor, idx: Tensor) -> None:
        onehot = F.one_hot(idx, self.num_codes).to(flat.dtype)
        counts, sums = onehot.sum(0), onehot.t() @ flat
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        g = self.decay
        self.cluster_size.mul_(g).add_(counts, alpha=1 - g)
        if self.ema:
            self.code_sum.mul_(g).add_(sums, alpha=1 - g)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps)
            self.codebook.copy_(self.code_sum / (smoothed * total)[:, None])
        if self.dead_code_threshold > 0:
            dead = self.cluster_size < self.dead_code_threshold
            if bool(dead.any()):
                pick = torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)
                fresh = flat[pick]
                if distributed:  # one restart for every process
                    dist.broadcast(fresh, 0)
                self.codebook[dead] = fresh
                self.cluster_size[dead] = 1.0
                if self.ema:
                    self.code_sum[dead] = fresh

    def extra_repr(self) -> str:  # noqa: D102
        return (f"num_codes={self.num_codes}, code_dim={self.code_dim}, ema={self.ema}, "
                f"decay={self.decay}, dead_code_threshold={self.dead_code_threshold}")


def _encoder(c: int, channels: int, code_dim: int, downsample: int, blocks: int) -> nn.Module:
    layers: list[nn.Module] = []
    cin = c
    for _ in range(downsample):  # 4x4 stride-2 convolutions halve the size
        layers += [nn.Conv2d(cin, channels, 4, stride=2, padding=1), nn.ReLU()]
        cin = channels
    layers += [nn.Conv2d(cin, channels, 3, padding=1)]
    layers += [ConvResidualBlock(channels) for _ in range(blocks)]
    layers += [nn.ReLU(), nn.Conv2d(channels, code_dim, 1)]
    return nn.Sequential(*layers)


def _decoder(c_out: int, channels: int, code_dim: int, downsample: int, blocks: int
             ) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(code_dim, channels, 3, padding=1)]
    layers += [ConvResidualBlock(channels) for _ in range(blocks)]
    layers += [nn.ReLU()]
    for i in range(downsample):
        last = i == downsample - 1
        layers += [nn.ConvTranspose2d(channels, c_out if last else channels, 4, stride=2,
                                      padding=1)]
        if not last:
            layers += [nn.ReLU()]
    if downsample == 0:
        layers += [nn.Conv2d(channels, c_out, 3, padding=1)]
    return nn.Sequential(*layers)


class VQVAE(nn.Module):
    r"""Creates a VQ-VAE with a PixelCNN prior over its code maps.

    ``x (C, H, W) -> encoder -> z_e (D, H/2^s, W/2^s) -> nearest code -> z_q -> decoder ->
    p(x | z_q)``. The encoder is ``s`` 4x4 stride-2 convolutions, a 3x3 convolution,
    residual blocks and a 1x1 projection to ``D``; the decoder mirrors it with transposed
    convolutions. The likelihood is Bernoulli (binarized data, decoder logits) or Gaussian
    with a fixed ``scale`` (continuous data: its NLL is the squared error over
    :math:`2\sigma^2` plus a constant). Train it with
    :class:`probgen.inference.VectorQuantizedLoss`, or with
    :class:`probgen.inference.TwoStageVQLoss`, which then fits :attr:`prior` (a Gated
    PixelCNN, or a PixelCNN, over ``K``-valued code maps fed as one-hot vectors); after
    that :meth:`sample` draws code maps from the prior and decodes them.

    Args:
        shape: image shape ``(C, H, W)``; ``H`` and ``W`` divisible by ``2^downsample``.
        num_codes: ``K``, the codebook size.
        code_dim: ``D``, the code dimension.
        channels: hidden channels of encoder and decoder.
        downsample: ``s``, the number of halvings from image to code map.
        blocks: residual blocks in encoder and decoder.
        likelihood: ``"bernoulli"`` or ``"gaussian"``.
        scale: the Gaussian likelihood's standard deviation.
        ema: learn the codebook by running averages (see :class:`VectorQuantizer`).
        decay: the running averages' decay.
        dead_code_threshold: restart codes used less than this often per batch (0: never).
        prior: ``"gated_pixelcnn"`` or ``"pixelcnn"``.
        prior_channels: the prior's feature maps.
        prior_layers: the prior's layers.
        prior_kernel_size: the prior's kernel size (odd).

    References:
        Neural discrete representation learning (van den Oord et al., 2017),
        https://arxiv.org/abs/1711.00937

    Example:
        >>> model = VQVAE([1, 8, 8], num_codes=8, code_dim=4, channels=8, prior_channels=8)
        >>> model.sample((2,)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        shape: Sequence[int],
        num_codes: int = 64,
        code_dim: int = 16,
        channels: int = 64,
        downsample: int = 2,
        blocks: int = 2,
        likelihood: str = "bernoulli",
        scale: float = 0.1,
        ema: bool = False,
        decay: float = 0.99,
        dead_code_threshold: float = 0.0,
        prior: str = "gated_pixelcnn",
        prior_channels: int = 64,
        prior_layers: int = 5,
        prior_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if len(shape) != 3:
            raise ValueError(f"shape: expected an image shape (C, H, W), got {list(shape)}.")
        c, h, w = (int(s) for s in shape)
        check_int("downsample", downsample, low=0)
        f = 2 ** downsample
        if h % f or w % f:
            raise ValueError(f"shape: H and W must be divisible by 2^downsample = {f}, got "
                             f"{(h, w)}.")
        check_choice("likelihood", likelihood, _LIKELIHOODS)
        check_choice("prior", prior, _PRIORS)
        if not scale > 0:
            raise ValueError(f"scale: expected a positive float, got {scale!r}.")
        self.event_shape = torch.Size((c, h, w))
        self.code_shape = torch.Size((h // f, w // f))
        self.likelihood, self.scale = likelihood, float(scale)
        check_int("channels", channels)
        check_int("blocks", blocks, low=0)
        self.encoder = _encoder(c, channels, code_dim, downsample, blocks)
        self.quantizer = VectorQuantizer(num_codes, code_dim, ema=ema, decay=decay,
                                         dead_code_threshold=dead_code_threshold)
        self.decoder = _decoder(c, channels, code_dim, downsample, blocks)
        prior_shape = (1, *self.code_shape)
        if prior == "gated_pixelcnn":
            self.prior = GatedPixelCNN(prior_shape, channels=prior_channels, layers=prior_layers,
                                       kernel_size=prior_kernel_size, categories=num_codes,
                                       one_hot=True)
        else:
            self.prior = PixelCNN(prior_shape, channels=prior_channels, layers=prior_layers,
                                  kernel_size=prior_kernel_size, categories=num_codes,
                                  layer_norm=True, one_hot=True)

    def _check_x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}.")
        if x.dim() != 4 or x.shape[1:] != self.event_shape:
            raise ValueError(f"x: expected images (N, {', '.join(map(str, self.event_shape))})"
                             f", got {tuple(x.shape)}.")
        return x.to(next(self.encoder.parameters()).dtype)

    def encode(self, x: Tensor) -> Tensor:
        """Encoder outputs ``z_e`` ``(N, D, h, w)`` of images ``x`` ``(N, C, H, W)``."""
        return self.encoder(self._check_x(x))

    def encode_indices(self, x: Tensor) -> Tensor:
        """Code maps ``(N, h, w)`` (long) of images ``x``; the codebook is not updated."""
        return self.quantizer.quantize(self.encode(x))

    def decode(self, z_q: Tensor) -> Distribution:
        """The likelihood :math:`p(x | z_q)` (event shape ``(C, H, W)``) of latents
        ``(N, D, h, w)``."""
        out = self.decoder(z_q)
        if self.likelihood == "bernoulli":
            return Independent(Bernoulli(logits=out, validate_args=False), 3)
        return Independent(Normal(out, self.scale, validate_args=False), 3)

    def decode_indices(self, indices: Tensor) -> Distribution:
        """The likelihood given code maps ``(N, h, w)`` (or ``(N, 1, h, w)``)."""
        if indices.dim() == 4:
            indices = indices[:, 0]
        return self.decode(self.quantizer.lookup(indices))

    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder mean given the quantized code of ``x`` (probabilities for Bernoulli)."""
        return self.decode_indices(self.encode_indices(x)).mean

    def forward(self, x: Tensor) -> QuantizerOutput:
        """Quantizes the code of ``x`` (see :class:`VectorQuantizer`)."""
        return self.quantizer(self.encode(x))

    # ------------------------------------------------------------------- Pyro program
    def _code_prior(self, code_prior: str, n: int) -> pdist.Distribution:
        """The prior over one code map: uniform, event ``(h, w)``, or the learned prior,
        event ``(1, h, w)``."""
        check_choice("code_prior", code_prior, CODE_PRIORS)
        if code_prior == "uniform":
            logits = self.quantizer.codebook.new_zeros(*self.code_shape,
                                                       self.quantizer.num_codes)
            return pdist.Categorical(logits=logits).to_event(2)
        return self.prior.distribution()

    def model(self, x: Tensor | None = None, n: int = 1, code_prior: str = "uniform"
              ) -> Tensor:
        r"""The generative model as a Pyro program: a code map ``"codes"`` from the code
        prior, then ``"x"`` from the decoder, in ``pyro.plate("data", N, dim=-1)``.

        ``code_prior="uniform"`` is the first stage's prior (each position uniform over
        the ``K`` codes, :math:`\log p(\text{codes}) = -hw\log K`), ``"learned"`` the
        autoregressive :attr:`prior` over ``(1, h, w)`` maps. The decoder (and the learned
        prior) are registered with ``pyro.module``.

        Args:
            x: images ``(N, C, H, W)``; ``None`` generates ``n`` (``Predictive`` works).
            n: images to generate when ``x`` is None.
            code_prior: ``"uniform"`` or ``"learned"``.

        Returns:
            ``x`` (observed) or the generated images ``(n, C, H, W)``.
        """
        if x is not None:
            x = self._check_x(x)
            n = x.shape[0]
        else:
            check_int("n", n)
        pyro.module("decoder", self.decoder)
        pyro.module("quantizer", self.quantizer)
        if code_prior == "learned":
            pyro.module("prior", self.prior)
        with pyro.plate("data", n, dim=-1):
            codes = pyro.sample("codes", self._code_prior(code_prior, n))
            return pyro.sample("x", self.decode_indices(codes.long()), obs=x)

    def guide(self, x: Tensor, n: int = 1, code_prior: str = "uniform") -> None:
        r"""The posterior as a Pyro program: the point mass (``Delta``) on the nearest codes
        of the encoder's output, :math:`q(\text{codes} \mid x) = \delta_{k(z_e(x))}`, so
        its log-density is 0 and the ELBO is :math:`\log p(x \mid z_q) +
        \log p(\text{codes})`. The codebook is not updated and no gradient reaches the
        encoder through the Delta: the autoencoder trains with
        :class:`probgen.inference.VectorQuantizedLoss` (straight-through gradients), and
        this program evaluates, generates and composes with Pyro."""
        pyro.module("encoder", self.encoder)
        indices = self.encode_indices(x)
        if code_prior == "learned":
            indices = indices[:, None]
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("codes", pdist.Delta(indices.to(self.quantizer.codebook.dtype),
                                             event_dim=indices.dim() - 1))

    @torch.no_grad()
    def sample(self, shape: Sequence[int] | int = (), *, mean: bool = True,
               generator: torch.Generator | None = None) -> Tensor:
        """Images from the two-stage model: code maps from the prior, then the decoder.

        Args:
            shape: sample shape (an int ``n`` means ``(n,)``).
            mean: return the decoder mean (Bernoulli probabilities) instead of a draw.
            generator: for the prior's and the likelihood's randomness.

        Returns:
            Tensor: ``(*shape, C, H, W)``.
        """
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = math.prod(shape)
        was_training = self.training
        self.eval()
        try:
            codes = self.prior.sample((n,), generator=generator)
            px = self.decode_indices(codes.long())
            if mean:
                x = px.mean
            elif self.likelihood == "bernoulli":
                x = torch.bernoulli(px.mean, generator=generator)
            else:
                noise = torch.randn(px.mean.shape, generator=generator, dtype=px.mean.dtype,
                                    device=px.mean.device)
                x = px.mean + self.scale * noise
        finally:
            self.train(was_training)
        return x.reshape(*shape, *self.event_shape)


VQ_MODELS: dict[str, type[nn.Module]] = {"VQVAE": VQVAE}
