"""The application layer probgen.run: one evaluation loop, nested model tables, and the
combinations rejected before training."""

from __future__ import annotations

import json
import math
import re
import tomllib

import pytest
import torch

import probgen
from probgen.models import MODELS
from probgen.run.checks import check_combination, clip_warmup
from probgen.run.cli import main
from probgen.run.compose import nested_form
from probgen.run.config import ConfigError, apply_overrides, dump_toml, list_presets, load_config
from probgen.run.experiment import build_model, describe_data, eval_run, fit_run

_QUICK = ["train.log_every=10", "data.eval_size=400", "sample.n=16", "eval.resolution=10"]


def test_fit_run_evaluates_like_the_trainer_with_the_ema_weights(tmp_path):
    """fit_run's held-out numbers are the trainer's evaluation with the EMA weights: they
    equal the trainer's last eval record and a later `probgen eval` of the run folder."""
    config = load_config("realnvp-moons", [*_QUICK, "train.steps=30", "train.ema_decay=0.8",
                                           "train.eval_every=30", "train.threads=1"])
    result = fit_run(config, out_dir=tmp_path / "run", progress=False)
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    last_eval = [r for r in records if "eval/nll" in r][-1]
    assert result["test/nll"] == pytest.approx(last_eval["eval/nll"], rel=1e-6)
    assert eval_run(tmp_path / "run")["test/nll"] == pytest.approx(result["test/nll"], rel=1e-6)


def test_reverse_kl_is_evaluated_by_the_trainer_loop(tmp_path):
    config = load_config("iaf-u3", ["train.steps=2", "eval.num_samples=300", "sample.n=16",
                                    "eval.resolution=10", "train.log_every=1"])
    result = fit_run(config, out_dir=tmp_path / "run", progress=False)
    assert set(k for k in result if k.startswith("test/")) == {"test/kl_unnormalized"}


# --- nested [model.*] tables -------------------------------------------------------------

def _built(config):
    data = describe_data(config)
    return build_model(config, data)


def _signature(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(list_presets()))
def test_every_preset_parses_into_the_nested_form_and_builds(name):
    """Each preset builds; grouped into nested tables it builds the same model (same
    parameters and buffers), and its TOML round-trips through dump_toml."""
    config = load_config(name)
    cls = MODELS[config["model"]["name"]]
    flat = {k: v for k, v in config["model"].items() if k != "name"}
    nested = {**config, "model": {"name": config["model"]["name"], **nested_form(cls, flat)}}
    assert tomllib.loads(dump_toml(nested)) == nested
    torch.manual_seed(0)
    first = _built(config)
    torch.manual_seed(0)
    second = _built(nested)
    assert _signature(first) == _signature(second)
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_flat_unet_keys_join_a_unet_network_table(tmp_path):
    """Older habits keep working: `--set model.base_channels=8` on a preset whose U-Net is
    a [model.network] table sets that table's base_channels; on a DiT it is an error."""
    config = load_config("ddpm-digits", ["model.base_channels=8"])
    assert _built(config).network.stem.out_channels == 8
    dit = tomllib.loads(_DIGITS_DDPM)
    dit["model"]["base_channels"] = 8
    with pytest.raises(ConfigError, match=r"\['base_channels'\] are U-Net arguments but "
                                          r"\[model.network\] name = 'dit'"):
        _built(dit)


def test_presets_with_a_unet_declare_it_as_a_nested_network():
    for name in ("ddpm-mnist", "ddpm-digits", "fm-mnist", "sde-vp-mnist"):
        model = load_config(name)["model"]
        assert model["network"]["name"] == "unet", name
        assert not {"base_channels", "channel_mults", "dropout"} & set(model), name


_DIGITS_DDPM = """
[data]
name = "digits"
preprocess = "signed"

[model]
name = "DDPM"
num_steps = 50

[model.network]
name = "dit"
patch = 2
hidden = 32
depth = 2
heads = 4

[objective]
name = "ddpm"

[train]
steps = 20
batch_size = 16

[sample]
n = 4
sampler = "ddim"
steps = 3

[eval]
num_samples = 32
"""


def test_fit_a_dit_ddpm_declared_in_toml(tmp_path, capsys):
    run_file = tmp_path / "dit.toml"
    run_file.write_text(_DIGITS_DDPM)
    out = tmp_path / "run"
    assert main(["fit", str(run_file), "--out", str(out), "--set", "train.steps=2",
                 "--quiet", "--threads", "1"]) == 0
    model, config, _ = probgen.load(out)
    assert type(model.network).__name__ == "DiT" and config["model"]["network"]["depth"] == 2
    assert math.isfinite(json.loads((out / "eval.json").read_text())["test/bits_per_dim"])
    assert main(["sample", str(out), "--n", "2", "--format", "pt"]) == 0


@pytest.mark.parametrize("override,message", [
    ("model.network.chanels=8", r"\[model.network\] unknown key 'chanels' for UNet.*"
                                r"Did you mean .*'base_channels'"),
    ("model.network.name=\"dti\"", r"\[model.network\] name must be one of.*Did you mean 'dit'"),
    ("model.network.dropout=\"high\"", r"\[model.network\] dropout must be int or float"),
    ("model.channel_mults=[1]", r"\[model\] \['channel_mults'\] and \[model.network\] both"),
    ("model.prior.name=\"maf\"", r"\[model.prior\] does not apply to DDPM"),
])
def test_bad_nested_keys_fail_before_training_and_leave_the_folder(tmp_path, capsys, override,
                                                                  message):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text("kept")
    code = main(["fit", "ddpm-digits", "--out", str(out), "--quiet", "--set", override])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert [p.name for p in out.iterdir()] == ["config.toml"]
    assert (out / "config.toml").read_text() == "kept"


