"""The trainer's accelerator options on CPU: bf16/fp16 autocast and the grad scaler,
torch.compile, channels-last, DataLoader workers and pinned copies; checkpoints across modes.

Tolerances: a compiled step computes the same float32 operations, fused (so the loss curve
agrees to rounding: 1e-4 relative over 20 steps). bf16 rounds every matrix product's inputs
to 8 significant bits (relative error up to 2**-8 = 0.4% per entry), and those errors feed
back through 20 Adam steps, so curves only agree loosely: within 5% at every step.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from probgen.data import toy_sample
from probgen.inference import MaximumLikelihood, NonFiniteLossError, fit, load_checkpoint
from probgen.inference.accel import MAX_SKIPPED_STEPS
from probgen.inference.batches import needs_pinning, to_device
from probgen.models import RealNVP

# Warnings torch.compile raises from its own code (a deprecated torch.jit helper at import;
# dynamo reading .grad of non-leaf tensors while tracing), not from probgen's.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated"
                               ":DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf"
                               ":UserWarning"),
]

MOONS = toy_sample("moons", 512, generator=torch.Generator().manual_seed(0))
STEPS = 20


def _flow_objective() -> MaximumLikelihood:
    torch.manual_seed(0)
    return MaximumLikelihood(RealNVP(2, transforms=4, hidden_features=[32, 32]))


def _curve(out_dir=None, objective=None, **kwargs) -> tuple[list[float], nn.Module]:
    objective = objective if objective is not None else _flow_objective()
    settings = dict(steps=STEPS, batch_size=64, lr=1e-2, progress=False, log_every=1)
    history = fit(objective, MOONS, out_dir=out_dir, **{**settings, **kwargs})
    return [r["loss"] for r in history.records if "loss" in r], objective


def _max_rel(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def _linear_output_dtypes(objective: nn.Module) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()
    for module in objective.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    return seen


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"precision": "fp8"}, r"precision: expected one of \['fp32', 'bf16', 'fp16'\], got 'fp8'"),
    ({"precision": None}, r"precision: expected one of .* got None"),
    ({"compile": "fast"}, r"compile: expected True, False or a torch.compile backend .* 'fast'"),
    ({"compile": 1}, r"compile: expected True, False .* got 1"),
    ({"channels_last": "yes"}, r"channels_last: expected True or False, got 'yes'"),
    ({"num_workers": -1}, r"num_workers: expected an int >= 0, got -1"),
    ({"num_workers": 2}, r"num_workers: DataLoader workers load a torch.utils.data.Dataset; "
                         r"data is tensor data"),
])
def test_bad_options_rejected_before_any_work(tmp_path, kwargs, match):
    objective = _flow_objective()
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        fit(objective, MOONS, steps=2, batch_size=8, out_dir=tmp_path / "run", progress=False,
            **kwargs)
    assert not (tmp_path / "run").exists()
    assert all(torch.equal(v, objective.state_dict()[k]) for k, v in before.items())


def test_bf16_autocasts_and_follows_the_fp32_curve():
    fp32, _ = _curve()
    objective = _flow_objective()
    dtypes = _linear_output_dtypes(objective)
    bf16, _ = _curve(objective=objective, precision="bf16")
    assert dtypes == {torch.bfloat16}  # the forward ran under autocast
    assert all(p.dtype == torch.float32 for p in objective.parameters())
    assert bf16 != fp32  # bf16 arithmetic, not a silent fp32 run
    assert _max_rel(bf16, fp32) < 0.05, (bf16, fp32)


def test_fp16_scaler_skips_overflows_and_resumes_exactly(tmp_path):
    """fp16 on CPU: the scaler's first scale (2**16) overflows the gradients, those steps
    are skipped (logged, not errors); the scale is checkpointed, so resuming continues the
    uninterrupted run bit for bit (a fresh scaler would skip again and diverge)."""
    full, _ = _curve(tmp_path / "a", precision="fp16")
    state = load_checkpoint(tmp_path / "a")
    assert state["precision"] == "fp16" and state["scaler"]["scale"] < 2.0**16
    records = [json for json in _records(tmp_path / "a") if "skipped" in json]
    assert records[0]["skipped"] == 1.0 and records[0]["grad_scale"] == 2.0**16
    assert any(r["skipped"] == 0.0 for r in records)
    _curve(tmp_path / "b", precision="fp16", steps=STEPS // 2)
    resumed, _ = _curve(tmp_path / "b", objective=_flow_objective(), precision="fp16",
                        resume=True)
    assert resumed == full
    b = load_checkpoint(tmp_path / "b")
    assert b["scaler"] == state["scaler"]
    assert all(torch.equal(v, b["objective"][k]) for k, v in state["objective"].items())
    fp32, _ = _curve()
    assert abs(full[-1] - fp32[-1]) / abs(fp32[-1]) < 0.1  # skipped steps shift the curve


def _records(run) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class NaNOutputAt(nn.Module):
    def __init__(self, bad_call: int) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)
        self.calls, self.bad_call = 0, bad_call

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        loss = (self.lin(x) - x).pow(2).mean()
        return {"loss": loss, "nll": loss * (float("nan") if self.calls >= self.bad_call else 1)}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_non_finite_output_still_stops_naming_step_and_term(precision):
    with pytest.raises(NonFiniteLossError, match=r"non-finite 'nll' = nan at step 4"):
        fit(NaNOutputAt(4), torch.randn(32, 1), steps=10, batch_size=8, progress=False,
            precision=precision)


class NaNGradient(nn.Module):
    """A finite loss whose gradient is NaN at every step (no scale can make it finite)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        w = torch.where(torch.tensor(True), self.w, torch.sqrt(-1 - self.w.pow(2)))
        return {"loss": (w - x).pow(2).mean()}


