"""The command line: a short fit writes a complete run folder; sample, eval, list; bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib

import pytest
import torch

from probgen.cli import main
from probgen.inference import load_checkpoint
from probgen.run.config import list_presets, load_config

SCORE_OBJECTIVES = ("ism", "ssm", "dsm", "ncsn")
RUN_FILES = {"config.toml", "checkpoint.pt", "metrics.jsonl", "eval.json", "samples.png",
             "density.png", "curves.png"}


def _fit(tmp_path, preset, *overrides, name="run"):
    out = tmp_path / name
    args = ["fit", preset, "--out", str(out), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    return out


def test_short_fit_writes_complete_run_folder(tmp_path, capsys):
    out = _fit(tmp_path, "realnvp-moons", "train.steps=30", "data.eval_size=2000",
               "eval.resolution=50", "sample.n=200")
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "temporary files left"
    result = json.loads((out / "eval.json").read_text())
    assert math.isfinite(result["test/nll"])
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["train"]["steps"] == 30 and config["model"]["name"] == "RealNVP"
    state = load_checkpoint(out / "checkpoint.pt")  # weights_only=True
    assert state["step"] == 30
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 30 and all("loss" in r for r in lines if "eval/loss" not in r)
    printed = json.loads(capsys.readouterr().out)
    assert printed["test/nll"] == pytest.approx(result["test/nll"])

    # eval recomputes the same held-out NLL from the checkpoint alone
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test/nll"] == pytest.approx(result["test/nll"], abs=1e-6)

    # sample: a figure, or a tensor of the asked shape
    assert main(["sample", str(out), "--n", "16", "--out", str(tmp_path / "s.pt")]) == 0
    samples = torch.load(tmp_path / "s.pt", weights_only=True)
    assert samples.shape == (16, 2) and torch.isfinite(samples).all()
    assert main(["sample", str(out), "--n", "16"]) == 0
    assert (out / "samples_16.png").stat().st_size > 0


def test_resume_from_cli_matches_uninterrupted(tmp_path):
    full = _fit(tmp_path, "maf-8gaussians", "train.steps=20", "data.eval_size=500",
                "eval.resolution=20", name="full")
    part = _fit(tmp_path, "maf-8gaussians", "train.steps=10", "data.eval_size=500",
                "eval.resolution=20", name="part")
    assert main(["fit", str(part / "config.toml"), "--out", str(part), "--quiet", "--resume",
                 "--set", "train.steps=20"]) == 0
    a = load_checkpoint(full / "checkpoint.pt")["objective"]
    b = load_checkpoint(part / "checkpoint.pt")["objective"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["model.depth=3"], r"\[model\] unknown key 'depth' for RealNVP; allowed keys"),
        (["model.transforms=2.5"], r"\[model\] transforms must be int, got float 2.5"),
        (["model.name=Nope"], r"\[model\] name 'Nope' is unknown; allowed: \["),
        (["data.name=nope"], r"\[data\] name 'nope' is unknown; allowed"),
        (["train.optimiser=sgd"], r"\[train\] unknown key 'optimiser'"),
        (["objective.name=nope"], r"\[objective\] name must be one of \[.*'ml', .*'ncsn'.*\], "
                                  r"got 'nope'"),
        (["data.preprocess=logit"], r"\[data\] keys \['preprocess'\] do not apply to toy data"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, capsys, overrides, match):
    args = ["fit", "realnvp-moons", "--out", str(tmp_path / "bad"), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert pytest.importorskip("re").search(match, err), err
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def test_non_finite_loss_stops_with_step_and_term(tmp_path, capsys):
    code = main(["fit", "realnvp-moons", "--out", str(tmp_path / "nan"), "--quiet",
                 "--set", "train.steps=50", "--set", "train.lr=1e30"])
    assert code == 1
    err = capsys.readouterr().err
    assert "step" in err and "'loss'" in err or "'nll'" in err, err


def test_missing_run_folder(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "not a complete run folder" in capsys.readouterr().err


def test_list_shows_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in list_presets():
        assert name in out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "probgen.cli", "list"], capture_output=True,
                            text=True, check=True)
    assert "realnvp-moons" in result.stdout



_CHEAP = [n for n in list_presets() if not n.endswith(("-mnist", "-cifar10"))]
_GAN_OBJECTIVES = ("gan", "wgan", "wgan_gp", "fgan")  # report the divergence estimate
# Discrete latents: no exact NLL; the held-out reconstruction NLL (VQ-VAE) or ELBO (Gumbel).
_DISCRETE_LATENT_KEYS = {"vqvae": "test/recon", "gumbel_elbo": "test/elbo"}
# Score SDEs: no density in training; the held-out continuous-time DSM loss; a short sampler.
_SDE_KEYS = {"sde_dsm": "test/dsm"}


@pytest.mark.slow
@pytest.mark.parametrize("name", _CHEAP)
def test_every_preset_runs(tmp_path, name):
    from probgen.run.config import load_config

    config = load_config(name)
    overrides = ["train.steps=2", "train.log_every=1", "sample.n=16", "eval.resolution=10"]
    if "eval_every" in config["train"]:
        overrides.append("train.eval_every=2")
    if config.get("data", {}).get("name") in ("digits",):
        overrides.append("eval.num_samples=40")
    elif "data" in config:
        overrides.append("data.eval_size=200")
    else:
        overrides.append("eval.num_samples=256")
    if config.get("objective", {}).get("name") in _SDE_KEYS:
        overrides.append("sample.steps=5")
    out = _fit(tmp_path, name, *overrides)
    result = json.loads((out / "eval.json").read_text())
    assert all(math.isfinite(v) for v in result.values() if isinstance(v, float)), result
    expected = "test/kl_unnormalized" if "data" not in config else "test/nll"
    objective = config.get("objective", {}).get("name")
    if objective in SCORE_OBJECTIVES:  # no density: the held-out score-matching loss
        expected = f"test/{objective}"
    if objective in _GAN_OBJECTIVES:  # no density: the critic's divergence estimate
        expected = "test/divergence"
    expected = _DISCRETE_LATENT_KEYS.get(objective, expected)
    expected = _SDE_KEYS.get(objective, expected)
    assert expected in result, result


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.parametrize("name", [n for n in list_presets() if n.endswith("-mnist")])
def test_mnist_presets_run(tmp_path, mnist_root, name):
    out = _fit(tmp_path, name, f"data.root={json.dumps(str(mnist_root))}", "train.steps=2",
               "train.eval_every=2", "train.warmup_steps=0", "eval.num_samples=16",
               "sample.n=4", "train.batch_size=8",
               *(["sample.steps=5"] if load_config(name)["objective"]["name"] in _SDE_KEYS
                 else []))
    objective = load_config(name)["objective"]["name"]
    expected = f"test/{objective}" if objective in SCORE_OBJECTIVES else "test/bits_per_dim"
    expected = "test/divergence" if objective in _GAN_OBJECTIVES else expected
    expected = _DISCRETE_LATENT_KEYS.get(objective, expected)
    expected = _SDE_KEYS.get(objective, expected)
    assert expected in json.loads((out / "eval.json").read_text())


@pytest.mark.slow
def test_cli_under_torchrun_matches_single_process(tmp_path):
    """`torchrun -m probgen.cli fit` with 2 gloo processes x batch B == 1 process x batch 2B."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["fit", "realnvp-moons", "--quiet", "--set", "train.steps=20", "--set",
              "data.eval_size=500", "--set", "eval.resolution=10", "--set", "sample.n=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "probgen.cli",
         *common, "--out", str(tmp_path / "ddp"), "--set", "train.batch_size=128"],
        check=True, env=env, capture_output=True, timeout=240,
    )
    assert main([*common, "--out", str(tmp_path / "one"), "--set", "train.batch_size=256"]) == 0
    a = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    assert a["world_size"] == 2 and b["world_size"] == 1
    for key, value in b["objective"].items():
        assert torch.allclose(a["objective"][key], value, atol=1e-5), key