def test_vae_composed_from_nested_tables_equals_the_flat_one():
    base = load_config("vae-flows-digits")
    nested = {**base, "model": {
        "name": "VAE", "latent_features": 8, "context_features": 32,
        "encoder": {"name": "mlp", "hidden_features": [256, 256]},
        "likelihood": {"name": "bernoulli"},
        "prior": {"name": "maf", "transforms": 4, "hidden": [64, 64]},
        "posterior": {"name": "iaf", "transforms": 2, "hidden": [64, 64]}}}
    torch.manual_seed(0)
    flat_model = _built(base)
    torch.manual_seed(0)
    nested_model = _built(nested)
    assert _signature(flat_model) == _signature(nested_model)
    with pytest.raises(ConfigError, match=r"\[model.prior\] unknown key 'transfroms' for VAE.*"
                                          r"Did you mean 'transforms'"):
        _built({**nested, "model": {**nested["model"], "prior": {"name": "maf",
                                                                  "transfroms": 2}}})
    with pytest.raises(ConfigError, match=r"\[model.prior\] transforms must be int"):
        _built({**nested, "model": {**nested["model"], "prior": {"name": "maf",
                                                                  "transforms": "4"}}})
    with pytest.raises(ConfigError,
                       match=r"\[model\] prior_hidden and \[model.prior\] hidden both set"):
        _built({**nested, "model": {**nested["model"], "prior_hidden": [8]}})


def test_flow_matching_path_as_a_table():
    base = load_config("fm-moons")

    def with_model(**model):
        flat = {k: v for k, v in base["model"].items() if k not in ("path", "sigma_min")}
        return {**base, "model": {**flat, **model}}

    nested = _built(with_model(path={"name": "vp", "beta_max": 10.0}))
    flat = _built(with_model(path="vp", beta_max=10.0))
    assert type(nested.path) is type(flat.path)
    assert type(nested.path) is not type(_built(with_model(path="ot")).path)
    with pytest.raises(ConfigError, match=r"\[model.path\] unknown key 'sigma_mn'.*sigma_min"):
        _built(with_model(path={"name": "ot", "sigma_mn": 0.1}))
    with pytest.raises(ConfigError, match=r"model.path is a value, not a table"):
        load_config("fm-moons", ['model.path.name="vp"'])


# --- silently wrong combinations -----------------------------------------------------------

@pytest.mark.parametrize("preset,overrides,message", [
    ("ffjord-digits", ['data.preprocess="binarize"'],
     r"preprocess = 'binarize' gives discrete pixels, but \[model\] FFJORD is a continuous"),
    ("fm-digits", ['data.preprocess="dynamic_binarize"'],
     r"\[model\] ImageFlowMatching is a continuous density"),
    ("sde-vp-digits", ['data.preprocess="discrete"'], r"\[model\] ImageScoreSDE is a continuous"),
    ("realnvp-digits", ['data.preprocess="binarize"'], r"\[model\] RealNVP is a continuous"),
    ("vae-digits", ['data.preprocess="logit"'],
     r"\[model\] likelihood \(BernoulliLikelihood\) does not fit the data \(preprocess = "
     r"'logit'\).*\['binarize', 'dynamic_binarize'\]"),
    ("vae-digits", ['data.preprocess="binarize"', 'model.likelihood="categorical"'],
     r"CategoricalLikelihood\) does not fit.*\['discrete'\]"),
    ("vae-digits", ['data.preprocess="binarize"', 'model.likelihood="gaussian"'],
     r"GaussianLikelihood\) does not fit"),
])
def test_silently_wrong_combinations_are_rejected_before_training(tmp_path, capsys, preset,
                                                                  overrides, message):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text("kept")
    config = load_config(preset)
    config["data"].pop("alpha", None)  # logit preprocessing's, rejected with other kinds
    config = apply_overrides(config, overrides)
    with pytest.raises(ConfigError, match=message):
        fit_run(config, out_dir=out, progress=False)
    assert [p.name for p in out.iterdir()] == ["config.toml"]
    assert (out / "config.toml").read_text() == "kept"


def test_matching_likelihoods_and_discrete_models_are_accepted():
    for preset in ("vae-digits", "vae-categorical-digits", "made-digits", "pixelcnn-digits",
                   "realnvp-digits", "ffjord-digits", "fm-digits"):
        config = load_config(preset)
        check_combination(config, _built(config))


def test_a_warmup_longer_than_the_run_is_clipped_to_a_tenth(tmp_path, capsys):
    """The MNIST presets warm up for 500 steps; a 20-step run uses 2 and says so, and the
    run folder records the value in effect."""
    assert load_config("ddpm-mnist")["train"]["warmup_steps"] == 500
    run_file = tmp_path / "dit.toml"
    run_file.write_text(_DIGITS_DDPM)
    out = tmp_path / "run"
    assert main(["fit", str(run_file), "--out", str(out), "--quiet", "--threads", "1",
                 "--set", "train.steps=20", "--set", "train.warmup_steps=500"]) == 0
    assert "using warmup_steps = 2 (a tenth of the run)" in capsys.readouterr().err
    assert load_config(out / "config.toml")["train"]["warmup_steps"] == 2
    kept = clip_warmup({"train": {"steps": 1000, "warmup_steps": 500}})
    assert kept["train"]["warmup_steps"] == 500
