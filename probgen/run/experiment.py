"""Runs declared in TOML: build data, model and objective, train, evaluate, write a run folder."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

import probgen.inference as inference
import probgen.models as zoo
from probgen.inference.distributed import DistributedContext
from probgen.inference.langevin import SAMPLERS as LANGEVIN_SAMPLERS
from probgen.inference.steps import eval_length, evaluate
from probgen.run.checks import check_combination, clip_warmup
from probgen.run.compose import compose_model_kwargs
from probgen.run.config import (
    SECTIONS,
    ConfigError,
    check_call_kwargs,
    check_keys,
    did_you_mean,
    dump_toml,
)
from probgen.run.progress import Progress
from probgen.utils import atomic_torch_save, atomic_write_bytes, atomic_write_text, check_choice

__all__ = ["DataBundle", "build_data", "build_model", "build_objective", "build_sampler",
           "fit_run", "load_run", "eval_run", "sample_run", "set_threads", "FAMILIES",
           "presets_by_family", "describe_data", "load", "LoadedRun", "check_device",
           "SAMPLE_FORMATS", "validate_config", "objective_name", "needs_data",
           "sample_stats", "pixel_levels", "to_pixels"]

# [sample] keys of score runs (a Langevin sampler); other runs pass [sample] to model.sample.
_SCORE_SAMPLE_KEYS = {"n": int, "sampler": str, "steps": int, "eta": (int, float),
                      "eps": (int, float), "init_std": (int, float), "denoise": bool}
_PREPROCESS = ("logit", "scale", "signed", "binarize", "dynamic_binarize", "discrete")
# Discrete pixels for autoregressive models: binarized (threshold at half the range, or
# Bernoulli draws per batch with one fixed draw of the test set), or integer pixels as they are.
_DISCRETE = ("binarize", "dynamic_binarize", "discrete")
# Arguments the runner fills in itself; a [train] table may not set them.
_FIT_RESERVED = ("objective", "data", "out_dir", "resume", "config", "progress", "eval_data",
                 "callbacks", "interruptible")
# [train] keys the runner handles itself (not arguments of fit).
_RUNNER_TRAIN_KEYS = {"threads": int}
# [eval] and [sample] values that must be positive.
_POSITIVE = {"eval": ("num_samples", "resolution", "batch_size", "bound"), "sample": ("n",)}


#: Families of ``probgen list``, in the course's order: the model zoo's modules
#: (``probgen.models.<module>``) and the family each belongs to.
FAMILIES: dict[str, str] = {
    "made": "autoregressive models",
    "pixelcnn": "autoregressive models",
    "image_transformer": "autoregressive models",
    "autoregressive": "autoregressive models",
    "flows": "normalizing flows",
    "cnf": "continuous normalizing flows",
    "vae": "latent-variable models",
    "vqvae": "latent-variable models",
    "discrete_vae": "latent-variable models",
    "gmm": "mixtures (EM)",
    "gan": "GANs",
    "score": "score models",
    "diffusion": "diffusion",
    "sde": "score SDEs",
    "flow_matching": "flow matching",
}


def presets_by_family() -> dict[str, dict[str, str]]:
    """The built-in presets grouped by model family: ``{family: {name: description}}``.

    A preset's family is that of the zoo module of its ``[model] name`` (:data:`FAMILIES`);
    families come in the course's order, presets by name.
    """
    from probgen.run.config import list_presets, load_config

    registry = zoo.MODELS
    groups: dict[str, dict[str, str]] = {}
    for name, description in list_presets().items():
        model = load_config(name).get("model", {}).get("name")
        module = getattr(registry.get(model), "__module__", "").rsplit(".", 1)[-1]
        groups.setdefault(FAMILIES.get(module, module or "other"), {})[name] = description
    order = list(dict.fromkeys(FAMILIES.values()))
    return {f: groups[f] for f in sorted(
        groups, key=lambda f: (order.index(f) if f in order else len(order), f))}


@dataclass
class DataBundle:
    """What a run trains and evaluates on.

    Attributes:
        name: the data set's name.
        kind: ``"toy"`` (2-D points drawn fresh each step), ``"image"`` or ``"none"``
            (reverse KL: the model samples itself).
        train: what :func:`probgen.inference.fit` consumes (sampler, tensor or ``None``).
        eval: held-out data (points, or integer-valued images), or ``None``.
        event_shape: the model's event shape.
        preprocess: images only: the map from integer pixels to model space.
        num_classes: with ``[data] labels = true``, the number of classes; ``train`` then
            yields ``(x, y)`` batches and ``eval`` is an ``(x, y)`` tuple.
    """

    name: str
    kind: str
    train: Any
    eval: Tensor | tuple[Tensor, Tensor] | None
    event_shape: tuple[int, ...]
    preprocess: Any = None
    num_classes: int | None = None

    @property
    def eval_x(self) -> Tensor | None:
        """The held-out examples without their labels."""
        return self.eval[0] if isinstance(self.eval, tuple) else self.eval


def _image_preprocess(
    levels: int, kind: str, alpha: float, flatten: bool, shape: tuple[int, ...]
) -> Any:
    from probgen.data import ImagePreprocess

    return ImagePreprocess(
        levels=levels, transform=kind, alpha=alpha, flatten=flatten, shape=shape
    )


class _DiscretePixels:
    """The preprocess of discrete data: pixels go to the model as they are (no ladj, no
    dequantization); ``to_unit`` scales them to [0, 1] for figures and ``to_discrete``
    rounds them to integer pixels, both in image shape when ``shape`` is known."""

    def __init__(self, values: int, shape: tuple[int, ...] | None = None) -> None:
        self.values = values
        self.shape = shape

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def _unflatten(self, y: Tensor) -> Tensor:
        if y.dim() == 2 and self.shape is not None and len(self.shape) > 1:
            return y.reshape(y.shape[0], *self.shape)
        return y

    def to_unit(self, y: Tensor) -> Tensor:
        return self._unflatten(y) / (self.values - 1)

    def to_discrete(self, y: Tensor) -> Tensor:
        return self._unflatten(y).round().clamp(0, self.values - 1).long()


class _DynamicBinarized:
    """A batch sampler: random training images, each pixel Bernoulli(intensity) per draw."""

    def __init__(self, images: Tensor, levels: int, labels: Tensor | None = None) -> None:
        self.intensity = images.float() / (levels - 1)
        self.labels = labels

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Any:
        idx = torch.randint(0, self.intensity.shape[0], (n,), generator=generator)
        x = torch.bernoulli(self.intensity[idx], generator=generator)
        return x if self.labels is None else (x, self.labels[idx])


def _discrete_data(name: str, kind: str, train: Tensor, test: Tensor, levels: int,
                   flatten: bool) -> DataBundle:
    from probgen import data as pdata

    shape = tuple(train.shape[1:])
    event = (math.prod(shape),) if flatten else shape
    train, test = train.reshape(-1, *event), test.reshape(-1, *event)
    if kind == "discrete":
        return DataBundle(name, "image", train.float(), test.float(), event,
                          _DiscretePixels(levels, shape))
    threshold = (levels - 1) / 2  # MNIST: x >= 127.5, i.e. the usual threshold 128
    if kind == "binarize":
        return DataBundle(name, "image", pdata.binarize(train, threshold),
                          pdata.binarize(test, threshold), event, _DiscretePixels(2, shape))
    fixed = torch.Generator().manual_seed(0)  # one test binarization for every run
    held_out = pdata.dynamic_binarize(test.float() / (levels - 1), generator=fixed)
    return DataBundle(name, "image", _DynamicBinarized(train, levels), held_out, event,
                      _DiscretePixels(2, shape))


def _with_labels(bundle: DataBundle, train_y: Tensor, test_y: Tensor) -> DataBundle:
    """The same data with integer class labels: ``(x, y)`` batches and an ``(x, y)`` eval."""
    train_y, test_y = train_y.long(), test_y.long()
    if isinstance(bundle.train, _DynamicBinarized):
        bundle.train.labels = train_y
    else:
        bundle.train = (bundle.train, train_y)
    bundle.eval = (bundle.eval, test_y)
    bundle.num_classes = int(max(train_y.max(), test_y.max())) + 1
    return bundle


def build_data(config: dict[str, Any], *, seed: int = 0) -> DataBundle:
    """Builds the data named by the ``[data]`` table (see ``probgen.run.config.SECTIONS``)."""
    from probgen import data as pdata

    objective = objective_name(config)
    table = dict(config.get("data", {}))
    if not needs_data(config):
        if table:
            raise ConfigError(
                f"[data] must be empty with objective {objective!r}: it needs no data."
            )
        return DataBundle("none", "none", None, None, (2,))
    if "name" not in table:
        raise ConfigError("[data] name is required; allowed: "
                          f"{sorted([*pdata.TOY_NAMES, 'two_modes', *_IMAGE_SETS])}.")
    name = table["name"]
    generator = torch.Generator().manual_seed(seed + 1)
    if name in pdata.TOY_NAMES:
        extra = set(table) - {"name", "eval_size"}
        if extra:
            raise ConfigError(f"[data] keys {sorted(extra)} do not apply to toy data {name!r} "
                              "(allowed: name, eval_size).")
        n_eval = int(table.get("eval_size", 20000))
        held_out = pdata.toy_sample(name, n_eval, generator=generator)
        return DataBundle(name, "toy", pdata.ToySampler(name), held_out,
                          tuple(held_out.shape[1:]))
    if name == "two_modes":  # 0.95 N((5, 5), I) + 0.05 N((-5, -5), I), the score lectures'
        from probgen.score import two_modes

        extra = set(table) - {"name", "eval_size"}
        if extra:
            raise ConfigError(f"[data] keys {sorted(extra)} do not apply to {name!r}.")
        mixture = two_modes()
        held_out = mixture.sample(int(table.get("eval_size", 20000)), generator)
        return DataBundle(name, "toy", mixture, held_out, (2,))
    if name in _IMAGE_SETS:
        if "eval_size" in table:
            raise ConfigError(
                "[data] eval_size applies to toy data only (images use the test split)."
            )
        if name == "digits":
            train, train_y = pdata.load_digits("train")
            test, test_y = pdata.load_digits("test")
        elif name == "mnist":
            train, train_y = pdata.load_mnist(table.get("root"), "train")
            test, test_y = pdata.load_mnist(table.get("root"), "test")
        else:  # CIFAR-10 / CIFAR-100 (fine labels) from the python-pickle batches
            train, train_y = pdata.load_cifar(name, table.get("root"), "train")
            test, test_y = pdata.load_cifar(name, table.get("root"), "test")
        levels = _IMAGE_SETS[name][1]
        kind = table.get("preprocess", "logit")
        if kind not in _PREPROCESS:
            raise ConfigError(
                f"[data] preprocess must be one of {list(_PREPROCESS)}, got {kind!r}."
                + did_you_mean(kind, _PREPROCESS)
            )
        flatten = bool(table.get("flatten", False))
        labels = bool(table.get("labels", False))
        if kind in _DISCRETE:
            if "alpha" in table:
                raise ConfigError(f"[data] alpha applies to logit preprocessing, not {kind!r}.")
            bundle = _discrete_data(name, kind, train, test, levels, flatten)
            return _with_labels(bundle, train_y, test_y) if labels else bundle
        shape = tuple(train.shape[1:])
        pre = _image_preprocess(levels, kind, float(table.get("alpha", 0.05)), flatten, shape)
        event = (math.prod(shape),) if flatten else shape
        bundle = DataBundle(name, "image", train.float(), test.float(), event, pre)
        return _with_labels(bundle, train_y, test_y) if labels else bundle
    allowed = sorted([*pdata.TOY_NAMES, "two_modes", *_IMAGE_SETS])
    raise ConfigError(f"[data] name {name!r} is unknown; allowed: {allowed}."
                      + did_you_mean(name, allowed))


#: The image data sets: image shape, pixel levels and number of classes, known without
#: loading them (so a trained run can be rebuilt from its folder alone).
_IMAGE_SETS: dict[str, tuple[tuple[int, ...], int, int]] = {
    "digits": ((1, 8, 8), 17, 10),
    "mnist": ((1, 28, 28), 256, 10),
    "cifar10": ((3, 32, 32), 256, 10),
    "cifar100": ((3, 32, 32), 256, 100),
}


def describe_data(config: dict[str, Any], *, seed: int = 0) -> DataBundle:
    """What a run's model and objective need to know of its data, without loading it.

    For image data (``digits``, ``mnist``, ``cifar10``, ``cifar100``) the bundle has
    ``train = eval = None`` and the event shape, preprocess and number of classes that
    :func:`build_data` would give; toy and target densities are generated (no file is
    read), so their full bundle is returned.

    Raises:
        ConfigError: a bad ``[data]`` table (as :func:`build_data`).
    """
    table = config.get("data", {})
    name = table.get("name")
    if not needs_data(config) or name not in _IMAGE_SETS:
        return build_data(config, seed=seed)
    shape, levels, classes = _IMAGE_SETS[name]
    if "eval_size" in table:
        raise ConfigError("[data] eval_size applies to toy data only (images use the test split).")
    kind = table.get("preprocess", "logit")
    if kind not in _PREPROCESS:
        raise ConfigError(f"[data] preprocess must be one of {list(_PREPROCESS)}, got {kind!r}."
                          + did_you_mean(kind, _PREPROCESS))
    flatten = bool(table.get("flatten", False))
    event = (math.prod(shape),) if flatten else shape
    if kind in _DISCRETE:
        pre: Any = _DiscretePixels(levels if kind == "discrete" else 2, shape)
    else:
        pre = _image_preprocess(levels, kind, float(table.get("alpha", 0.05)), flatten, shape)
    num_classes = classes if table.get("labels", False) else None
    return DataBundle(name, "image", None, None, event, pre, num_classes)


def build_model(config: dict[str, Any], data: DataBundle) -> nn.Module:
    """Builds the model named by ``[model] name`` with the table's other keys as arguments.

    Nested tables (``[model.network]``, ``[model.prior]``, ``[model.path]``, ...) are
    mapped onto the constructor (:mod:`probgen.run.compose`); ``features`` (vectors) or
    ``shape`` (images) is filled in from the data when absent.
    """
    table = dict(config.get("model", {}))
    registry = zoo.MODELS
    name = table.pop("name", None)
    if name not in registry:
        raise ConfigError(f"[model] name {name!r} is unknown; allowed: {sorted(registry)}."
                          + did_you_mean(name, registry))
    cls = registry[name]
    return cls(**compose_model_kwargs(cls, table, data))


def build_objective(config: dict[str, Any], model: nn.Module, data: DataBundle) -> nn.Module:
    """Builds the ``[objective]`` (``ml`` by default) around ``model``.

    Every name, built-in or a family's, comes from the one table
    ``probgen.inference.registry.OBJECTIVES`` (each builder checks its keys).
    """
    table = dict(config.get("objective", {}))
    name = table.pop("name", "ml")
    _objective_spec(config)  # an unknown name: the error lists the registered ones
    try:
        return inference.registry.build_registered(name, model, data, table)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"[objective] {name}: {e}") from None


def objective_name(config: dict[str, Any]) -> str:
    """The run's ``[objective] name`` (``"ml"``, maximum likelihood, when not given)."""
    return config.get("objective", {}).get("name", "ml")


