"""Declarative run configuration: TOML files and presets, overrides, and strict validation."""

from __future__ import annotations

import copy
import inspect
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from probgen.utils import did_you_mean

__all__ = [
    "ConfigError",
    "SECTIONS",
    "list_presets",
    "load_config",
    "check_sections",
    "parse_override",
    "apply_overrides",
    "check_keys",
    "check_call_kwargs",
    "dump_toml",
    "did_you_mean",
]

#: The tables a run file may have, each with the keys it accepts (``None``: checked later
#: against a constructor's or function's signature) and a one-line meaning.
SECTIONS: dict[str, tuple[dict[str, type | tuple[type, ...]] | None, str]] = {
    "run": ({"name": str, "description": str, "seed": int}, "name and seed of the run"),
    "data": (
        {
            "name": str,
            "root": str,
            "preprocess": str,
            "alpha": (int, float),
            "eval_size": int,
            "flatten": bool,
            "labels": bool,
        },
        "data set: a toy density, 'digits', 'mnist', 'cifar10' or 'cifar100', its "
        "preprocessing, and whether batches carry class labels",
    ),
    "model": (None, "model: 'name' plus the constructor's keyword arguments"),
    "objective": (
        None,
        "objective: a name of probgen.inference.registry.OBJECTIVES, e.g. 'ml' (forward KL), "
        "'regularized_ml' (with RNODE's 'kinetic' and 'jacobian' weights), 'reverse_kl' to "
        "an energy 'target', score matching: 'ism', 'ssm', 'dsm' (one 'sigma'), 'ncsn' (a "
        "ladder 'sigma_max'..'sigma_min'), or a family's objective ('elbo', 'ddpm', 'cfm', ...)",
    ),
    "train": (None, "keyword arguments of probgen.inference.fit ('threads': torch's CPU "
                    "threads; default: measured on the first steps)"),
    "eval": (
        {"num_samples": int, "resolution": int, "bound": (int, float), "batch_size": int},
        "evaluation: held-out size, density-grid resolution and half-width",
    ),
    "posterior": (
        {"task": str, "noise_std": (int, float), "method": str, "sampler": str, "steps": int,
         "scale": (int, float), "images": int, "samples": int, "data_variance": (int, float)},
        "`probgen posterior`'s inverse problem: the task (inpaint, denoise, superres), the "
        "measurement noise, PiGDM or DPS, the sampler and its steps, how many examples and "
        "samples",
    ),
    "sample": (
        None,
        "'n', the number of samples the run folder's figure shows; score runs: the Langevin "
        "sampler ('annealed' or 'langevin'), its steps (per level) and step size (eta; "
        "annealed: eps); other runs: keyword arguments of the model's sample method",
    ),
}


class ConfigError(ValueError):
    """A run configuration names an unknown key, has a wrong type or an impossible choice."""


def _preset_dir() -> Any:
    return resources.files("probgen.run.presets")


def list_presets() -> dict[str, str]:
    """Returns the built-in presets as ``{name: description}``, sorted by name."""
    out = {}
    for entry in sorted(_preset_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            cfg = tomllib.loads(entry.read_text(encoding="utf-8"))
            out[entry.name[: -len(".toml")]] = cfg.get("run", {}).get("description", "")
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses one ``--set section.key=value`` override (``model.network.depth=4`` for a nested
    table); the value is read as TOML.

    Values that are not valid TOML (``name=moons``) are taken as strings.

    Example:
        >>> parse_override("train.steps=100")
        (['train', 'steps'], 100)
        >>> parse_override("model.hidden_features=[32, 32]")
        (['model', 'hidden_features'], [32, 32])
    """
    if "=" not in text:
        raise ConfigError(f"--set: expected 'section.key=value', got {text!r}.")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set: expected a key of the form 'section.key' (or "
                          f"'model.table.key' for a nested table), got {key!r}.")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return path, parsed


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Returns a copy of ``config`` with every ``section.key=value`` override applied."""
    config = copy.deepcopy(config)
    for text in overrides:
        (section, *keys), value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(
                f"--set {text!r}: unknown section {section!r}; allowed: {sorted(SECTIONS)}."
                + did_you_mean(section, SECTIONS)
            )
        table = config.setdefault(section, {})
        for i, key in enumerate(keys[:-1]):
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join([section, *keys[:i + 1]])} is "
                                  f"a value, not a table.")
        table[keys[-1]] = value
    return config


