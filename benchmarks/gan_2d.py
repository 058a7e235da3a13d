"""GANs on the course's ring of 8 Gaussians: every loss at one fixed budget, modes captured and
the share of high-quality samples, plus probgen's trainer against a plain PyTorch loop.

The ring: centres at radius 2 on the compass points, noise std 0.08, everything divided by
1.414 (radius ~1.414, std ~0.0566). A sample is high quality within 3 std of its nearest
centre; a mode is captured with at least ``--min-count`` high-quality samples out of
``--samples`` (probgen.metrics.mode_coverage).

    python benchmarks/gan_2d.py --steps 2000 --minutes 0.6

``--course`` runs the course seminar's own setting instead, to test its observation that the
saturating GAN collapses with 5 critic steps and not with 1: noise of dimension 16, generator
16-32-128-128-32-2 and critic 2-64-256-256-64-1 (ReLU), Adam lr 2e-4, betas (0, 0.9), 1024
examples per critic update, and a budget counted in critic updates (100 epochs of its
20000-point set: 2000 critic updates, so 5 critic steps leave 400 generator steps), for the
minimax and the non-saturating loss with 1 and 5 critic steps, over ``--seeds``:

    python benchmarks/gan_2d.py --course --seeds 0 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    command_line,
    machine,
    output_path,
    set_threads,
    today,
    write_section,
)

from probgen.inference import Adversarial, fit  # noqa: E402
from probgen.metrics import mode_coverage, ring_centres  # noqa: E402
from probgen.models import MLPGAN  # noqa: E402
from probgen.utils import atomic_write_text  # noqa: E402

RADIUS, STD, SCALE = 2.0, 0.08, 1.414
CENTRES = ring_centres(8, radius=RADIUS / SCALE).float()

# name -> (loss, Adversarial keywords)
RUNS: dict[str, tuple[str, dict]] = {
    "minimax (1 critic step)": ("minimax", {"n_critic": 1}),
    "minimax (5 critic steps)": ("minimax", {"n_critic": 5}),
    "non_saturating": ("non_saturating", {"n_critic": 1}),
    "non_saturating (5 critic steps)": ("non_saturating", {"n_critic": 5}),
    "wgan (clip 0.01)": ("wasserstein", {"n_critic": 5, "clip": 0.01}),
    "wgan_gp": ("wasserstein", {"n_critic": 5, "gradient_penalty": 10.0}),
    # Gulrajani et al.'s weight for their toy 2-D data (their gan_toy script); on this ring
    # (mode std 0.057) weight 10 holds the critic's slope to 1 so strictly that the
    # generator's pull toward the centres is slow.
    "wgan_gp (penalty 0.1)": ("wasserstein", {"n_critic": 5, "gradient_penalty": 0.1}),
    "hinge": ("hinge", {"n_critic": 1}),
    "least_squares": ("least_squares", {"n_critic": 1}),
    "f-GAN kl": ("kl", {"n_critic": 1}),
    "f-GAN reverse_kl": ("reverse_kl", {"n_critic": 1}),
    "f-GAN js": ("js", {"n_critic": 1}),
    "f-GAN pearson": ("pearson", {"n_critic": 1}),
    "f-GAN hellinger": ("hellinger", {"n_critic": 1}),
    "f-GAN tv": ("tv", {"n_critic": 1}),
}


def ring(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The course's 8 Gaussians: (centre at radius 2 + 0.08 noise) / 1.414."""
    k = torch.randint(0, 8, (n,), generator=generator)
    centres = RADIUS * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
    return (centres + STD * torch.randn(n, 2, generator=generator)) / SCALE


DEFAULT_RUNS = [name for name in RUNS if name != "non_saturating (5 critic steps)"]
COURSE_RUNS = ["minimax (1 critic step)", "minimax (5 critic steps)", "non_saturating",
               "non_saturating (5 critic steps)"]


def make_gan(args: argparse.Namespace, seed: int) -> MLPGAN:
    torch.manual_seed(seed)
    if args.course:
        return MLPGAN(2, latent_dim=16, hidden_features=[32, 128, 128, 32],
                      critic_hidden_features=[64, 256, 256, 64], critic_activation="relu")
    return MLPGAN(2, latent_dim=2, hidden_features=[args.hidden] * args.layers)


