"""A small ImageGPT-style transformer over pixels, with key/value-cached sampling."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probgen.models.autoregressive import AutoregressiveModel
from probgen.models.pixelcnn import raster_order
from probgen.nn.masked import causal_mask
from probgen.utils import check_int

__all__ = ["ImageTransformer", "CausalSelfAttention", "KVCache"]


class KVCache:
    """Creates a key/value cache for one attention layer: ``(N, heads, length, head_dim)``
    buffers filled one position at a time, so a new token attends to all earlier ones
    without recomputing them."""

    def __init__(self, n: int, heads: int, length: int, head_dim: int, *,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.keys = torch.empty(n, heads, length, head_dim, device=device, dtype=dtype)
        self.values = torch.empty_like(self.keys)
        self.filled = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Stores ``k, v`` of shape ``(N, heads, T, head_dim)``; returns all keys and values."""
        t = k.shape[2]
        if self.filled + t > self.keys.shape[2]:
            raise ValueError(f"KVCache: holds {self.keys.shape[2]} positions, "
                             f"{self.filled + t} asked for.")
        self.keys[:, :, self.filled : self.filled + t] = k
        self.values[:, :, self.filled : self.filled + t] = v
        self.filled += t
        return self.keys[:, :, : self.filled], self.values[:, :, : self.filled]


