"""The model contract, checked on every entry of ``probgen.models.MODELS``.

Each registered model is built small from its run configuration in
``probgen.models.EXAMPLES`` (through the run layer's ``build_data``/``build_model``/
``build_objective``/``build_sampler``, as ``probgen fit`` builds it) and must:

- survive a ``state_dict`` round trip through a file loaded with ``weights_only=True``
  (identical losses, log-densities and seeded samples afterwards);
- work in float64 after ``.to(torch.float64)``, its losses and log-densities moving by no
  more than float32 rounding (the same random draws are fed to both precisions);
- give every parameter a finite gradient from its training objective (every player of a
  multi-player objective, every stage of a staged one);
- sample reproducibly from a seeded ``torch.Generator``, whatever the global RNG does;
- refuse a wrong-shape input with a ``ValueError`` that names the expected shape;
- train for a few steps through ``fit``;
- run on every available device (CPU always, CUDA and MPS where torch sees them): moved
  with ``.to(device)``, its outputs live on that device;
- create no tensor off its input's device: with ``"meta"`` as torch's default device,
  losses, log-densities and samples of a CPU model still come out on the CPU (a tensor made
  without ``device=`` would be a meta tensor, as it would be a CPU one beside a CUDA model).

A new model is covered by registering it in ``MODELS`` and ``EXAMPLES``.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from probgen.inference import fit
from probgen.inference.batches import BatchSource
from probgen.models import EXAMPLES, MODELS
from probgen.run.experiment import build_data, build_model, build_objective, build_sampler
from probgen.utils import atomic_torch_save

NAMES = sorted(EXAMPLES)  # every registered model, plus network variants
BATCH = 8
# Every device torch can run here; test ids read e.g. [cpu-RealNVP], [cuda-RealNVP].
DEVICES = ["cpu"] + [d for d, up in (("cuda", torch.cuda.is_available()),
                                      ("mps", torch.backends.mps.is_available())) if up]


def _model_name(key: str) -> str:
    return EXAMPLES[key]["model"].get("name", key)


def test_every_registered_model_has_an_example():
    missing = sorted(set(MODELS) - set(EXAMPLES))
    stale = sorted(k for k in EXAMPLES if _model_name(k) not in MODELS)
    assert not missing, f"add a small run configuration to probgen.models.EXAMPLES for {missing}"
    assert not stale, f"EXAMPLES names models that are not registered: {stale}"


# ------------------------------------------------------------------------------ helpers
def _config(name: str) -> dict:
    example = copy.deepcopy(EXAMPLES[name])
    config = {"data": example["data"], "model": {"name": name, **example["model"]}}
    config["model"]["name"] = _model_name(name)
    for section in ("objective", "sample"):
        if section in example:
            config[section] = example[section]
    return config


def _build(name: str, seed: int = 0, device: str = "cpu"):
    config = _config(name)
    torch.manual_seed(seed)
    data = build_data(config)
    model = build_model(config, data)
    objective = build_objective(config, model, data).to(device)
    return config, data, model, objective


def _batch(data, seed: int = 0, device: str = "cpu"):
    batch = BatchSource(data.train, BATCH, torch.Generator().manual_seed(seed)).next()
    return tree_map(lambda t: t.to(device) if isinstance(t, Tensor) else t, batch)


def _device(module) -> torch.device:
    return next(t for t in (*module.parameters(), *module.buffers())).device


def _on(t: Tensor, device: torch.device | str) -> bool:
    return t.device.type == torch.device(device).type


def _x(batch) -> Tensor:
    return batch[0] if isinstance(batch, tuple | list) else batch


def _model_space(data, x: Tensor) -> Tensor:
    """``x`` as the model sees it: images through the run's preprocessing (bin centres)."""
    pre = data.preprocess
    if pre is None or not hasattr(pre, "to_model"):  # toy points, discrete pixels
        return x
    return pre(x.cpu(), dequantize=False)[0].to(x.device)


def _log_prob(config: dict, model, x: Tensor) -> Tensor | None:
    if not callable(getattr(model, "log_prob", None)):
        return None
    torch.manual_seed(0)  # a Hutchinson probe, if any, is the same for every call
    return model.log_prob(x, **EXAMPLES[config["model"]["name"]].get("log_prob", {}))


def _losses(objective, batch, seed: int) -> dict[str, Tensor]:
    torch.manual_seed(seed)
    out = objective(batch)
    return {k: v.detach() for k, v in out.items() if isinstance(v, Tensor) and v.numel() == 1}


def _sample(config, model, objective, data, seed: int) -> Tensor:
    sampler = build_sampler(config, model, objective, data)
    generator = torch.Generator(_device(model)).manual_seed(seed)
    return sampler.sample((3,), generator=generator)


def _outputs(config, data, model, objective) -> dict[str, Tensor]:
    batch = _batch(data, device=_device(model))
    out = {f"loss/{k}": v for k, v in _losses(objective, batch, seed=1).items()}
    with torch.no_grad():
        lp = _log_prob(config, model, _model_space(data, _x(batch)))
    if lp is not None:
        out["log_prob"] = lp
    out["sample"] = _sample(config, model, objective, data, seed=2)
    return out