def needs_data(config: dict[str, Any]) -> bool:
    """Whether the run's objective trains on data (an unknown name is reported later)."""
    spec = inference.registry.OBJECTIVES.get(objective_name(config))
    return spec is None or spec.needs_data


def _objective_spec(config: dict[str, Any]) -> inference.registry.ObjectiveSpec:
    """The registry entry of ``[objective] name`` (``ml`` by default).

    Raises:
        ConfigError: a name that is not registered (the message lists the registered ones).
    """
    name = objective_name(config)
    registered = inference.registry.OBJECTIVES
    if name not in registered:
        raise ConfigError(f"[objective] name must be one of {sorted(registered)}, got "
                          f"{name!r}." + did_you_mean(name, registered))
    return registered[name]


def validate_config(config: dict[str, Any]) -> None:
    """Checks every section's keys, types and ranges (``[sample]`` and ``[eval]`` included)
    before anything is built.

    Raises:
        ConfigError: the first bad key or value, named with its section.
    """
    for section, table in config.items():
        schema = SECTIONS[section][0]
        if section == "objective":
            spec = _objective_spec(config)
            typed = {k: t for k, t in spec.types.items() if t is not None}
            check_keys({k: v for k, v in table.items() if k in typed}, typed, section)
        if section == "sample" and _objective_spec(config).langevin:
            schema = _SCORE_SAMPLE_KEYS
        if schema is not None:
            check_keys(table, schema, section)
    for section, keys in _POSITIVE.items():
        for key in keys:
            value = config.get(section, {}).get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"[{section}] {key} must be a positive number, got "
                                  f"{type(value).__name__} {value!r}.")
    train = dict(config.get("train", {}))
    runner = {key: train.pop(key) for key in _RUNNER_TRAIN_KEYS if key in train}
    check_keys(runner, _RUNNER_TRAIN_KEYS, "train")
    if "threads" in runner and runner["threads"] < 1:
        raise ConfigError(f"[train] threads must be a positive int, got {runner['threads']}.")
    check_call_kwargs(inference.fit, train, "train", exclude=_FIT_RESERVED)
    for key in ("steps", "batch_size"):
        if key not in train:
            raise ConfigError(f"[train] {key} is required.")