class CausalSelfAttention(nn.Module):
    """Creates multi-head self-attention with an additive causal mask (or a cache).

    Args:
        dim: model width (a multiple of ``heads``).
        heads: attention heads.
        dropout: dropout on the attention weights and the output (training only).

    Shapes:
        ``x``: ``(N, T, dim)`` -> ``(N, T, dim)``.

    Example:
        >>> from probgen.nn.masked import causal_mask
        >>> attn = CausalSelfAttention(8, heads=2)
        >>> attn(torch.randn(3, 5, 8), causal_mask(5)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim: {dim} is not a multiple of heads={heads}.")
        self.heads = heads
        self.dropout = float(dropout)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None
                ) -> Tensor:
        """Attends with the additive ``mask`` ``(T, T)``, or (cache given) to the cached
        keys plus these; new positions come after the cached ones."""
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.append(k, v)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return F.dropout(self.proj(y.transpose(1, 2).reshape(n, t, d)), p, self.training)


class _Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask, cache)
        return x + self.mlp(self.norm2(x))


class ImageTransformer(AutoregressiveModel):
    """Creates a small ImageGPT-style decoder-only transformer over pixels.

    The image is a sequence of ``D = C*H*W`` tokens in raster order (colour channels
    innermost). The input at position ``t`` is a learned start token (``t = 0``; plus a
    learned class embedding for conditional models) or the embedding of token ``t - 1``,
    plus a learned position embedding; causal self-attention blocks (pre-norm, GELU MLP)
    then a linear head give the logits of token ``t``. :meth:`sample` keeps each layer's
    keys and values (:class:`KVCache`), so each new pixel costs one token's work instead of
    a pass over the whole sequence (``use_cache=False`` runs the plain sampler).

    Args:
        shape: image shape ``(C, H, W)`` (or ``(D,)``).
        categories: values per pixel (2: Bernoulli; more: categorical).
        dim: model width.
        heads: attention heads.
        layers: transformer blocks.
        mlp_ratio: MLP width over ``dim``.
        dropout: dropout in attention and MLP (training only).
        classes: classes to condition on (0: unconditional).

    References:
        Generative pretraining from pixels (Chen et al., 2020),
        https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf;
        Attention is all you need (Vaswani et al., 2017), https://arxiv.org/abs/1706.03762

    Example:
        >>> model = ImageTransformer([1, 3, 3], dim=16, heads=2, layers=1)
        >>> model.log_prob(torch.zeros(2, 1, 3, 3)).shape
        torch.Size([2])
        >>> model.sample(2).shape
        torch.Size([2, 1, 3, 3])
    """

    def __init__(
        self,
        shape: Sequence[int],
        categories: int = 2,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        classes: int = 0,
    ) -> None:
        super().__init__(shape, categories, classes)
        for name, value in (("dim", dim), ("heads", heads), ("layers", layers),
                            ("mlp_ratio", mlp_ratio)):
            check_int(name, value)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}.")
        if len(self.event_shape) == 3:
            self.order = raster_order(*self.event_shape)
        d = self.num_pixels
        self.heads = heads
        self.token = nn.Linear(categories, dim, bias=False)  # acts on one-hot pixels
        self.start = nn.Parameter(0.02 * torch.randn(dim))
        self.position = nn.Parameter(0.02 * torch.randn(d, dim))
        self.class_embedding = nn.Linear(classes, dim, bias=False) if classes else None
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1 if categories == 2 else categories)
        self.register_buffer("mask", causal_mask(d), persistent=False)

    def encode(self, x: Tensor) -> Tensor:
        """One-hot pixels, ``(N, *event, categories)`` (so gradients reach every input)."""
        return F.one_hot(x.long(), self.categories).to(self._param_dtype())

    def _start(self, n: int, context: Tensor | None) -> Tensor:
        start = self.start.expand(n, -1)
        if self.class_embedding is not None and context is not None:
            start = start + self.class_embedding(context)
        return start

    def _output(self, h: Tensor) -> Tensor:
        out = self.head(self.norm(h))
        return out.squeeze(-1) if self.categories == 2 else out

    def logits_from_input(self, h: Tensor, context: Tensor | None = None) -> Tensor:
        """Logits ``(N, *event)`` (binary) or ``(N, *event, K)`` from one-hot pixels."""
        n = h.shape[0]
        seq = h.reshape(n, self.num_pixels, self.categories)[:, self.order]
        tokens = torch.cat([self._start(n, context)[:, None], self.token(seq[:, :-1])], 1)
        x = tokens + self.position
        mask = self.mask.to(x.dtype)
        for block in self.blocks:
            x = block(x, mask, None)
        out = self._output(x)
        flat = torch.empty_like(out)
        flat[:, self.order] = out
        return flat.reshape(n, *self.event_shape, *out.shape[2:])

    def _sample_cached(
        self, n: int, context: Tensor | None, given: Tensor | None, mask: Tensor | None,
        u: Tensor, generator: torch.Generator | None = None,
    ) -> Tensor:
        """The cached sampler: step ``t`` feeds one token through every block."""
        x = given.clone() if given is not None else u.new_zeros(n, self.num_pixels)
        head_dim = self.position.shape[1] // self.heads
        caches = [KVCache(n, self.heads, self.num_pixels, head_dim, device=u.device,
                          dtype=u.dtype) for _ in self.blocks]
        order = self.order.tolist()
        was_training = self.training
        self.eval()
        try:
            for r, i in enumerate(order):
                if r == 0:
                    token = self._start(n, context)
                else:
                    token = F.embedding(x[:, order[r - 1]].long(), self.token.weight.t())
                h = (token + self.position[r])[:, None]
                for block, cache in zip(self.blocks, caches, strict=True):
                    h = block(h, None, cache)
                drawn = self._draw(self._output(h)[:, 0], u[:, r])
                x[:, i] = drawn if mask is None else torch.where(mask[:, i], x[:, i], drawn)
        finally:
            self.train(was_training)
        return x

    @torch.no_grad()
    def sample(
        self,
        shape: Sequence[int] | int = (),
        context: Tensor | None = None,
        *,
        given: Tensor | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Draws images token by token (see :meth:`AutoregressiveModel.sample`).

        Args:
            shape: sample shape (an int ``n`` means ``(n,)``).
            context: class labels or one-hot vectors (conditional models).
            given: images to complete (``-1`` marks missing pixels when ``mask`` is None).
            mask: True where ``given`` holds a pixel to keep.
            generator: for the uniform numbers.
            use_cache: reuse keys and values (one token of work per pixel); False runs the
                full network once per pixel. Both give identical samples for one generator.

        Returns:
            Tensor: ``(*shape, *b, *event)`` float pixels.
        """
        sampler: Callable[..., Tensor] = self._sample_cached if use_cache else self._sample_flat
        return self._sample(shape, context, given, mask, generator, sampler)

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + (f", dim={self.position.shape[1]}, heads={self.heads}, "
                                       f"layers={len(self.blocks)}")
