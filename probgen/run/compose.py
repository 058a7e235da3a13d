"""Nested ``[model.*]`` tables of a run file, mapped onto the model constructors' arguments.

A run file composes a model as the Python API does::

    [model]
    name = "DDPM"
    [model.network]          # a probgen.nn network passed as DDPM(network=...)
    name = "dit"
    depth = 4
    [model.prior]            # VAE(prior="maf", prior_transforms=4, prior_hidden=[64, 64])
    name = "maf"
    transforms = 4
    hidden = [64, 64]

``[model.network]`` builds a network (:data:`NETWORKS`) for models that take one; the other
nested tables (:data:`NESTED`) are a constructor's flat arguments grouped by what they
describe. The flat form keeps working; setting one argument both ways is an error.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from probgen.models.path_model import UNET_DEFAULTS
from probgen.nn import DiT, UNet
from probgen.run.config import ConfigError, check_call_kwargs, did_you_mean

__all__ = ["NETWORKS", "NESTED", "compose_model_kwargs", "nested_form"]

#: ``[model.network] name`` -> the network class; its other keys are its arguments (the
#: image shape, classes and output channels come from the data and the model).
NETWORKS: dict[str, type[nn.Module]] = {"unet": UNet, "dit": DiT}

#: ``[model.<table>]`` -> ``{key: constructor argument}``; ``name`` maps to the argument
#: that picks the part. A table applies to the models that have that argument.
NESTED: dict[str, dict[str, str]] = {
    "prior": {"name": "prior", "components": "prior_components",
              "transforms": "prior_transforms", "hidden": "prior_hidden"},
    "posterior": {"name": "posterior", "transforms": "posterior_transforms",
                  "hidden": "posterior_hidden", "context_features": "context_features"},
    "encoder": {"name": "encoder", "hidden_features": "hidden_features",
                "channels": "channels", "blocks": "blocks"},
    "decoder": {"name": "decoder"},
    "likelihood": {"name": "likelihood", "scale": "scale", "levels": "levels"},
    "path": {"name": "path", "sigma_min": "sigma_min", "beta_min": "beta_min",
             "beta_max": "beta_max", "sigma_max": "sigma_max", "eps": "eps"},
    "sde": {"name": "sde", "beta_min": "beta_min", "beta_max": "beta_max",
            "sigma_min": "sigma_min", "sigma_max": "sigma_max"},
    "schedule": {"name": "schedule", "num_steps": "num_steps", "betas": "betas"},
}

# Arguments of a network that the model and the data fill in.
_NETWORK_FILLED = ("shape", "num_classes", "out_channels")


def _parameters(cls: type) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(cls).parameters


def _flatten(cls: type, key: str, sub: Mapping[str, Any], flat: dict[str, Any]) -> None:
    """Moves ``[model.<key>]`` into ``flat`` as ``cls``'s arguments, checking names and types."""
    params = _parameters(cls)
    mapping = {k: arg for k, arg in NESTED[key].items() if arg in params}
    label = f"model.{key}"
    if "name" not in sub:
        raise ConfigError(f"[{label}] name is required (it becomes {cls.__name__}'s "
                          f"{NESTED[key]['name']!r}).")
    for k, value in sub.items():
        if k not in mapping:
            raise ConfigError(f"[{label}] unknown key {k!r} for {cls.__name__}; allowed keys: "
                              f"{sorted(mapping)}." + did_you_mean(k, mapping))
        arg = mapping[k]
        if arg in flat:
            raise ConfigError(f"[model] {arg} and [{label}] {k} both set {cls.__name__}'s "
                              f"{arg!r}; keep one.")
        check_call_kwargs(cls, {arg: value}, label, labels={arg: k})
        flat[arg] = value


