"""Figures for runs and tutorials: samples, 2-D densities, image grids and training curves.

Every function returns a :class:`matplotlib.figure.Figure` built directly (not through
``pyplot``), so nothing needs a display, no global figure state piles up, and the figures
render with the Agg canvas. In a notebook, a returned figure displays as the cell's value
(it carries its own ``_repr_png_``, so no ``%matplotlib inline`` is needed).
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from probgen.metrics.integrate import Bounds, density_grid, parse_bounds
from probgen.utils import atomic_write_bytes, check_int

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_samples",
    "plot_density_2d",
    "plot_image_grid",
    "plot_training_curves",
    "plot_receptive_field",
    "plot_sample_comparison",
    "save_figure",
]


_FIGURE_CLASS: Any = None


def _new_figure(**kwargs: Any) -> Figure:
    """A Figure (not pyplot-managed) that IPython shows as PNG through ``_repr_png_``."""
    global _FIGURE_CLASS
    if _FIGURE_CLASS is None:
        from matplotlib.figure import Figure

        class NotebookFigure(Figure):
            """A matplotlib Figure that renders itself as PNG when a notebook displays it."""

            def _repr_png_(self) -> bytes:
                buffer = io.BytesIO()
                self.savefig(buffer, format="png", bbox_inches="tight")
                return buffer.getvalue()

        _FIGURE_CLASS = NotebookFigure
    return _FIGURE_CLASS(**kwargs)


def _figure_and_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(figsize=figsize)
    return fig, fig.add_subplot(1, 1, 1)


def plot_samples(
    x: Tensor,
    ax: Axes | None = None,
    title: str | None = None,
    *,
    bounds: Bounds | None = None,
    xlabel: str = "$x_1$",
    ylabel: str = "$x_2$",
) -> Figure:
    """Scatters 2-D points (1-D points, shape ``(N, 1)``, as a density histogram).

    Args:
        x: points, shape ``(N, 2)`` or ``(N, 1)``.
        ax: draw into these axes (their figure is returned) instead of a new figure.
        title: the axes' title.
        bounds: fix the axes' limits (see :func:`probgen.metrics.parse_bounds`).
        xlabel: the x axis' label (1-D points: ``"x"`` unless given).
        ylabel: the y axis' label (1-D points: ``"density"``).

    Returns:
        Figure: the figure holding the plot.

    Raises:
        ValueError: ``x`` is not of shape ``(N, 2)`` or ``(N, 1)``.

    Example:
        >>> fig = plot_samples(torch.randn(100, 2), title="Gaussian")
        >>> len(fig.axes)
        1
    """
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] not in (1, 2):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected 2-D points of shape (N, 2), got {got} (1-D points "
                         "of shape (N, 1) are drawn as a histogram).")
    points = x.detach().to("cpu", torch.float64).numpy()
    if points.shape[1] == 1:
        fig, ax = _figure_and_axes(ax, (5.0, 3.0))
        ax.hist(points[:, 0], bins=100, density=True, alpha=0.7)
        ax.set_xlabel("x" if xlabel == "$x_1$" else xlabel)
        ax.set_ylabel("density")
        if bounds is not None:
            ax.set_xlim(*parse_bounds(bounds)[0])
        if title is not None:
            ax.set_title(title)
        return fig
    fig, ax = _figure_and_axes(ax, (4.0, 4.0))
    size = 4.0 if points.shape[0] <= 2000 else 1.0
    ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.6, linewidths=0)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if bounds is not None:
        (x0, x1), (y0, y1) = parse_bounds(bounds)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    if title is not None:
        ax.set_title(title)
    return fig


def plot_density_2d(
    log_prob: Callable[[Tensor], Tensor],
    bounds: Bounds = 4.0,
    resolution: int = 200,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    colorbar: bool = True,
    xlabel: str = "$x_1$",
    ylabel: str = "$x_2$",
) -> Figure:
    """Shows the density ``exp(log_prob)`` of a 2-D model as an image over a box.

    Args:
        log_prob: maps points ``(batch, 2)`` to log-densities ``(batch,)``.
        bounds: the box, see :func:`probgen.metrics.parse_bounds`.
        resolution: grid cells per axis.
        ax: draw into these axes instead of a new figure.
        title: the axes' title.
        colorbar: add a colorbar labelled ``"density"`` beside the axes.
        xlabel: the x axis' label.
        ylabel: the y axis' label.

    Returns:
        Figure: the figure holding the plot.

    Example:
        >>> gauss = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> fig = plot_density_2d(gauss.log_prob, 3.0, 40)
    """
    (x0, x1), (y0, y1) = parse_bounds(bounds)
    _, _, logp = density_grid(log_prob, bounds, resolution)
    density = torch.exp(logp).nan_to_num(0.0).numpy()
    fig, ax = _figure_and_axes(ax, (4.0, 4.0))
    image = ax.imshow(density, origin="lower", extent=(x0, x1, y0, y1), cmap="viridis",
                      interpolation="nearest", aspect="equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if colorbar:
        fig.colorbar(image, ax=ax, label="density", fraction=0.046, pad=0.04)
    if title is not None:
        ax.set_title(title)
    return fig


def _as_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}.")
    x = images.detach().cpu()
    if x.dim() == 2 and math.isqrt(x.shape[1]) ** 2 == x.shape[1]:  # flattened square images
        side = math.isqrt(x.shape[1])
        x = x.reshape(-1, 1, side, side)
    elif x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            "images: expected shape (N, C, H, W) with C = 1 or 3 (or (N, H, W), or (N, D) "
            f"with D a square), got {tuple(images.shape)}."
        )
    if x.dtype == torch.uint8:
        return x.double() / 255.0
    if not x.is_floating_point():
        raise TypeError(f"images: expected floats in [0, 1] or uint8, got dtype {x.dtype}.")
    if torch.isnan(x).any():
        raise ValueError("images: contains NaN values.")
    return x.double().clamp(0.0, 1.0)


def plot_image_grid(
    images: Tensor,
    nrow: int = 8,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    indexed: bool = False,
    colorbar: bool = False,
) -> Figure:
    """Tiles images into one grid, ``nrow`` images per row, separated by a 1-pixel border.

    A new figure gives each image about ``H / 24`` inches (at least 0.75, at most 1.2), so
    a grid of 28x28 images is drawn at about 5x its pixel size at 120 dpi.

    Args:
        images: shape ``(N, C, H, W)`` with ``C`` in {1, 3} and values in [0, 1] (clamped);
            ``uint8`` images (0..255), ``(N, H, W)`` and flattened square ``(N, H*W)`` are
            accepted too.
        nrow: images per row (the last row may be partly empty).
        ax: draw into these axes instead of a new figure.
        title: the axes' title.
        indexed: number the rows and columns (ticks at the image centres, axes labelled
            ``"column"`` and ``"row"``) instead of hiding the axes.
        colorbar: grayscale images only: a colorbar of the pixel intensity.

    Returns:
        Figure: the figure holding the grid.

    Raises:
        ValueError: wrong shape, NaN values, or ``nrow < 1``.

    Example:
        >>> fig = plot_image_grid(torch.rand(10, 1, 8, 8), nrow=5)
    """
    check_int("nrow", nrow)
    x = _as_images(images)
    n, c, h, w = x.shape
    cols = max(1, min(nrow, n))
    rows = max(1, math.ceil(n / cols))
    grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1, dtype=torch.float64)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = 1 + r * (h + 1), 1 + k * (w + 1)
        grid[:, top : top + h, left : left + w] = x[i]
    cell = min(1.2, max(0.75, h / 24))
    fig, ax = _figure_and_axes(ax, (max(2.5, cell * cols + (1.0 if colorbar else 0.0)),
                                    max(2.5, cell * rows + (0.4 if title else 0.0))))
    if c == 1:
        shown = ax.imshow(grid[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0,
                          interpolation="nearest")
        if colorbar:
            fig.colorbar(shown, ax=ax, label="pixel intensity (0 black, 1 white)",
                         fraction=0.046, pad=0.04)
    else:
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    if indexed:
        ax.set_xticks([1 + k * (w + 1) + (w - 1) / 2 for k in range(cols)],
                      [str(k + 1) for k in range(cols)])
        ax.set_yticks([1 + r * (h + 1) + (h - 1) / 2 for r in range(rows)],
                      [str(r + 1) for r in range(rows)])
        ax.tick_params(length=0, labelsize=7)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("column")
        ax.set_ylabel("row")
    else:
        ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return fig


def _read_history(source: str | os.PathLike | Iterable[Mapping[str, Any]]) -> list[dict]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"history_or_jsonl_path: no metrics file at {path}.")
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not a JSON record ({e.msg}).") from e
    else:
        records = list(source)
    for i, record in enumerate(records):
        if not isinstance(record, Mapping) or "step" not in record:
            raise ValueError(
                f"history_or_jsonl_path: record {i} should be a dict with a 'step' key, "
                f"got {record!r}."
            )
    return [dict(r) for r in records]


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_training_curves(
    history_or_jsonl_path: str | os.PathLike | Sequence[Mapping[str, Any]],
    keys: Sequence[str] | None = None,
    *,
    group: bool = False,
) -> Figure:
    """Plots logged metrics against the step, one panel per metric (or per quantity).

    Args:
        history_or_jsonl_path: a list of records (dicts with a ``"step"`` key, as
            :func:`probgen.utils.append_jsonl` writes them) or the path of a
            ``metrics.jsonl`` file. Records may carry different keys (e.g. occasional
            evaluation records); each panel uses the records that have its key.
        keys: the metrics to plot; by default every numeric key but ``"step"``
            (``"loss"`` first, then alphabetically).
        group: one panel per quantity instead of per key: ``loss``, ``eval/loss`` and
            ``test/loss`` are drawn in one panel as lines labelled ``train``, ``eval`` and
            ``test``; the learning rate ``lr`` gets the last panel and the wall-clock
            ``time`` is left out (what run folders' ``curves.png`` shows).

    Returns:
        Figure: the figure, up to 3 panels per row.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a record without ``"step"``, no records, nothing numeric to plot, or
            a requested key that no record has (the message lists the keys available).

    Example:
        >>> history = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(10)]
        >>> fig = plot_training_curves(history)
        >>> [ax.get_title() for ax in fig.axes]
        ['loss']
    """
    records = _read_history(history_or_jsonl_path)
    if not records:
        raise ValueError("history_or_jsonl_path: no records to plot.")
    available = sorted(
        {k for r in records for k, v in r.items() if k != "step" and _is_number(v)},
        key=lambda k: (k != "loss", k),
    )
    if keys is None:
        keys = available
        if not keys:
            raise ValueError("history_or_jsonl_path: the records hold no numeric metric.")
    else:
        if isinstance(keys, str):
            raise TypeError(f"keys: expected a sequence of names, got the string {keys!r}.")
        missing = [k for k in keys if k not in available]
        if missing:
            raise ValueError(f"keys: {missing} not found in the records; available: {available}.")
    if group:
        return _plot_grouped_curves(records, keys)
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = _new_figure(figsize=(4.0 * cols, 3.0 * rows), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        pairs = [(r["step"], r[key]) for r in records if _is_number(r.get(key))]
        marker = "." if len(pairs) < 50 else ""
        ax.plot([p[0] for p in pairs], [p[1] for p in pairs], marker=marker)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    return fig


#: Prefixes of logged keys and the series each names in a grouped panel.
_SERIES = (("eval/", "eval"), ("test/", "test"), ("train/", "train"))


def _quantity(key: str) -> tuple[str, str]:
    """``(quantity, series)`` of a logged key: ``"eval/nll"`` -> ``("nll", "eval")``."""
    for prefix, series in _SERIES:
        if key.startswith(prefix):
            return key[len(prefix):], series
    return key, "train"


def _plot_grouped_curves(records: list[dict], keys: Sequence[str]) -> Figure:
    """One panel per quantity, its train/eval/test series as labelled lines."""
    panels: dict[str, list[str]] = {}
    for key in keys:
        if key == "time":
            continue
        panels.setdefault(_quantity(key)[0], []).append(key)
    order = sorted(panels, key=lambda q: (q == "lr", q != "loss", q))
    if not order:
        raise ValueError("history_or_jsonl_path: nothing to plot but the wall-clock 'time'.")
    cols = min(3, len(order))
    rows = math.ceil(len(order) / cols)
    fig = _new_figure(figsize=(4.0 * cols, 3.0 * rows), layout="constrained")
    for i, quantity in enumerate(order):
        ax = fig.add_subplot(rows, cols, i + 1)
        rank = {"train": 0, "eval": 1, "test": 2}
        for key in sorted(panels[quantity], key=lambda k: rank[_quantity(k)[1]]):
            pairs = [(r["step"], r[key]) for r in records if _is_number(r.get(key))]
            marker = "o" if len(pairs) < 50 else ""
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], marker=marker,
                    markersize=3, label=_quantity(key)[1])
        name = "learning rate" if quantity == "lr" else quantity
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def plot_receptive_field(
    binary: Tensor,
    weighted: Tensor,
    pixel: Sequence[int],
    ax: Axes | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Draws a receptive field: which inputs one output pixel's logits depend on.

    Pixels in the field are blue, darker where the gradient is larger (``weighted``), pixels
    outside it white, and the probed pixel red (what
    :func:`probgen.models.receptive_field` returns).

    Args:
        binary: ``(H, W)`` bool map of the field.
        weighted: ``(H, W)`` gradient magnitudes scaled to max 1.
        pixel: the probed ``(h, w)``.
        ax: draw into these axes instead of a new figure.
        title: the axes' title.

    Returns:
        Figure: the figure.

    Raises:
        ValueError: maps of different or non-2-D shapes, or a pixel outside them.

    Example:
        >>> field = torch.zeros(5, 5, dtype=torch.bool)
        >>> field[:2] = True
        >>> fig = plot_receptive_field(field, field.double(), (2, 2))
    """
    if not isinstance(binary, Tensor) or not isinstance(weighted, Tensor):
        raise TypeError("binary, weighted: expected torch.Tensors.")
    if binary.dim() != 2 or binary.shape != weighted.shape:
        raise ValueError(f"binary, weighted: expected two (H, W) maps of one shape, got "
                         f"{tuple(binary.shape)} and {tuple(weighted.shape)}.")
    h, w = (int(p) for p in pixel)
    if not (0 <= h < binary.shape[0] and 0 <= w < binary.shape[1]):
        raise ValueError(f"pixel: expected an index into {tuple(binary.shape)}, got {(h, w)}.")
    strength = torch.where(binary.cpu(), 0.25 + 0.75 * weighted.detach().cpu().double(),
                           torch.zeros((), dtype=torch.float64))
    rgb = torch.stack([1 - 0.8 * strength, 1 - 0.6 * strength, torch.ones_like(strength)], -1)
    rgb[h, w] = torch.tensor([0.85, 0.1, 0.1], dtype=torch.float64)
    fig, ax = _figure_and_axes(ax, (2.5, 2.5))
    ax.imshow(rgb.clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)
    return fig


