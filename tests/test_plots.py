"""probgen.plots: every figure renders without a display and saves as a non-empty PNG."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from torch.distributions import MultivariateNormal

from probgen import plots
from probgen.utils import append_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


def _saved(fig, path):
    out = plots.save_figure(fig, path)
    data = out.read_bytes()
    assert out == path and data.startswith(PNG) and len(data) > 1000
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left nothing behind


def test_samples_and_density(tmp_path):
    fig = plots.plot_samples(torch.randn(500, 2), title="points", bounds=4)
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "points"
    _saved(fig, tmp_path / "samples.png")
    gauss = MultivariateNormal(torch.zeros(2), torch.eye(2))
    fig = plots.plot_density_2d(gauss.log_prob, (-3, 3), 30, title="density")
    _saved(fig, tmp_path / "sub" / "density.png")
    with pytest.raises(ValueError, match=r"x: expected 2-D points of shape \(N, 2\), got \(5, 3"):
        plots.plot_samples(torch.randn(5, 3))


def test_draw_into_given_axes(tmp_path):
    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert plots.plot_samples(torch.randn(20, 2), ax=left) is fig
    assert plots.plot_image_grid(torch.rand(4, 1, 5, 5), 2, ax=right) is fig
    _saved(fig, tmp_path / "both.png")


@pytest.mark.parametrize(
    "images",
    [torch.rand(10, 1, 8, 8), torch.rand(5, 3, 6, 6), torch.randint(0, 256, (3, 1, 4, 4),
     dtype=torch.uint8), torch.rand(6, 64), torch.rand(2, 7, 7)],
    ids=["gray", "rgb", "uint8", "flat", "nchw-less"],
)
def test_image_grid(tmp_path, images):
    _saved(plots.plot_image_grid(images, nrow=4), tmp_path / "grid.png")


def test_image_grid_errors():
    with pytest.raises(ValueError, match=r"images: expected shape \(N, C, H, W\) with C = 1 or 3"):
        plots.plot_image_grid(torch.rand(2, 2, 4, 4))
    with pytest.raises(ValueError, match="nrow: expected a positive int, got 0"):
        plots.plot_image_grid(torch.rand(2, 1, 4, 4), nrow=0)
    with pytest.raises(ValueError, match="images: contains NaN"):
        plots.plot_image_grid(torch.full((1, 1, 2, 2), float("nan")))


def test_training_curves(tmp_path):
    history = [{"step": s, "loss": 1 / (s + 1), "nll": 2.0, "lr": 1e-3} for s in range(0, 100, 5)]
    history.append({"step": 100, "test/bpd": 1.5, "note": "eval"})
    fig = plots.plot_training_curves(history)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "lr", "nll", "test/bpd"]
    path = tmp_path / "metrics.jsonl"
    for record in history:
        append_jsonl(path, record)
    fig = plots.plot_training_curves(path, keys=["nll"])
    assert [ax.get_title() for ax in fig.axes] == ["nll"]
    _saved(fig, tmp_path / "curves.png")
    with pytest.raises(ValueError, match=r"keys: \['acc'\] not found in the records; available"):
        plots.plot_training_curves(history, keys=["acc"])
    with pytest.raises(ValueError, match="record 0 should be a dict with a 'step' key"):
        plots.plot_training_curves([{"loss": 1.0}])
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        plots.plot_training_curves(tmp_path / "absent.jsonl")


def test_save_figure_formats(tmp_path):
    fig = plots.plot_samples(torch.randn(10, 2))
    with pytest.raises(ValueError, match="path: expected a file name ending in one of"):
        plots.save_figure(fig, tmp_path / "figure")
    out = plots.save_figure(fig, tmp_path / "figure.svg")
    assert out.read_bytes().lstrip().startswith(b"<?xml")


def test_figures_render_themselves_as_png_in_notebooks():
    """A returned figure has ``_repr_png_`` (IPython shows it with no pyplot backend)."""
    import torch

    from probgen.plots import plot_samples

    png = plot_samples(torch.randn(10, 2))._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_curves_grouped_by_quantity():
    history = [{"step": s, "time": 0.1 * s, "loss": 1 / (s + 1), "nll": 2.0, "lr": 1e-3}
               for s in range(0, 100, 5)]
    history += [{"step": 50, "time": 5.0, "eval/loss": 0.9, "eval/nll": 1.9},
                {"step": 100, "test/nll": 1.8}]
    fig = plots.plot_training_curves(history, group=True)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "nll", "learning rate"]
    labels = {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in fig.axes}
    assert labels == {"loss": ["train", "eval"], "nll": ["train", "eval", "test"],
                      "learning rate": ["train"]}
    assert all(ax.get_xlabel() == "step" and ax.get_ylabel() for ax in fig.axes)
    with pytest.raises(ValueError, match="nothing to plot but the wall-clock 'time'"):
        plots.plot_training_curves([{"step": 1, "time": 0.5}], group=True)


def test_density_has_a_colorbar_and_labels():
    gauss = MultivariateNormal(torch.zeros(2), torch.eye(2))
    fig = plots.plot_density_2d(gauss.log_prob, 3.0, 20, title="d")
    image = fig.axes[0].images[0]
    assert image.colorbar is not None and image.colorbar.ax.get_ylabel() == "density"
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    bare = plots.plot_density_2d(gauss.log_prob, 3.0, 20, colorbar=False)
    assert len(bare.axes) == 1