def set_threads(config: dict[str, Any], threads: int | None = None,
                run_dir: str | Path | None = None) -> int:
    """Sets torch's CPU thread count: ``threads``, else the run's ``[train] threads``, else
    the count a trained run in ``run_dir`` chose by measurement (``fit(threads="auto")``,
    saved in its checkpoint).

    With none of them, PyTorch's default stays (one thread per physical core, or
    ``OMP_NUM_THREADS``). Returns the thread count in effect.

    Raises:
        ConfigError: a count that is not a positive int.
    """
    if threads is None:
        threads = config.get("train", {}).get("threads")
    if threads is None and run_dir is not None and "OMP_NUM_THREADS" not in os.environ:
        path = Path(run_dir) / "checkpoint.pt"
        if path.is_file():
            saved = inference.load_checkpoint(path).get("threads")
            threads = min(int(saved), torch.get_num_threads()) if saved else None
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads: expected a positive int, got {threads!r}.")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _run_folder(config: dict[str, Any], out_dir: str | Path | None, default_name: str) -> Path:
    name = config.get("run", {}).get("name", Path(str(default_name)).stem)
    return Path(out_dir) if out_dir is not None else Path("runs") / name


def _check_resumable(run: Path, objective: nn.Module, config: dict[str, Any]) -> None:
    """Checks that ``run`` holds a checkpoint this configuration can continue."""
    path = run / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume: no checkpoint at {str(path)!r}; fit without --resume to start this "
            "run, or point --out at the run folder to continue.")
    state = inference.load_checkpoint(path)
    inference.load_objective_state(objective, state, path)
    if config["train"].get("ema_decay") is not None and state.get("ema") is None:
        raise ConfigError(f"[train] ema_decay is set but the checkpoint {str(path)!r} has no "
                          "EMA to continue; remove ema_decay or start a new run.")


