"""Linear bijections: an LU-parametrised dense layer and a permutation with a buffer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from probgen.transforms.base import FlowTransformModule

__all__ = ["LULinear", "Permutation"]


class LULinear(FlowTransformModule):
    r"""Creates an LU-parametrised invertible linear map :math:`y = P L U x + b` on vectors.

    P is a fixed permutation (buffer), L is unit lower triangular and U upper triangular
    with diagonal :math:`e^{\ell}`, so :math:`\log|\det J| = \sum_i \ell_i` and the inverse is
    two triangular solves. Pyro's ``GeneralizedChannelPermute`` is the same idea for image
    channels; Pyro has no vector version. Starts at a random permutation (the identity
    if ``permute=False``).

    Args:
        features: dimension D.
        permute: draw a random P (else P = I).

    Shapes:
        ``x``, ``y``: ``(*batch, D)``; log|det J|: ``(*batch,)``.

    References:
        Glow: Generative flow with invertible 1x1 convolutions (Kingma & Dhariwal, 2018),
        https://arxiv.org/abs/1807.03039

    Example:
        >>> t = LULinear(3)
        >>> x = torch.randn(2, 3)
        >>> torch.allclose(t.inv(t(x).clone()), x, atol=1e-6)
        True
    """

    def __init__(self, features: int, permute: bool = True) -> None:
        super().__init__(event_dim=1)
        perm = torch.randperm(features) if permute else torch.arange(features)
        self.register_buffer("permutation", perm)
        self.lower = nn.Parameter(torch.zeros(features, features))
        self.upper = nn.Parameter(torch.zeros(features, features))
        self.log_diag = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.lower.size(0), dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.log_diag.exp())
        return lower, upper

    def _ladj(self, x: Tensor) -> Tensor:
        return self.log_diag.sum().expand(x.shape[:-1])

    def call_and_ladj(  # noqa: D102
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        lower, upper = self._factors()
        y = (x @ upper.T @ lower.T)[..., self.permutation] + self.bias
        return y, self._ladj(x)

    def inv_and_ladj(  # noqa: D102
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        lower, upper = self._factors()
        z = torch.empty_like(y)
        z[..., self.permutation] = y - self.bias  # z = P^T (y - b)
        flat = z.reshape(-1, z.size(-1)).T
        flat = torch.linalg.solve_triangular(lower, flat, upper=False, unitriangular=True)
        flat = torch.linalg.solve_triangular(upper, flat, upper=True)
        return flat.T.reshape(y.shape), self._ladj(y)


class Permutation(FlowTransformModule):
    """Creates a fixed permutation of the last dimension, stored as a buffer.

    Pyro's ``Permute`` is a plain ``Transform``, not a module: its permutation would not
    move with ``.to(device)`` nor be saved in a ``state_dict``. This one is a module.

    Args:
        permutation: the new order, a list of ``range(D)`` (``y = x[..., permutation]``).

    Example:
        >>> Permutation([1, 0])(torch.tensor([1.0, 2.0]))
        tensor([2., 1.])
    """

    def __init__(self, permutation: Sequence[int] | Tensor) -> None:
        super().__init__(event_dim=1)
        perm = torch.as_tensor(permutation, dtype=torch.long)
        if sorted(perm.tolist()) != list(range(len(perm))):
            raise ValueError(f"permutation: expected a permutation of range({len(perm)}), "
                             f"got {perm.tolist()}.")
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", torch.argsort(perm))

    def call_and_ladj(  # noqa: D102
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return x[..., self.permutation], x.new_zeros(x.shape[:-1])

    def inv_and_ladj(  # noqa: D102
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return y[..., self.inverse_permutation], y.new_zeros(y.shape[:-1])
