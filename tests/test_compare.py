"""Tests of ``probgen compare``: specs, the end-to-end run, agreement with ``probgen eval``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from probgen.run import experiment
from probgen.run.cli import main
from probgen.run.compare import NetworkCalls, list_compare_presets, load_spec
from probgen.run.config import ConfigError

TINY = """
[compare]
metrics = ["w2"]
num_samples = 100
eval_examples = 200
figure_samples = 100
threads = 1

[budget]
steps = 10

[data]
name = "moons"
eval_size = 300

[runs.flow]
preset = "realnvp-moons"
set = ["train.log_every=5", "model.transforms=2", "model.hidden_features=[16]"]

[runs.fm]
preset = "fm-moons"
set = ["train.log_every=5", "model.hidden_features=[16]", "sample.method=\\"euler\\"",
       "sample.steps=7", "eval.resolution=8"]

[runs.gan]
preset = "gan-8gaussians"
[runs.gan.train]
log_every = 5
[runs.gan.model]
hidden_features = [16]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_compare_runs_end_to_end_and_agrees_with_eval(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(_write(tmp_path, TINY)), "--out", str(out), "--quiet"]) == 0
    assert "3 runs compared" in capsys.readouterr().out
    for name in ("compare.md", "compare.csv", "compare.png"):
        assert (out / name).stat().st_size > 0
    with open(out / "compare.csv", newline="") as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["flow", "fm", "gan"]
    assert rows["gan"]["family"] == "GANs" and rows["fm"]["family"] == "flow matching"
    assert rows["flow"]["nll_kind"] == "exact" and rows["gan"]["nll_kind"] == ""
    assert int(rows["fm"]["network_calls_per_sample"]) == 7  # 7 Euler steps, one call each
    assert int(rows["gan"]["network_calls_per_sample"]) == 1
    assert int(rows["flow"]["network_calls_per_sample"]) == 2  # one per coupling network
    table = (out / "compare.md").read_text()
    assert table.startswith("| run |") and table.count("\n| ") == 3  # header, 3 rows
    assert "w2 (coordinates)" in table
    for name, row in rows.items():
        run = out / name
        assert int(row["steps"]) == 10 and (run / "checkpoint.pt").is_file()
        _, _, model, _ = experiment.load_run(run, with_data=False)
        assert int(row["params"]) == sum(p.numel() for p in model.parameters())
        own = experiment.eval_run(run, "w2", num_samples=100)
        assert own, name
        for key, value in own.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)
    assert float(rows["flow"]["test/nll"]) > 0


def test_wall_clock_budget_stops_training_early(tmp_path: Path) -> None:
    text = TINY.replace("steps = 10", "steps = 100000\nminutes = 0.001")
    text = text[:text.index("[runs.fm]")]
    out = tmp_path / "cmp"
    assert main(["compare", str(_write(tmp_path, text)), "--out", str(out), "--quiet"]) == 0
    with open(out / "compare.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert 5 <= int(row["steps"]) < 100000  # stopped at a training record (every 5 steps)


@pytest.mark.parametrize("edit, match", [
    (("[budget]\nsteps = 10", "[budget]\nstep = 10"), r"\[budget\] unknown key 'step'"),
    (("[budget]\nsteps = 10", "[budget]"), r"\[budget\] needs steps"),
    (("steps = 10", "steps = -3"), r"\[budget\] steps must be positive"),
    (('metrics = ["w2"]', 'metrics = ["w3"]'), r"\[compare\] metrics: 'w3' is unknown"),
    (('preset = "realnvp-moons"', 'preset = "realnvp-moon"'),
     r"\[runs.flow\] 'realnvp-moon' is neither"),
    (('[runs.gan.model]', '[runs.gan.modle]'), r"\[runs.gan\] unknown key 'modle'"),
    (('log_every = 5\n[runs.gan.model]', 'log_evry = 5\n[runs.gan.model]'),
     r"\[runs.gan\] \[train\] unknown key 'log_evry'"),
    (('[data]\nname = "moons"\neval_size = 300', '[data]\nnme = "moons"'),
     r"\[data\] unknown key 'nme'"),
    (('[data]\nname = "moons"\neval_size = 300', ''), r"\[data\] name: every run must"),
    (("[compare]", "[comparison]"), r"unknown table \[comparison\]"),
])
def test_bad_specs_name_the_key(tmp_path: Path, edit: tuple[str, str], match: str) -> None:
    assert edit[0] in TINY
    with pytest.raises(ConfigError, match=match):
        load_spec(_write(tmp_path, TINY.replace(edit[0], edit[1], 1)))


def test_bad_spec_through_the_cli_is_a_one_line_error(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    path = _write(tmp_path, TINY.replace("[runs.gan.model]", "[runs.gan.modle]"))
    assert main(["compare", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "[runs.gan] unknown key 'modle'" in err and not (tmp_path / "o").exists()


def test_a_run_without_preset_or_model_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[runs.empty\] needs a 'preset'"):
        load_spec(_write(tmp_path, TINY + "\n[runs.empty.train]\nsteps = 3\n"))


def test_built_in_specs_parse_with_shared_data_and_budget() -> None:
    presets = list_compare_presets()
    assert {"compare-moons", "compare-mnist"} <= set(presets)
    moons = load_spec("compare-moons")
    assert len(moons.runs) == 6
    families = set()
    for name, config in moons.runs.items():
        assert config["data"]["name"] == "moons" and config["train"]["steps"] == 2000
        model = experiment.build_model(config, experiment.describe_data(config))
        families.add(experiment.FAMILIES[type(model).__module__.rsplit(".", 1)[-1]])
        assert config["run"]["name"] == name
    assert len(families) == 6
    mnist = load_spec("compare-mnist", ["data.root=/nowhere"])
    assert {c["data"]["root"] for c in mnist.runs.values()} == {"/nowhere"}
    assert mnist.metrics == ["fid", "kid", "pr"]


def test_network_calls_count_outermost_parameterized_calls() -> None:
    inner = torch.nn.Linear(2, 2)
    outer = torch.nn.Sequential(inner, torch.nn.ReLU(), torch.nn.Linear(2, 2))
    with NetworkCalls() as calls:
        outer(torch.zeros(3, 2))
        inner(torch.zeros(3, 2))
        torch.nn.ReLU()(torch.zeros(1))  # no parameters: not a network
    assert calls.count == 2
    with NetworkCalls(transparent=(outer,)) as calls:
        outer(torch.zeros(3, 2))
    assert calls.count == 2  # the wrapper is transparent, its two layers count
    outer(torch.zeros(1, 2))
    assert calls.count == 2  # hooks removed on exit
