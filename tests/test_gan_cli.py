"""GAN runs from TOML: registered objectives, labelled data for conditional GANs, [sample]
keywords (truncation, labels) passed to the model's sample, errors that name the key."""

from __future__ import annotations

import json

import pytest
import torch

from probgen.run.config import ConfigError, load_config
from probgen.run.experiment import build_data, build_model, build_objective, fit_run, load_run


def test_conditional_digits_run_with_truncation_and_labels(tmp_path):
    config = load_config("gan-digits")
    config["data"]["labels"] = True
    config["train"].update(steps=3, log_every=1)
    config["sample"] = {"n": 16, "psi": 0.5, "labels": 3}
    result = fit_run(config, out_dir=tmp_path / "run", progress=False)
    assert "test/divergence" in result and "samples.png" in result["files"]
    _, data, model, objective = load_run(tmp_path / "run")
    assert model.num_classes == 10 and data.num_classes == 10  # filled from the data
    assert objective.loss_name == "non_saturating"
    x = model.sample((5,), psi=0.5, labels=3)
    assert x.shape == (5, 1, 8, 8)


def test_one_dimensional_mixture_run(tmp_path):
    config = load_config("gan-mixture1d")
    config["train"].update(steps=3, log_every=1)
    config["data"]["eval_size"] = 300
    result = fit_run(config, out_dir=tmp_path / "run", progress=False)
    assert "test/divergence" in result
    _, data, model, _ = load_run(tmp_path / "run")
    assert data.event_shape == (1,) and model.sample((4,)).shape == (4, 1)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert all("divergence" in m for m in metrics)  # the training curve


@pytest.mark.parametrize(
    ("objective", "match"),
    [
        ({"name": "fgan", "divergence": "chi"}, r"\[objective\] fgan: f-divergence: expected one"),
        ({"name": "wgan", "gradient_penalty": 10.0}, r"keys \['gradient_penalty'\] do not "
                                                     r"apply to 'wgan'"),
        ({"name": "gan", "loss": "wasserstien"}, r"\[objective\] gan: loss: expected one of"),
    ],
)
def test_bad_objective_tables_name_the_key(objective, match):
    config = load_config("gan-8gaussians")
    config["objective"] = objective
    data = build_data(config)
    model = build_model(config, data)
    with pytest.raises(ConfigError, match=match):
        build_objective(config, model, data)


def test_preset_objectives_have_the_course_defaults():
    config = load_config("gan-mnist")
    assert config["train"]["betas"] == [0.0, 0.9]
    assert config["objective"] == {"name": "wgan_gp", "n_critic": 5, "gradient_penalty": 10.0}
    data = build_data(load_config("gan-8gaussians"))
    model = build_model(load_config("gan-8gaussians"), data)
    objective = build_objective(load_config("gan-8gaussians"), model, data)
    assert (objective.gp, objective.n_critic) == (10.0, 5)
    assert torch.equal(torch.tensor(model.event_shape), torch.tensor([2]))
