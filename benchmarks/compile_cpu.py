"""Training step time on CPU: eager vs ``fit(compile=True)`` (torch.compile), paired (issue 25).

Issue 25's "Must show": eager vs ``compile=True`` step time on the 2-D flows, the digits VAE
and the 2-D diffusion model, as paired ratios in one run; goal: compiled at least 1.3x
faster than eager on the 2-D flows.

One step is what ``fit`` does around the objective: ``zero_grad``, the objective's forward
(``torch.compile(objective)`` with the default backend and mode, as ``fit(compile=True)``
builds it, or the objective itself), ``backward``, an Adam step (``make_optimizer``'s, as
fit builds it), on fixed pools of data batches. Setups:

- ``realnvp``: ``RealNVP(2, transforms=8, hidden_features=[64, 64])``, maximum likelihood
  on moons, batch 512 (benchmarks/flows_2d.py's RealNVP);
- ``maf``: ``MAF(2, transforms=5, hidden_features=[64, 64])``, the same data (flows_2d's MAF);
- ``vae_digits``: ``VAE((1, 8, 8), latent 8, MLP 256-256, Bernoulli)``, ``ELBO(meanfield)``
  on the binarized 8x8 digits, batch 128 (the vae-digits preset);
- ``ddpm_2d``: ``VectorDDPM(2)`` (T = 100, MLP 3 x 128), ``DiffusionLoss(model, "simple")``
  on moons, batch 256 (benchmarks/dynamics_speed.py's ddpm_2d).

Both versions live in this process, built from the same seed (equal initial weights, each
with its own Adam). The first compiled call (compilation, from an empty compile cache) is
timed apart. Then each round times a block of steps of each in turn, the order alternating;
the ratio of a round is the eager block's median step over the compiled one's (> 1:
compiled is faster); the report gives the median over rounds, its distribution-free 95%
confidence interval and the quartiles, and the number of graphs dynamo split the forward
into (graph breaks + 1).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    command_line,
    load_note,
    machine,
    markdown_table,
    publish,
    set_threads,
    today,
)
from dynamics_speed import median_ci, quartiles  # noqa: E402

SETUPS = ("realnvp", "maf", "vae_digits", "ddpm_2d")
FLOWS = ("realnvp", "maf")
GOAL = 1.3
POOL = 16  # data batches per pool, cycled


def build(setup: str, seed: int) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The objective of ``setup`` (weights from ``seed``) and its pool of batches."""
    from probgen.data import load_digits, toy_sample
    from probgen.inference import ELBO, DiffusionLoss, MaximumLikelihood
    from probgen.models import MAF, VAE, RealNVP, VectorDDPM

    g = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed)
    if setup == "vae_digits":
        images = (load_digits("train")[0] / 16 > 0.5).float()
        batches = [images[torch.randint(0, images.shape[0], (128,), generator=g)]
                   for _ in range(POOL)]
        model = VAE((1, 8, 8), 8, hidden_features=[256, 256], likelihood="bernoulli")
        return ELBO(model, estimator="meanfield"), batches
    size = 256 if setup == "ddpm_2d" else 512
    batches = list(toy_sample("moons", size * POOL, generator=g).split(size))
    if setup == "realnvp":
        return MaximumLikelihood(RealNVP(2, transforms=8, hidden_features=[64, 64])), batches
    if setup == "maf":
        return MaximumLikelihood(MAF(2, transforms=5, hidden_features=[64, 64])), batches
    if setup == "ddpm_2d":
        return DiffusionLoss(VectorDDPM(2), "simple"), batches
    raise ValueError(f"setup: expected one of {list(SETUPS)}, got {setup!r}.")


