"""2-D score models: sample quality (exact W2, MMD) at a fixed training budget, and sampling
time of probgen's Langevin samplers against the plain-PyTorch loop that does the same steps.

Methods on each data set (the same ScoreMLP width, the same steps and batch):

- ``dsm+langevin``: one noise level (denoising score matching, sigma 0.1), plain ULA;
- ``ncsn+annealed``: a noise-conditional network and NCSN's loss over a geometric ladder
  (sigma_1 = the data's largest pairwise distance, Song & Ermon 2020), annealed Langevin.

No peer library implements these for arbitrary score networks, so the speed reference is
the plain-PyTorch loop (torch.no_grad, the same network calls and noise draws).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    markdown_table,
    plain_annealed,
    publish,
    set_threads,
    stamp,
)

from probgen.data import ToySampler, toy_sample  # noqa: E402
from probgen.inference import (  # noqa: E402
    DenoisingScoreMatching,
    NoiseConditionalScoreMatching,
    ScoreSampler,
    fit,
)
from probgen.metrics import mmd2, wasserstein2  # noqa: E402
from probgen.models import ScoreMLP  # noqa: E402
from probgen.score import geometric_sigmas, two_modes  # noqa: E402

DATASETS = ("moons", "8gaussians", "checkerboard", "two_modes")


def data_source(name: str) -> object:
    return two_modes() if name == "two_modes" else ToySampler(name)


def draw(name: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return two_modes().sample(n, g) if name == "two_modes" else toy_sample(name, n, generator=g)


def plain_langevin(net, x, steps, eta, g):
    with torch.no_grad():
        for _ in range(steps):
            x = x + 0.5 * eta * net(x) + math.sqrt(eta) * torch.randn(x.shape, generator=g)
    return x


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    rows = []
    for name in args.datasets:
        reference = draw(name, args.n, 10_000)
        floor = float(wasserstein2(draw(name, args.n, 20_000), reference))
        train = draw(name, 2000, 30_000)
        flat = train.double()
        sigma_max = float(torch.cdist(flat, flat).max())
        sigmas = geometric_sigmas(sigma_max, args.sigma_min, args.levels)
        for method in ("dsm+langevin", "ncsn+annealed"):
            torch.manual_seed(0)
            if method == "dsm+langevin":
                net = ScoreMLP(2, args.hidden)
                objective = DenoisingScoreMatching(net, args.sigma)
                sampler = ScoreSampler(net, (2,), sampler="langevin", steps=args.langevin_steps,
                                       eta=args.eta, init_std=2.0)
            else:
                net = ScoreMLP(2, args.hidden, noise_conditional=True)
                objective = NoiseConditionalScoreMatching(net, sigmas)
                sampler = ScoreSampler(net, (2,), sigmas=sigmas, steps=args.annealed_steps,
                                       eps=args.eps)
            start = time.perf_counter()
            fit(objective, data_source(name), steps=args.steps, batch_size=args.batch_size,
                lr=args.lr, lr_schedule="cosine", progress=False, seed=0)
            train_s = time.perf_counter() - start
            net.eval()
            samples, ours = timed(
                lambda s=sampler: s.sample((args.n,), generator=torch.Generator().manual_seed(1)),
                args.repeats)
            x0 = sampler.init_std * torch.randn(args.n, 2,
                                                generator=torch.Generator().manual_seed(1))
            if method == "dsm+langevin":
                _, plain = timed(lambda n=net, x=x0: plain_langevin(
                    n, x, args.langevin_steps, args.eta, torch.Generator().manual_seed(2)),
                    args.repeats)
                calls = args.langevin_steps
            else:
                ladder = sigmas.tolist()
                _, plain = timed(lambda n=net, x=x0, s=ladder: plain_annealed(
                    n, x, s, args.annealed_steps, args.eps,
                    torch.Generator().manual_seed(2)), args.repeats)
                calls = args.levels * args.annealed_steps
            w2 = float(wasserstein2(samples, reference))
            mmd = float(mmd2(samples, reference))
            extra = ""
            if name == "two_modes":
                extra = f"{(two_modes().assign(samples) == 0).double().mean().item():.3f}"
            rows.append([name, method, f"{train_s:.1f}", f"{w2:.3f}", f"{floor:.3f}",
                         f"{mmd:.4f}", extra, str(calls), f"{ours:.2f}", f"{plain:.2f}"])
            print(rows[-1], flush=True)
    table = markdown_table(
        ["data", "method", "train s", "W2", "W2 data vs data", "MMD^2", "weight of (5,5)",
         "score calls", "probgen sampler s", "plain loop s"], rows)
    body = (
        "## 2-D score models: DSM + Langevin vs NCSN + annealed Langevin\n\n"
        f"{stamp(args.threads)}.\n\n"
        f"A short CPU budget, not a converged result: {args.steps} Adam steps (batch "
        f"{args.batch_size}, lr {args.lr}, cosine) per model, ScoreMLP {args.hidden} (SiLU). "
        f"DSM at sigma {args.sigma}, then {args.langevin_steps} ULA steps (eta {args.eta}) from "
        f"N(0, 2^2 I); NCSN over {args.levels} geometric levels from the largest pairwise "
        f"distance of 2000 training points down to {args.sigma_min}, then annealed Langevin "
        f"({args.annealed_steps} steps per level, eps {args.eps}). Quality on {args.n} samples "
        f"against {args.n} fresh data points: exact W2 (optimal assignment) and Gaussian-kernel "
        "MMD^2 (probgen.metrics); 'W2 data vs data' is the same W2 between two data sets, the "
        "floor at this sample size. On two_modes the last column before the timings is the "
        "share of samples nearest the 0.95 mode. Sampling times are the median of "
        f"{args.repeats} draws of {args.n} chains: probgen's sampler against the plain-PyTorch "
        "loop with the same network calls.\n\n" + table + "\n")
    publish("score-2d", body, args.write)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--datasets", type=lambda s: s.split(","), default=list(DATASETS))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--sigma-min", type=float, default=0.05)
    p.add_argument("--levels", type=int, default=20)
    p.add_argument("--langevin-steps", type=int, default=1000)
    p.add_argument("--eta", type=float, default=0.005)
    p.add_argument("--annealed-steps", type=int, default=50)
    p.add_argument("--eps", type=float, default=0.002)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    add_quick(p, "moons and two_modes, 20 steps of batch 128, 5 levels, 20 ULA and 4 "
                 "annealed steps, 200 samples, 1 timing repeat")
    args = p.parse_args(argv)
    apply_quick(p, args, datasets=["moons", "two_modes"], steps=20, batch_size=128, levels=5,
                langevin_steps=20, annealed_steps=4, n=200, repeats=1)
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args()))
