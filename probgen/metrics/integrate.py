"""Grid evaluation of 2-D densities: normalization checks and plotting grids."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from probgen.utils import check_int

__all__ = ["Bounds", "density_grid", "integrate_density_2d", "parse_bounds"]

#: ``B`` (the box [-B, B]^2), ``(lo, hi)`` (the same range on both axes) or
#: ``((xmin, xmax), (ymin, ymax))``.
Bounds = float | tuple[float, float] | tuple[tuple[float, float], tuple[float, float]]


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_bounds(bounds: Bounds) -> tuple[tuple[float, float], tuple[float, float]]:
    """Normalizes ``bounds`` to ``((xmin, xmax), (ymin, ymax))``.

    Example:
        >>> parse_bounds(4)
        ((-4.0, 4.0), (-4.0, 4.0))
        >>> parse_bounds((-1, 2))
        ((-1.0, 2.0), (-1.0, 2.0))
    """
    if _number(bounds):
        pairs = ((-bounds, bounds), (-bounds, bounds))
    elif isinstance(bounds, (tuple, list)) and len(bounds) == 2 and all(map(_number, bounds)):
        pairs = (tuple(bounds), tuple(bounds))
    elif (
        isinstance(bounds, (tuple, list))
        and len(bounds) == 2
        and all(isinstance(b, (tuple, list)) and len(b) == 2 and all(map(_number, b))
                for b in bounds)
    ):
        pairs = (tuple(bounds[0]), tuple(bounds[1]))
    else:
        raise ValueError(
            "bounds: expected B, (lo, hi) or ((xmin, xmax), (ymin, ymax)), "
            f"got {bounds!r}."
        )
    out = tuple((float(lo), float(hi)) for lo, hi in pairs)
    for axis, (lo, hi) in zip("xy", out, strict=True):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"bounds: expected finite {axis}min < {axis}max, got ({lo}, {hi}).")
    return out  # type: ignore[return-value]


def density_grid(
    log_prob: Callable[[Tensor], Tensor],
    bounds: Bounds = 4.0,
    resolution: int = 200,
    *,
    batch_size: int = 16384,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Evaluates a 2-D log-density at the centres of a ``resolution x resolution`` grid.

    The box is split into equal cells and ``log_prob`` is called on their centres (the
    midpoint rule), in batches. Gradients are not kept (outputs are detached), but autograd
    stays enabled so that densities that differentiate internally (continuous flows) work.

    Args:
        log_prob: maps points of shape ``(batch, 2)`` to log-densities of shape ``(batch,)``.
        bounds: the box, see :func:`parse_bounds`.
        resolution: cells per axis, ``>= 2``.
        batch_size: points per call of ``log_prob``.
        dtype: dtype of the points passed to ``log_prob``.
        device: device of the points passed to ``log_prob`` (CPU when ``None``).

    Returns:
        tuple: ``X``, ``Y`` (cell centres) and ``logp``, each of shape
        ``(resolution, resolution)`` on the CPU; row ``i`` has ``Y = y_i``, column ``j``
        has ``X = x_j`` (``indexing="xy"``, ready for ``pcolormesh`` or ``imshow``).

    Raises:
        ValueError: bad ``bounds``/``resolution``, or ``log_prob`` returns a wrong shape.

    Example:
        >>> gauss = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> X, Y, logp = density_grid(gauss.log_prob, 3, 50)
        >>> X.shape, logp.shape
        (torch.Size([50, 50]), torch.Size([50, 50]))
    """
    (x0, x1), (y0, y1) = parse_bounds(bounds)
    resolution = check_int("resolution", resolution, low=2)
    check_int("batch_size", batch_size)
    hx, hy = (x1 - x0) / resolution, (y1 - y0) / resolution
    xs = x0 + hx * (torch.arange(resolution, dtype=torch.float64) + 0.5)
    ys = y0 + hy * (torch.arange(resolution, dtype=torch.float64) + 0.5)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    points = torch.stack([X.reshape(-1), Y.reshape(-1)], dim=1).to(dtype=dtype, device=device)
    values = []
    for start in range(0, points.shape[0], batch_size):
        chunk = points[start : start + batch_size]
        out = log_prob(chunk)
        if not isinstance(out, Tensor) or tuple(out.shape) != (chunk.shape[0],):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"log_prob: expected log-densities of shape ({chunk.shape[0]},) for points of "
                f"shape {tuple(chunk.shape)}, got {got}."
            )
        values.append(out.detach().to(device="cpu", dtype=torch.float64))
    logp = torch.cat(values).reshape(resolution, resolution)
    return X, Y, logp


def integrate_density_2d(
    log_prob: Callable[[Tensor], Tensor],
    *,
    bounds: Bounds = (-6.0, 6.0),
    resolution: int = 400,
    batch_size: int = 16384,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> float:
    """Integrates ``exp(log_prob)`` over a 2-D box by the midpoint rule.

    A normalized density whose mass lies inside the box integrates to about 1; the error of
    the midpoint rule is ``O(h^2)`` for smooth densities (``h`` the cell size). The sum is
    taken in log space (``logsumexp``) and float64.

    Args:
        log_prob: maps points ``(batch, 2)`` to log-densities ``(batch,)``.
        bounds: the box, see :func:`parse_bounds`.
        resolution: cells per axis.
        batch_size: points per call of ``log_prob``.
        dtype: dtype of the points passed to ``log_prob``.
        device: device of the points passed to ``log_prob``.

    Returns:
        float: the integral (``nan`` if ``log_prob`` returned NaN somewhere).

    Example:
        >>> gauss = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> round(integrate_density_2d(gauss.log_prob, bounds=(-8, 8), resolution=200), 4)
        1.0
    """
    (x0, x1), (y0, y1) = parse_bounds(bounds)
    _, _, logp = density_grid(
        log_prob, bounds, resolution, batch_size=batch_size, dtype=dtype, device=device
    )
    cell = math.log((x1 - x0) / resolution) + math.log((y1 - y0) / resolution)
    return float(torch.exp(torch.logsumexp(logp.reshape(-1), dim=0) + cell))