def _evaluate(objective: nn.Module, model: nn.Module, data: DataBundle, config: dict,
              device: torch.device | None = None, progress: Progress | None = None,
              seed: int = 0) -> dict:
    """Held-out metrics through the trainer's evaluation (:func:`probgen.inference.steps.
    evaluate`, the one evaluation loop): NLL (nats) and bits/dim for images, every other
    output of the objective, and for objectives without data (reverse KL) the KL over
    ``[eval] num_samples`` draws. Leaves the objective and the model in eval mode (for
    sampling after it). Batches go to ``device`` (CPU by default); ``progress`` reports the
    stage."""
    device = torch.device("cpu") if device is None else device
    progress = Progress("off") if progress is None else progress
    table = config.get("eval", {})
    batch_size = int(table.get("batch_size", 2000))
    # KL(q || p~) = E_q[log q - log p~] = KL(q || p) - log Z, over num_samples draws.
    held_out = (int(table.get("num_samples", 20000)) if data.kind == "none"
                else _held_out(data, config))
    unit = "samples" if data.kind == "none" else "examples"
    with progress.stage("evaluate", eval_length(held_out), unit) as stage:
        means = evaluate(objective, held_out, batch_size=batch_size,
                         ctx=DistributedContext(device=device), ema=None, seed=seed,
                         callback=stage.update)
    # Objectives that count training passes (annealing schedules) or use dropout must see
    # what follows (sampling, figures) as evaluation too.
    objective.eval()
    model.eval()
    if data.kind == "none":
        return {"test/kl_unnormalized": means["eval/kl"]}
    return {f"test/{k[len('eval/'):]}": v for k, v in means.items() if k != "eval/loss"}


