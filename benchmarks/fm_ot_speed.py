"""Exact-OT flow matching at batch 512: probgen's training step against torchcfm's, paired.

Issue 22. Two parts, in one run:

1. **The coupling alone** on 512-point batches of moons, 8gaussians and checkerboard
   (source N(0, I)), interleaved repetitions, medians: the float64 cost matrix
   (``probgen.couplings.cost_matrix``); scipy's ``linear_sum_assignment`` on it from zero
   potentials (probgen's exact-OT solver before this issue); probgen's
   ``ExactOTCoupling().indices`` (cost, a solved sample's and an auction's prices, scipy);
   torchcfm's ``OTPlanSampler("exact").sample_plan`` (POT's ``ot.emd`` plus drawing pairs
   from the plan), with the paired ratio probgen / torchcfm. Then the same paired
   comparison over batch sizes (64 to 2048, moons) and features (8, 64, 784 at 512:
   N(0, I) to a shifted uniform), ``--sweep-reps`` repetitions each.
2. **Training**: probgen's ``ConditionalFlowMatching`` with ``ExactOTCoupling`` and
   torchcfm's ``ExactOptimalTransportConditionalFlowMatcher`` (``sigma = 0``) train copies
   of one network (``fm_2d.Net``, the same initial weights) on the same data batches,
   one step of each in turn, the order alternating (``fm_2d.train``). The step-time ratio
   probgen / torchcfm is taken step by step (same batch, same moment) and its median
   reported. After ``--steps`` steps each field is sampled with dopri5 (``fm_2d.sample``)
   and scored by exact W2 against held-out data, over ``--seeds``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    command_line,
    machine,
    markdown_table,
    set_threads,
    today,
    write_section,
)
from fm_2d import DATASETS, Net, build_runs, evaluate, sample, train  # noqa: E402

RUNS = ("probgen-ot", "torchcfm-ot")
WARMUP = 20


def profile_coupling(dataset: str, batch: int, reps: int, seed: int) -> dict[str, float]:
    """Median ms of each piece of the coupling over interleaved repetitions, and the
    median of the paired ratio probgen / torchcfm."""
    from scipy.optimize import linear_sum_assignment
    from torchcfm.optimal_transport import OTPlanSampler

    from probgen.couplings import ExactOTCoupling, cost_matrix
    from probgen.data import toy_sample

    g = torch.Generator().manual_seed(seed)
    peer, coupling = OTPlanSampler(method="exact"), ExactOTCoupling()
    steps = {
        "cost matrix": lambda x0, x1: cost_matrix(x0, x1),
        "scipy cold": lambda x0, x1: linear_sum_assignment(cost_matrix(x0, x1).numpy()),
        "probgen": lambda x0, x1: coupling.indices(x0, x1),
        "torchcfm": lambda x0, x1: peer.sample_plan(x0, x1),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(reps):
        x0, x1 = torch.randn(batch, 2, generator=g), toy_sample(dataset, batch, generator=g)
        for name in (list(steps) if rep % 2 == 0 else list(steps)[::-1]):
            t0 = time.perf_counter()
            steps[name](x0, x1)
            times[name].append(time.perf_counter() - t0)
    out = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    out["ratio"] = statistics.median(a / b for a, b in zip(times["probgen"], times["torchcfm"],
                                                           strict=True))
    return out


def sweep_coupling(reps: int, seed: int) -> list[tuple[str, int, float, float, float]]:
    """(data, batch, probgen ms, torchcfm ms, median paired ratio) over batch sizes on
    moons and over features at batch 512, interleaved repetitions."""
    from torchcfm.optimal_transport import OTPlanSampler

    from probgen.couplings import ExactOTCoupling
    from probgen.data import toy_sample

    g = torch.Generator().manual_seed(seed)
    peer, coupling = OTPlanSampler(method="exact"), ExactOTCoupling()
    cases = [("moons", n) for n in (64, 128, 256, 512, 1024, 2048)]
    cases += [(f"{d}-D", 512) for d in (8, 64, 784)]
    out = []
    for data, batch in cases:
        times: dict[str, list[float]] = {"probgen": [], "torchcfm": []}
        for rep in range(reps):
            x0 = torch.randn(batch, 2 if data == "moons" else int(data[:-2]), generator=g)
            x1 = (toy_sample("moons", batch, generator=g) if data == "moons"
                  else 2 * torch.rand(x0.shape, generator=g) - 0.5)
            for name in (["probgen", "torchcfm"] if rep % 2 == 0 else ["torchcfm", "probgen"]):
                t0 = time.perf_counter()
                if name == "probgen":
                    coupling.indices(x0, x1)
                else:
                    peer.sample_plan(x0, x1)
                times[name].append(time.perf_counter() - t0)
        ratio = statistics.median(a / b for a, b in zip(times["probgen"], times["torchcfm"],
                                                          strict=True))
        out.append((data, batch, 1e3 * statistics.median(times["probgen"]),
                    1e3 * statistics.median(times["torchcfm"]), ratio))
        print(f"[fm_ot_speed] sweep {data} batch {batch}: probgen {out[-1][2]:.2f} ms, "
              f"torchcfm {out[-1][3]:.2f} ms, ratio {ratio:.2f}", flush=True)
    return out


def run_training(dataset: str, args: argparse.Namespace, seed: int) -> dict:
    from probgen.data import toy_sample

    torch.manual_seed(seed)
    np.random.seed(seed)  # torchcfm draws its pairs with numpy's global generator
    runs = build_runs(Net(width=args.width, depth=args.depth), RUNS)
    steps = train(runs, dataset, args, seed)
    pg, peer = runs["probgen-ot"]["times"], runs["torchcfm-ot"]["times"]
    keep = slice(min(WARMUP, len(pg) - 1), None)
    gens = [torch.Generator().manual_seed(base + seed) for base in (10_000, 30_000)]
    data = toy_sample(dataset, args.samples, generator=gens[0])
    x0 = torch.randn(args.samples, 2, generator=gens[1])
    out = {"dataset": dataset, "seed": seed, "steps": steps,
           "ratio": statistics.median(a / b for a, b in zip(pg[keep], peer[keep], strict=True)),
           "ms": {name: 1e3 * statistics.median(r["times"][keep]) for name, r in runs.items()},
           "w2": {}}
    for name, r in runs.items():
        x, _ = sample(name, r["module"], x0, "dopri5")
        out["w2"][name] = evaluate(x, data)["w2"]
    print(f"[fm_ot_speed] {dataset} seed {seed}: {steps} steps, ms/step {out['ms']}, "
          f"paired ratio {out['ratio']:.3f}, W2 {out['w2']}", flush=True)
    return out


def report(profiles: dict[str, dict], sweep: list[tuple], results: list[dict],
           args: argparse.Namespace, elapsed: float) -> str:
    lines = [
        "## Exact-OT flow matching at batch 512: probgen vs torchcfm (fm_ot_speed)", "",
        f"Command: `{command_line()}`  ",
        f"Date: {today()}; {machine(args.threads)}; total {elapsed / 60:.1f} min. The 2 "
        "cores are shared with other jobs: read the paired ratios, not the absolute ms.", "",
        f"**The coupling alone**, batch {args.batch_size} (source N(0, I)), median ms over "
        f"{args.reps} interleaved repetitions; ratio: median of the paired ratios probgen / "
        "torchcfm. `scipy cold`: `linear_sum_assignment` on the float64 costs from zero "
        "potentials, the solver of probgen's exact OT before issue 22; `probgen`: "
        "`ExactOTCoupling().indices` (costs, a solved 64 x 64 sample's and an auction's prices, "
        "scipy); `torchcfm`: "
        "`OTPlanSampler('exact').sample_plan` (cdist, POT's `ot.emd`, pairs drawn from the "
        "plan).", "",
    ]
    rows = [[d, *(f"{p[k]:.2f}" for k in ("cost matrix", "scipy cold", "probgen", "torchcfm")),
             f"{p['ratio']:.2f}"] for d, p in profiles.items()]
    lines += [markdown_table(["data", "cost matrix ms", "scipy cold ms", "probgen ms",
                              "torchcfm ms", "ratio"], rows), ""]
    if sweep:
        lines += [f"Over batch sizes (moons) and features (N(0, I) to a uniform on [-0.5, 1.5]^d),"
                  f" the same paired timing, median of {args.sweep_reps} repetitions:", ""]
        rows = [[d, str(b), f"{p:.2f}", f"{c:.2f}", f"{r:.2f}"] for d, b, p, c, r in sweep]
        lines += [markdown_table(["data", "batch", "probgen ms", "torchcfm ms", "ratio"], rows),
                  ""]
    lines += [
        f"**Training steps**: `fm_2d.Net` (width {args.width}, depth {args.depth}), the same "
        f"initial weights, Adam lr {args.lr}, batch {args.batch_size}, the same batches, "
        f"{args.steps} steps per run, one step of each run in turn (order alternating); "
        "ratio: median over steps (after the first "
        f"{WARMUP}) of probgen's step time / torchcfm's on the same batch. W2: exact, "
        f"{args.samples} dopri5 samples (rtol = atol = 1e-5) against as many held-out points.",
        "",
    ]
    rows = []
    for r in results:
        rows.append([r["dataset"], str(r["seed"]), f"{r['ms']['probgen-ot']:.2f}",
                     f"{r['ms']['torchcfm-ot']:.2f}", f"{r['ratio']:.3f}",
                     f"{r['w2']['probgen-ot']:.4f}", f"{r['w2']['torchcfm-ot']:.4f}"])
    lines += [markdown_table(["data", "seed", "probgen ms/step", "torchcfm ms/step",
                              "paired ratio", "W2 probgen", "W2 torchcfm"], rows), ""]
    for d in args.datasets:
        res = [r for r in results if r["dataset"] == d]
        wp = [r["w2"]["probgen-ot"] for r in res]
        wc = [r["w2"]["torchcfm-ot"] for r in res]
        diff = [a - b for a, b in zip(wp, wc, strict=True)]
        lines.append(f"- {d}: median paired step ratio "
                     f"{statistics.median(r['ratio'] for r in res):.3f}; mean W2 probgen "
                     f"{statistics.mean(wp):.4f} vs torchcfm {statistics.mean(wc):.4f} "
                     f"(paired difference {statistics.mean(diff):+.4f}).")
    ratios = [r["ratio"] for r in results]
    lines += ["", f"All runs: median paired step ratio {statistics.median(ratios):.3f} "
              f"(range {min(ratios):.3f}-{max(ratios):.3f}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=41, help="coupling-profile repetitions")
    parser.add_argument("--sweep-reps", type=int, default=9,
                        help="repetitions of the size/feature sweep (0: skip it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    add_quick(parser, "moons only, 1 seed, 20 steps of batch 64, width 64, 200 samples")
    args = parser.parse_args(argv)
    apply_quick(parser, args, datasets=["moons"], seeds=[0], steps=20, batch_size=64,
                width=64, samples=200, reps=3, sweep_reps=1)
    args.minutes = float("inf")  # fm_2d.train's wall-clock cap: the budget is --steps
    set_threads(args.threads)
    start = time.perf_counter()
    profiles = {d: profile_coupling(d, args.batch_size, args.reps, seed=123) for d in
                args.datasets}
    for d, p in profiles.items():
        print(f"[fm_ot_speed] coupling {d}: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                          p.items()), flush=True)
    sweep = sweep_coupling(args.sweep_reps, seed=321) if args.sweep_reps > 0 else []
    results = [run_training(d, args, seed) for d in args.datasets for seed in args.seeds]
    body = report(profiles, sweep, results, args, time.perf_counter() - start)
    print(body)
    if args.write:
        print(f"[fm_ot_speed] wrote {write_section('fm_ot_speed', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
