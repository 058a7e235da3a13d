"""The family registries of the run layer: registered objectives, labelled data, [sample]
keywords, num_classes filled from the data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probgen.inference import registry
from probgen.models import MODELS
from probgen.run.config import ConfigError
from probgen.run.experiment import build_data, build_model, build_objective, fit_run


class _ClassMeans(nn.Module):
    """A per-class mean of flattened digits: a model whose optimum is known in closed form."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.means = nn.Parameter(torch.zeros(num_classes, features))

    def sample(self, shape: tuple[int, ...] = (), labels: int | None = None,
               scale: float = 1.0) -> torch.Tensor:
        n = shape[0] if shape else 1
        y = torch.full((n,), labels) if labels is not None else torch.arange(n) % len(self.means)
        return self.means[y] * scale


class _SquaredError(nn.Module):
    def __init__(self, model: _ClassMeans, weight: float, preprocess) -> None:
        super().__init__()
        self.model, self.weight, self.preprocess = model, weight, preprocess

    def forward(self, batch):
        x, y = batch
        x, _ = self.preprocess(x, dequantize=False)
        return {"loss": self.weight * ((x - self.model.means[y]) ** 2).sum(-1).mean()}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MODELS, "ClassMeans", _ClassMeans)

    @registry.register_objective("test_sq", keys=("weight",))
    def _build(model, data, weight: float = 1.0):
        """Squared error to the class means."""
        return _SquaredError(model, weight, data.preprocess)

    yield
    registry.OBJECTIVES.pop("test_sq")


def _config(**objective):
    return {"data": {"name": "digits", "preprocess": "scale", "flatten": True, "labels": True},
            "model": {"name": "ClassMeans"}, "objective": {"name": "test_sq", **objective},
            "train": {"steps": 400, "batch_size": 256, "lr": 0.05, "lr_schedule": "cosine",
                      "log_every": 100},
            "sample": {"n": 10, "scale": 1.0}}


def test_labelled_digits_are_x_y_tuples():
    data = build_data(_config())
    x, y = data.train
    assert x.shape == (1497, 1, 8, 8) and y.dtype == torch.long and data.num_classes == 10
    assert data.eval[0].shape == (300, 1, 8, 8) and data.eval_x.shape == (300, 1, 8, 8)
    assert data.event_shape == (64,)
    assert sorted(y.unique().tolist()) == list(range(10))


def test_registered_objective_trains_to_class_means(registered, tmp_path):
    config = _config()
    data = build_data(config)
    model = build_model(config, data)
    assert model.means.shape == (10, 64)  # num_classes and features filled from the data
    result = fit_run(config, out_dir=tmp_path, progress=False)
    x, y = data.train
    x, _ = data.preprocess(x, dequantize=False)
    # The squared error's minimizer is each class's mean of the training images.
    from probgen.run.experiment import load_run

    _, _, trained, _ = load_run(tmp_path)
    target = torch.stack([x[y == k].mean(0) for k in range(10)])
    assert torch.allclose(trained.means.detach(), target, atol=0.03)
    assert "test/loss" not in result and "samples.png" in result["files"]


def test_unknown_objective_key_names_allowed(registered):
    config = _config(bogus=1)
    data = build_data(config)
    with pytest.raises(ConfigError, match=r"bogus.*allowed: weight"):
        build_objective(config, build_model(config, data), data)


def test_unknown_objective_lists_registered(registered):
    config = _config()
    config["objective"] = {"name": "nope"}
    data = build_data(config)
    with pytest.raises(ConfigError, match="test_sq"):
        build_objective(config, build_model(config, data), data)


def test_sample_table_is_checked_against_the_model(registered, tmp_path):
    config = _config()
    config["sample"] = {"n": 4, "temperature": 2.0}
    with pytest.raises(ConfigError, match="temperature"):
        fit_run(config, out_dir=tmp_path, progress=False)


def test_builtin_names_cannot_be_registered():
    with pytest.raises(ValueError, match="'ml' is a built-in objective name"):
        @registry.register_objective("ml")
        def _other_ml(model, data):
            return model


def test_one_table_holds_every_objective():
    """The built-in objectives are registry entries like the families' (one builder table)."""
    for name in ("ml", "regularized_ml", "reverse_kl", "ism", "ssm", "dsm", "ncsn", "elbo",
                 "ddpm", "cfm", "sde_dsm", "gan", "vqvae"):
        assert name in registry.OBJECTIVES, name
    assert registry.OBJECTIVES["dsm"].langevin and not registry.OBJECTIVES["ddpm"].langevin
    assert not registry.OBJECTIVES["reverse_kl"].needs_data
