"""Torch's CPU thread count for training: one thread, one per core, and ``fit``'s measured
default (``threads="auto"``), on an idle and on a busy machine (issue 24).

Issue 24's "Must show": ``fit`` on a small model is not slower than with one thread under
load (a benchmark, not a timed test); the default is measured: one thread for small models
where that is faster, all cores for large convolutional models.

Setups are presets of the run layer (built by ``probgen.run.experiment`` exactly as
``probgen fit`` builds them, so the data, model and objective are the preset's):
``realnvp-moons`` (a 2-D coupling flow, batch 512), ``ddpm-moons`` (a 2-D MLP DDPM),
``ddpm-digits`` (a U-Net on 8x8 digits), ``vae-mnist`` (a convolutional VAE on MNIST; needs
the MNIST files: ``--data`` or ``PROBGEN_DATA``; skipped without them), optionally
``ddpm-mnist`` (a U-Net on MNIST: 1-2 s per step, so not in the default list).

One measurement is a whole ``fit`` call of ``--steps`` steps (the setup's own count below)
from the same initial weights, with ``threads=1``, ``threads=N`` (torch's default: one per
physical core; :data:`MANY_STEPS` steps at most, as a step can cost 35x one thread's under
load) or ``threads="auto"`` (its probe steps included: what a user pays); its seconds per
step. Each round runs the three in turn (order rotated each round). A condition
``--loads L`` starts ``L`` extra processes that each keep one core busy (a spinning Python
loop) for the whole condition, as other jobs on a shared machine do; the machine's own load
average is reported beside it, since other jobs may run too. Reported per setup and
condition: median seconds per step of each variant and the paired ratios auto/1, auto/N and
N/1 (median over rounds with its distribution-free 95% interval). Goal: auto/1 <= 1.05 under
load on the small setups (never slower than one thread), and auto close to the faster of
1 and N everywhere.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    command_line,
    machine,
    markdown_table,
    publish,
    today,
)
from dynamics_speed import median_ci  # noqa: E402

#: setup -> training steps per fit call (each about 1-10 s on one core)
STEPS = {"realnvp-moons": 200, "ddpm-moons": 200, "ddpm-digits": 60, "vae-mnist": 100,
         "ddpm-mnist": 50}
#: steps of the ``threads=N`` calls (no probe to amortize; a step costs up to 35x one
#: thread's on a loaded machine)
MANY_STEPS = 30
DEFAULT_SETUPS = ("realnvp-moons", "ddpm-moons", "ddpm-digits", "vae-mnist")
SMALL = ("realnvp-moons", "ddpm-moons", "ddpm-digits")


def build(name: str, steps: int) -> tuple[torch.nn.Module, object, dict]:
    """The preset's objective (seeded), training data and ``fit`` keywords."""
    from probgen.run import experiment
    from probgen.run.config import load_config

    config = experiment.clip_warmup(load_config(name, [f"train.steps={steps}"]))
    torch.manual_seed(0)
    data = experiment.build_data(config, seed=0)
    model = experiment.build_model(config, data)
    objective = experiment.build_objective(config, model, data)
    train = {k: v for k, v in config["train"].items()
             if k not in ("threads", "device", "eval_every", "checkpoint_every")}
    return objective, data.train, train


def time_fit(objective: torch.nn.Module, data: object, train: dict, threads: int | str
             ) -> tuple[float, int]:
    """Seconds per step of one ``fit`` call from a copy of ``objective``, and the count it
    trained with."""
    from probgen.inference import fit

    fresh = copy.deepcopy(objective)
    t0 = time.perf_counter()
    history = fit(fresh, data, progress=False, threads=threads, **train)
    return (time.perf_counter() - t0) / train["steps"], history.threads


