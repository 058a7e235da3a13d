"""Shared helpers for the benchmarks: threads, machine facts, timing, RESULTS.md sections,
the MNIST files, training under a wall-clock budget and the ``--quick`` smoke runs."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from probgen.utils import atomic_write_text

try:  # POSIX; elsewhere the writes stay atomic but unlocked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"

_HEADER = (
    "# Benchmark results\n\n"
    "Measured by the scripts in `benchmarks/`; every section says the command that "
    "reproduces it, the date, the machine and the torch version. Only measured numbers "
    "are recorded here.\n"
)


def set_threads(n: int) -> None:
    """Pins torch to ``n`` intra-op threads and one inter-op thread (call before any work)."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def command_line() -> str:
    """The command that started this process, relative to the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(BENCH_DIR.parent)
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def machine(threads: int) -> str:
    """A one-line description of the machine and software (no host name)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cores} CPU cores available ({cpu}), torch.set_num_threads({threads}), "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def today() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def provenance(threads: int) -> dict[str, str]:
    """The command, date and machine of this run, as the keys of a results JSON entry."""
    return {"command": command_line(), "date": today(), "machine": machine(threads)}


def stamp(threads: int, note: str = "") -> str:
    """The provenance line of a RESULTS.md section: `` `command` (date; machine[note]) ``."""
    return f"`{command_line()}` ({today()}; {machine(threads)}{note})"


def load_note() -> str:
    """The machine's measured load for a provenance line: the 1- and 15-minute load averages
    when the run ended (other processes included), instead of a fixed claim about sharing."""
    one, _, fifteen = os.getloadavg()
    return (f"load average {one:.1f} (1 min) / {fifteen:.1f} (15 min) on "
            f"{os.cpu_count()} cores when the run ended")


def summarize_times(seconds: list[float], warmup: int) -> dict[str, float]:
    """Median and mean milliseconds per step over the steps after ``warmup``."""
    kept = seconds[warmup:] if len(seconds) > warmup else seconds
    if not kept:
        return {"median_ms": float("nan"), "mean_ms": float("nan")}
    return {
        "median_ms": 1e3 * statistics.median(kept),
        "mean_ms": 1e3 * statistics.fmean(kept),
    }