def _rows(batch: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a tensor or of each member of an ``(x, y)`` tuple."""
    if isinstance(batch, tuple):
        return tuple(b[start:stop] for b in batch)
    return batch[start:stop]


def _held_out(data: DataBundle, config: dict) -> Any:
    """The held-out data (a tensor, or ``(x, y)`` with labels), cut to ``[eval] num_samples``
    when that is set."""
    table = config.get("eval", {})
    if data.eval is None or "num_samples" not in table:
        return data.eval
    return _rows(data.eval, 0, int(table["num_samples"]))


def _figure_count(model: Any, data: DataBundle, run: Path) -> int:
    two_d = data.kind != "image" and callable(getattr(model, "log_prob", None))
    return 1 + int(two_d) + int((run / "metrics.jsonl").exists())


def _write_figures(model: Any, data: DataBundle, config: dict, run: Path,
                   samples: Tensor | None = None, progress: Progress | None = None,
                   device: torch.device | None = None) -> list[str]:
    """Writes the run folder's figures: ``samples.png``, ``density.png`` (2-D data with a
    density) and ``curves.png`` (grouped by quantity); returns their names."""
    from probgen import plots

    progress = Progress("off") if progress is None else progress
    device = torch.device("cpu") if device is None else device
    written = []
    n = int(config.get("sample", {}).get("n", 2000 if data.kind != "image" else 64))
    if samples is None:
        with torch.no_grad():
            samples = model.sample((n,))
    samples = samples.detach().cpu()
    model_name = config.get("model", {}).get("name", "model")
    with progress.stage("figures", _figure_count(model, data, run), "figures") as stage:
        if data.kind == "image":
            fig = _sample_grid(samples, data, f"{n} samples of {model_name} ({data.name})")
        else:
            bound = float(config.get("eval", {}).get("bound", 4.0))
            fig = plots.plot_samples(samples, title=f"{n} samples of {model_name} "
                                                    f"({data.name})")
        plots.save_figure(fig, run / "samples.png")
        written.append("samples.png")
        stage.update()
        if data.kind != "image" and callable(getattr(model, "log_prob", None)):
            resolution = int(config.get("eval", {}).get("resolution", 200))

            def log_prob(x: Tensor) -> Tensor:
                return model.log_prob(x.to(device)).cpu()

            with torch.no_grad():  # score models have no density
                fig = plots.plot_density_2d(log_prob, (-bound, bound), resolution,
                                            title=f"density of {model_name} ({data.name})")
            plots.save_figure(fig, run / "density.png")
            written.append("density.png")
            stage.update()
        if (run / "metrics.jsonl").exists():
            fig = plots.plot_training_curves(run / "metrics.jsonl", group=True)
            plots.save_figure(fig, run / "curves.png")
            written.append("curves.png")
            stage.update()
    return written


def _sample_grid(samples: Tensor, data: DataBundle, title: str) -> Any:
    """An image grid of model-space samples in pixel space, rows and columns numbered."""
    from probgen import plots

    pixels = to_pixels(samples, data)
    levels = pixel_levels(data)
    n = pixels.shape[0]
    return plots.plot_image_grid(pixels.double() / (levels - 1), nrow=max(1, math.isqrt(n)),
                                 title=title, indexed=True, colorbar=pixels.shape[1] == 1)


def pixel_levels(data: DataBundle) -> int:
    """How many integer values a pixel of the run's image data takes (256 for MNIST)."""
    pre = data.preprocess
    return int(getattr(pre, "levels", None) or getattr(pre, "values", 256))


def to_pixels(samples: Tensor, data: DataBundle) -> Tensor:
    """Model-space samples in the data's own space: the data preprocessing undone.

    Images: ``uint8`` integer pixels of shape ``(N, C, H, W)`` (unflattened), values
    ``0..levels-1`` as the data set stores them (0..255 for MNIST, 0..16 for the 8x8
    digits, 0..1 for binarized data). Other data (2-D toys): the points as they are,
    ``float32`` of shape ``(N, D)``.
    """
    samples = samples.detach().cpu()
    if data.kind != "image":
        return samples.float()
    return data.preprocess.to_discrete(samples.float()).to(torch.uint8)


