"""2-D score SDEs: sample quality (exact W2, MMD) per sampler and step count, sampling time and
NFE, and the exact probability-flow NLL, for VP and VE SDEs trained at a fixed budget.

Each (data set, SDE) gets one VectorScoreSDE (the same ConditionalMLP) trained by
continuous-time denoising score matching (sigma^2 weighting) for ``--minutes`` of wall
clock (or ``--max-steps``). Then, from the same trained score:

- ``sde/<method>/<N>``: the reverse SDE through torchsde (Euler-Maruyama, SRK) with N steps;
- ``pc/<N>``: predictor-corrector (reverse-diffusion predictor + one Langevin corrector,
  SNR ``--snr``), N steps;
- ``ode/dopri5/<tol>``: the probability-flow ODE, adaptive (NFE is the solver's);
- ``ode/rk4/<N>``: the probability-flow ODE with N fixed RK4 steps;
- ``plain-em/<N>``: the same Euler-Maruyama as a plain PyTorch loop (the speed reference
  for torchsde's overhead: no peer library ships score-SDE samplers as a package;
  score_sde_pytorch is a research repository, not pip-installable).

Quality: exact W2 (optimal assignment) and Gaussian-kernel MMD^2 (probgen.metrics) of
``--n`` samples against ``--n`` fresh data points; NLL: the probability-flow log-density
(exact trace, dopri5) of ``--n-nll`` held-out points.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    fit_for,
    markdown_table,
    publish,
    set_threads,
    stamp,
)

from probgen.data import ToySampler, toy_sample  # noqa: E402
from probgen.inference import ContinuousScoreMatching  # noqa: E402
from probgen.metrics import mmd2, wasserstein2  # noqa: E402
from probgen.models import VectorScoreSDE  # noqa: E402

DATASETS = ("moons", "8gaussians", "checkerboard")


def draw(name: str, n: int, seed: int) -> torch.Tensor:
    return toy_sample(name, n, generator=torch.Generator().manual_seed(seed))


def plain_euler_maruyama(model: VectorScoreSDE, n: int, steps: int, seed: int) -> torch.Tensor:
    """Reverse-SDE Euler-Maruyama as a plain loop: the same score calls as torchsde's."""
    sde, eps = model.sde, model.sample_eps
    g = torch.Generator().manual_seed(seed)
    x = sde.prior_std * torch.randn(n, 2, generator=g)
    dt = (1.0 - eps) / steps
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((n,), i * dt)
            s = 1.0 - t
            g2 = sde.diffusion_coefficient(s) ** 2
            drift = 0.5 * sde.drift_coefficient(s)[:, None] * x + g2[:, None] * model(x, t)
            x = x + drift * dt + (g2 * dt).sqrt()[:, None] * torch.randn(x.shape, generator=g)
        t = torch.full((n,), 1.0 - eps)
        alpha, sigma = sde.alpha_sigma(t)
        return (x + sigma[:, None] ** 2 * model(x, t)) / alpha[:, None]


