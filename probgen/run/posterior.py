"""``probgen posterior``: inverse problems on held-out data with a trained run as the prior.

A run of a model of a Gaussian path (DDPM, score SDE, flow matching) is a prior; this
measures held-out examples by a linear-Gaussian operator (inpainting the top half, denoising,
2x super-resolution; :mod:`probgen.measurements`), samples the posteriors with
:func:`probgen.inference.posterior_sample` (PiGDM or DPS through the run's sampler layer),
and writes a figure and the numbers: the error of the posterior mean on the hidden pixels,
the samples' spread, the fit to the measurement, time and network calls per sample.
Settings come from the command line, else the run's ``[posterior]`` table, else
:data:`DEFAULTS`. Flows and VAEs (densities, not paths) take
:func:`probgen.inference.measurement_model` with NUTS or SVI in Python instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from probgen import inference
from probgen.measurements import Denoising, Inpainting, LinearMeasurement, SuperResolution
from probgen.run.config import ConfigError
from probgen.utils import atomic_write_bytes, did_you_mean

__all__ = ["TASKS", "DEFAULTS", "posterior_run"]

#: The measurements ``posterior_run`` poses.
TASKS: tuple[str, ...] = ("inpaint", "denoise", "superres")
#: Settings used when neither the command line nor the run's ``[posterior]`` table gives
#: them (``data_variance``: PiGDM's per-pixel data variance in model space).
DEFAULTS: dict[str, Any] = {"task": "inpaint", "noise_std": 0.05, "method": "pigdm",
                            "sampler": "ddim", "steps": 50, "scale": 1.0, "images": 8,
                            "samples": 4, "data_variance": 0.5}


def _settings(config: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    table = dict(config.get("posterior", {}))
    unknown = sorted(set(table) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"[posterior] unknown keys {unknown}; allowed: {sorted(DEFAULTS)}."
                          + did_you_mean(unknown[0], DEFAULTS))
    out = {**DEFAULTS, **table, **{k: v for k, v in given.items() if v is not None}}
    if out["task"] not in TASKS:
        raise ConfigError(f"task: expected one of {list(TASKS)}, got {out['task']!r}."
                          + did_you_mean(str(out["task"]), TASKS))
    if out["method"] not in inference.GUIDANCE_METHODS:
        raise ConfigError(f"method: expected one of {list(inference.GUIDANCE_METHODS)}, got "
                          f"{out['method']!r}.")
    for key in ("images", "samples", "steps"):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 1:
            raise ConfigError(f"{key}: expected a positive int, got {out[key]!r}.")
    for key in ("noise_std", "scale", "data_variance"):
        if not isinstance(out[key], (int, float)) or not out[key] > 0:
            raise ConfigError(f"{key}: expected a positive number, got {out[key]!r}.")
    return out


def _measurement(task: str, shape: tuple[int, ...], noise: float) -> LinearMeasurement:
    if task == "denoise":
        return Denoising(shape, noise)
    if task == "inpaint":  # the top half of an image, the first half of a vector observed
        mask = torch.zeros(shape, dtype=torch.bool)
        if len(shape) == 3:
            mask[:, : shape[1] // 2] = True
        else:
            mask.view(-1)[: max(1, mask.numel() // 2)] = True
        return Inpainting(mask, noise)
    if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
        raise ConfigError(f"task 'superres': needs images with even sides, got shape {shape}.")
    return SuperResolution(shape, 2, noise)


def _model_space(data: Any, x: Tensor) -> tuple[Tensor, Any]:
    """Held-out examples in the model's space, and the map back to [0, 1] for figures."""
    pre = data.preprocess
    if data.kind != "image" or pre is None:
        return x.float(), None
    if not hasattr(pre, "to_model"):
        raise ConfigError("posterior: needs continuous image preprocessing ('signed', "
                          "'scale' or 'logit'), not discrete or binarized pixels.")
    levels = int(pre.levels)
    return pre.to_model(x.float() / (levels - 1))[0], pre.to_unit


