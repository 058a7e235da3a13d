"""MADE: a masked autoencoder as an autoregressive distribution, with order ensembles."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from probgen.models.autoregressive import AutoregressiveModel
from probgen.nn.masked import MaskedMLP
from probgen.utils import check_int

__all__ = ["MADE"]


def _orders(order: str | Sequence[int], orders: int, d: int, g: torch.Generator) -> Tensor:
    if isinstance(order, str):
        if order not in ("raster", "random"):
            raise ValueError(f"order: expected 'raster', 'random' or a permutation of "
                             f"0..{d - 1}, got {order!r}.")
        first = torch.arange(d) if order == "raster" else torch.randperm(d, generator=g)
    else:
        first = torch.as_tensor(list(order), dtype=torch.long)
        if first.shape != (d,) or not torch.equal(first.sort().values, torch.arange(d)):
            raise ValueError(f"order: expected a permutation of 0..{d - 1} ({d} pixels), got "
                             f"{list(order)}.")
    return torch.stack([first] + [torch.randperm(d, generator=g) for _ in range(orders - 1)])


class MADE(AutoregressiveModel):
    r"""Creates MADE: one masked MLP gives every pixel's conditional in a single pass.

    Pixels are flattened; their order is the raster order, a random one, or one given.
    With ``orders = K > 1`` the network holds K masks (the first order as asked, the others
    random): training draws one order per call (order-agnostic training), and in eval mode
    the model is the uniform mixture :math:`p(x) = \frac1K \sum_k p_k(x)` (the paper's
    ensemble), so ``log_prob`` stays a normalized density and ``sample`` draws a component
    per sample.

    Args:
        shape: event shape, ``(D,)`` or ``(C, H, W)``.
        hidden_features: hidden layer sizes.
        categories: values per pixel (2: Bernoulli; more: categorical).
        orders: number of orders (masks) in the ensemble.
        order: ``"raster"``, ``"random"`` or a permutation of ``0..D-1`` (the first order).
        random_degrees: draw hidden-unit degrees at random (else they cycle evenly).
        classes: number of classes to condition on (0: unconditional).
        seed: seeds the random orders and degrees (the masks are part of the model).

    References:
        MADE: Masked autoencoder for distribution estimation (Germain et al., 2015),
        https://arxiv.org/abs/1502.03509

    Example:
        >>> made = MADE([1, 2, 2], hidden_features=[16])
        >>> made.log_prob(torch.ones(3, 1, 2, 2)).shape
        torch.Size([3])
        >>> made.sample(4).shape
        torch.Size([4, 1, 2, 2])
    """

    def __init__(
        self,
        shape: Sequence[int],
        hidden_features: Sequence[int] = (512, 512),
        categories: int = 2,
        orders: int = 1,
        order: str | Sequence[int] = "raster",
        random_degrees: bool = False,
        classes: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(shape, categories, classes)
        check_int("orders", orders)
        g = torch.Generator().manual_seed(int(seed))
        d = self.num_pixels
        all_orders = _orders(order, orders, d, g)
        self.register_buffer("orders", all_orders)
        self.order = all_orders[0].clone()
        out = 1 if categories == 2 else categories
        self.net = MaskedMLP(all_orders, list(hidden_features), out, classes,
                             random_degrees=random_degrees, generator=g)

    def logits_from_input(
        self, h: Tensor, context: Tensor | None = None, index: int | None = None
    ) -> Tensor:
        """Logits ``(N, *event[, K])`` with order ``index`` (default: the first order)."""
        n = h.shape[0]
        out = self.net(h.reshape(n, -1), context, 0 if index is None else index)
        if self.categories == 2:
            return out.reshape(n, *self.event_shape)
        return out.reshape(n, *self.event_shape, self.categories)

    def _log_prob_flat(self, x: Tensor, context: Tensor | None) -> Tensor:
        k = self.orders.shape[0]
        if k == 1:
            return super()._log_prob_flat(x, context)
        h = self.encode(x)
        target = x.to(h.dtype) if self.categories == 2 else x.long()

        def one(index: int) -> Tensor:
            logits = self.logits_from_input(h, context, index)
            lp = self._pixel_distribution(logits).log_prob(target)
            return lp.reshape(x.shape[0], -1).sum(-1)

        if self.training:  # order-agnostic training: one random order per call
            return one(int(torch.randint(k, ())))
        per_order = torch.stack([one(i) for i in range(k)])
        return torch.logsumexp(per_order, 0) - math.log(k)

    def _sample_flat(
        self, n: int, context: Tensor | None, given: Tensor | None, mask: Tensor | None,
        u: Tensor, generator: torch.Generator | None = None, order: Tensor | None = None,
        **net_kwargs: int,
    ) -> Tensor:
        k = self.orders.shape[0]
        if k == 1:
            return super()._sample_flat(n, context, given, mask, u, generator, self.orders[0],
                                        index=0)
        component = torch.randint(k, (n,), generator=generator, device=u.device)
        x = u.new_zeros(n, self.num_pixels)
        for i in range(k):
            rows = (component == i).nonzero().squeeze(-1)
            if rows.numel():
                x[rows] = super()._sample_flat(
                    rows.numel(), None if context is None else context[rows],
                    None if given is None else given[rows], None if mask is None else mask[rows],
                    u[rows], generator, self.orders[i], index=i)
        return x

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + f", orders={self.orders.shape[0]}"
