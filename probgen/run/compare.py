"""``probgen compare``: several runs of any families, one budget, one data set, one table.

A compare spec is a TOML file (or a built-in one, ``probgen compare compare-moons``)::

    [compare]
    description = "six families on moons"
    metrics = ["w2"]          # sample metrics of probgen.metrics.SAMPLE_METRICS
    num_samples = 1000        # model samples per sample metric (default: held-out size)
    eval_examples = 2000      # held-out examples every model is evaluated on
    figure_samples = 1000     # samples per panel of compare.png, also timed
    seed = 0

    [budget]                  # the same for every run: steps, wall-clock minutes, or both
    steps = 1000
    minutes = 1.0

    [data]                    # shared: merged into every run's [data]
    name = "moons"

    [runs.realnvp]            # a preset, with inline tables on top of it
    preset = "realnvp-moons"

    [runs.gan]
    preset = "gan-8gaussians"
    set = ["train.lr=0.0002"]  # --set overrides

    [runs.mine.model]         # or a whole run table
    name = "MAF"

``probgen compare SPEC --set data.root=DIR`` sets a spec key from the command line.

Every run trains through :func:`probgen.run.experiment.fit_run` into ``OUT/<name>/`` (a
normal run folder) and is evaluated by :func:`probgen.run.experiment.eval_run` with the
spec's metrics, so each row of the table is what ``probgen eval OUT/<name> --metrics ...``
reports. ``OUT/compare.csv`` has every number, ``OUT/compare.md`` the main ones and
``OUT/compare.png`` the samples of each model side by side.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

import probgen.inference as inference
from probgen.metrics.evaluate import SAMPLE_METRICS
from probgen.run import experiment
from probgen.run.config import (
    SECTIONS,
    ConfigError,
    apply_overrides,
    check_keys,
    check_sections,
    did_you_mean,
    load_config,
    parse_override,
)
from probgen.run.progress import Progress
from probgen.utils import atomic_write_text

__all__ = ["CompareSpec", "NetworkCalls", "BOUND_OBJECTIVES", "list_compare_presets",
           "load_spec", "run_compare"]

#: The tables of a compare spec and the keys of each (``runs`` holds one table per run).
SPEC_SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "compare": {"name": str, "description": str, "metrics": list, "num_samples": int,
                "eval_examples": int, "figure_samples": int, "seed": int, "threads": int},
    "budget": {"steps": int, "minutes": (int, float)},
    "data": SECTIONS["data"][0],  # type: ignore[dict-item]
    "runs": dict,
}
#: The keys of one ``[runs.<name>]`` table besides the run file's own sections.
_RUN_KEYS = ("preset", "set")
#: Objectives whose held-out ``nll`` is an upper bound on the negative log-likelihood (a
#: variational bound, or DDPM's Monte-Carlo estimate of its bound), not the exact value.
BOUND_OBJECTIVES = frozenset({"elbo", "gumbel_elbo", "iwae", "vr", "vqvae", "ddpm"})


@dataclass
class CompareSpec:
    """A parsed compare spec.

    Attributes:
        name: the spec's name (the file's stem or the preset's name).
        description: one line.
        runs: ``{name: run configuration}``, each complete (shared data, budget and seed
            applied) and ready for :func:`probgen.run.experiment.fit_run`.
        metrics: sample metrics (names of :data:`probgen.metrics.SAMPLE_METRICS`).
        num_samples: model samples per sample metric (``None``: the held-out size, at most
            10 000).
        figure_samples: samples drawn (and timed) per model for the figure.
        minutes: the wall-clock budget per run, or ``None``.
        seed: the seed of every run.
    """

    name: str
    description: str
    runs: dict[str, dict[str, Any]]
    metrics: list[str] = field(default_factory=list)
    num_samples: int | None = None
    figure_samples: int | None = None
    minutes: float | None = None
    seed: int = 0


def _compare_dir() -> Any:
    return resources.files("probgen.run.presets") / "compare"


def list_compare_presets() -> dict[str, str]:
    """The built-in compare specs as ``{name: description}``, sorted by name."""
    out = {}
    for entry in sorted(_compare_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            spec = tomllib.loads(entry.read_text(encoding="utf-8"))
            out[entry.name[: -len(".toml")]] = spec.get("compare", {}).get("description", "")
    return out


def _read_spec(source: str | Path) -> tuple[str, dict[str, Any]]:
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"compare spec {str(path)!r} does not exist.")
        text, name = path.read_text(encoding="utf-8"), path.stem
    else:
        entry = _compare_dir() / f"{source}.toml"
        if not entry.is_file():
            presets = list_compare_presets()
            raise ConfigError(f"{str(source)!r} is neither a TOML file nor a built-in compare "
                              f"spec; built-in: {', '.join(presets)}."
                              + did_you_mean(str(source), presets))
        text, name = entry.read_text(encoding="utf-8"), str(source)
    try:
        return name, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"compare spec {str(source)!r} is not valid TOML: {e}.") from e


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top``'s tables merged in, key by key, nested tables recursively."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _positive(table: Mapping[str, Any], key: str, section: str) -> None:
    value = table.get(key)
    if value is not None and value <= 0:
        raise ConfigError(f"[{section}] {key} must be positive, got {value!r}.")


def _run_config(name: str, table: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """One run's full configuration: its preset, its inline tables, then the shared data,
    budget, seed and held-out size."""
    where = f"[runs.{name}] "
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}must be a table (a run), got {type(table).__name__}.")
    allowed = [*_RUN_KEYS, *SECTIONS]
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}unknown key {key!r}; allowed keys: {allowed}."
                              + did_you_mean(key, allowed))
    preset = table.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"{where}preset must be str, got {type(preset).__name__} {preset!r}.")
    overrides = table.get("set", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{where}set must be a list of 'section.key=value' strings, got "
                          f"{overrides!r}.")
    if preset is None and "model" not in table:
        raise ConfigError(f"{where}needs a 'preset' or a [runs.{name}.model] table.")
    try:
        config = load_config(preset) if preset is not None else {}
        config = _merge(config, {k: v for k, v in table.items() if k not in _RUN_KEYS})
        config = apply_overrides(config, overrides)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    check_sections(config, where)
    config = _merge(config, {"data": spec.get("data", {})})
    budget, settings = spec.get("budget", {}), spec.get("compare", {})
    run = config.setdefault("run", {})
    run["name"], run["seed"] = name, int(settings.get("seed", 0))
    train = config.setdefault("train", {})
    if "steps" in budget:
        train["steps"] = budget["steps"]
    if "threads" in settings:
        train["threads"] = settings["threads"]
    if "eval_examples" in settings:
        config.setdefault("eval", {})["num_samples"] = settings["eval_examples"]
    try:  # every run's keys are checked before the first one trains
        experiment.validate_config(config)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    return config


def _apply_spec_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> None:
    """Sets ``table.key=value`` overrides (``data.root=...``, ``runs.gan.train.lr=...``) in
    the spec's tables, creating tables on the way."""
    for text in overrides:
        path, value = parse_override(text)
        table = raw
        for i, key in enumerate(path[:-1]):
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(path[:i + 1])} is a value, "
                                  "not a table.")
        table[path[-1]] = value