def posterior_run(run_dir: str | Path, *, out: str | Path | None = None, seed: int = 0,
                  device: str = "cpu", threads: int | None = None,
                  **given: Any) -> dict[str, Any]:
    """Solves an inverse problem on held-out data with the trained run as the prior.

    Args:
        run_dir: a run folder of a DDPM, score SDE or flow-matching model.
        out: the figure to write (default ``<run_dir>/posterior_<task>.png``); the numbers
            go beside it as ``.json``.
        seed: seeds the measurement noise and the samplers.
        device: where the model runs; threads: torch's CPU threads.
        **given: settings of :data:`DEFAULTS` (``None``: the run's ``[posterior]`` table,
            else the default).

    Returns:
        dict: the numbers written to the JSON file.

    Raises:
        ConfigError: a model that is not a path model, bad settings or preprocessing.
    """
    from probgen import plots
    from probgen.run.experiment import load_run, set_threads

    config, data, model, _ = load_run(run_dir, with_data=True, device=device)
    set_threads(config, threads, run_dir)
    settings = _settings(config, given)
    if not all(hasattr(model, a) for a in ("guided", "path", "prediction", "prior_sample")):
        raise ConfigError(f"posterior: needs a model of a Gaussian path (DDPM, ImageScoreSDE, "
                          f"ImageFlowMatching, their vector forms), got "
                          f"{type(model).__name__}; for flows and VAEs use "
                          "probgen.inference.measurement_model with NUTS or SVI.")
    held_out = data.eval_x[: settings["images"]]
    x, to_unit = _model_space(data, held_out)
    dev = next(model.parameters()).device
    x = x.to(dev)
    measure = _measurement(settings["task"], tuple(x.shape[1:]), float(settings["noise_std"]))
    generator = torch.Generator().manual_seed(seed)
    y = measure.simulate(x.cpu(), generator=generator).to(dev)
    samples, calls, start = [], 0, time.perf_counter()
    for i in range(x.shape[0]):
        res = inference.posterior_sample(
            model, measure, y[i], settings["samples"], method=settings["method"],
            sampler=settings["sampler"], steps=settings["steps"], scale=settings["scale"],
            data_variance=settings["data_variance"],
            generator=torch.Generator(dev).manual_seed(seed + 1 + i))
        samples.append(res.samples.detach())
        calls = res.nfe
    seconds = time.perf_counter() - start
    samples = torch.stack(samples)  # (images, samples, *event)
    mean = samples.mean(1)
    hidden = (~measure.mask.to(dev)) if isinstance(measure, Inpainting) else torch.ones_like(
        x[0], dtype=torch.bool)

    def rmse(a: Tensor, b: Tensor) -> float:
        return float(((a - b)[..., hidden] if a.dim() == x.dim() else (a - b)).pow(2).mean()
                     .sqrt())

    fit = measure(samples.flatten(0, 1)).reshape(*samples.shape[:2], -1) - y.flatten(1)[:, None]
    result = {
        "task": settings["task"], "method": settings["method"], "sampler": settings["sampler"],
        "steps": settings["steps"], "scale": settings["scale"],
        "noise_std": settings["noise_std"], "images": int(x.shape[0]),
        "samples_per_image": settings["samples"],
        "hidden_rmse_posterior_mean": rmse(mean, x),
        "hidden_rmse_one_sample": rmse(samples[:, 0], x),
        "hidden_rmse_observed_only": rmse(measure.adjoint(y) / measure.gram_scale, x),
        "diversity": float(samples.std(1)[..., hidden].mean()) if settings["samples"] > 1
        else 0.0,
        "measurement_fit_rmse": float(fit.pow(2).mean().sqrt()),
        "network_calls_per_sample": int(calls),
        "seconds_per_sample": seconds / samples.shape[0] / samples.shape[1],
    }
    path = Path(out) if out is not None else Path(run_dir) / f"posterior_{settings['task']}.png"
    if to_unit is not None:  # images: truth, the measurement, samples, their mean
        shown = [x, measure.adjoint(y) / measure.gram_scale, *samples.unbind(1), mean]
        grid = torch.stack([to_unit(v.cpu()).clamp(0, 1) for v in shown], 1)
        fig = plots.plot_image_grid(
            grid.flatten(0, 1), nrow=len(shown),
            title=f"{settings['task']} by {settings['method']} ({settings['sampler']}, "
                  f"{calls} calls); columns: truth, observed, {samples.shape[1]} "
                  f"posterior samples, their mean")
    else:
        fig = plots.plot_samples(samples.flatten(0, 1).cpu(),
                                 title=f"posterior samples: {settings['task']} by "
                                       f"{settings['method']}")
    plots.save_figure(fig, path)
    text = json.dumps(result, indent=2)
    atomic_write_bytes(path.with_suffix(".json"), (text + "\n").encode())
    return result