def fit_run(
    config: dict[str, Any],
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | str = True,
    default_name: str = "run",
    interruptible: bool = False,
    device: str | None = None,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Trains the run that ``config`` declares and writes its run folder.

    The folder holds ``config.toml`` (the full configuration), ``checkpoint.pt``,
    ``metrics.jsonl``, ``eval.json`` and figures (``samples.png``, ``density.png`` for 2-D
    data, ``curves.png``). Returns the evaluation metrics and the list of files.

    Nothing in the folder changes before the whole configuration (``[sample]`` and
    ``[eval]`` included) is checked and the model is built; with ``resume``, before the
    folder's checkpoint is found to fit the model. ``interruptible``: SIGINT and SIGTERM
    stop training after a step with a checkpoint (see :func:`probgen.inference.fit`).
    ``progress``: a mode of :class:`probgen.run.progress.Progress` (``True``: a bar on a
    terminal, one plain line per stage in a pipe; ``False``: silent). ``device``: where
    the model is trained, evaluated and sampled (default: the run's ``[train] device``,
    else ``"cpu"``; see :func:`check_device`). ``max_seconds``: a wall-clock budget for
    training; it stops at the first training record (every ``[train] log_every`` steps) after
    that many seconds, with a checkpoint, or at ``[train] steps`` if that comes first.

    Raises:
        ConfigError: a bad key, value or combination (the message names it).
        FileNotFoundError: ``resume`` and the folder holds no checkpoint.
        ValueError: ``resume`` and the checkpoint is unreadable or of another model, or the
            device is not available.
        probgen.inference.TrainingInterrupted: ``interruptible`` and a signal came.
    """
    validate_config(config)
    config = clip_warmup(config)
    seed = int(config.get("run", {}).get("seed", 0))
    run = _run_folder(config, out_dir, default_name)
    dev = check_device(device if device is not None
                       else config["train"].get("device", "cpu"))
    # Under torchrun only rank 0 reports (as only it draws the training bar).
    reporter = Progress(progress if int(os.environ.get("RANK", "0")) == 0 else False)
    if "threads" in config["train"]:
        set_threads(config)
    torch.manual_seed(seed)
    data = build_data(config, seed=seed)
    model = build_model(config, data)
    check_combination(config, model)
    objective = build_objective(config, model, data)
    build_sampler(config, model, objective, data)  # checks [sample] before training, not after
    if resume:
        _check_resumable(run, objective, config)
    run.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_text(run / "config.toml", dump_toml(config))
    train = dict(config["train"])
    batch_size = train.pop("batch_size")
    for key in (*_RUNNER_TRAIN_KEYS, "device"):
        train.pop(key, None)
    start = time.perf_counter()
    callbacks = [reporter.fit_callback(int(train["steps"]))]
    if max_seconds is not None:
        callbacks.append(lambda step, record: time.perf_counter() - start >= max_seconds)
    history = inference.fit(
        objective, data.train, batch_size=batch_size, out_dir=run, resume=resume,
        progress=reporter.bars, config=config, seed=seed, interruptible=interruptible,
        eval_data=_held_out(data, config) if "eval_every" in train else None, device=str(dev),
        callbacks=callbacks, threads=config["train"].get("threads", "auto"), **train,
    )
    seconds = time.perf_counter() - start
    # evaluation, sampling and figures run with the count training used (measured there)
    torch.set_num_threads(history.threads)
    if int(os.environ.get("RANK", "0")) != 0:
        # Under torchrun only rank 0 evaluates and writes; the others are done after fit.
        return {"train_seconds": seconds, "run": str(run), "files": []}
    # Evaluation, samples and figures use the weights a loaded run has: the EMA weights
    # where the run keeps an EMA (the trainer evaluates with them too), else the last ones.
    _use_ema_weights(objective, run / "checkpoint.pt")
    result = {"train_seconds": seconds,
              **_evaluate(objective, model, data, config, dev, reporter, seed)}
    sampler = build_sampler(config, model, objective, data)
    stats, samples = sample_stats(sampler, data, config, reporter, no_grad=sampler is model)
    if sampler is not model:
        result.update(stats)
    files = _write_figures(sampler, data, config, run, samples, reporter, dev)
    atomic_write_text(run / "eval.json", json.dumps(result, indent=2, sort_keys=True))
    return {**result, "run": str(run), "files": sorted(["config.toml", "checkpoint.pt",
                                                         "metrics.jsonl", "eval.json", *files])}


class _ConfiguredSampler:
    """A model whose ``sample(shape)`` passes the run's ``[sample]`` keywords on."""

    def __init__(self, model: nn.Module, kwargs: dict[str, Any]) -> None:
        self.model, self.kwargs = model, kwargs

    def sample(self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None
               ) -> Tensor:
        if generator is None:
            return self.model.sample(shape, **self.kwargs)
        return self.model.sample(shape, generator=generator, **self.kwargs)

    def __getattr__(self, name: str) -> Any:  # log_prob, event_shape, ... of the model
        return getattr(self.model, name)


def build_sampler(config: dict, model: nn.Module, objective: nn.Module, data: DataBundle) -> Any:
    """What draws a run's samples: the model (its ``sample`` called with the ``[sample]``
    table's keys other than ``n``), or for score runs a Langevin sampler of its network set
    by the ``[sample]`` table (annealed over the objective's ladder by default). Either way
    the result has ``sample(shape, generator=None)``."""
    if not _objective_spec(config).langevin:
        kwargs = {k: v for k, v in config.get("sample", {}).items() if k != "n"}
        if not kwargs:
            return model
        check_call_kwargs(model.sample, kwargs, "sample")
        _check_sampler_name(kwargs, getattr(model, "samplers", None))
        return _ConfiguredSampler(model, kwargs)
    table = {k: v for k, v in config.get("sample", {}).items() if k != "n"}
    _check_sampler_name(table, LANGEVIN_SAMPLERS)
    sigmas = getattr(objective, "sigmas", None)
    defaults = {"sampler": "annealed" if sigmas is not None else "langevin", "sigmas": sigmas,
                "sigma": getattr(objective, "sigma", None)}
    try:
        return inference.ScoreSampler(model, data.event_shape, **{**defaults, **table})
    except ValueError as e:
        raise ConfigError(f"[sample] {e}") from None


def _check_sampler_name(table: dict[str, Any], choices: tuple[str, ...] | None) -> None:
    """Checks ``[sample] sampler`` against the names the model (or score sampler) knows."""
    name = table.get("sampler")
    if choices is not None and isinstance(name, str) and name not in choices:
        raise ConfigError(f"[sample] sampler: expected one of {list(choices)}, got {name!r}."
                          + did_you_mean(name, choices))


def sample_stats(sampler: Any, data: DataBundle, config: dict,
                 progress: Progress | None = None, *, no_grad: bool = False
                 ) -> tuple[dict[str, float], Tensor]:
    """Sampling time of ``[sample] n`` draws; for mixture data, the share of each mode.
    Returns the statistics and the samples (on the CPU; the run folder's figure shows them).
    ``no_grad``: draw under ``torch.no_grad()`` (a model's own ``sample``; a score sampler
    may need gradients)."""
    n = int(config.get("sample", {}).get("n", 2000 if data.kind != "image" else 64))
    progress = Progress("off") if progress is None else progress
    grad = torch.no_grad() if no_grad else contextlib.nullcontext()
    with progress.stage("sample", n, "samples") as stage, grad:
        start = time.perf_counter()
        samples = sampler.sample((n,))
        out = {"sample/seconds": time.perf_counter() - start}
        samples = samples.detach().cpu()
        stage.update(n)
    if callable(getattr(data.train, "assign", None)):  # a GaussianMixture
        counts = torch.bincount(data.train.assign(samples), minlength=len(data.train.weights))
        out.update({f"sample/mode_weight_{k}": float(c) / n for k, c in enumerate(counts)})
    return out, samples


def _use_ema_weights(objective: nn.Module, checkpoint: Path | dict[str, Any]) -> None:
    """Gives ``objective`` the EMA weights of a checkpoint (a path or its loaded state), when
    the run keeps an EMA; otherwise leaves its weights alone."""
    state = (inference.load_checkpoint(checkpoint) if isinstance(checkpoint, Path)
             else checkpoint)
    if state.get("ema") is not None:
        with torch.no_grad():
            inference.EMA.copy_state_to(state["ema"], objective)


def load_run(run_dir: str | Path, *, with_data: bool = True, device: str = "cpu"
             ) -> tuple[dict, DataBundle, nn.Module, nn.Module]:
    """Rebuilds a run's configuration, data, model and objective from its folder.

    The objective holds the trained weights: the EMA weights where the run kept an EMA (as
    evaluation uses them), else the last ones. ``with_data=False`` does not load image data
    sets (see :func:`describe_data`); ``device``: where the model and objective are moved
    (see :func:`check_device`).

    Raises:
        FileNotFoundError: the folder, its ``config.toml`` or its ``checkpoint.pt`` is missing.
        ValueError: an unreadable or foreign checkpoint, or one of another model.
    """
    from probgen.run.config import load_config

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a complete run folder: the folder does not "
                                "exist.")
    for needed in ("config.toml", "checkpoint.pt"):
        if not (run / needed).is_file():
            raise FileNotFoundError(f"{run} is not a complete run folder: {needed} is missing "
                                    f"({str(run / needed)!r}).")
    dev = check_device(device)
    config = load_config(run / "config.toml")
    seed = int(config.get("run", {}).get("seed", 0))
    data = build_data(config, seed=seed) if with_data else describe_data(config, seed=seed)
    model = build_model(config, data)
    objective = build_objective(config, model, data)
    state = inference.load_checkpoint(run / "checkpoint.pt")
    inference.load_objective_state(objective, state, run / "checkpoint.pt")
    _use_ema_weights(objective, state)
    objective.to(dev)
    objective.eval()
    model.eval()
    return config, data, model, objective