def load_spec(source: str | Path, overrides: Iterable[str] = (), *,
              threads: int | None = None) -> CompareSpec:
    """Reads a compare spec: a built-in name (``compare-moons``) or a path to a ``.toml``.

    Args:
        source: the spec.
        overrides: ``table.key=value`` strings set in the spec before it is checked
            (``data.root=/data/mnist``, ``budget.minutes=2``, ``runs.gan.train.lr=1e-4``).
        threads: torch's CPU threads for every run (overrides ``[compare] threads``).

    Returns:
        CompareSpec: the runs, complete, and the shared settings.

    Raises:
        ConfigError: an unknown spec, table or key, a wrong type, no runs, no budget, or runs
            on different data; the message names the table and the key.
    """
    name, raw = _read_spec(source)
    _apply_spec_overrides(raw, overrides)
    for section, table in raw.items():
        if section not in SPEC_SECTIONS:
            raise ConfigError(f"compare spec: unknown table [{section}]; allowed: "
                              f"{sorted(SPEC_SECTIONS)}." + did_you_mean(section, SPEC_SECTIONS))
        if not isinstance(table, dict):
            raise ConfigError(f"compare spec: [{section}] must be a table, got "
                              f"{type(table).__name__}.")
        if section != "runs":
            check_keys(table, SPEC_SECTIONS[section], section)
    settings, budget = raw.get("compare", {}), raw.get("budget", {})
    if threads is not None:
        settings = raw.setdefault("compare", {})
        settings["threads"] = threads
    for key in ("num_samples", "eval_examples", "figure_samples", "threads"):
        _positive(settings, key, "compare")
    for key in ("steps", "minutes"):
        _positive(budget, key, "budget")
    if not budget:
        raise ConfigError("[budget] needs steps (per run), minutes (wall clock per run) or "
                          "both; got neither.")
    metrics = settings.get("metrics", [])
    for metric in metrics:
        if metric not in SAMPLE_METRICS:
            raise ConfigError(f"[compare] metrics: {metric!r} is unknown; allowed: "
                              f"{sorted(SAMPLE_METRICS)}." + did_you_mean(metric, SAMPLE_METRICS))
    runs_table = raw.get("runs", {})
    if len(runs_table) < 1:
        raise ConfigError("[runs] is empty: a compare spec needs at least one "
                          "[runs.<name>] table.")
    runs = {run: _run_config(run, table, raw) for run, table in runs_table.items()}
    datasets = {run: config.get("data", {}).get("name") for run, config in runs.items()}
    if len(set(datasets.values())) != 1 or None in datasets.values():
        raise ConfigError(f"[data] name: every run must train on the same data, got "
                          f"{datasets}; set it once in the spec's [data] table.")
    for run, config in runs.items():
        if not experiment.needs_data(config):
            raise ConfigError(f"[runs.{run}] objective {experiment.objective_name(config)!r} "
                              "trains without data, so it cannot be compared on data.")
    return CompareSpec(
        name=str(settings.get("name", name)),
        description=str(settings.get("description", "")),
        runs=runs,
        metrics=list(metrics),
        num_samples=settings.get("num_samples"),
        figure_samples=settings.get("figure_samples"),
        minutes=float(budget["minutes"]) if "minutes" in budget else None,
        seed=int(settings.get("seed", 0)),
    )