class Stepper:
    """One version (eager or compiled) of a setup: its objective, optimizer and batches."""

    def __init__(self, setup: str, seed: int, compiled: bool) -> None:
        from probgen.inference.accel import compile_module
        from probgen.inference.optim import make_optimizer

        self.objective, self.batches = build(setup, seed)
        self.objective.train()
        self.params = [p for p in self.objective.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.params, "adam", lr=1e-3, betas=(0.9, 0.999),
                                  weight_decay=0.0)  # what fit builds
        self.call = compile_module(self.objective, "inductor") if compiled else self.objective
        self.i = 0

    def checksum(self) -> float:
        with torch.no_grad():
            return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(self.params)))

    def block(self, steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            batch = self.batches[self.i % POOL]
            self.i += 1
            t0 = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            self.call(batch)["loss"].backward()
            self.opt.step()
            times.append(time.perf_counter() - t0)
        return times


def graphs(objective: torch.nn.Module, batch: torch.Tensor) -> int:
    """How many graphs dynamo splits the objective's forward into (breaks + 1)."""
    torch._dynamo.reset()
    return int(torch._dynamo.explain(objective)(batch).graph_count)


def compare(setup: str, args: argparse.Namespace) -> dict:
    eager = Stepper(setup, args.seed, compiled=False)
    compiled = Stepper(setup, args.seed, compiled=True)
    same_init = eager.checksum() == compiled.checksum()
    t0 = time.perf_counter()
    compiled.block(1)  # compiles the forward, then the backward on its first use
    compile_s = time.perf_counter() - t0
    eager.block(1)
    meds: dict[str, list[float]] = {"eager": [], "compiled": []}
    members = [("eager", eager), ("compiled", compiled)]
    for r in range(args.warmup + args.rounds):
        for label, stepper in (members if r % 2 == 0 else members[::-1]):
            times = stepper.block(args.block)
            if r >= args.warmup:
                meds[label].append(statistics.median(times))
    speedups = [e / c for e, c in zip(meds["eager"], meds["compiled"], strict=True)]
    q1, q3 = quartiles(speedups)
    return {"eager_ms": 1e3 * statistics.median(meds["eager"]),
            "compiled_ms": 1e3 * statistics.median(meds["compiled"]),
            "speedup": statistics.median(speedups), "ci": median_ci(speedups),
            "q1": q1, "q3": q3, "compile_s": compile_s, "same_init": same_init,
            "graphs": graphs(build(setup, args.seed)[0], eager.batches[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per setup")
    parser.add_argument("--block", type=int, default=10, help="steps per block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="record in RESULTS.md")
    add_quick(parser, "1 round of 2-step blocks, RealNVP only")
    args = parser.parse_args()
    apply_quick(parser, args, rounds=1, block=2, warmup=0, setups=["realnvp"])
    set_threads(args.threads)
    # A fresh compile cache (unless $TORCHINDUCTOR_CACHE_DIR names one): the compile time
    # reported is a first compilation's, not a reuse of an earlier run's on-disk kernels.
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        cache = tempfile.mkdtemp(prefix="compile-cpu-cache-")
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    # torch.compile's own code warns (a deprecated torch.jit helper, .grad of non-leaves).
    warnings.filterwarnings("ignore", module=r"torch\..*")
    start = time.perf_counter()
    results = {}
    for setup in args.setups:
        res = results[setup] = compare(setup, args)
        print(f"[compile_cpu] {setup}: eager {res['eager_ms']:.2f} ms, compiled "
              f"{res['compiled_ms']:.2f} ms, speedup {res['speedup']:.3f} "
              f"[{res['q1']:.3f}, {res['q3']:.3f}], compile {res['compile_s']:.1f} s, "
              f"{res['graphs']} graph(s), same init {res['same_init']}", flush=True)
    elapsed = time.perf_counter() - start
    rows = []
    for setup, res in results.items():
        goal = ""
        if setup in FLOWS:
            lo, hi = res["ci"]
            goal = ("yes" if lo >= GOAL else "**no**" if hi < GOAL
                    else f"undecided (median {'>=' if res['speedup'] >= GOAL else '<'} {GOAL})")
        rows.append([setup, f"{res['eager_ms']:.2f}", f"{res['compiled_ms']:.2f}",
                     f"{res['speedup']:.3f}", f"[{res['ci'][0]:.3f}, {res['ci'][1]:.3f}]",
                     f"[{res['q1']:.3f}, {res['q3']:.3f}]", f"{res['compile_s']:.1f}",
                     str(res["graphs"]), goal])
    lines = [
        "## Training step on CPU: eager vs `fit(compile=True)` (compile_cpu)", "",
        f"Command: `{command_line()}`  ",
        f"Date: {today()}; {machine(args.threads)}; total {elapsed / 60:.1f} min; "
        f"{load_note()}: read the paired ratios, not the absolute ms.",
        "",
        "One step: `zero_grad`, the objective's forward (eager, or through "
        "`torch.compile(objective)` with the default backend (inductor) and mode, as "
        "`fit(compile=True)` builds it), `backward`, an Adam step (fit's, torch's fused "
        "kernel on CPU), on fixed pools of "
        "batches (moons 512 for the flows, 256 for DDPM; 128 binarized 8x8 digits for the "
        "VAE); both versions in one process from the same initial weights. Each round times "
        f"a block of {args.block} steps of each in turn (order alternating); speedup of a "
        "round: the eager block's median step over the compiled one's (> 1: compiled is "
        f"faster); reported: the median over {args.rounds} rounds (after {args.warmup} "
        "untimed), its distribution-free 95% confidence interval, the quartiles; compile: "
        "the first compiled step (forward and backward compiled, from an empty compile "
        "cache), seconds; graphs: how many "
        f"graphs dynamo splits the forward into. Goal (2-D flows): speedup >= {GOAL}.", "",
        markdown_table(["setup", "eager ms", "compiled ms", "speedup", "95% CI", "[q1, q3]",
                        "compile s", "graphs", f"goal >= {GOAL}"], rows),
    ]
    body = "\n".join(lines)
    publish("compile_cpu", body, args.write, echo=True, tag="[compile_cpu] ")


if __name__ == "__main__":
    main()