def _to(batch, dtype: torch.dtype):
    return tree_map(lambda t: t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point()
                    else t, batch)


class _Float32Randomness(TorchDispatchMode):
    """Makes every random float64 draw as float32 and widens it.

    torch's float64 samplers consume the generator's stream differently from float32 ones, so
    a float64 copy of a model would otherwise see other noise than the float32 original;
    with this mode both see the same draws, and their losses differ by rounding only.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if torch.Tag.nondeterministic_seeded not in func.tags:
            return func(*args, **kwargs)

        def narrow(a):
            if isinstance(a, Tensor) and a.dtype == torch.float64:
                return a.float()
            return torch.float32 if a is torch.float64 else a

        n_args, n_kwargs = tree_map(narrow, args), tree_map(narrow, kwargs)
        if all(a is b for a, b in zip(tree_flatten((n_args, n_kwargs))[0],
                                      tree_flatten((args, kwargs))[0], strict=True)):
            return func(*args, **kwargs)
        out = func(*n_args, **n_kwargs)
        written = [i for i, a in enumerate(func._schema.arguments)
                   if a.alias_info is not None and a.alias_info.is_write]
        if written:  # in-place or out= variants: write the draws into the float64 tensors
            originals = [args[i] if i < len(args) else kwargs[func._schema.arguments[i].name]
                         for i in written]
            narrowed = [n_args[i] if i < len(n_args)
                        else n_kwargs[func._schema.arguments[i].name] for i in written]
            for original, draw in zip(originals, narrowed, strict=True):
                original.copy_(draw)
            return originals[0]
        return tree_map(lambda t: t.double() if isinstance(t, Tensor) and t.dtype == torch.float32
                        else t, out)


# ------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_checkpoint_round_trip_gives_identical_outputs(device, name, tmp_path):
    config, data, model, objective = _build(name, seed=0, device=device)
    # A short fit first: the weights leave their initialization and data-dependent state
    # (ActNorm's initialization, EMA codebooks, ...) is set, as in a real checkpoint.
    history = fit(objective, data.train, steps=3, batch_size=BATCH, log_every=1,
                  progress=False, device=device)
    assert len(history.records) >= 3
    # The objective's state holds the model's (and e.g. an annealing schedule's position):
    # it is what fit checkpoints.
    state = objective.state_dict()
    held = {t.data_ptr() for t in state.values()}
    assert all(t.data_ptr() in held for t in model.state_dict().values()), (
        f"{name}: the objective's state lacks some of the model's")
    path = atomic_torch_save(state, tmp_path / "objective.pt")
    _, _, fresh, fresh_objective = _build(name, seed=1, device=device)
    fresh_objective.load_state_dict(torch.load(path, weights_only=True, map_location=device))
    objective.train(), fresh_objective.train()
    expected = _outputs(config, data, model, objective)
    got = _outputs(config, data, fresh, fresh_objective)
    assert expected.keys() == got.keys()
    for key in expected:  # the same computation on the same machine: bit for bit
        assert _on(expected[key], device), f"{name}: {key} is on {expected[key].device}"
        assert torch.equal(expected[key], got[key]), f"{name}: {key} differs after loading"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_float64_changes_losses_by_float32_rounding_only(device, name):
    if device == "mps":
        pytest.skip("MPS has no float64")
    config, data, model, objective = _build(name, device=device)
    objective.train()
    batch = _batch(data, device=device)
    objective64 = copy.deepcopy(objective).to(torch.float64)
    model64 = next(m for m in objective64.modules() if type(m) is type(model))
    assert all(p.dtype == torch.float64 for p in model64.parameters())
    with _Float32Randomness():
        low = _losses(objective, batch, seed=3)
        high = _losses(objective64, _to(batch, torch.float64), seed=3)
    assert low.keys() == high.keys() and "loss" in high
    assert high["loss"].dtype == torch.float64, f"{name}: the loss is {high['loss'].dtype}"
    assert _on(high["loss"], device), f"{name}: the loss is on {high['loss'].device}"
    for key in low:
        torch.testing.assert_close(low[key].double(), high[key].double(), rtol=1e-4, atol=1e-4,
                                   msg=lambda m, k=key: f"{name}: loss term {k!r}: {m}")
    x = _model_space(data, _x(batch))
    with torch.no_grad():
        lp32 = _log_prob(config, model, x)
        lp64 = _log_prob(config, model64, x.double())
    if lp32 is not None:
        assert lp64.dtype == torch.float64
        torch.testing.assert_close(lp32.double(), lp64, rtol=1e-4, atol=1e-3)
    with torch.no_grad():
        x64 = _sample(config, model64, objective64, data, seed=4)
    assert x64.dtype == torch.float64 and torch.isfinite(x64).all() and _on(x64, device)


class _RecordingUpdate:
    """Stands in for the trainer's ``update(name, loss)``: backward only, and notes which
    parameters received a gradient."""

    def __init__(self, objective) -> None:
        self.objective = objective
        self.reached: set[str] = set()
        self.names = {id(p): n for n, p in objective.named_parameters()}
        self.step = 0

    def __call__(self, name: str, loss: Tensor, *, retain_graph: bool = False) -> None:
        self.objective.zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
        for p in self.objective.parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), f"non-finite gradient of {self.names[id(p)]}"
                self.reached.add(self.names[id(p)])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_training_objective_reaches_every_parameter(device, name):
    _, data, model, objective = _build(name, device=device)
    objective.train()
    update = _RecordingUpdate(objective)
    if hasattr(objective, "training_step"):  # several players or stages: run a few steps
        for step in range(1, 5):
            update.step = step
            objective.training_step(_batch(data, seed=step, device=device), step, update)
    else:
        update("main", objective(_batch(data, device=device))["loss"])
    prefix = {id(p): n for n, p in objective.named_parameters()}
    missing = [prefix[id(p)] for p in model.parameters()
               if p.requires_grad and prefix[id(p)] not in update.reached]
    assert not missing, f"{name}: no gradient reaches {missing}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_seeded_sampling_is_reproducible(device, name):
    config, data, model, objective = _build(name, device=device)
    objective.eval()
    with torch.no_grad():
        a = _sample(config, model, objective, data, seed=5)
        torch.rand(7)  # the global RNG moves on: it must not matter
        b = _sample(config, model, objective, data, seed=5)
        c = _sample(config, model, objective, data, seed=6)
    assert a.shape[0] == 3 and torch.isfinite(a).all() and _on(a, device)
    assert torch.equal(a, b), f"{name}: the same generator seed gave different samples"
    assert not torch.equal(a, c), f"{name}: different seeds gave the same samples"


def _wrong_shape(x: Tensor) -> Tensor:
    """``x`` with a wrong event shape: one more feature for vectors, one row and column
    fewer for images."""
    if x.dim() == 2:
        return torch.cat([x, x[:, :1]], dim=1)
    return x[..., :-1, :-1].contiguous()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_wrong_shape_input_is_a_value_error_naming_the_expected_shape(device, name):
    config, data, model, objective = _build(name, device=device)
    batch = _batch(data, device=device)
    x = _x(batch)
    bad = _wrong_shape(x)
    bad_batch = (bad, *batch[1:]) if isinstance(batch, tuple | list) else bad
    dims = ", ".join(map(str, data.event_shape))
    named = rf"(\({dims},?\)|, {dims}\))"  # (1, 8, 8) / (..., 2) / (N, 1, 8, 8) / (2,)
    with pytest.raises(ValueError, match=named):
        objective(bad_batch)
    if callable(getattr(model, "log_prob", None)):
        wrong = _wrong_shape(_model_space(data, x))
        with pytest.raises(ValueError, match=rf"(\({re.escape(dims)},?\)|, {dims}\))"):
            _log_prob(config, model, wrong)


class _MetaByDefault(TorchFunctionMode):
    """``with torch.device("meta")``, except where a default device changes nothing on a
    real machine: ``torch.tensor``/``as_tensor``/``asarray`` of data holding a tensor keep
    its device. Tensors of Python numbers made without a device become meta tensors (a CPU
    tensor beside a CUDA model), so host-side tables must say ``device="cpu"``."""

    _CONVERT = (torch.tensor, torch.as_tensor, torch.asarray)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func not in _device_constructors() or kwargs.get("device") is not None:
            return func(*args, **kwargs)
        if func in self._CONVERT:
            data = args[0] if args else kwargs.get("data")
            if any(isinstance(a, Tensor) for a in tree_flatten(data)[0]):
                return func(*args, **kwargs)
            return func(*args, **kwargs).to("meta")
        return func(*args, **{**kwargs, "device": "meta"})


@pytest.mark.parametrize("name", NAMES)
def test_no_tensor_is_made_off_the_input_device(name):
    """A second device, emulated: under :class:`_MetaByDefault` every tensor made without
    an explicit device (``torch.zeros(n)``, ``torch.tensor(v)``, ...) is a meta tensor, so
    a model that makes one on its sampling, log-density or loss path fails here (meta and
    CPU tensors do not mix) or returns meta tensors, as it would give CPU tensors beside a
    CUDA model's."""
    config, data, model, objective = _build(name)
    objective.eval()
    batch = _batch(data)
    x = _model_space(data, _x(batch))
    sampler = build_sampler(config, model, objective, data)
    generator = torch.Generator().manual_seed(0)
    with _MetaByDefault(), torch.no_grad():
        torch.manual_seed(0)
        outputs = {"loss": objective(batch)["loss"], "sample": sampler.sample((3,),
                                                                            generator=generator)}
        lp = _log_prob(config, model, x)
    if lp is not None:
        outputs["log_prob"] = lp
    for key, value in outputs.items():
        assert value.device.type == "cpu", f"{name}: {key} is on {value.device}"