def spin(load: int) -> list[subprocess.Popen]:
    """``load`` processes that each keep one core busy until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(load)]


def measure(name: str, load: int, rounds: int, steps: int) -> dict:
    objective, data, train = build(name, steps)
    many = torch.get_num_threads()
    variants: list[int | str] = [1, many, "auto"]
    times: dict[str, list[float]] = {str(v): [] for v in variants}
    chosen: list[int] = []
    spinners = spin(load)
    try:
        time.sleep(0.5 if load else 0.0)
        before = os.getloadavg()[0]
        warm = {**train, "steps": max(2, steps // 10), "warmup_steps": 0}
        time_fit(objective, data, warm, 1)  # warm caches
        for r in range(rounds):
            order = variants[r % 3:] + variants[: r % 3]
            for v in order:
                # N threads can be 10-35x slower under load: a shorter call measures its step
                steps_v = min(steps, MANY_STEPS) if v == many else steps
                seconds, count = time_fit(objective, data, {**train, "steps": steps_v}, v)
                times[str(v)].append(seconds)
                if v == "auto":
                    chosen.append(count)
        after = os.getloadavg()[0]
    finally:
        for p in spinners:
            p.kill()
            p.wait()

    def ratio(a: str, b: str) -> tuple[float, tuple[float, float]]:
        rs = [x / y for x, y in zip(times[a], times[b], strict=True)]
        return statistics.median(rs), median_ci(rs)

    return {"many": many, "load": load, "loadavg": (before, after), "chosen": chosen,
            "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
            "auto/1": ratio("auto", "1"), "auto/N": ratio("auto", str(many)),
            "N/1": ratio(str(many), "1")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(DEFAULT_SETUPS), choices=list(STEPS))
    parser.add_argument("--loads", nargs="+", type=int, default=[0, 1],
                        help="extra busy processes per condition")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setup and condition")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiplies each setup's steps per fit call")
    parser.add_argument("--data", default=None, help="folder of the MNIST files")
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    parser.add_argument("--section", default="threads",
                        help="RESULTS.md section to write (e.g. threads_idle for a run on an "
                             "otherwise idle machine beside the loaded one)")
    add_quick(parser, "realnvp-moons only, 1 round, load 1, 50 steps")
    args = parser.parse_args()
    apply_quick(parser, args, setups=["realnvp-moons"], rounds=1, loads=[1], steps_scale=0.25)
    if args.data is not None:
        os.environ["PROBGEN_DATA"] = args.data
    warnings.filterwarnings("ignore", category=UserWarning)
    start = time.perf_counter()
    rows, missed = [], []
    for name in args.setups:
        steps = max(50, int(STEPS[name] * args.steps_scale))
        for load in args.loads:
            try:
                res = measure(name, load, args.rounds, steps)
            except FileNotFoundError as e:
                missed.append(f"{name}: {str(e).splitlines()[0][:160]}")
                break
            ms = res["ms"]
            n = res["many"]
            a1, aN, N1 = res["auto/1"], res["auto/N"], res["N/1"]
            line = (f"{name} load +{load} (loadavg {res['loadavg'][0]:.1f}-"
                    f"{res['loadavg'][1]:.1f}): 1 thread {ms['1']:.1f} ms, {n} threads "
                    f"{ms[str(n)]:.1f} ms, auto {ms['auto']:.1f} ms (chose {res['chosen']}); "
                    f"auto/1 {a1[0]:.3f}, auto/N {aN[0]:.3f}, N/1 {N1[0]:.3f}")
            print(f"[threads] {line}", flush=True)
            rows.append([name, f"+{load}", f"{res['loadavg'][0]:.1f}-{res['loadavg'][1]:.1f}",
                         str(steps), f"{ms['1']:.1f}", f"{ms[str(n)]:.1f}", f"{ms['auto']:.1f}",
                         ",".join(map(str, res["chosen"])),
                         f"{a1[0]:.3f} [{a1[1][0]:.3f}, {a1[1][1]:.3f}]",
                         f"{aN[0]:.3f} [{aN[1][0]:.3f}, {aN[1][1]:.3f}]",
                         f"{N1[0]:.3f} [{N1[1][0]:.3f}, {N1[1][1]:.3f}]"])
    elapsed = time.perf_counter() - start
    n = torch.get_num_threads()
    lines = [
        "## CPU threads for training: 1, one per core, and fit's measured default "
        f"({args.section})", "",
        f"Command: `{command_line()}`  ",
        f"Date: {today()}; {machine(n)}; total {elapsed / 60:.1f} min. N = {n} (torch's "
        "default). **The machine was shared with other jobs** (its 1-minute load average "
        "at the start and end of each condition is in the table): read the paired ratios.",
        "",
        "Each cell is a whole `fit` call of the preset's model and objective, from the same "
        f"initial weights, with `threads=1`, `threads=N` ({MANY_STEPS} steps at most) or "
        f"`threads=\"auto\"` (its probe steps included); {args.rounds} rounds, order "
        "rotated; ms: median seconds per step; "
        "ratios: median over rounds of the paired ratio with its distribution-free 95% "
        "interval. load: extra processes each spinning one core during the condition. "
        "chose: the count `auto` kept in each round. Goal: auto/1 <= 1.05 under load on "
        "the small setups, and auto near min(1, N) everywhere.", "",
        markdown_table(["setup", "load", "loadavg", "steps", "1 thread ms", "N threads ms",
                        "auto ms", "auto chose", "auto/1", "auto/N", "N/1"], rows),
    ]
    if missed:
        lines += ["", "Skipped: " + "; ".join(missed)]
    body = "\n".join(lines)
    publish(args.section, body, args.write, echo=True, tag="[threads] ")


if __name__ == "__main__":
    main()