class LoadedRun(NamedTuple):
    """A trained run loaded by :func:`load`.

    Attributes:
        model: the trained model (EMA weights where the run kept them), in eval mode.
        config: the run's full configuration (its ``config.toml``).
        history: the training and evaluation records of ``metrics.jsonl``
            (:class:`probgen.inference.History`).
    """

    model: nn.Module
    config: dict[str, Any]
    history: Any


def load(run_dir: str | Path, *, device: str = "cpu") -> LoadedRun:
    """Loads a trained run from its folder: ``(model, config, history)``.

    The model is rebuilt from ``config.toml`` and given the checkpoint's weights (the EMA
    weights where the run kept an EMA, as evaluation uses); image data sets are not loaded.

    Args:
        run_dir: a run folder written by ``probgen fit`` (or :func:`fit_run`).
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"cuda:N"``).

    Returns:
        LoadedRun: a named tuple ``(model, config, history)``.

    Raises:
        FileNotFoundError: the folder or one of its files (``config.toml``,
            ``checkpoint.pt``, ``metrics.jsonl``) is missing; the message names it.
        ValueError: an unreadable or foreign checkpoint, or an unavailable device.
    """
    run = Path(run_dir)
    config, _, model, _ = load_run(run, with_data=False, device=device)
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run} is not a complete run folder: metrics.jsonl is missing "
                                f"({str(metrics)!r}).")
    step = int(inference.load_checkpoint(run / "checkpoint.pt")["step"])
    records = inference.history.read_records(metrics, upto=step)
    return LoadedRun(model, config, inference.History(records))


def check_device(device: str | torch.device) -> torch.device:
    """The :class:`torch.device` named by ``device``, checked to be usable here.

    Accepts ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` (``"auto"``: CUDA when available).

    Raises:
        ValueError: a string torch does not know, a device type other than CPU or CUDA, or a
            CUDA device this machine does not have; the message says what is available.
    """
    from probgen.utils import resolve_device

    dev = resolve_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: {str(device)!r} was asked for but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s) (cuda:0.."
                         f"cuda:{torch.cuda.device_count() - 1}).")
    return dev