def train(name: str, args: argparse.Namespace, seed: int | None = None) -> dict:
    loss, kw = RUNS[name]
    seed = args.seed if seed is None else seed
    gan = make_gan(args, seed)
    # --course: the budget is counted in critic updates, as the seminar's epochs count it
    steps = args.critic_updates // kw["n_critic"] if args.course else args.steps
    objective = Adversarial(gan, loss, **kw)
    deadline = time.perf_counter() + 60 * args.minutes
    steps_done = [0]

    def stop(step: int, record: dict) -> bool:
        steps_done[0] = step
        return time.perf_counter() > deadline

    start = time.perf_counter()
    history = fit(objective, ring, steps=steps, batch_size=args.batch * kw["n_critic"],
                  lr=args.lr, betas=(0.0, 0.9), progress=False, log_every=10,
                  seed=seed, callbacks=stop)
    seconds = time.perf_counter() - start
    gan.eval()
    samples = gan.sample((args.samples,), generator=torch.Generator().manual_seed(123))
    finite = bool(torch.isfinite(samples).all())
    cov = mode_coverage(samples, CENTRES, STD / SCALE, min_count=args.min_count) if finite \
        else None
    return {
        "name": name, "seed": seed, "steps": steps_done[0], "seconds": seconds,
        "ms_per_step": 1e3 * seconds / max(steps_done[0], 1),
        "modes": cov.modes_captured if cov else 0,
        "high_quality": cov.high_quality if cov else 0.0,
        "counts": cov.counts.tolist() if cov else [],
        "divergence": history.final.get("divergence", float("nan")),
        "samples": samples[:2000],
    }


def plain_loop_timing(args: argparse.Namespace, loss: str, n_critic: int, gp: float,
                      steps: int) -> tuple[float, float]:
    """ms/step of a plain PyTorch loop and of fit, same networks, same sizes, alternating
    blocks of 10 steps so background load hits both alike. Returns (plain, fit) medians."""
    gan_a, gan_b = make_gan(args, 0), make_gan(args, 0)
    opt_c = torch.optim.Adam(gan_a.critic.parameters(), lr=args.lr, betas=(0.0, 0.9))
    opt_g = torch.optim.Adam(gan_a.generator.parameters(), lr=args.lr, betas=(0.0, 0.9))
    g = torch.Generator().manual_seed(0)

    def plain_step() -> None:
        x_all = ring(args.batch * n_critic, g)
        for x in x_all.split(args.batch):
            with torch.no_grad():
                fake = gan_a.generator(torch.randn(args.batch, 2))
            r, f = gan_a.critic(x), gan_a.critic(fake)
            if loss == "wasserstein":
                d_loss = f.mean() - r.mean()
            else:
                d_loss = torch.nn.functional.softplus(-r).mean() + \
                    torch.nn.functional.softplus(f).mean()
            if gp:
                eps = torch.rand(args.batch, 1)
                mixed = (eps * x + (1 - eps) * fake).requires_grad_(True)
                (grad,) = torch.autograd.grad(gan_a.critic(mixed).sum(), mixed,
                                              create_graph=True)
                d_loss = d_loss + gp * ((grad.norm(dim=1) - 1) ** 2).mean()
            opt_c.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_c.step()
        for p in gan_a.critic.parameters():
            p.requires_grad_(False)
        f = gan_a.critic(gan_a.generator(torch.randn(args.batch, 2)))
        g_loss = -f.mean() if loss == "wasserstein" else \
            torch.nn.functional.softplus(-f).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        for p in gan_a.critic.parameters():
            p.requires_grad_(True)

    plain_times, fit_times = [], []
    last = [time.perf_counter()]

    def on_record(step: int, record: dict) -> None:
        now = time.perf_counter()
        fit_times.append((now - last[0]) / 10)
        t0 = time.perf_counter()  # the plain loop's 10 steps, not charged to fit
        for _ in range(10):
            plain_step()
        plain_times.append((time.perf_counter() - t0) / 10)
        last[0] = time.perf_counter()

    objective = Adversarial(gan_b, loss, n_critic=n_critic, gradient_penalty=gp)
    fit(objective, ring, steps=steps, batch_size=args.batch * n_critic, lr=args.lr,
        betas=(0.0, 0.9), progress=False, log_every=10, callbacks=on_record)
    skip = 2
    med = lambda v: sorted(v[skip:])[len(v[skip:]) // 2]  # noqa: E731
    return 1e3 * med(plain_times), 1e3 * med(fit_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="generator steps per run")
    parser.add_argument("--minutes", type=float, default=0.6,
                        help="wall-clock cap per run (a run stops at whichever comes first)")
    parser.add_argument("--batch", type=int, default=256, help="examples per critic update")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2500)
    parser.add_argument("--min-count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="run only these names")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-timing", action="store_true", help="skip fit vs plain loop")
    parser.add_argument("--section", default=None,
                        help="RESULTS.md section (and .json/.png file stem) to write "
                             "(default gan_2d, or gan_2d_course with --course)")
    parser.add_argument("--course", action="store_true",
                        help="the course seminar's networks, optimizer and budget (see the "
                             "module docstring); sets --batch 1024 --lr 2e-4")
    parser.add_argument("--critic-updates", type=int, default=2000,
                        help="--course: budget in critic updates (generator steps = this / "
                             "critic steps per generator step)")
    parser.add_argument("--seeds", type=int, nargs="*", default=None,
                        help="--course: seeds to repeat every run over (default: --seed)")
    add_quick(parser, "10 generator steps per loss (--course: 20 critic updates), 500 "
                      "samples, 30 timed steps")
    args = parser.parse_args()
    apply_quick(parser, args, steps=10, minutes=0.1, samples=500, timing_steps=30,
                critic_updates=20)
    if args.only:
        unknown = sorted(set(args.only) - set(RUNS))
        if unknown:
            parser.error(f"--only: unknown runs {unknown}; known: {list(RUNS)}")
    if args.seeds and not args.course:
        parser.error("--seeds: only with --course (the default table has one seed; use --seed)")
    if args.course:
        args.batch, args.lr, args.minutes = 1024, 2e-4, max(args.minutes, 30.0)
        args.no_timing = True
    args.section = args.section or ("gan_2d_course" if args.course else "gan_2d")
    set_threads(args.threads)
    t0 = time.perf_counter()
    results = []
    names = args.only or (COURSE_RUNS if args.course else DEFAULT_RUNS)
    for seed in (args.seeds or [args.seed]) if args.course else [args.seed]:
        for name in names:
            r = train(name, args, seed)
            results.append(r)
            print(f"{name:32s} seed {seed} steps {r['steps']:5d} ({r['ms_per_step']:.1f} "
                  f"ms/step)  modes {r['modes']}/8  high quality {r['high_quality']:.3f}  "
                  f"counts {r['counts']}", flush=True)
    timing = {}
    for label, loss, n_critic, gp in () if args.no_timing else (
            ("non_saturating", "non_saturating", 1, 0.0), ("wgan_gp", "wasserstein", 5, 10.0)):
        timing[label] = plain_loop_timing(args, loss, n_critic, gp, args.timing_steps)
        plain, fitted = timing[label]
        print(f"{label}: plain {plain:.2f} ms/step, fit {fitted:.2f} ms/step", flush=True)
    total = time.perf_counter() - t0
    here = Path(__file__).resolve().parent
    report = _course_report(results, args, total) if args.course else \
        _report(results, timing, args, total)
    print(report)
    if not args.no_write:
        atomic_write_text(output_path(here / f"{args.section}.json"), json.dumps(
            {"results": [{k: v for k, v in r.items() if k != "samples"} for r in results],
             "timing": timing}, indent=1))
        first = [r for r in results if r["seed"] == results[0]["seed"]]
        _figure(first, output_path(here / f"{args.section}.png"))
        write_section(args.section, report)