def samplers(step_counts: list[int], snr: float) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for n in step_counts:
        out.append((f"sde/euler/{n}", {"sampler": "sde", "method": "euler", "steps": n}))
        out.append((f"sde/srk/{n}", {"sampler": "sde", "method": "srk", "steps": n}))
        out.append((f"pc/{n}", {"sampler": "pc", "steps": n, "snr": snr}))
    for tol in (1e-3, 1e-5):
        out.append((f"ode/dopri5/{tol:g}", {"sampler": "ode", "rtol": tol, "atol": tol}))
    for n in step_counts:
        out.append((f"ode/rk4/{max(1, n // 4)}", {"sampler": "ode", "method": "rk4",
                                                 "steps": max(1, n // 4)}))
    return out


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    rows, nll_rows = [], []
    for name in args.datasets:
        reference = draw(name, args.n, 10_000)
        floor = float(wasserstein2(draw(name, args.n, 20_000), reference))
        floor_mmd = float(mmd2(draw(name, args.n, 20_000), reference))
        held_out = draw(name, args.n_nll, 30_000)
        for sde in args.sdes:
            torch.manual_seed(0)
            kwargs = {"sigma_max": args.sigma_max} if sde == "ve" else {}
            model = VectorScoreSDE(2, sde=sde, hidden_features=args.hidden, **kwargs)
            objective = ContinuousScoreMatching(model, model.sde)
            _, steps_done, train_s = fit_for(args.minutes, objective, ToySampler(name),
                                             steps=args.max_steps, batch_size=args.batch_size,
                                             lr=args.lr, lr_schedule="cosine",
                                             ema_decay=args.ema, log_every=50)
            model.eval()
            print(f"{name}/{sde}: {steps_done} steps in {train_s:.0f} s", flush=True)
            for label, kw in samplers(args.step_counts, args.snr):
                g = torch.Generator().manual_seed(1)
                start = time.perf_counter()
                with torch.no_grad():
                    x = model.sample((args.n,), generator=g, **kw)
                seconds = time.perf_counter() - start
                finite = bool(torch.isfinite(x).all())
                w2 = float(wasserstein2(x, reference)) if finite else float("nan")
                mmd = float(mmd2(x, reference)) if finite else float("nan")
                rows.append([name, sde, label, str(model.last_nfe), f"{seconds:.2f}",
                             f"{w2:.3f}", f"{mmd:.4f}"])
                print(rows[-1], flush=True)
            for n in args.step_counts:  # torchsde's Euler-Maruyama vs the plain loop
                times = {}
                for kind in ("probgen", "plain"):
                    start = time.perf_counter()
                    with torch.no_grad():
                        if kind == "plain":
                            x = plain_euler_maruyama(model, args.n, n, 1)
                        else:
                            x = model.sample((args.n,), sampler="sde", method="euler",
                                             steps=n, generator=torch.Generator().manual_seed(1))
                    times[kind] = time.perf_counter() - start
                w2 = float(wasserstein2(x, reference))
                rows.append([name, sde, f"plain-em/{n}", str(n + 1), f"{times['plain']:.2f}",
                             f"{w2:.3f}", f"{float(mmd2(x, reference)):.4f}"])
                rows.append([name, sde, f"(torchsde / plain time, {n} steps)", "-",
                             f"{times['probgen'] / times['plain']:.2f}x", "-", "-"])
            start = time.perf_counter()
            with torch.no_grad():
                lp = model.log_prob(held_out)
            nll_rows.append([name, sde, f"{steps_done}", f"{train_s:.0f}",
                             f"{-float(lp.mean()):.3f}", str(model.last_solve.nfe),
                             f"{time.perf_counter() - start:.1f}"])
            print(nll_rows[-1], flush=True)
        rows.append([name, "-", "data vs data (floor)", "-", "-", f"{floor:.3f}",
                     f"{floor_mmd:.4f}"])
    table = markdown_table(["data", "SDE", "sampler/steps", "NFE", "seconds", "W2", "MMD^2"],
                           rows)
    nll = markdown_table(["data", "SDE", "train steps", "train s",
                          f"NLL (nats, {args.n_nll} held-out points)", "NFE", "seconds"],
                         nll_rows)
    body = (
        "## 2-D score SDEs: samplers, step counts, NFE and exact likelihood\n\n"
        f"{stamp(args.threads)}.\n\n"
        f"Budget: {args.minutes} min of training per model (at most {args.max_steps} steps; "
        f"batch {args.batch_size}, Adam lr {args.lr}, cosine, EMA {args.ema}), "
        f"VectorScoreSDE {args.hidden} (ConditionalMLP, eps-parametrized), continuous-time "
        f"DSM with sigma^2 weighting; VP with beta 0.1..20, VE with sigma 0.01..{args.sigma_max}. "
        "A short CPU budget on a shared machine: the numbers compare samplers on one trained "
        "score, not converged models. Samples from t = 0 to 1 - 1e-3 with a final Tweedie "
        f"denoising step; quality on {args.n} samples against {args.n} fresh data points "
        "(exact W2 and Gaussian-kernel MMD^2, probgen.metrics); the 'floor' row is the same "
        "between two data sets. NFE counts score-network evaluations. No peer library "
        "provides score-SDE samplers as an installable package (score_sde_pytorch is a "
        "research repository), so the speed reference is a plain PyTorch Euler-Maruyama loop "
        "with the same network calls ('plain-em'); the ratio row gives torchsde's time over "
        "it.\n\n" + table + "\n\nExact negative log-likelihood by the probability-flow ODE "
        "(ContinuousFlow, exact divergence, dopri5 at 1e-5), evaluated at t = 1 - 1e-5:\n\n"
        + nll + "\n")
    publish("sde-2d", body, args.write)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--datasets", type=lambda s: s.split(","), default=list(DATASETS))
    p.add_argument("--sdes", type=lambda s: s.split(","), default=["vp", "ve"])
    p.add_argument("--minutes", type=float, default=10.0,
                   help="training wall clock per model")
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128, 128])
    p.add_argument("--sigma-max", type=float, default=8.0)
    p.add_argument("--step-counts", type=int, nargs="+", default=[50, 200, 1000])
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--n-nll", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    add_quick(p, "moons only, VP and VE, 20 steps of batch 128, hidden [64, 64], 8 sampler "
                 "steps, 200 samples, NLL of 50 points")
    args = p.parse_args(argv)
    apply_quick(p, args, datasets=["moons"], minutes=0.05, max_steps=20, batch_size=128,
                hidden=[64, 64], step_counts=[8], n=200, n_nll=50)
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args()))
