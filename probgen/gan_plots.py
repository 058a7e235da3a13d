"""GAN diagnostics: a critic's value and gradient-norm maps over a 2-D grid, and in 1-D."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from probgen.metrics.integrate import Bounds, parse_bounds
from probgen.plots import _figure_and_axes, _new_figure
from probgen.utils import check_int

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["critic_maps", "plot_critic_2d", "plot_critic_1d"]


def critic_maps(
    critic: Callable[[Tensor], Tensor], bounds: Bounds = 4.0, resolution: int = 100,
    *, batch_size: int = 10_000,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The critic :math:`D(x)` and :math:`\|\nabla_x D(x)\|` on a regular 2-D grid.

    Args:
        critic: maps points ``(batch, 2)`` to scores ``(batch,)`` (its parameters may
            require gradients; only :math:`\nabla_x` is taken).
        bounds: the box, see :func:`probgen.metrics.parse_bounds`.
        resolution: grid points per axis, >= 2.
        batch_size: grid points per critic call.

    Returns:
        ``(xs, ys, values, grad_norms)``: the axes ``(resolution,)`` and two maps
        ``(resolution, resolution)`` indexed ``[y, x]`` (as ``imshow(origin="lower")`` wants).

    Example:
        >>> xs, ys, v, g = critic_maps(lambda x: 3 * x[:, 0] - 4 * x[:, 1], 1.0, 5)
        >>> bool(torch.allclose(g, torch.full((5, 5), 5.0)))
        True
    """
    check_int("resolution", resolution, low=2)
    (x0, x1), (y0, y1) = parse_bounds(bounds)
    xs, ys = torch.linspace(x0, x1, resolution), torch.linspace(y0, y1, resolution)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    params = list(critic.parameters()) if hasattr(critic, "parameters") else []
    if params:
        points = points.to(device=params[0].device, dtype=params[0].dtype)
    values, norms = [], []
    with torch.enable_grad():
        for chunk in points.split(batch_size):
            chunk = chunk.clone().requires_grad_(True)
            out = critic(chunk)
            if not isinstance(out, Tensor) or out.shape != chunk.shape[:1]:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"critic: expected one score per point, shape "
                                 f"({chunk.shape[0]},), got {got}.")
            (grad,) = torch.autograd.grad(out.sum(), chunk)
            values.append(out.detach().cpu())
            norms.append(grad.norm(dim=1).cpu())
    shape = (resolution, resolution)
    return xs, ys, torch.cat(values).reshape(shape), torch.cat(norms).reshape(shape)


def plot_critic_2d(
    critic: Callable[[Tensor], Tensor], bounds: Bounds = 4.0, resolution: int = 100, *,
    data: Tensor | None = None, samples: Tensor | None = None, title: str | None = None,
) -> Figure:
    """Two panels: the critic's value map and its gradient-norm map, data and samples on top.

    Args:
        critic: maps ``(batch, 2)`` points to ``(batch,)`` scores.
        bounds: the box.
        resolution: grid points per axis.
        data: real points ``(N, 2)`` to overlay (white), optional.
        samples: generated points ``(M, 2)`` to overlay (red), optional.
        title: the figure's title.

    Returns:
        Figure: the figure.
    """
    xs, ys, values, norms = critic_maps(critic, bounds, resolution)
    extent = (float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1]))
    fig = _new_figure(figsize=(8.4, 4.0))
    for i, (grid, name) in enumerate(((values, "critic value"),
                                      (norms, "gradient norm |grad D|"))):
        ax = fig.add_subplot(1, 2, i + 1)
        image = ax.imshow(grid.numpy(), origin="lower", extent=extent, cmap="coolwarm"
                          if i == 0 else "viridis", aspect="equal")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        for points, colour in ((data, "white"), (samples, "red")):
            if points is not None:
                p = points.detach().cpu()[:1000]
                ax.scatter(p[:, 0], p[:, 1], s=2, c=colour, alpha=0.6, linewidths=0)
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
        ax.set_title(name)
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_critic_1d(
    critic: Callable[[Tensor], Tensor], bounds: tuple[float, float] = (-4.0, 4.0), *,
    data: Tensor | None = None, samples: Tensor | None = None,
    transform: Callable[[Tensor], Tensor] | None = None, title: str | None = None,
    resolution: int = 400,
) -> Figure:
    """A 1-D critic over an interval, with histograms of data and samples beneath.

    Args:
        critic: maps ``(batch, 1)`` points to ``(batch,)`` scores.
        bounds: the interval.
        data: real points ``(N, 1)``, optional.
        samples: generated points ``(M, 1)``, optional.
        transform: applied to the critic's output before plotting (e.g. ``torch.sigmoid``
            to show a discriminator's probability).
        title: the axes' title.
        resolution: grid points.

    Returns:
        Figure: the figure.
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    x = torch.linspace(lo, hi, resolution).unsqueeze(1)
    params = list(critic.parameters()) if hasattr(critic, "parameters") else []
    if params:
        x = x.to(device=params[0].device, dtype=params[0].dtype)
    with torch.no_grad():
        v = critic(x)
        v = transform(v) if transform is not None else v
    fig, ax = _figure_and_axes(None, (6.0, 3.2))
    for points, colour, label in ((data, "tab:blue", "data"), (samples, "tab:red", "samples")):
        if points is not None:
            ax.hist(points.detach().cpu().reshape(-1).numpy(), bins=80, range=(lo, hi),
                    density=True, alpha=0.35, color=colour, label=label)
    ax2 = ax.twinx()
    ax2.plot(x.cpu().reshape(-1).numpy(), v.detach().cpu().numpy(), color="black",
             label="critic")
    ax2.set_ylabel("critic")
    ax.set_xlabel("x")
    ax.legend(loc="upper left")
    if title is not None:
        ax.set_title(title)
    return fig