class _OnCPU:
    """A sampler whose samples come back on the CPU (held-out data and features live there)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def sample(self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None
               ) -> Tensor:
        if generator is None:
            return self.sampler.sample(shape).cpu()
        return self.sampler.sample(shape, generator=generator).cpu()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sampler, name)


def eval_run(run_dir: str | Path, metrics: str | None = None, *,
             num_samples: int | None = None, threads: int | None = None,
             device: str = "cpu", progress: bool | str = False) -> dict[str, float]:
    """Evaluates a trained run on its held-out data and rewrites its ``eval.json``.

    ``metrics`` (e.g. ``"fid,kid,pr"``, see ``probgen.metrics.SAMPLE_METRICS``) adds sample
    metrics of ``num_samples`` model samples against the held-out data
    (``probgen.metrics.run_sample_metrics``). ``threads``: torch's CPU threads (default:
    the run's ``[train] threads``, else the count its training measured, else PyTorch's
    default). ``device``: where the model
    runs (see :func:`check_device`). ``progress``: see :class:`probgen.run.progress.Progress`.
    """
    dev = check_device(device)
    config, data, model, objective = load_run(run_dir, device=str(dev))
    set_threads(config, threads, run_dir)
    reporter = Progress(progress)
    seed = int(config.get("run", {}).get("seed", 0))
    torch.manual_seed(seed)
    result = _evaluate(objective, model, data, config, dev, reporter, seed)
    if metrics:
        from probgen.metrics import run_sample_metrics

        sampler = _OnCPU(build_sampler(config, model, objective, data))
        with torch.no_grad(), reporter.stage("sample metrics", None, "metrics") as stage:
            result.update(run_sample_metrics(sampler, data, metrics, num_samples=num_samples,
                                             seed=seed))
            stage.update(len(metrics.split(",")))
    atomic_write_text(Path(run_dir) / "eval.json", json.dumps(result, indent=2, sort_keys=True))
    return result


#: ``probgen sample --format``: what each writes (see :func:`sample_run`).
SAMPLE_FORMATS = ("png", "pt", "npz")


def sample_run(run_dir: str | Path, *, n: int = 64, out: str | Path | None = None,
               seed: int = 0, threads: int | None = None, format: str | None = None,
               device: str = "cpu", progress: bool | str = False) -> Path:
    """Draws ``n`` samples from a trained run and writes them in pixel space, atomically.

    Samples are mapped back through the data preprocessing (:func:`to_pixels`):

    - ``png``: images as a grid (rows and columns numbered, a colorbar for grayscale);
      2-D points as a scatter;
    - ``pt``: one tensor, :func:`torch.save`, loadable with ``weights_only=True``;
    - ``npz``: :func:`numpy.savez` with one array ``samples``.

    The arrays are images as ``uint8`` of shape ``(n, C, H, W)`` with the data set's
    integer pixel values (0..255 for MNIST, 0..16 for the 8x8 digits, 0..1 binarized),
    and other data as ``float32`` of shape ``(n, D)``. Image data sets are not loaded.

    Args:
        run_dir: the run folder.
        n: the number of samples.
        out: the file to write (default ``<run_dir>/samples_<n>.<format>``).
        seed: seeds torch's global RNG before sampling.
        threads: torch's CPU threads (default: the run's ``[train] threads``, else the count
            its training measured, else PyTorch's default).
        format: one of :data:`SAMPLE_FORMATS`; by default the suffix of ``out``, else png.
        device: where the model samples (see :func:`check_device`).
        progress: see :class:`probgen.run.progress.Progress`.

    Returns:
        Path: the written file.

    Raises:
        ValueError: ``n < 1``, an unknown format, or an ``out`` suffix that contradicts it.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive number of samples, got {n}.")
    suffix = Path(out).suffix.lstrip(".").lower() if out is not None else ""
    if format is None:
        format = suffix if suffix in SAMPLE_FORMATS else "png"
        if out is not None and suffix not in SAMPLE_FORMATS:
            raise ValueError(f"out: expected a path ending in one of "
                             f"{['.' + f for f in SAMPLE_FORMATS]}, got {str(out)!r}.")
    check_choice("format", format, SAMPLE_FORMATS)
    if out is not None and suffix != format:
        raise ValueError(f"out: {str(out)!r} does not end in .{format} (--format {format}).")
    dev = check_device(device)
    config, data, model, objective = load_run(run_dir, with_data=False, device=str(dev))
    set_threads(config, threads, run_dir)
    reporter = Progress(progress)
    torch.manual_seed(seed)
    sampler = build_sampler(config, model, objective, data)
    _, samples = sample_stats(sampler, data, {**config, "sample": {"n": n}}, reporter,
                              no_grad=sampler is model)
    pixels = to_pixels(samples, data)
    path = Path(out) if out is not None else Path(run_dir) / f"samples_{n}.{format}"
    with reporter.stage("write", 1, "files") as stage:
        if format == "pt":
            atomic_torch_save(pixels, path)
        elif format == "npz":
            import numpy as np

            buffer = io.BytesIO()
            np.savez(buffer, samples=pixels.numpy())
            atomic_write_bytes(path, buffer.getvalue())
        else:
            from probgen import plots

            name = config.get("model", {}).get("name", "model")
            title = f"{n} samples of {name} ({data.name})"
            fig = (_sample_grid(samples, data, title) if data.kind == "image"
                   else plots.plot_samples(pixels, title=title))
            plots.save_figure(fig, path)
        stage.update()
    return path