class NetworkCalls:
    """Counts network evaluations: the outermost ``forward`` calls of modules that hold
    parameters, while the context is open.

    A call inside another counted call (a layer inside its network, a network inside the
    ODE function that wraps it) is not counted again; ``transparent`` modules (the model
    itself, whose ``sample`` or ``forward`` only drives its networks) are never counted, so
    their networks are. Drawing a batch of samples in parallel, the count is the number of
    network evaluations per sample: 1 for a GAN's generator, T for DDPM's T ancestral steps,
    the solver's function evaluations for an ODE, one per coupling network for a flow.

    Args:
        transparent: modules whose own calls are not counted.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Linear(4, 2))
        >>> with NetworkCalls() as calls:
        ...     _ = net(net(torch.zeros(1, 2)))
        >>> calls.count
        2
    """

    def __init__(self, transparent: tuple[nn.Module, ...] = ()) -> None:
        self.transparent = {id(m) for m in transparent}
        self.count = 0
        self._open: list[int] = []
        self._has_params: dict[int, bool] = {}
        self._handles: list[Any] = []

    def _counted(self, module: nn.Module) -> bool:
        key = id(module)
        if key in self.transparent:
            return False
        if key not in self._has_params:
            self._has_params[key] = next(module.parameters(), None) is not None
        return self._has_params[key]

    def _pre(self, module: nn.Module, args: Any) -> None:
        if self._counted(module):
            if not self._open:
                self.count += 1
            self._open.append(id(module))

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._counted(module) and self._open and self._open[-1] == id(module):
            self._open.pop()

    def __enter__(self) -> NetworkCalls:
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        self.count, self._open = 0, []
        self._handles = [register_module_forward_pre_hook(self._pre),
                         register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _family(model: nn.Module) -> str:
    module = type(model).__module__.rsplit(".", 1)[-1]
    return experiment.FAMILIES.get(module, module)


def _measure_sampling(run_dir: Path, n: int, seed: int, threads: int | None
                      ) -> tuple[dict[str, Any], torch.Tensor, experiment.DataBundle]:
    """Draws ``n`` samples of a trained run in one batch, timed and with its network calls
    counted; returns the measures, the samples (model space) and the run's data bundle."""
    config, data, model, objective = experiment.load_run(run_dir, with_data=False)
    experiment.set_threads(config, threads, run_dir)
    torch.manual_seed(seed)
    sampler = experiment.build_sampler(config, model, objective, data)
    with NetworkCalls(transparent=(model, objective)) as calls:
        stats, samples = experiment.sample_stats(
            sampler, data, {**config, "sample": {"n": n}}, no_grad=sampler is model)
    params = sum(p.numel() for p in model.parameters())
    return ({"params": params, "sample_seconds": stats["sample/seconds"], "samples_drawn": n,
             "network_calls_per_sample": calls.count, "family": _family(model),
             "model": type(model).__name__},
            samples, data)


@contextmanager
def _stage(reporter: Progress, text: str) -> Iterator[None]:
    start = time.perf_counter()
    reporter.line(f"compare: {text}")
    yield
    reporter.line(f"compare: {text} done in {time.perf_counter() - start:.1f} s")


#: The leading columns of ``compare.csv``; the evaluation's own keys follow, sorted.
_FIXED_COLUMNS = ("run", "model", "family", "objective", "data", "preprocess", "params",
                  "steps", "train_seconds", "sample_seconds", "samples_drawn",
                  "network_calls_per_sample", "nll_kind")


def run_compare(spec: CompareSpec, out_dir: str | Path, *, progress: bool | str = True,
                fit: Callable[..., dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Trains, evaluates and samples every run of ``spec``; writes the table and the figure.

    Each run goes to ``out_dir/<name>/`` through :func:`probgen.run.experiment.fit_run`
    (with ``max_seconds`` for a wall-clock budget) and is evaluated by
    :func:`probgen.run.experiment.eval_run` with the spec's sample metrics (its
    ``eval.json`` is rewritten by it). Then ``figure_samples`` samples are drawn in one
    batch, timed, and their network calls counted (:class:`NetworkCalls`).

    Writes ``compare.csv`` (every number; the evaluation's keys as ``eval_run`` names
    them), ``compare.md`` (the main columns) and ``compare.png`` (the samples).

    Args:
        spec: a spec from :func:`load_spec`.
        out_dir: the folder of the comparison.
        progress: see :class:`probgen.run.progress.Progress`.
        fit: the training function (default :func:`probgen.run.experiment.fit_run`).

    Returns:
        list: one row (a dict of the CSV's columns) per run, in the spec's order.
    """
    from probgen import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reporter = Progress(progress)
    fit = experiment.fit_run if fit is None else fit
    metrics = ",".join(spec.metrics) or None
    rows, panels = [], []
    images = False
    bound: float | None = None
    for i, (name, config) in enumerate(spec.runs.items(), start=1):
        run_dir = out / name
        threads = config.get("train", {}).get("threads")
        with _stage(reporter, f"[{i}/{len(spec.runs)}] {name}: fit"):
            result = fit(copy.deepcopy(config), out_dir=run_dir, progress=progress,
                         default_name=name,
                         max_seconds=None if spec.minutes is None else 60.0 * spec.minutes)
        with _stage(reporter, f"[{i}/{len(spec.runs)}] {name}: eval"):
            values = experiment.eval_run(run_dir, metrics, num_samples=spec.num_samples,
                                         threads=threads, progress=progress)
        default_n = 64 if experiment.describe_data(config).kind == "image" else 1000
        n = spec.figure_samples or default_n
        with _stage(reporter, f"[{i}/{len(spec.runs)}] {name}: {n} samples"):
            measures, samples, data = _measure_sampling(run_dir, n, spec.seed, threads)
        objective = experiment.objective_name(config)
        row: dict[str, Any] = {
            "run": name, "objective": objective, "data": data.name,
            "preprocess": config.get("data", {}).get("preprocess", "") if data.kind == "image"
            else "", "steps": int(inference.load_checkpoint(run_dir / "checkpoint.pt")["step"]),
            "train_seconds": result["train_seconds"],
            "nll_kind": ("" if "test/nll" not in values else
                         "bound" if objective in BOUND_OBJECTIVES else "exact"),
            **measures, **values}
        rows.append(row)
        images = data.kind == "image"
        if not images:
            bound = float(config.get("eval", {}).get("bound", 4.0))
        pixels = experiment.to_pixels(samples, data)
        if images:
            pixels = pixels.double() / (experiment.pixel_levels(data) - 1)
        panels.append((f"{name}: {row['model']}\n{row['family']}, "
                       f"{row['network_calls_per_sample']} net calls", pixels))
    _write_table(rows, out)
    title = f"{spec.name}: samples on {rows[0]['data']}" if rows else spec.name
    plots.save_figure(plots.plot_sample_comparison(
        panels, images=images, title=title, bounds=None if images else bound), out / "compare.png")
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    extra = sorted({key for row in rows for key in row} - set(_FIXED_COLUMNS))
    return [*_FIXED_COLUMNS, *extra]


def _format(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _markdown(rows: list[dict[str, Any]]) -> str:
    """The main columns: model, training, likelihoods, sample metrics, sampling cost."""
    metric_keys = sorted({k for row in rows for k in row
                          if k.startswith("samples/") and k != "samples/num_samples"})
    headers = ["run", "model", "family", "params", "steps", "train s", "NLL exact (nats)",
               "NLL bound (nats)", "bits/dim",
               *[k.split("/", 2)[-1] + f" ({k.split('/')[1]})" for k in metric_keys],
               "sample s", "net calls / sample"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        nll = row.get("test/nll")
        bpd = row.get("test/bits_per_dim", row.get("test/bpd"))
        cells = [row["run"], row["model"], row["family"], row["params"], row["steps"],
                 row["train_seconds"],
                 nll if row["nll_kind"] == "exact" else None,
                 nll if row["nll_kind"] == "bound" else None, bpd,
                 *[row.get(k) for k in metric_keys],
                 row["sample_seconds"], row["network_calls_per_sample"]]
        lines.append("| " + " | ".join(_format(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _write_table(rows: list[dict[str, Any]], out: Path) -> None:
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    atomic_write_text(out / "compare.csv", buffer.getvalue())
    n = rows[0].get("samples_drawn") if rows else 0
    notes = ("\nNLL: held-out negative log-likelihood in nats per example (bits/dim for "
             "images); 'bound' marks a variational upper bound. Sample metrics compare "
             "model samples with held-out data in the space named in brackets. 'sample s': "
             f"seconds to draw {n} samples in one batch; 'net calls / sample': outermost "
             "network evaluations for that batch. Every number of each row is in "
             "compare.csv, the evaluation's as `probgen eval` names them.\n")
    atomic_write_text(out / "compare.md", _markdown(rows) + notes)
