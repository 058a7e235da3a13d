"""The trainer: MLE reaches the analytic optimum, exact resume, NaN stop, checkpoints, EMA."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from probgen.inference import (
    EMA,
    History,
    LRSchedule,
    MaximumLikelihood,
    NonFiniteLossError,
    fit,
    load_checkpoint,
)


class DiagGaussian(nn.Module):
    """A learnable diagonal Gaussian density (the DensityModel protocol, minimal)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def distribution(self, context=None):
        base = torch.distributions.Normal(self.loc, self.log_scale.exp())
        return torch.distributions.Independent(base, 1)

    def log_prob(self, x, context=None):
        return self.distribution().log_prob(x)

    def sample(self, shape=(), context=None):
        return self.distribution().sample(shape)

    def rsample_and_log_prob(self, shape=(), context=None):
        d = self.distribution()
        x = d.rsample(shape)
        return x, d.log_prob(x)


class Noisy(nn.Module):
    """An objective with model-internal randomness (global RNG), as dequantization has."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, x):
        noisy = x + 0.1 * torch.randn_like(x)
        return {"loss": ((self.net(noisy) - x) ** 2).mean(), "aux": noisy.abs().mean()}


class NaNAt(nn.Module):
    """Returns a NaN ``nll`` from a given call on."""

    def __init__(self, bad_call: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.calls, self.bad_call = 0, bad_call

    def forward(self, x):
        self.calls += 1
        loss = ((x - self.w) ** 2).mean()
        nll = loss * (math.nan if self.calls >= self.bad_call else 1.0)
        return {"loss": loss, "nll": nll}


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture
def gauss_data():
    g = torch.Generator().manual_seed(1)
    return 3.0 + 2.0 * torch.randn(512, 1, generator=g)


def test_mle_reaches_sample_mean_and_std(gauss_data):
    model = DiagGaussian(1)
    history = fit(MaximumLikelihood(model), gauss_data, steps=300, batch_size=512, lr=0.2,
                  lr_schedule="cosine", progress=False, log_every=50)
    assert isinstance(history, History)
    assert abs(model.loc.item() - float(gauss_data.mean())) < 1e-3
    std = float(gauss_data.std(unbiased=False))
    assert abs(model.log_scale.exp().item() - std) < 1e-3
    # The NLL reached is the closed-form minimum 0.5 log(2 pi e sigma^2).
    assert history.final["nll"] == pytest.approx(0.5 * math.log(2 * math.pi * math.e * std**2),
                                                 abs=1e-4)


class Crash(Exception):
    pass


@pytest.mark.parametrize("interruption", ["stopped", "crashed"])
def test_exact_resume_bit_for_bit(tmp_path, interruption):
    """2N steps in one go == N steps, then resume to 2N: identical weights, EMA and logs."""
    data = torch.randn(100, 2)  # 30 steps x 16 cross several shuffled epochs
    kwargs = dict(steps=30, batch_size=16, lr=0.01, grad_clip=1.0, ema_decay=0.9,
                  eval_data=data[:20], eval_every=7, progress=False, log_every=5, seed=3)
    if interruption == "crashed":  # the schedule depends on `steps`: the same run, killed
        kwargs.update(lr_schedule="cosine", warmup_steps=5, checkpoint_every=5)
    torch.manual_seed(0)
    full = Noisy()
    init = _params(full)
    fit(full, data, out_dir=tmp_path / "a", **kwargs)

    part = Noisy()
    part.load_state_dict(init)
    if interruption == "stopped":
        fit(part, data, out_dir=tmp_path / "b", **{**kwargs, "steps": 15})
    else:
        def crash(step, record):
            if step == 20:  # raised while logging, before the checkpoint of step 20
                raise Crash

        with pytest.raises(Crash):
            fit(part, data, out_dir=tmp_path / "b", callbacks=crash, **kwargs)
        assert load_checkpoint(tmp_path / "b")["step"] == 15
    torch.manual_seed(123)  # the global RNG is restored from the checkpoint, not this
    resumed = Noisy()  # fresh weights: everything comes from the checkpoint
    history = fit(resumed, data, out_dir=tmp_path / "b", resume=True, **kwargs)
    for key, value in _params(full).items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for key, value in a["ema"]["shadow"].items():
        assert torch.equal(value, b["ema"]["shadow"][key])
    assert a["step"] == b["step"] == 30
    # The resumed history holds the records before the interruption, none twice.
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    steps = [r["step"] for r in map(json.loads, lines) if "loss" in r]
    assert steps == [r["step"] for r in history.records if "loss" in r] == [5, 10, 15, 20, 25, 30]
    train_a = [r["loss"] for r in history.records if "loss" in r]
    lines_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    train_b = [json.loads(line).get("loss") for line in lines_a]
    assert train_a == [v for v in train_b if v is not None]


def test_resume_past_the_end_does_nothing(tmp_path):
    data = torch.randn(32, 2)
    model = Noisy()
    fit(model, data, steps=3, batch_size=8, out_dir=tmp_path, progress=False)
    before = _params(model)
    fit(model, data, steps=3, batch_size=8, out_dir=tmp_path, resume=True, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_checkpoint_layout_and_weights_only(tmp_path):
    data = torch.randn(64, 2)
    fit(Noisy(), data, steps=5, batch_size=8, out_dir=tmp_path, ema_decay=0.5,
        config={"model": {"name": "x"}, "path": tmp_path}, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(state) == {"format", "step", "objective", "optimizers", "scheduler", "ema", "rng",
                          "config", "world_size", "elapsed", "precision", "scaler", "threads"}
    assert state["precision"] == "fp32" and state["scaler"] is None
    assert state["threads"] == 1  # measured by fit(threads="auto"): one-thread process
    assert set(state["rng"]) >= {"torch", "cuda", "data"}
    assert state["step"] == 5 and state["config"]["path"] == str(tmp_path)
    assert set(state["optimizers"]) == {"main"}
    restored = Noisy()
    restored.load_state_dict(load_checkpoint(tmp_path)["objective"])
    EMA.copy_state_to(state["ema"], restored)
    assert torch.equal(restored.net[0].weight, state["ema"]["shadow"]["net.0.weight"])


def test_nan_stops_with_step_and_term_and_keeps_last_checkpoint(tmp_path):
    data = torch.randn(64, 1)
    objective = NaNAt(bad_call=7)
    with pytest.raises(NonFiniteLossError, match=r"'nll'.*step 7.*step 6 is left intact") as e:
        fit(objective, data, steps=10, batch_size=8, out_dir=tmp_path, checkpoint_every=3,
            log_every=1, progress=False)
    assert e.value.step == 7 and e.value.term == "nll" and e.value.last_checkpoint == 6
    state = load_checkpoint(tmp_path)
    assert state["step"] == 6 and torch.isfinite(state["objective"]["w"]).all()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_nan_before_any_checkpoint_writes_none(tmp_path):
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written"):
        fit(NaNAt(bad_call=1), torch.randn(8, 1), steps=3, batch_size=4, out_dir=tmp_path,
            progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_ema_matches_hand_computed(tmp_path):
    objective = MaximumLikelihood(DiagGaussian(1))
    start = objective.model.loc.detach().clone()
    trace = []

    def record(step, r):
        trace.append(objective.model.loc.detach().clone())

    decay = 0.8
    fit(objective, torch.randn(16, 1), steps=4, batch_size=16, lr=0.1, ema_decay=decay,
        log_every=1, callbacks=record, out_dir=tmp_path, progress=False)
    expected = start
    for value in trace:
        expected = decay * expected + (1 - decay) * value
    assert len(trace) == 4 and not torch.allclose(expected, trace[-1])
    shadow = load_checkpoint(tmp_path)["ema"]["shadow"]["model.loc"]
    assert torch.allclose(shadow, expected, atol=1e-6)


def test_lr_schedule_values():
    assert [LRSchedule("linear", 10, 0)(s) for s in (0, 5)] == [1.0, 0.5]
    cos = LRSchedule("cosine", 10, 2)
    assert [cos(0), cos(1)] == [0.5, 1.0] and cos(6) == pytest.approx(0.5)
    assert LRSchedule(None, 10, 4)(1) == 0.5 and LRSchedule("constant", 10)(9) == 1.0
    model = Noisy()
    history = fit(model, torch.randn(32, 2), steps=10, batch_size=8, lr=0.1,
                  lr_schedule="linear", warmup_steps=2, log_every=1, progress=False)
    assert history.values("lr") == pytest.approx([0.05, 0.1] + [0.1 * (1 - k / 8)
                                                                  for k in range(8)])


def test_metrics_jsonl_lines_parse(tmp_path):
    data = torch.randn(64, 2)
    fit(Noisy(), data, steps=6, batch_size=8, out_dir=tmp_path, log_every=2, eval_data=data,
        eval_every=3, progress=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6] and [r["step"] for r in evals] == [3, 6]
    assert set(train[0]) == {"step", "time", "loss", "aux", "lr", "grad_norm"}
    assert all(isinstance(v, (int, float)) for r in records for v in r.values())


def test_grad_clip_caps_the_norm():
    class Steep(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return {"loss": 100.0 * (x @ self.w).mean()}

    model = Steep()
    x = torch.ones(8, 3)
    history = fit(model, x, steps=1, batch_size=8, optimizer="sgd", lr=1.0, grad_clip=0.5,
                  progress=False)
    assert history.final["grad_norm"] == pytest.approx(100.0 * math.sqrt(3))
    assert model.w.norm().item() == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(optimizer="lbfgs"), ValueError, r"optimizer: expected one of \['adam', 'adamw'"),
        (dict(lr_schedule="step"), ValueError, "lr_schedule: expected one of"),
        (dict(steps=0), ValueError, "steps: expected a positive int, got 0"),
        (dict(batch_size=2.5), ValueError, "batch_size: expected a positive int"),
        (dict(grad_clip=-1.0), ValueError, "grad_clip"),
        (dict(ema_decay=1.0), ValueError, r"ema_decay: expected a float in \[0, 1\)"),
        (dict(eval_every=5), ValueError, "eval_data is None"),
        (dict(resume=True), ValueError, "resume: needs out_dir"),
        (dict(warmup_steps=20), ValueError, "warmup_steps"),
        (dict(device="tpu"), ValueError, "device"),
        (dict(data="moons"), TypeError, "data: expected a Tensor"),
        (dict(eval_data=lambda n: n), TypeError, "eval_data: expected a Tensor"),
        (dict(objective=lambda x: x), TypeError, "objective: expected an nn.Module"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    call = dict(objective=Noisy(), data=torch.randn(8, 2), steps=10, batch_size=4,
                progress=False)
    call.update(kwargs)
    with pytest.raises(error, match=match):
        fit(call.pop("objective"), call.pop("data"), **call)


def test_bad_objective_output():
    class NoLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return {"nll": (x * self.w).sum()}

    with pytest.raises(TypeError, match="no 'loss' entry"):
        fit(NoLoss(), torch.randn(4, 1), steps=1, batch_size=2, progress=False)


def test_data_forms_sampler_dataset_tuple_and_none():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            seen.append(batch)
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = torch.ones(batch, 1) if isinstance(batch, int) else x
            return {"loss": ((x - self.w) ** 2).mean()}

    def sampler(n, generator=None):
        return torch.randn(n, 1, generator=generator)

    dataset = torch.utils.data.TensorDataset(torch.randn(10, 1), torch.arange(10))
    for data in (sampler, dataset, (torch.randn(10, 1), torch.arange(10)), None):
        seen.clear()
        fit(Probe(), data, steps=2, batch_size=4, progress=False)
        first = seen[0]
        if data is None:
            assert first == 4
        elif callable(data):
            assert first.shape == (4, 1)
        else:
            assert isinstance(first, (tuple, list)) and first[1].shape == (4,)
    # Shuffled epochs: 10 examples, batches of 4 -> every example seen once per epoch.
    seen.clear()
    fit(Probe(), (torch.randn(10, 1), torch.arange(10)), steps=5, batch_size=4, progress=False)
    order = torch.cat([b[1] for b in seen])
    assert sorted(order[:10].tolist()) == list(range(10))


def test_multi_player_training_step():
    class TwoPlayers(nn.Module):
        """Alternates two players, each with its own optimizer (a GAN-shaped toy)."""

        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.zeros(1))
            self.b = nn.Parameter(torch.zeros(1))
            self.order = []

        def parameter_groups(self):
            return {"first": [self.a], "second": [self.b]}

        def training_step(self, x, step, update):
            loss_a = ((x.mean() - self.a) ** 2).sum()
            update("first", loss_a)
            self.order.append("first")
            loss_b = ((self.a.detach() - self.b) ** 2).sum()
            update("second", loss_b)
            self.order.append("second")
            return {"loss": loss_a.detach() + loss_b.detach(), "loss_b": loss_b.detach()}

        def forward(self, x):
            return {"loss": ((x.mean() - self.a) ** 2).sum()}

    objective = TwoPlayers()
    history = fit(objective, torch.full((8, 1), 2.0), steps=300, batch_size=8, lr=0.05,
                  log_every=100, progress=False)
    assert objective.order[:4] == ["first", "second", "first", "second"]
    assert objective.a.item() == pytest.approx(2.0, abs=1e-2)
    assert objective.b.item() == pytest.approx(2.0, abs=5e-2)
    assert {"grad_norm/first", "grad_norm/second"} <= set(history.final)


class NaNGradAt(nn.Module):
    """Finite loss every call, but a NaN gradient on call ``bad_call`` (1-based)."""

    def __init__(self, bad_call: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.bad_call, self.calls = bad_call, 0

    def forward(self, x):
        self.calls += 1
        w = self.w
        if self.calls == self.bad_call:
            # forward picks w (finite); backward sends 0 * d sqrt(-1 - w^2) = NaN into w.grad
            w = torch.where(torch.tensor(True), w, torch.sqrt(-1 - w.pow(2)))
        return {"loss": (w - x).pow(2).mean()}


@pytest.mark.parametrize("bad_call", [4, 6])
def test_nan_gradient_never_reaches_a_checkpoint(tmp_path, bad_call):
    """A finite loss with a NaN gradient: at a checkpoint step (6) it is caught before the
    update; between checkpoints (4) the corrupted weights make the next loss non-finite.
    Either way the checkpoint on disk holds finite weights from before the bad update."""
    objective = NaNGradAt(bad_call)
    with pytest.raises(NonFiniteLossError) as e:
        fit(objective, torch.randn(64, 1), steps=12, batch_size=8, out_dir=tmp_path,
            checkpoint_every=3, log_every=3, lr=0.1, progress=False)
    assert e.value.step == (6 if bad_call == 6 else 5)
    assert e.value.term == ("grad_norm" if bad_call == 6 else "loss")
    state = load_checkpoint(tmp_path)
    assert state["step"] == 3 and torch.isfinite(state["objective"]["w"]).all()