def test_fp16_gradient_nan_at_every_scale_stops():
    with pytest.raises(NonFiniteLossError, match=rf"'grad_norm' = nan at step "
                                                 rf"{MAX_SKIPPED_STEPS}\b") as e:
        fit(NaNGradient(), torch.randn(32, 1), steps=100, batch_size=8, progress=False,
            precision="fp16")
    assert e.value.step == MAX_SKIPPED_STEPS


def test_compiled_curve_matches_eager():
    """torch.compile's default backend (inductor, C++ on CPU): same curve to 1e-4."""
    eager, _ = _curve()
    compiled, objective = _curve(compile=True)
    assert _max_rel(compiled, eager) < 1e-4, (compiled, eager)
    assert not any(k.startswith("_orig_mod") for k in objective.state_dict())


@pytest.mark.parametrize("first", ["compiled", "eager"])
def test_checkpoints_resume_across_compiled_and_eager(tmp_path, first):
    """Half a run in one mode, the rest in the other: the checkpoint's keys have no
    ``_orig_mod.`` prefix and the result equals an eager run (the ``aot_eager`` backend
    traces through dynamo and AOTAutograd without fusing, so the numbers are the same)."""
    eager, reference = _curve()
    modes = {"compiled": {"compile": "aot_eager"}, "eager": {}}
    second = "eager" if first == "compiled" else "compiled"
    _curve(tmp_path, steps=STEPS // 2, **modes[first])
    keys = set(load_checkpoint(tmp_path)["objective"])
    assert keys == set(reference.state_dict())
    resumed, objective = _curve(tmp_path, objective=_flow_objective(), resume=True,
                                **modes[second])
    assert _max_rel(resumed, eager) < 1e-6
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(objective.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_precompiled_objective_saves_plain_keys(tmp_path):
    objective = _flow_objective()
    _curve(tmp_path, objective=torch.compile(objective, backend="aot_eager"), steps=3)
    assert set(load_checkpoint(tmp_path)["objective"]) == set(objective.state_dict())


def test_resume_across_precisions(tmp_path):
    """fp32 -> bf16 -> fp16 -> fp32 in one run folder: each resume takes the weights and
    optimizer; the scaler starts fresh when the checkpoint has none and is dropped after."""
    _curve(tmp_path, steps=5)
    _curve(tmp_path, objective=_flow_objective(), steps=10, resume=True, precision="bf16")
    assert load_checkpoint(tmp_path)["scaler"] is None
    _curve(tmp_path, objective=_flow_objective(), steps=15, resume=True, precision="fp16")
    assert load_checkpoint(tmp_path)["scaler"]["scale"] <= 2.0**16
    curve, _ = _curve(tmp_path, objective=_flow_objective(), steps=20, resume=True)
    state = load_checkpoint(tmp_path)
    assert state["step"] == 20 and state["precision"] == "fp32" and state["scaler"] is None
    assert len(curve) == 20 and all(torch.isfinite(torch.tensor(curve)))


def test_compile_refuses_multi_player_objectives():
    class Players(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.zeros(1))

        def training_step(self, x, step, update):
            loss = (x.mean() - self.a).pow(2).sum()
            update("main", loss)
            return {"loss": loss.detach()}

    with pytest.raises(ValueError, match="compile: the objective defines training_step"):
        fit(Players(), torch.randn(8, 1), steps=1, batch_size=4, progress=False, compile=True)


def test_compile_failure_says_so_on_the_first_step():
    class ReLUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return {"loss": torch.relu(self.lin(x)).pow(2).mean()}

    with pytest.raises(RuntimeError, match=r"compile: torch.compile \(backend "
                                           r"'relu_compile_error_TESTING_ONLY'\) failed on the "
                                           r"first training step .*compile=False"):
        fit(ReLUNet(), torch.randn(16, 2), steps=2, batch_size=4, progress=False,
            compile="relu_compile_error_TESTING_ONLY")


class ConvDenoiser(nn.Module):
    """A tiny convolutional objective that records the memory format of its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.channels_last: list[bool] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last))
        return {"loss": (self.conv(x) - x).pow(2).mean()}


def test_channels_last_converts_weights_and_batches():
    images = torch.randn(32, 2, 6, 6)
    torch.manual_seed(0)
    plain = ConvDenoiser()
    torch.manual_seed(0)
    fast = ConvDenoiser()
    a = fit(plain, images, steps=10, batch_size=8, progress=False, log_every=1)
    b = fit(fast, images, steps=10, batch_size=8, progress=False, log_every=1,
            channels_last=True)
    assert fast.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(fast.channels_last) and not any(plain.channels_last)
    la, lb = ([r["loss"] for r in h.records] for h in (a, b))
    assert _max_rel(lb, la) < 1e-5


def test_channels_last_warns_without_conv_weights():
    with pytest.warns(RuntimeWarning, match="channels_last: the objective has no 4-D"):
        fit(_flow_objective(), MOONS, steps=1, batch_size=8, progress=False,
            channels_last=True)


class Rows(Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def test_dataloader_workers_give_the_same_run_and_resume_exactly(tmp_path):
    data = Rows(MOONS[:100])  # 20 steps x 16 cross several shuffled epochs
    kwargs = dict(steps=20, batch_size=16, lr=1e-2, progress=False, log_every=1)
    torch.manual_seed(0)
    serial = MaximumLikelihood(RealNVP(2, transforms=2, hidden_features=[16]))
    init = {k: v.clone() for k, v in serial.state_dict().items()}
    a = fit(serial, data, **kwargs)
    workers = MaximumLikelihood(RealNVP(2, transforms=2, hidden_features=[16]))
    workers.load_state_dict(init)
    b = fit(workers, data, num_workers=2, out_dir=tmp_path, **{**kwargs, "steps": 9})
    workers2 = MaximumLikelihood(RealNVP(2, transforms=2, hidden_features=[16]))
    c = fit(workers2, data, num_workers=2, out_dir=tmp_path, resume=True, **kwargs)
    assert [r["loss"] for r in a.records] == [r["loss"] for r in c.records]
    assert [r["loss"] for r in b.records] == [r["loss"] for r in a.records][:9]
    for key, value in serial.state_dict().items():
        assert torch.equal(value, workers2.state_dict()[key]), key


def test_pinning_only_for_cpu_tensors_bound_for_cuda():
    x = torch.randn(4, 2)
    assert needs_pinning(x, torch.device("cuda"))
    assert needs_pinning(x, torch.device("cuda:1"))
    assert not needs_pinning(x, torch.device("cpu"))
    batch = (x, {"y": x})
    moved = to_device(batch, torch.device("cpu"))
    assert moved[0] is x and moved[1]["y"] is x  # no copy on CPU


@pytest.mark.parametrize("name", ["RealNVP", "MAF"])
def test_flow_likelihood_compiles_to_one_graph(name):
    """No graph break in a flow's maximum-likelihood forward (a break splits the compiled
    code and loses the fusion across it): data checks are skipped while tracing and the
    transforms' cache reset walks the modules without hashing them."""
    from probgen import models

    objective = MaximumLikelihood(getattr(models, name)(2, transforms=2, hidden_features=[8]))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(objective)(MOONS[:16])
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


class TwoPlayers(nn.Module):
    """Two players, each with its own optimizer (a GAN-shaped toy) and a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(1, 1)
        self.b = nn.Linear(1, 1)
        self.dtypes: list[torch.dtype] = []

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"first": list(self.a.parameters()), "second": list(self.b.parameters())}

    def training_step(self, x, step, update):
        out_a = self.a(x)
        self.dtypes.append(out_a.dtype)
        loss_a = (out_a - 2 * x).pow(2).mean()
        update("first", loss_a)
        loss_b = (self.b(x) - self.a(x).detach()).pow(2).mean()
        update("second", loss_b)
        return {"loss": loss_a.detach() + loss_b.detach()}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_multi_player_objectives_train_in_mixed_precision(precision):
    """A training_step runs under autocast; with fp16 each player's update is scaled and
    skipped on its own (keys suffixed by the player's name)."""
    objective = TwoPlayers()
    history = fit(objective, torch.randn(64, 1), steps=300, batch_size=16, lr=0.05,
                  log_every=50, progress=False, precision=precision)
    expected = torch.bfloat16 if precision == "bf16" else torch.float16
    assert set(objective.dtypes) == {expected}
    assert objective.a.weight.item() == pytest.approx(2.0, abs=0.05)
    assert objective.b.weight.item() == pytest.approx(2.0, abs=0.1)
    if precision == "fp16":
        first = history.records[0]
        assert {"skipped/first", "skipped/second", "grad_scale/first"} <= set(first)
        assert history.final["skipped/first"] == 0.0