def _figure(results: list[dict], path: Path) -> None:
    from probgen.plots import _new_figure, save_figure

    cols = 5
    rows = math.ceil((len(results) + 1) / cols)
    fig = _new_figure(figsize=(3.0 * cols, 3.0 * rows))
    for i, r in enumerate([{"name": "data", "samples": ring(2000, torch.Generator()
                                                            .manual_seed(0))}, *results]):
        ax = fig.add_subplot(rows, cols, i + 1)
        s = r["samples"].clamp(-3, 3)
        ax.scatter(s[:, 0], s[:, 1], s=1, alpha=0.5)
        ax.set_xlim(-2.2, 2.2)
        ax.set_ylim(-2.2, 2.2)
        ax.set_aspect("equal")
        title = r["name"] if "modes" not in r else \
            f"{r['name']}\n{r['modes']}/8 modes, {100 * r['high_quality']:.0f}% HQ"
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _course_report(results: list[dict], args: argparse.Namespace, total: float) -> str:
    seeds = sorted({r["seed"] for r in results})
    lines = [
        "## GANs on the course's 8-Gaussian ring: the seminar's own setting (critic steps)",
        "",
        f"Command: `{command_line()}`  ",
        f"Date: {today()}  ",
        f"Machine: {machine(args.threads)}  ",
        "Setup (the course seminar's): the ring (radius 2, std 0.08, all divided by 1.414), "
        "fresh draws per batch; noise N(0, I) of dimension 16; generator 16-32-128-128-32-2, "
        "critic 2-64-256-256-64-1, ReLU, PyTorch's default initialization; Adam lr "
        f"{args.lr:g}, betas (0, 0.9), {args.batch} examples per critic update and per "
        f"generator update; budget {args.critic_updates} critic updates per run (the "
        "seminar's 100 epochs of 20 batches), so a run with 5 critic steps per generator step "
        f"makes a fifth of the generator steps; seeds {seeds}. Metrics on {args.samples} "
        "samples: high quality = within 3 std (0.17) of the nearest centre; a mode is "
        f"captured with >= {args.min_count} high-quality samples. Figure (first seed): "
        f"`benchmarks/{args.section}.png`. Total wall time {total:.0f} s.",
        "",
        "| loss | critic steps / generator step | seed | generator steps | modes captured "
        "| high-quality share | samples per mode (high quality) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        n_critic = RUNS[r["name"]][1]["n_critic"]
        lines.append(f"| {RUNS[r['name']][0]} | {n_critic} | {r['seed']} | {r['steps']} | "
                     f"{r['modes']}/8 | {r['high_quality']:.3f} | "
                     f"{' '.join(str(c) for c in r['counts'])} |")

    def per_seed(name: str) -> list[dict]:
        return [r for r in results if r["name"] == name]

    one, five = per_seed("minimax (1 critic step)"), per_seed("minimax (5 critic steps)")
    if one and five:
        fewer = sum(f["modes"] < o["modes"] for o, f in zip(one, five, strict=True))
        lines += ["", f"The course's observation (saturating GAN: 5 critic steps collapse, 1 "
                  f"does not): 5 critic steps captured fewer modes than 1 step on {fewer} of "
                  f"{len(one)} seeds (modes with 1 step: "
                  f"{', '.join(str(r['modes']) for r in one)}; with 5 steps: "
                  f"{', '.join(str(r['modes']) for r in five)}): "
                  f"{'reproduced' if 2 * fewer > len(one) else 'NOT reproduced'}."]
    return "\n".join(lines) + "\n"


def _report(results: list[dict], timing: dict, args: argparse.Namespace, total: float) -> str:
    lines = [
        "## GANs on the course's 8-Gaussian ring: every loss at one budget"
        + ("" if args.section == "gan_2d" else f" ({args.section})"),
        "",
        f"Command: `{command_line()}`  ",
        f"Date: {today()}  ",
        f"Machine: {machine(args.threads)}; other jobs shared the cores during the run.  ",
        f"Setup: the ring of the course (radius 2, std 0.08, all divided by 1.414); "
        f"MLPGAN, latent 2, generator and critic {args.layers} x {args.hidden} "
        f"(ReLU / LeakyReLU 0.2), Adam lr {args.lr}, betas (0, 0.9), {args.batch} examples per "
        f"critic update; budget {args.steps} generator steps or {args.minutes} min per run, "
        f"whichever came first (the steps column says which); seed {args.seed}. Metrics on "
        f"{args.samples} samples: high quality = within 3 std (0.17) of the nearest centre; "
        f"a mode is captured with >= {args.min_count} high-quality samples. Figure: "
        f"`benchmarks/{args.section}.png`. Total wall time {total:.0f} s.",
        "",
        "| loss | critic steps / generator step | generator steps | ms/step | modes captured "
        "| high-quality share | final divergence estimate |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        n_critic = RUNS[r["name"]][1]["n_critic"]
        lines.append(f"| {r['name']} | {n_critic} | {r['steps']} | {r['ms_per_step']:.1f} | "
                     f"{r['modes']}/8 | {r['high_quality']:.3f} | {r['divergence']:.3f} |")
    lines += ["", "Goals:", ""]
    by = {r["name"]: r for r in results}
    for name in ("wgan_gp", "wgan_gp (penalty 0.1)", "non_saturating"):
        if name in by:
            r = by[name]
            ok = r["modes"] == 8 and r["high_quality"] >= 0.8
            penalty = RUNS[name][1].get("gradient_penalty")
            what = f"wgan_gp with gradient-penalty weight {penalty:g}" if penalty else name
            lines.append(f"- {what}: all 8 modes with >= 80% high-quality samples: "
                         f"{'met' if ok else 'NOT met'} ({r['modes']}/8, "
                         f"{100 * r['high_quality']:.1f}%).")
    one, five = by.get("minimax (1 critic step)"), by.get("minimax (5 critic steps)")
    if one and five:
        seen = five["modes"] < one["modes"] or five["high_quality"] < 0.5 * one["high_quality"]
        lines.append(f"- the course's observation (saturating GAN: 5 critic steps collapse, 1 "
                     f"does not): {'reproduced' if seen else 'NOT reproduced'} here (1 step: "
                     f"{one['modes']}/8 modes, {100 * one['high_quality']:.1f}% HQ; 5 steps: "
                     f"{five['modes']}/8, {100 * five['high_quality']:.1f}% HQ).")
    if not timing:
        return "\n".join(lines) + "\n"
    lines += ["", "Trainer overhead (the same networks and sizes, a plain PyTorch loop "
              "alternating blocks of 10 steps with fit, medians):", "",
              "| loss | plain loop ms/step | fit ms/step | fit / plain |",
              "| --- | --- | --- | --- |"]
    for label, (plain, fitted) in timing.items():
        lines.append(f"| {label} | {plain:.2f} | {fitted:.2f} | {fitted / plain:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
