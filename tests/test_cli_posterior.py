"""`probgen posterior`: inverse problems on held-out data with a trained run as the prior."""

from __future__ import annotations

import json

import pytest

from probgen.run.cli import main
from probgen.run.config import ConfigError, load_config
from probgen.run.experiment import fit_run
from probgen.run.posterior import posterior_run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fm-digits"
    config = load_config("fm-digits", ["train.steps=20", "train.log_every=10", "sample.n=4",
                                       "train.threads=1", "model.network.base_channels=8",
                                       "eval.num_samples=16"])
    fit_run(config, out_dir=out, progress=False)
    return out


@pytest.mark.parametrize("task", ["inpaint", "denoise", "superres"])
def test_every_task_writes_its_figure_and_numbers(digits_run, task, tmp_path, capsys):
    figure = tmp_path / f"{task}.png"
    code = main(["posterior", str(digits_run), "--task", task, "--images", "2", "--samples",
                 "2", "--steps", "4", "--out", str(figure), "--threads", "1"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(figure.with_suffix(".json").read_text())
    assert printed == written and figure.is_file()
    assert written["task"] == task and written["images"] == 2
    assert written["network_calls_per_sample"] == 4
    for key in ("hidden_rmse_posterior_mean", "hidden_rmse_one_sample", "diversity",
                "measurement_fit_rmse", "seconds_per_sample", "hidden_rmse_observed_only"):
        assert written[key] >= 0 and written[key] == written[key], key


def test_pigdm_samples_fit_the_measurement(digits_run, tmp_path):
    """PiGDM's samples reproduce the observed pixels up to about the measurement noise, even
    under a barely trained prior, and much closer than the prior's own samples do."""
    guided = posterior_run(digits_run, task="inpaint", images=2, samples=2, steps=20,
                           noise_std=0.1, out=tmp_path / "fit.png")
    unguided = posterior_run(digits_run, task="inpaint", images=2, samples=2, steps=20,
                             noise_std=0.1, scale=1e-6, out=tmp_path / "prior.png")
    assert guided["measurement_fit_rmse"] < 0.3
    assert guided["measurement_fit_rmse"] < 0.5 * unguided["measurement_fit_rmse"]


def test_settings_come_from_flags_then_the_runs_table_then_defaults(digits_run, tmp_path):
    config = (digits_run / "config.toml").read_text()
    (digits_run / "config.toml").write_text(config + '\n[posterior]\ntask = "denoise"\n'
                                                     'noise_std = 0.2\n')
    try:
        result = posterior_run(digits_run, images=1, samples=1, steps=2,
                               out=tmp_path / "a.png")
        assert result["task"] == "denoise" and result["noise_std"] == 0.2
        result = posterior_run(digits_run, task="inpaint", images=1, samples=1, steps=2,
                               out=tmp_path / "b.png")
        assert result["task"] == "inpaint" and result["noise_std"] == 0.2
    finally:
        (digits_run / "config.toml").write_text(config)
    with pytest.raises(ConfigError, match="task: expected one of"):
        posterior_run(digits_run, task="inpainting", out=tmp_path / "c.png")
    with pytest.raises(ConfigError, match="method: expected one of"):
        posterior_run(digits_run, method="langevin", out=tmp_path / "c.png")


def test_a_density_model_is_sent_to_measurement_model(tmp_path):
    out = tmp_path / "flow"
    fit_run(load_config("realnvp-moons", ["train.steps=2", "data.eval_size=64",
                                          "sample.n=8", "eval.resolution=10"]),
            out_dir=out, progress=False)
    with pytest.raises(ConfigError, match="measurement_model with NUTS or SVI"):
        posterior_run(out, task="denoise")
    assert main(["posterior", str(out)]) != 0


def test_the_mnist_inpainting_preset_declares_its_inverse_problem():
    config = load_config("inpaint-mnist")
    assert config["posterior"]["task"] == "inpaint"
    assert config["model"]["name"] == "ImageFlowMatching"