def thread_note(minutes: float, threads: int) -> str:
    """The sentence a protocol-length run (2 cores in the issues) prints when torch had
    fewer threads; empty otherwise."""
    if threads >= 2:
        return ""
    return (f"**{minutes:g} minutes of wall clock as in the issue's protocol, but torch on "
            f"{threads} thread(s) (another benchmark used the other core): less CPU time "
            "than the protocol's 2 cores.**")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` + ``.lock`` (benchmarks running side by side
    read-modify-write the same files; without the lock one's update could drop another's)."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def update_json(path: Path, entries: dict) -> dict:
    """Merges ``entries`` into the JSON object stored at ``path`` (under its lock, written
    atomically) and returns the merged object, so runs of one benchmark side by side keep
    each other's results. A --quick run merges into its temporary copy (:func:`output_path`)."""
    path = output_path(path)
    with locked(path):
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(entries)
        atomic_write_text(path, json.dumps(merged, indent=1))
    return merged


def write_section(name: str, body: str, path: Path = RESULTS) -> Path:
    """Replaces (or appends) the section ``name`` of RESULTS.md, leaving the others intact.
    A --quick run writes its temporary copy instead (:func:`output_path`)."""
    path = output_path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    with locked(path):
        text = path.read_text() if path.exists() else _HEADER
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text, count=1)
        else:
            text = text.rstrip() + "\n\n" + block
        atomic_write_text(path, text)
    return path


def publish(name: str, body: str, write: bool, *, echo: bool = False, tag: str = "") -> None:
    """Prints ``body`` and, with ``write``, puts it in the RESULTS.md section ``name``
    (:func:`write_section`) and prints ``{tag}wrote PATH``; a written body is printed too
    only with ``echo``."""
    if echo or not write:
        print(body)
    if write:
        print(f"{tag}wrote {write_section(name, body)}")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- MNIST

#: Exit status of a benchmark whose MNIST IDX files are missing (the tests skip on it).
MNIST_MISSING = 3


def default_data_root() -> Path:
    """``$PROBGEN_DATA``, else ``../shared/data`` next to the repository (MNIST is looked up
    there and in its ``mnist/`` subfolder)."""
    env = os.environ.get("PROBGEN_DATA")
    return Path(env) if env else BENCH_DIR.parent.parent / "shared" / "data"


def add_mnist_root(parser: argparse.ArgumentParser) -> None:
    """Adds ``--root``: the folder of the MNIST IDX files (default ``../shared/data/mnist``
    next to the repository)."""
    parser.add_argument("--root", default=str(BENCH_DIR.parent.parent / "shared" / "data"
                                              / "mnist"))


def mnist_split(root: str | os.PathLike | None, split: str,
                tag: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``probgen.data.load_mnist(root, split)``: images ``(N, 1, 28, 28)`` uint8 and labels;
    a --quick run keeps the first :data:`QUICK_IMAGES`.

    When the files are missing the script stops here with one line on stderr, prefixed by
    ``[tag]``, and exit status :data:`MNIST_MISSING`.
    """
    from probgen.data import load_mnist

    try:
        images, labels = load_mnist(root, split)
    except FileNotFoundError as e:
        print(f"[{tag}] MNIST not found: {' '.join(str(e).split())}", file=sys.stderr,
              flush=True)
        raise SystemExit(MNIST_MISSING) from None
    if is_quick():
        return images[:QUICK_IMAGES], labels[:QUICK_IMAGES]
    return images, labels


def mnist_reference(test: torch.Tensor, n_ref: int,
                    n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The bundled MNIST classifier and its features of the first ``n_ref`` test images (the
    reference of FID, precision and recall) and of the ``n`` after them (held-out images
    scored like ``n`` samples: the floor at that sample size). ``test``: uint8 images."""
    from probgen.metrics import mnist_classifier

    classifier = mnist_classifier()
    with torch.no_grad():
        f_real = classifier.features(test[:n_ref].float() / 255)
        f_other = classifier.features(test[n_ref: n_ref + n].float() / 255)
    return classifier, f_real, f_other


# --------------------------------------------------------------------------- training

class Clock:
    """fit callback: stops once the wall-clock time since construction reaches
    ``budget_s``; ``step`` and ``seconds`` hold the last step seen and the time at it."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.t0 = time.perf_counter()
        self.step = 0
        self.seconds = 0.0

    def __call__(self, step: int, record: dict) -> bool:
        self.seconds = time.perf_counter() - self.t0
        self.step = step
        return self.seconds >= self.budget_s


def fit_for(minutes: float, objective: torch.nn.Module, data: object,
            **kwargs: object) -> tuple[object, int, float]:
    """``probgen.inference.fit(objective, data, **kwargs)`` stopped by a :class:`Clock` once
    ``minutes`` of wall clock have passed (``progress=False``, ``seed=0``); returns the
    history, the last step and the seconds spent."""
    from probgen.inference import fit

    clock = Clock(60 * minutes)
    history = fit(objective, data, progress=False, callbacks=clock, seed=0, **kwargs)
    return history, int(history.records[-1]["step"]), time.perf_counter() - clock.t0


def loss_ends(history: object, k: int) -> tuple[float, float]:
    """Mean loss of the first ``k`` and of the last ``k`` records of a fit history."""
    records = history.records
    return (statistics.fmean(r["loss"] for r in records[:k]),
            statistics.fmean(r["loss"] for r in records[-k:]))


def seconds_per_step(objective: torch.nn.Module, data: object, batch_size: int, lr: float,
                     seed: int, warm: int = 3, timed: int = 5) -> float:
    """Median time of an Adam training step on a throwaway copy of ``objective``: ``warm``
    untimed steps, then ``timed`` timed ones, each on a fresh batch (``data(batch_size,
    generator=g)`` when ``data`` is a sampler, else random rows of the tensor ``data``)."""
    obj = copy.deepcopy(objective)
    opt = torch.optim.Adam(obj.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    times = []
    for i in range(warm + timed):
        x = data(batch_size, generator=g) if callable(data) else data[
            torch.randint(0, data.shape[0], (batch_size,), generator=g)]
        t0 = time.perf_counter()
        loss = obj(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warm:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def draw_batches(dataset: str, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """Every training batch of a 2-D toy ``dataset``, drawn once from one seeded generator
    (so all libraries see the same batches): ``(steps, batch_size, 2)``."""
    from probgen.data import toy_sample

    g = torch.Generator().manual_seed(seed)
    return torch.stack([toy_sample(dataset, batch_size, generator=g) for _ in range(steps)])


def held_out(dataset: str, n: int, seed: int) -> torch.Tensor:
    """``n`` held-out points of a 2-D toy ``dataset`` (a generator apart from the batches')."""
    from probgen.data import toy_sample

    return toy_sample(dataset, n, generator=torch.Generator().manual_seed(seed + 10_000))


# --------------------------------------------------------------------------- --quick

#: Images of each MNIST split a --quick run keeps.
QUICK_IMAGES = 1000
_scratch: Path | None = None  # a --quick run's temporary folder (None: a full run)


def add_quick(parser: argparse.ArgumentParser, budget: str) -> None:
    """Adds ``--quick``: a smoke run in seconds, on ``budget`` (described for --help)."""
    parser.add_argument(
        "--quick", action="store_true",
        help=f"smoke run in seconds ({budget}; flags set to other values win): the same code "
             "paths, files written to a temporary folder deleted at exit, nothing under "
             "benchmarks/ (RESULTS.md, json, png) and no model touched")


def apply_quick(parser: argparse.ArgumentParser, args: argparse.Namespace,
                **budget: object) -> None:
    """Makes ``args`` a --quick run when ``args.quick`` is set (else does nothing).

    Each ``budget`` keyword replaces the flag of that destination unless the command line
    gave it a value other than its default; ``--threads`` becomes 1 the same way (on shared
    cores torch's second thread spin-waits, which made tiny runs 10x slower). Every file
    the run writes (RESULTS.md sections through :func:`write_section`, :func:`update_json`,
    and whatever the script passes through :func:`output_path`) goes to a temporary folder
    deleted at exit.
    """
    global _scratch
    if not args.quick:
        return
    if hasattr(args, "threads"):
        budget = {"threads": 1, **budget}
    for name, value in budget.items():
        if getattr(args, name) == parser.get_default(name):
            setattr(args, name, value)
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="probgen-quick-"))
        atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
    print(f"[quick] smoke run: tiny budget, numbers meaningless; files go to {_scratch} "
          "(deleted at exit), nothing under benchmarks/ is written", flush=True)


def is_quick() -> bool:
    """Whether :func:`apply_quick` made this process a --quick run."""
    return _scratch is not None


def output_path(path: str | os.PathLike) -> Path:
    """Where to write the file ``path``: itself, or in a --quick run the same name in the
    run's temporary folder (so no result, figure or model of the repository is touched)."""
    return Path(path) if _scratch is None else _scratch / Path(path).name


# --------------------------------------------------------------------------- samplers

def timed(fn):
    """``(fn(), seconds)``: one call of ``fn`` and its wall time."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@contextlib.contextmanager
def count_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Counts the forward calls of ``module`` while the block runs: yields a one-element
    list whose item is the count (read it after the block or during it)."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    handle = module.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def plain_annealed(net: torch.nn.Module, x: torch.Tensor, sigmas: list[float], steps: int,
                   eps: float, g: torch.Generator, denoise: bool = False) -> torch.Tensor:
    """The plain-PyTorch annealed Langevin loop (the speed reference of probgen's
    ``ScoreSampler``): ``steps`` steps of size ``eps * sigma**2 / sigma_min**2`` at each
    level of ``net(x, sigma)``, then with ``denoise`` one denoising step at the last level."""
    with torch.no_grad():
        for sigma in sigmas:
            eta = eps * sigma**2 / sigmas[-1] ** 2
            level = torch.full((x.shape[0],), sigma)
            for _ in range(steps):
                x = x + 0.5 * eta * net(x, level) + math.sqrt(eta) * torch.randn(
                    x.shape, generator=g)
        if denoise:
            level = torch.full((x.shape[0],), sigmas[-1])
            return x + sigmas[-1] ** 2 * net(x, level)
    return x


def diffusers_loop(model, scheduler, x, steps, generator=None, eta=None):
    """The sampling loop of diffusers' documentation driving a probgen diffusion model's
    network through ``model.output(x, step)`` at the scheduler's (integer or fractional)
    timestep; returns the samples and the number of network calls.

    ``eta`` and ``generator`` go to ``scheduler.step`` when ``eta`` is given (DDIM)."""
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    kw = {} if eta is None else {"eta": eta, "generator": generator}
    calls = 0
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t)
            step = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
            eps, _ = model.output(x_in, step)
            calls += 1
            x = scheduler.step(eps, t, x, **kw).prev_sample
    return x, calls