def load_config(source: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Loads a run configuration from a preset name or a TOML file, then applies overrides.

    Args:
        source: a built-in preset name (``probgen list`` shows them) or a path to a ``.toml``.
        overrides: ``section.key=value`` strings (values parsed as TOML).

    Returns:
        The configuration as nested dicts, with known sections' keys and types checked.

    Raises:
        ConfigError: unknown preset or file, unknown section or key, or a wrong type.
    """
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist.")
        try:
            config = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}.") from e
    else:
        entry = _preset_dir() / f"{source}.toml"
        if not entry.is_file():
            presets = list_presets()
            raise ConfigError(
                f"{str(source)!r} is neither a TOML file nor a built-in preset; "
                f"presets: {', '.join(presets)}." + did_you_mean(str(source), presets)
            )
        config = tomllib.loads(entry.read_text(encoding="utf-8"))
    config = apply_overrides(config, overrides)
    check_sections(config)
    return config


def check_sections(config: Mapping[str, Any], where: str = "") -> None:
    """Checks a run configuration's tables: known sections, each a table, and the keys and
    types of the sections with a fixed schema (:data:`SECTIONS`).

    Args:
        config: the configuration as nested dicts.
        where: a prefix for the messages (e.g. ``"[runs.gan] "`` in a compare spec).

    Raises:
        ConfigError: an unknown section, a section that is not a table, or a bad key or type.
    """
    for section, table in config.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{where}unknown section [{section}]; allowed sections: {sorted(SECTIONS)}."
                + did_you_mean(section, SECTIONS)
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where}[{section}] must be a table, got "
                              f"{type(table).__name__}.")
        schema = SECTIONS[section][0]
        if schema is not None:
            try:
                check_keys(table, schema, section)
            except ConfigError as e:
                raise ConfigError(f"{where}{e}") from None


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__


def _matches(value: Any, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        return False
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, types)


def check_keys(
    table: Mapping[str, Any], schema: Mapping[str, type | tuple[type, ...]], section: str
) -> None:
    """Checks that ``table`` uses only the keys of ``schema`` with values of the right type.

    Raises:
        ConfigError: naming the key, and the allowed keys or the expected type.
    """
    for key, value in table.items():
        if key not in schema:
            raise ConfigError(
                f"[{section}] unknown key {key!r}; allowed keys: {sorted(schema)}."
                + did_you_mean(key, schema)
            )
        if not _matches(value, schema[key]):
            raise ConfigError(
                f"[{section}] {key} must be {_type_name(schema[key])}, "
                f"got {type(value).__name__} {value!r}."
            )


_SCALARS = {int: int, float: (int, float), str: str, bool: bool}


def _expected_from_annotation(annotation: Any) -> tuple[type, ...] | None:
    """Maps a (resolved) annotation to TOML value types, or ``None`` when it can't tell."""
    origin = typing.get_origin(annotation)
    if annotation in _SCALARS:
        t = _SCALARS[annotation]
        return t if isinstance(t, tuple) else (t,)
    if origin in (list, tuple, typing.Union) or str(origin) == "<class 'types.UnionType'>":
        if origin in (list, tuple):
            return (list,)
        out: list[type] = []
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            sub = _expected_from_annotation(arg)
            if sub is None:
                return None
            out.extend(sub)
        return tuple(dict.fromkeys(out))
    return None


def check_call_kwargs(
    fn: Callable[..., Any],
    kwargs: Mapping[str, Any],
    section: str,
    *,
    exclude: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
) -> None:
    """Checks config ``kwargs`` against ``fn``'s signature: known names, TOML-compatible types.

    Args:
        fn: a class or function whose keyword arguments the table feeds.
        kwargs: the table (without its ``name`` key).
        section: the table's name, quoted in errors.
        exclude: parameters a config may not set (filled in by the runner).
        labels: the name a key has in the run file, where it differs from the parameter's
            (a nested table's ``transforms`` for ``prior_transforms``).

    Raises:
        ConfigError: an unknown key (listing the allowed ones) or a value of the wrong type.
    """
    target = fn.__init__ if inspect.isclass(fn) else fn
    signature = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    allowed = {
        name: p
        for name, p in signature.parameters.items()
        if name not in ("self", *exclude)
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    label = getattr(fn, "__name__", str(fn))
    for key, value in kwargs.items():
        if key not in allowed:
            raise ConfigError(
                f"[{section}] unknown key {key!r} for {label}; allowed keys: "
                f"{sorted(allowed)}." + did_you_mean(key, allowed)
            )
        expected = _expected_from_annotation(hints.get(key)) if key in hints else None
        if expected is None:
            default = allowed[key].default
            if default is not inspect.Parameter.empty and default is not None:
                expected = _expected_from_annotation(type(default))
                if isinstance(default, (list, tuple)):
                    expected = (list,)
        if expected is not None and not _matches(value, expected):
            shown = (labels or {}).get(key, key)
            raise ConfigError(
                f"[{section}] {shown} must be {_type_name(expected)}, "
                f"got {type(value).__name__} {value!r}."
            )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write a {type(value).__name__} ({value!r}) to TOML.")


def dump_toml(config: Mapping[str, Mapping[str, Any]]) -> str:
    """Writes a configuration (tables of scalars, lists and nested tables) as TOML text.

    Example:
        >>> print(dump_toml({"train": {"steps": 10, "lr": 0.001}}))
        [train]
        steps = 10
        lr = 0.001
        <BLANKLINE>
    """
    lines: list[str] = []

    def table(name: str, values: Mapping[str, Any]) -> None:
        lines.append(f"[{name}]")
        for key, value in values.items():
            if value is not None and not isinstance(value, Mapping):
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
        for key, value in values.items():
            if isinstance(value, Mapping):
                table(f"{name}.{key}", value)

    for section, values in config.items():
        table(section, values)
    return "\n".join(lines)