def _network(cls: type, sub: Mapping[str, Any], flat: dict[str, Any], data: Any) -> nn.Module:
    """Builds ``[model.network]`` for ``cls`` (which takes ``network``)."""
    sub = dict(sub)
    name = sub.pop("name", None)
    if name not in NETWORKS:
        raise ConfigError(f"[model.network] name must be one of {sorted(NETWORKS)}, got "
                          f"{name!r}." + did_you_mean(name, NETWORKS))
    # Flat U-Net keys (older run files, `--set model.base_channels=8` on a preset) join a
    # U-Net network table; a key set both ways, or U-Net keys for another network, is an error.
    unet = {k: flat.pop(k) for k in list(flat) if k in UNET_DEFAULTS}
    if unet and name != "unet":
        raise ConfigError(f"[model] {sorted(unet)} are U-Net arguments but [model.network] "
                          f"name = {name!r}; set that network's keys in [model.network].")
    both = sorted(set(unet) & set(sub))
    if both:
        raise ConfigError(f"[model] {both} and [model.network] both set the network's "
                          f"{both}; keep one.")
    sub.update(unet)
    net_cls = NETWORKS[name]
    check_call_kwargs(net_cls, sub, "model.network", exclude=_NETWORK_FILLED)
    shape = tuple(flat.get("shape", data.event_shape))
    if len(shape) != 3:
        raise ConfigError(f"[model.network] {name!r} is an image network (C, H, W) but the "
                          f"data has event shape {tuple(data.event_shape)}; remove [data] "
                          "flatten.")
    channels = 2 * shape[0] if flat.get("variance") == "learned_range" else None
    try:
        return net_cls(shape, num_classes=flat.get("num_classes"), out_channels=channels, **sub)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[model.network] {name}: {e}") from None


def compose_model_kwargs(cls: type, table: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """The keyword arguments of ``cls`` that a ``[model]`` table (without ``name``) declares.

    Nested tables are mapped onto ``cls``'s arguments (:data:`NESTED`) or built
    (``network``); flat keys pass as they are (checked against ``cls``'s signature).
    ``features``/``shape``/``num_classes`` are filled in from ``data`` when ``cls`` takes
    them and the table does not set them.

    Raises:
        ConfigError: an unknown table or key, a wrong type, a part set twice, or a network
            for a model that takes none; the message names the key.
    """
    params = _parameters(cls)
    flat = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    nested = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    check_call_kwargs(cls, flat, "model")
    usable = sorted([k for k in NESTED if NESTED[k]["name"] in params]
                    + (["network"] if "network" in params else []))
    for key in nested:
        if key not in usable:
            raise ConfigError(f"[model.{key}] does not apply to {cls.__name__}; its nested "
                              f"tables: {usable or 'none'}." + did_you_mean(key, usable))
    for key, sub in nested.items():
        if key != "network":
            _flatten(cls, key, sub, flat)
    if "features" in params and "features" not in flat:
        if len(data.event_shape) != 1:
            raise ConfigError(
                f"[model] {cls.__name__} models vectors but the data has event shape "
                f"{tuple(data.event_shape)}; set [data] flatten = true.")
        flat["features"] = data.event_shape[0]
    if "shape" in params and "shape" not in flat:
        if len(data.event_shape) != 3:
            raise ConfigError(
                f"[model] {cls.__name__} models images (C, H, W) but the data has event shape "
                f"{tuple(data.event_shape)}; remove [data] flatten or pick a vector flow.")
        flat["shape"] = list(data.event_shape)
    if "num_classes" in params and "num_classes" not in flat and data.num_classes is not None:
        flat["num_classes"] = data.num_classes
    if "network" in nested:
        flat["network"] = _network(cls, nested["network"], flat, data)
    return flat


def nested_form(cls: type, table: Mapping[str, Any]) -> dict[str, Any]:
    """A ``[model]`` table with its flat arguments grouped into nested tables.

    The inverse of :func:`compose_model_kwargs`'s mapping: flat U-Net arguments of a model
    that takes a ``network`` become ``[model.network] name = "unet"``, and every argument
    of :data:`NESTED` goes into its table (with the table's ``name`` at its default when
    only its options are set). Building either form gives the same model.
    """
    params = _parameters(cls)
    out = dict(table)
    if "network" in params and "network" not in out:
        unet = {k: out.pop(k) for k in UNET_DEFAULTS if k in out}
        if unet:
            out["network"] = {"name": "unet", **unet}
    for key, mapping in NESTED.items():
        if mapping["name"] not in params or key in out and not isinstance(out[key], str):
            continue
        moved = {k: out.pop(arg) for k, arg in mapping.items()
                 if arg in params and arg in out and not isinstance(out[arg], Mapping)}
        if moved:
            moved.setdefault("name", params[mapping["name"]].default)
            out[key] = moved
    return out
