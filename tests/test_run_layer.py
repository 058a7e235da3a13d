"""The application layer probgen.run: one evaluation loop, nested model tables, and the
combinations rejected before training."""

from __future__ import annotations

import json

import pytest

from probgen.run.config import load_config
from probgen.run.experiment import eval_run, fit_run

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
