"""Run folders a user can trust: bad checkpoints, torn metrics, stale temporaries, signals."""

from __future__ import annotations

import json
import os
import pickle
import signal
import warnings

import pytest
import torch
from torch import nn

from probgen.inference import (
    TrainingInterrupted,
    fit,
    load_checkpoint,
    load_objective_state,
)
from probgen.inference.history import read_records


class Regression(nn.Module):
    """A small objective with model-internal randomness (so resuming must restore RNGs)."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, x):
        noisy = x + 0.1 * torch.randn_like(x)
        return {"loss": ((self.net(noisy) - x) ** 2).mean()}


@pytest.fixture
def data():
    return torch.randn(256, 2, generator=torch.Generator().manual_seed(0))


def _trained(tmp_path, data):
    fit(Regression(), data, steps=4, batch_size=16, out_dir=tmp_path, progress=False)
    return tmp_path / "checkpoint.pt"


class Foreign:
    """A class a probgen checkpoint never holds."""


@pytest.mark.parametrize("kind", ["truncated", "empty", "junk", "foreign", "plain_pickle"])
def test_bad_checkpoints_raise_value_error_naming_the_file(tmp_path, data, kind):
    good = _trained(tmp_path / "good", data).read_bytes()
    path = tmp_path / "checkpoint.pt"
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "junk":
        path.write_bytes(b"definitely not a checkpoint")
    elif kind == "foreign":
        torch.save({"format": 1, "objective": Foreign()}, path)
    else:
        path.write_bytes(pickle.dumps({"format": 1, "objective": {}}, protocol=2) + b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the pickle protocol
        with pytest.raises(ValueError) as error:
            load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    if kind == "foreign":
        assert "Foreign" in message and "not loaded" in message


def test_checkpoint_of_another_model_is_refused_by_name(tmp_path, data):
    path = _trained(tmp_path, data)
    state = load_checkpoint(path)
    with pytest.raises(ValueError, match=r"does not fit this run's model.*other shapes") as e:
        load_objective_state(Regression(hidden=4), state, path)
    assert str(path) in str(e.value)
    restored = Regression()
    load_objective_state(restored, state, path)
    assert torch.equal(restored.net[0].weight, state["objective"]["net.0.weight"])


def test_resume_into_another_model_raises_value_error(tmp_path, data):
    _trained(tmp_path, data)
    with pytest.raises(ValueError, match="does not fit this run's model"):
        fit(Regression(hidden=4), data, steps=8, batch_size=16, out_dir=tmp_path,
            resume=True, progress=False)


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    with pytest.warns(RuntimeWarning, match="torn last line 3"):
        records = read_records(path, upto=10)
    assert [r["step"] for r in records] == [1, 2]
    path.write_text('{"step": 1, "loss": 1.0}\n{"st\n{"step": 3, "loss": 0.5}\n')
    with pytest.raises(ValueError, match="line 2 is not a metrics record"):
        read_records(path, upto=10)


def test_resume_over_a_torn_metrics_file_rewrites_it(tmp_path, data):
    kwargs = dict(batch_size=16, out_dir=tmp_path, progress=False, log_every=2)
    fit(Regression(), data, steps=4, **kwargs)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 0.')  # a write killed half-way
    with pytest.warns(RuntimeWarning, match="torn last line"):
        history = fit(Regression(), data, steps=8, resume=True, **kwargs)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6, 8]
    assert [r["step"] for r in history.records] == [2, 4, 6, 8]


def test_stale_temporaries_are_removed_on_start(tmp_path, data):
    _trained(tmp_path, data)
    stale = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / ".metrics.jsonl.x1.tmp"]
    for path in stale:
        path.write_bytes(b"half a save")
    (tmp_path / "notes.tmp").write_text("a user's file")  # not one of ours: kept
    fit(Regression(), data, steps=6, batch_size=16, out_dir=tmp_path, resume=True,
        progress=False)
    assert not any(path.exists() for path in stale)
    assert (tmp_path / "notes.tmp").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_a_checkpoint_and_resume_matches_uninterrupted(tmp_path, data, signum):
    kwargs = dict(batch_size=16, progress=False, log_every=1, seed=3)
    torch.manual_seed(0)
    full = Regression()
    fit(full, data, steps=12, out_dir=tmp_path / "full", **kwargs)

    def send_signal(step, record):
        if step == 5:
            os.kill(os.getpid(), signum)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    torch.manual_seed(0)
    with pytest.raises(TrainingInterrupted) as e:  # no checkpoint_every: one is still written
        fit(Regression(), data, steps=12, out_dir=tmp_path / "cut", callbacks=send_signal,
            interruptible=True, **kwargs)
    assert e.value.step == 5 and e.value.signal == signum
    assert signal.Signals(signum).name in str(e.value)
    assert load_checkpoint(tmp_path / "cut")["step"] == 5
    # the handlers in place before fit (the default one, or SIG_IGN in a background job)
    assert {s: signal.getsignal(s) for s in before} == before
    resumed = Regression()
    fit(resumed, data, steps=12, out_dir=tmp_path / "cut", resume=True, **kwargs)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