def plot_sample_comparison(
    panels: Sequence[tuple[str, Tensor]],
    *,
    images: bool,
    title: str | None = None,
    bounds: Bounds | None = None,
    cols: int = 3,
) -> Figure:
    """Draws several models' samples side by side, one titled panel each.

    Args:
        panels: ``(title, samples)`` pairs: 2-D points of shape ``(N, 2)``, or images as
            :func:`plot_image_grid` takes them (values in [0, 1], or ``uint8``).
        images: whether the samples are images (a grid per panel) or points (a scatter).
        title: the figure's title.
        bounds: points only: the axes' limits, the same for every panel.
        cols: panels per row.

    Returns:
        Figure: the figure.

    Raises:
        ValueError: no panels, or ``cols`` below 1.
    """
    if not panels:
        raise ValueError("panels: expected at least one (title, samples) pair, got none.")
    check_int("cols", cols)
    cols = min(cols, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _new_figure(figsize=(4.0 * cols, 4.0 * rows + (0.4 if title else 0.0)),
                      layout="constrained")
    for i, (name, samples) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        if images:
            plot_image_grid(samples, nrow=max(1, math.isqrt(samples.shape[0])), ax=ax,
                            title=name)
        else:
            plot_samples(samples, ax=ax, title=name, bounds=bounds)
    if title:
        fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Writes ``fig`` atomically (rendered in memory, then renamed into place) and closes it.

    The format follows the suffix (``.png``, ``.pdf``, ``.svg``, ...).

    Args:
        fig: the figure.
        path: where to write it; parent folders are created.
        dpi: resolution for raster formats.

    Returns:
        Path: the written file.

    Raises:
        ValueError: ``path`` has no suffix, or one matplotlib cannot write.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "s.png"
        >>> save_figure(plot_samples(torch.randn(10, 2)), out).stat().st_size > 0
        True
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"path: expected a file name ending in one of {sorted(supported)}, got {str(path)!r}."
        )
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi)
    written = atomic_write_bytes(path, buffer.getvalue())
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # figures made through pyplot are released from its registry
        pyplot.close(fig)
    return written
