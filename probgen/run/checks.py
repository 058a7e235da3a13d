"""Combinations of a run file that would train without error but report wrong numbers.

They are rejected before training (nothing in the run folder changes): a continuous density
on discrete pixels, a likelihood whose support is not the preprocessed data's, a warm-up
longer than the run (clipped, see :func:`clip_warmup`).
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from torch import nn

import probgen.models as zoo
from probgen.run.config import ConfigError

__all__ = ["DISCRETE_PREPROCESS", "LIKELIHOOD_SUPPORT", "check_combination", "clip_warmup"]

#: ``[data] preprocess`` values that give discrete pixels (binary, or integer levels).
DISCRETE_PREPROCESS = ("binarize", "dynamic_binarize", "discrete")

#: A VAE likelihood -> the ``[data] preprocess`` values its support matches (``"toy"``:
#: real-valued 2-D points): Bernoulli on {0, 1}, continuous Bernoulli on [0, 1], Gaussian
#: on real (dequantized) values, categorical and discretized logistic on integer pixels.
LIKELIHOOD_SUPPORT: dict[str, tuple[str, ...]] = {
    "BernoulliLikelihood": ("binarize", "dynamic_binarize"),
    "ContinuousBernoulliLikelihood": ("scale", "binarize", "dynamic_binarize"),
    "GaussianLikelihood": ("logit", "scale", "signed", "toy"),
    "CategoricalLikelihood": ("discrete",),
    "DiscretizedLogisticLikelihood": ("discrete",),
}


def _continuous_densities() -> tuple[type, ...]:
    """Model classes whose likelihood is a density on continuous values."""
    families = (zoo.FLOWS, zoo.CONTINUOUS_FLOWS, zoo.FM_MODELS, zoo.SDE_MODELS,
                zoo.DIFFUSION_MODELS)
    return tuple({cls for family in families for cls in family.values()})


def _preprocess(config: dict[str, Any]) -> str:
    data = config.get("data", {})
    if data.get("name") in ("digits", "mnist", "cifar10", "cifar100"):
        return str(data.get("preprocess", "logit"))
    return "toy"


def check_combination(config: dict[str, Any], model: nn.Module) -> None:
    """Rejects a model whose likelihood does not fit the run's (preprocessed) data.

    Raises:
        ConfigError: a continuous density (normalizing or continuous flow, flow matching,
            score SDE, diffusion) on discrete pixels, or a VAE likelihood whose support is
            not the preprocessed data's; the message names the keys and what fits.
    """
    kind = _preprocess(config)
    name = config.get("model", {}).get("name", type(model).__name__)
    if kind in DISCRETE_PREPROCESS and isinstance(model, _continuous_densities()):
        raise ConfigError(
            f"[data] preprocess = {kind!r} gives discrete pixels, but [model] {name} is a "
            "continuous density: its likelihood (NLL, bits/dim) on them is meaningless "
            "(unbounded). Use preprocess = 'logit' (dequantized; 'signed' for diffusion, "
            "flow matching and score SDEs) or a discrete model (MADE, PixelCNN, a VAE with "
            "a Bernoulli or categorical likelihood).")
    likelihood = type(getattr(model, "likelihood", None)).__name__
    support = LIKELIHOOD_SUPPORT.get(likelihood)
    if support is not None and kind not in support:
        shown = "real-valued points" if kind == "toy" else f"preprocess = {kind!r}"
        raise ConfigError(
            f"[model] likelihood ({likelihood}) does not fit the data ({shown}): it needs "
            f"[data] preprocess in {[s for s in support if s != 'toy']}.")


def clip_warmup(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration with ``[train] warmup_steps`` clipped to the run.

    A warm-up at least as long as ``[train] steps`` (a preset's 500 steps under
    ``--set train.steps=100``) becomes a tenth of the run, and a note on stderr says so; the
    returned copy (written to the run folder's ``config.toml``) holds the value in effect.
    """
    train = config.get("train", {})
    warmup, steps = train.get("warmup_steps"), train.get("steps")
    if not isinstance(warmup, int) or not isinstance(steps, int) or warmup < steps:
        return config
    clipped = steps // 10
    print(f"probgen: [train] warmup_steps = {warmup} is not shorter than steps = {steps}; "
          f"using warmup_steps = {clipped} (a tenth of the run).", file=sys.stderr)
    config = copy.deepcopy(config)
    config["train"]["warmup_steps"] = clipped
    return config
