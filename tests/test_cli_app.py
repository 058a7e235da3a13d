"""The application layer for users: probgen.load, --device, samples in pixel space, progress
in pipes, and figures a reader can read (titles, labels, colorbars, grouped curves)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import probgen
from probgen import plots
from probgen.cli import main
from probgen.inference import load_checkpoint
from probgen.run import experiment
from probgen.run.config import list_presets, load_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.eval_size=200", "eval.resolution=10", "sample.n=16"]
DIGITS = ["eval.num_samples=40", "sample.n=16"]


def _fit(out, preset, *overrides):
    args = ["fit", preset, "--out", str(out), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    """realnvp-moons, 6 steps, evaluated every 3 (train and eval curves)."""
    out = tmp_path_factory.mktemp("moons") / "run"
    return _fit(out, "realnvp-moons", *SMALL, "train.steps=6", "train.log_every=2",
                "train.eval_every=3")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """realnvp-digits (logit preprocessing), 2 steps."""
    out = tmp_path_factory.mktemp("digits") / "run"
    return _fit(out, "realnvp-digits", *DIGITS, "train.steps=2", "train.log_every=1")


# --- probgen.load --------------------------------------------------------------------------


def test_load_gives_the_trained_model_config_and_history(moons):
    model, config, history = probgen.load(moons)
    assert config == tomllib.loads((moons / "config.toml").read_text())
    lines = [json.loads(line) for line in (moons / "metrics.jsonl").read_text().splitlines()]
    assert history.records == lines and history.values("loss")
    assert not model.training
    # The same weights as the in-process model that fit_run evaluated into eval.json.
    held_out = experiment.build_data(config, seed=0).eval
    with torch.no_grad():
        nll = -model.log_prob(held_out).mean().item()
    assert nll == pytest.approx(json.loads((moons / "eval.json").read_text())["test/nll"],
                                abs=1e-5)
    # ... and as the model that eval and sample rebuild with the data set.
    _, _, rebuilt, _ = experiment.load_run(moons)
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    torch.manual_seed(3)
    with torch.no_grad():
        first = model.sample((5,))
    torch.manual_seed(3)
    with torch.no_grad():
        assert torch.equal(first, rebuilt.sample((5,)))


def test_load_gives_the_ema_weights(tmp_path):
    run = _fit(tmp_path / "ema", "realnvp-moons", *SMALL, "train.steps=4", "train.lr=0.01",
               "train.ema_decay=0.5")
    state = load_checkpoint(run)
    model, _, _ = probgen.load(run)
    _, _, _, objective = experiment.load_run(run)
    shadow = state["ema"]["shadow"]
    params = dict(objective.named_parameters())
    differs = False
    for name, value in shadow.items():
        assert torch.equal(params[name].detach(), value), name
        differs = differs or not torch.equal(value, state["objective"][name])
    assert differs, "the EMA equals the last weights: the test cannot tell them apart"
    loaded = dict(model.named_parameters())
    for name, value in dict(objective.model.named_parameters()).items():
        assert torch.equal(loaded[name], value), name


def test_load_does_not_read_the_image_data(digits, monkeypatch):
    import probgen.data as pdata

    def refuse(*args, **kwargs):
        raise AssertionError("probgen.load read the data set")

    monkeypatch.setattr(pdata, "load_digits", refuse)
    model, config, _ = probgen.load(digits)
    assert config["data"]["name"] == "digits"
    assert tuple(model.sample((2,)).shape) == (2, 64)  # realnvp-digits: flattened


@pytest.mark.parametrize("name", [n for n in list_presets() if n.endswith("-digits")])
def test_describe_data_agrees_with_build_data(name):
    config = load_config(name)
    full, described = experiment.build_data(config), experiment.describe_data(config)
    assert described.train is None and described.eval is None
    assert described.event_shape == full.event_shape
    assert described.num_classes == full.num_classes
    assert type(described.preprocess) is type(full.preprocess)
    assert vars(described.preprocess) == vars(full.preprocess)


@pytest.mark.parametrize("missing", ["folder", "config.toml", "checkpoint.pt", "metrics.jsonl"])
def test_load_names_what_is_missing(moons, tmp_path, missing):
    run = tmp_path / "copy"
    run.mkdir()
    for path in moons.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    if missing == "folder":
        run = tmp_path / "absent"
        with pytest.raises(FileNotFoundError, match="absent is not a complete run folder: "
                           "the folder does not exist"):
            probgen.load(run)
        return
    (run / missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"{missing} is missing") as e:
        probgen.load(run)
    assert str(run / missing) in str(e.value)


# --- --device ------------------------------------------------------------------------------


def test_device_cpu_for_fit_sample_eval(moons, tmp_path, capsys):
    run = _fit(tmp_path / "cpu", "realnvp-moons", *SMALL, "train.steps=2")
    assert main(["fit", "realnvp-moons", "--out", str(run), "--quiet", "--device", "cpu",
                 "--set", "train.steps=4", "--resume", *sum([["--set", o] for o in SMALL],
                                                            [])]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu", "--quiet"]) == 0
    assert "test/nll" in json.loads(capsys.readouterr().out)
    assert main(["sample", str(run), "--device", "cpu", "--n", "3", "--format", "pt",
                 "--quiet"]) == 0
    assert torch.load(run / "samples_3.pt", weights_only=True).device.type == "cpu"


@pytest.mark.parametrize(
    "device,match",
    [("cuda:7", r"cuda:7"), ("meta", r"expected 'cpu', 'cuda' or 'cuda:N', got 'meta'"),
     ("gpu0", r"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu0'")],
)
def test_unavailable_device_is_a_clear_error(moons, tmp_path, capsys, device, match):
    import re

    out = tmp_path / "never"
    assert main(["fit", "realnvp-moons", "--out", str(out), "--quiet", "--device", device,
                 "--set", "train.steps=2"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and err.count("\n") == 1, err
    assert not out.exists()
    for command in (["eval", str(moons)], ["sample", str(moons), "--format", "pt"]):
        assert main([*command, "--device", device, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert re.search(match, err), err


def test_cuda_index_beyond_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"'cuda:7' was asked for but this machine has 1 CUDA"):
        experiment.check_device("cuda:7")


# --- probgen sample --format ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pt", "npz", "png"])
def test_sample_formats_for_2d_points(moons, tmp_path, fmt):
    out = tmp_path / f"s.{fmt}"
    assert main(["sample", str(moons), "--n", "7", "--format", fmt, "--out", str(out),
                 "--quiet"]) == 0
    assert not list(tmp_path.glob(".*.tmp"))
    if fmt == "png":
        assert out.read_bytes().startswith(b"\x89PNG")
        return
    x = (torch.load(out, weights_only=True) if fmt == "pt"
         else torch.from_numpy(np.load(out)["samples"]))
    assert x.shape == (7, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()


@pytest.mark.parametrize("preset,high", [("realnvp-digits", 16), ("maf-digits", 16),
                                         ("made-digits", 1)])
def test_sample_formats_for_images_are_pixels(tmp_path, preset, high):
    run = _fit(tmp_path / "run", preset, *DIGITS, "train.steps=1")
    for fmt in ("pt", "npz"):
        assert main(["sample", str(run), "--n", "5", "--format", fmt, "--quiet"]) == 0
        path = run / f"samples_5.{fmt}"
        x = (torch.load(path, weights_only=True) if fmt == "pt"
             else torch.from_numpy(np.load(path)["samples"]))
        assert x.shape == (5, 1, 8, 8) and x.dtype == torch.uint8
        assert 0 <= int(x.min()) and int(x.max()) <= high
    assert main(["sample", str(run), "--n", "5", "--quiet"]) == 0
    assert (run / "samples_5.png").read_bytes().startswith(b"\x89PNG")


def test_pixels_of_a_256_level_pipeline_span_uint8():
    from probgen.data import ImagePreprocess

    bundle = experiment.DataBundle("mnist", "image", None, None, (1, 4, 4),
                                   ImagePreprocess(256, "signed", shape=(1, 4, 4)))
    pixels = experiment.to_pixels(torch.tensor([-5.0, -1.0, 0.0, 0.999, 5.0]).repeat(16)
                                  .reshape(5, 16), bundle)
    assert pixels.dtype == torch.uint8 and pixels.shape == (5, 1, 4, 4)
    assert int(pixels.min()) == 0 and int(pixels.max()) == 255


@pytest.mark.parametrize(
    "args,match",
    [(["--format", "pt", "--out", "x.npz"], r"does not end in \.pt"),
     (["--out", "x.jpg"], r"expected a path ending in one of \['\.png', '\.pt', '\.npz'\]"),
     (["--n", "0"], "n: expected a positive number of samples")],
)
def test_sample_format_errors(moons, tmp_path, capsys, args, match):
    import re

    args = [a if a not in ("x.npz", "x.jpg") else str(tmp_path / a) for a in args]
    assert main(["sample", str(moons), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not list(tmp_path.iterdir())


# --- progress in pipes ---------------------------------------------------------------------


def test_progress_in_a_pipe_is_plain_lines(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "probgen", "fit", "realnvp-moons", "--out", str(out),
               "--threads", "1"]
    for o in (*SMALL, "train.steps=4", "train.log_every=2"):
        command += ["--set", o]
    fit = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr
    sample = subprocess.run([sys.executable, "-m", "probgen", "sample", str(out), "--n", "4",
                             "--threads", "1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert sample.returncode == 0, sample.stderr
    for result in (fit, sample):
        assert "\r" not in result.stdout and "\r" not in result.stderr, repr(result.stderr)
    lines = fit.stderr.splitlines()
    import re

    for pattern in (r"^fit: step 4/4, loss \S+ \(\d+\.\d s\)$",
                    r"^evaluate: 200 examples in \d+\.\d s$",
                    r"^sample: 16 samples in \d+\.\d s$",
                    r"^figures: 3 figures in \d+\.\d s$"):
        assert any(re.match(pattern, line) for line in lines), (pattern, fit.stderr)
    assert any(re.match(r"^sample: 4 samples in \d+\.\d s$", line)
               for line in sample.stderr.splitlines()), sample.stderr
    json.loads(fit.stdout)  # stdout stays the JSON result alone


def test_quiet_prints_no_progress(moons, capsys):
    assert main(["sample", str(moons), "--n", "2", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["sample", str(moons), "--n", "2"]) == 0
    assert "sample: 2 samples in" in capsys.readouterr().err


# --- figures in run folders ----------------------------------------------------------------


def _figures_of_a_run(monkeypatch, tmp_path, preset, *overrides):
    figures: dict[str, object] = {}
    save = plots.save_figure

    def keep(fig, path, **kwargs):
        figures[Path(path).name] = fig
        return save(fig, path, **kwargs)

    monkeypatch.setattr(plots, "save_figure", keep)
    _fit(tmp_path / "run", preset, *overrides)
    return figures


def _check_readable(name, fig):
    colorbar_axes = {im.colorbar.ax for ax in fig.axes for im in ax.images
                     if im.colorbar is not None}
    for ax in fig.axes:
        if ax in colorbar_axes:
            assert ax.get_ylabel() or ax.get_xlabel(), f"{name}: unlabelled colorbar"
            continue
        assert ax.get_title(), f"{name}: an axes without a title"
        assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: {ax.get_title()!r} unlabelled"
        for image in ax.images:
            assert image.colorbar is not None, f"{name}: an image without a colorbar"


def test_2d_run_figures_are_titled_labelled_and_grouped(monkeypatch, tmp_path):
    figures = _figures_of_a_run(monkeypatch, tmp_path, "realnvp-moons", *SMALL,
                                "train.steps=6", "train.log_every=2", "train.eval_every=3")
    assert set(figures) == {"samples.png", "density.png", "curves.png"}
    for name, fig in figures.items():
        _check_readable(name, fig)
    assert figures["density.png"].axes[0].images, "density.png shows no image"
    panels = {ax.get_title(): ax for ax in figures["curves.png"].axes}
    assert "time" not in panels and list(panels)[-1] == "learning rate"
    assert list(panels)[0] == "loss"
    for quantity in ("loss", "nll"):
        labels = [line.get_label() for line in panels[quantity].get_lines()]
        assert labels == ["train", "eval"], (quantity, labels)
    assert not [t for t in panels if t.startswith("eval/")], list(panels)


def test_image_run_sample_grid_is_readable(monkeypatch, tmp_path):
    figures = _figures_of_a_run(monkeypatch, tmp_path, "realnvp-digits", "eval.num_samples=40",
                                "sample.n=64", "train.steps=2", "train.log_every=1")
    assert set(figures) == {"samples.png", "curves.png"}
    for name, fig in figures.items():
        _check_readable(name, fig)
    grid = figures["samples.png"]
    assert grid.axes[0].images and min(grid.get_size_inches()) >= 5.0


def test_progress_modes():
    import io

    from probgen.run.progress import Progress

    assert Progress(True, io.StringIO()).mode == "plain"  # not a terminal
    assert Progress(False).mode == "off"
    silent = io.StringIO()
    with Progress("off", silent).stage("evaluate") as stage:
        stage.update(3)
    assert silent.getvalue() == ""
    with pytest.raises(ValueError, match=r"progress: expected one of \['auto', 'bar', 'plain', "
                                         r"'off'\] or a bool, got 'loud'"):
        Progress("loud")
