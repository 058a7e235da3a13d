"""Run folders a user can trust from the command line, and the CLI's conveniences."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

import probgen
from probgen.cli import main
from probgen.inference import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.eval_size=200", "eval.resolution=10", "sample.n=16"]


def _fit(out, *overrides, preset="realnvp-moons", extra=()):
    args = ["fit", preset, "--out", str(out), "--quiet", *extra]
    for o in (*SMALL, *overrides):
        args += ["--set", o]
    return main(args)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short realnvp-moons run (6 steps), copied per test by ``run``."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert _fit(out, "train.steps=6", "train.log_every=2") == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for path in trained.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    return out


@pytest.mark.parametrize(
    "overrides,extra,match",
    [
        (["sample.temprature=0.5"], (), r"\[sample\] unknown key 'temprature'"),
        (["eval.batch_size=0"], (), r"\[eval\] batch_size must be a positive number"),
        (["model.name=RealNPV"], (), r"Did you mean 'RealNVP'\?"),
        (["model.transforms=2", "train.steps=12"], ("--resume",),
         r"does not fit this run's model and objective"),
        (["train.ema_decay=0.9", "train.steps=12"], ("--resume",), r"has no EMA"),
    ],
)
def test_failing_fit_leaves_the_run_folder_byte_identical(run, capsys, overrides, extra, match):
    before = _snapshot(run)
    assert _fit(run, *overrides, extra=extra) == 2
    err = capsys.readouterr().err
    assert pytest.importorskip("re").search(match, err), err
    assert _snapshot(run) == before


def test_corrupt_checkpoint_on_resume_leaves_the_folder_and_names_the_file(run, capsys):
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    before = _snapshot(run)
    assert _fit(run, "train.steps=12", extra=("--resume",)) == 2
    err = capsys.readouterr().err
    assert str(run / "checkpoint.pt") in err and "corrupt or truncated" in err, err
    assert _snapshot(run) == before


@pytest.mark.parametrize(
    "preset,override,match",
    [
        ("ddpm-moons", 'sample.sampler="ddimm"', "Did you mean 'ddim'?"),
        ("dsm-moons", 'sample.sampler="anealed"', "Did you mean 'annealed'?"),
        ("realnvp-moons", "sample.n=0", r"\[sample\] n must be a positive number"),
    ],
)
def test_sample_keys_are_checked_before_training(tmp_path, capsys, preset, override, match):
    out = tmp_path / "run"
    assert _fit(out, "train.steps=2", override, preset=preset) == 2
    err = capsys.readouterr().err
    assert match in err or pytest.importorskip("re").search(match, err), err
    assert not out.exists(), "training started before [sample] was checked"


def test_resume_without_a_checkpoint_says_where_it_looked(tmp_path, capsys, monkeypatch):
    assert _fit(tmp_path / "none", "train.steps=2", extra=("--resume",)) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "none" / "checkpoint.pt") in err, err
    assert not (tmp_path / "none").exists()
    # A run's config.toml without --out: its own folder, never a new runs/config.
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "half"
    folder.mkdir()
    preset = ROOT / "probgen/run/presets/realnvp-moons.toml"
    (folder / "config.toml").write_text(preset.read_text())
    assert main(["fit", str(folder / "config.toml"), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(folder / "checkpoint.pt") in err, err
    assert not (tmp_path / "runs").exists()


def test_resume_from_a_runs_config_without_out(run, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", str(run / "config.toml"), "--resume", "--quiet",
                 "--set", "train.steps=8"]) == 0
    assert load_checkpoint(run)["step"] == 8
    assert not (tmp_path / "runs").exists()


def test_torn_metrics_line_and_stale_temporaries_on_resume(run):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')
    (run / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert _fit(run, "train.steps=8", "train.log_every=2", extra=("--resume",)) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("kind", ["truncated", "foreign"])
@pytest.mark.parametrize("command", ["eval", "sample"])
def test_bad_checkpoint_is_one_line_naming_the_file(run, capsys, kind, command):
    path = run / "checkpoint.pt"
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        torch.save({"format": 1, "objective": Path("x")}, path)  # a pickled foreign object
    assert main([command, str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err, err
    assert "Traceback" not in err and "weights_only" not in err, err


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not (path.is_file() and path.read_text().count("\n") >= 2):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() - start < timeout, "training did not start"
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_fit_checkpoints_and_resume_continues(tmp_path, signum):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "probgen", "fit", "realnvp-moons", "--out", str(out),
               "--quiet", "--threads", "1"]
    for o in (*SMALL, "train.steps=1000000", "train.log_every=1"):
        command += ["--set", o]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "metrics.jsonl", process)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and signal.Signals(signum).name in err, err
    assert "--resume" in err and str(out / "config.toml") in err, err
    step = load_checkpoint(out)["step"]  # no checkpoint_every: the signal wrote it
    assert 1 <= step < 1000000
    assert main(["fit", str(out / "config.toml"), "--resume", "--quiet",
                 "--set", f"train.steps={step + 3}"]) == 0
    assert load_checkpoint(out)["step"] == step + 3


def test_version_and_python_dash_m(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    version = f"probgen {probgen.__version__}"
    assert e.value.code == 0 and capsys.readouterr().out.strip() == version
    result = subprocess.run([sys.executable, "-m", "probgen", "--version"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == version


@pytest.mark.parametrize(
    "args,suggestion",
    [
        (["fit", "realnvp-moon"], "Did you mean 'realnvp-moons'"),
        (["fit", "realnvp-moons", "--set", "objective.name=mll"], "Did you mean 'ml'"),
        (["fit", "realnvp-moons", "--set", "data.name=moon"], "Did you mean 'moons'"),
        (["fit", "realnvp-moons", "--set", "train.optimiser=sgd"], "Did you mean 'optimizer'"),
        (["fit", "realnvp-moons", "--set", "trian.steps=3"], "Did you mean 'train'"),
        (["fit", "iaf-u3", "--set", "objective.target=u33"], "Did you mean 'u3'"),
        (["fit", "realnvp-digits", "--set", "data.preprocess=logt"], "Did you mean 'logit'"),
    ],
)
def test_unknown_names_get_suggestions(tmp_path, capsys, args, suggestion):
    assert main([*args, "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert suggestion in err, err


def test_list_is_grouped_by_family(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    headers = [line for line in lines if not line.startswith(" ")]
    assert {"normalizing flows:", "diffusion:", "flow matching:", "GANs:"} <= set(headers)

    def family_of(preset):
        header = None
        for line in lines:
            if not line.startswith(" "):
                header = line
            elif line.split()[0] == preset:
                return header

    assert family_of("realnvp-moons") == "normalizing flows:"
    assert family_of("ddpm-moons") == "diffusion:"
    assert family_of("fm-moons") == "flow matching:"


def test_threads_flag_and_config_key(run, capsys):
    assert _fit(run, "train.steps=8", extra=("--resume", "--threads", "2")) == 0
    assert tomllib.loads((run / "config.toml").read_text())["train"]["threads"] == 2
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert main(["eval", str(run)]) == 0  # the run's [train] threads
    assert torch.get_num_threads() == 2
    assert main(["sample", str(run), "--n", "4", "--threads", "1"]) == 0  # the flag wins
    assert torch.get_num_threads() == 1
    assert main(["sample", str(run), "--threads", "0"]) == 2
    assert "threads: expected a positive int" in capsys.readouterr().err
