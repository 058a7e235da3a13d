"""2-D DDPM: probgen's sampler loops against diffusers' DDPMScheduler and DDIMScheduler
driving the SAME trained network (ours), on the course's setting (T = 100, cosine).

For each data set a VectorDDPM (the course's conditional MLP predicting the noise) is
trained for a fixed budget (``--minutes`` or ``--steps``); then every sampler draws
``--n`` samples from the same start noise:

- ancestral DDPM over all T steps and strided DDPM over ``k`` steps (fixed_large
  variance, as Ho et al. sample), probgen vs ``diffusers.DDPMScheduler`` with
  ``trained_betas`` = our betas, ``variance_type="fixed_large"``, no clipping;
- DDIM (eta = 0) over ``k`` steps, probgen vs ``diffusers.DDIMScheduler`` (same betas,
  ``set_alpha_to_one=True``, no clipping); both use "leading" spacing so the visited
  steps are the same;
- the second-order probability-flow ODE solvers at ``k`` levels (``--solver-steps``):
  probgen's DPM-Solver++(2M) (its default uniform log-SNR levels) vs
  ``diffusers.DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2, its defaults), and
  probgen's EDM Heun (Karras levels) vs ``diffusers.HeunDiscreteScheduler`` with
  ``use_karras_sigmas=True``; the same number of network calls on both sides (``k`` for
  DPM-Solver++, ``2k - 1`` for Heun). Their samples differ by design (other levels and
  end treatment), so only quality and time are compared.

Quality: exact W2 (probgen.metrics.wasserstein2, Hungarian matching) and MMD^2 against
held-out data of the same size; agreement: the largest coordinate difference between
the two libraries' samples from the same noise (the same seeded generator feeds both
samplers' noise, in the same order); speed: wall time of the sampling loop (network
calls included), diffusers / probgen.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    diffusers_loop,
    load_note,
    markdown_table,
    set_threads,
    stamp,
    timed,
    write_section,
)

from probgen.data import ToySampler, toy_sample  # noqa: E402
from probgen.inference import DiffusionLoss, fit  # noqa: E402
from probgen.metrics import mmd2, wasserstein2  # noqa: E402
from probgen.models import VectorDDPM  # noqa: E402

TIE = 1e-4  # W2 differences below this count as ties (float32 sampling loops)


def train_ddpm(name: str, args: argparse.Namespace, seed: int):
    """A VectorDDPM trained on ``name`` for the budget of ``args`` from ``seed``; returns the
    model (in eval mode) and a note on the training."""
    torch.manual_seed(seed)
    model = VectorDDPM(2, num_steps=args.num_steps, schedule=args.schedule)
    deadline = time.perf_counter() + 60 * args.minutes
    history = fit(DiffusionLoss(model), ToySampler(name), steps=args.steps,
                  batch_size=args.batch_size, lr=2e-3, lr_schedule="cosine",
                  progress=False, log_every=100, seed=seed,
                  callbacks=lambda step, rec, end=deadline: time.perf_counter() > end)
    trained = int(history.records[-1]["step"]) if history.records else 0
    model.eval()
    return model, trained, history.final["loss"]


def ddim_seed_study(args: argparse.Namespace) -> str:
    """Trains one model per (data set, seed) and compares DDIM-k of probgen and diffusers;
    returns the RESULTS.md section."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import DDIMScheduler

    k = args.ddim_steps
    rows, means = [], []
    for name in args.datasets:
        held_out = toy_sample(name, args.n, generator=torch.Generator().manual_seed(123))
        per = []
        for seed in args.ddim_seeds:
            model, trained, loss = train_ddpm(name, args, seed)
            noise = torch.randn(args.n, 2,
                                generator=torch.Generator().manual_seed(7 + 1000 * seed))
            x_ours = model.run(args.n, noise=noise.clone(), sampler="ddim", steps=k,
                               spacing="leading").samples
            sched = DDIMScheduler(num_train_timesteps=args.num_steps,
                                  trained_betas=model.schedule.betas.numpy(),
                                  clip_sample=False, set_alpha_to_one=True,
                                  timestep_spacing="leading")
            x_theirs = diffusers_loop(model, sched, noise.clone(), k,
                                      torch.Generator().manual_seed(11), 0.0)[0]
            vals = [float(wasserstein2(x_ours, held_out)),
                    float(wasserstein2(x_theirs, held_out)),
                    float(mmd2(x_ours, held_out)), float(mmd2(x_theirs, held_out))]
            per.append(vals)
            diff = (x_ours - x_theirs).abs().max().item()
            rows.append([name, str(seed), str(trained), f"{loss:.4f}",
                         *(f"{v:.4f}" for v in vals[:2]), f"{vals[0] - vals[1]:+.1e}",
                         *(f"{v:.5f}" for v in vals[2:]), f"{diff:.1e}"])
            print(rows[-1], flush=True)
        mean = [sum(v[i] for v in per) / len(per) for i in range(4)]
        means.append([name, *(f"{v:.4f}" for v in mean[:2]), f"{mean[0] - mean[1]:+.1e}",
                      *(f"{v:.5f}" for v in mean[2:]),
                      f"{sum(v[0] <= v[1] + TIE for v in per)}/{len(per)}"])
    header = ["data", "seed", "training steps", "final loss", f"W2 probgen DDIM-{k}",
              f"W2 diffusers DDIM-{k}", "W2 difference", "MMD² probgen", "MMD² diffusers",
              "max abs diff"]
    return (
        f"## ddpm_2d: DDIM-{k}, probgen vs diffusers, over {len(args.ddim_seeds)} "
        "independently trained seeds\n\n"
        + stamp(args.threads, "; " + load_note()) + "\n\n"
        f"Per data set and seed: a VectorDDPM (T = {args.num_steps}, {args.schedule}) trained "
        f"from that seed for {args.minutes} min of wall clock (cap {args.steps} steps, batch "
        f"{args.batch_size}, Adam lr 2e-3, cosine decay); then {args.n} samples of probgen's "
        f"DDIM (eta = 0, {k} leading-spaced steps) and of diffusers' DDIMScheduler (same "
        "betas, set_alpha_to_one, no clipping, leading spacing) driving the same network "
        "from the same start noise (seeded by the seed); exact W2 and MMD² against "
        f"{args.n} held-out points (the same for every seed). W2 difference: probgen - "
        "diffusers (<= 0: probgen at least as good).\n\n"
        + markdown_table(header, rows) + "\n\nMeans over the seeds:\n\n"
        + markdown_table(["data", "mean W2 probgen", "mean W2 diffusers", "mean difference",
                          "mean MMD² probgen", "mean MMD² diffusers",
                          f"seeds with W2 probgen <= diffusers + {TIE:g}"], means) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["moons", "8gaussians"])
    parser.add_argument("--minutes", type=float, default=1.5,
                        help="training budget per data set (wall clock)")
    parser.add_argument("--steps", type=int, default=20000, help="training step cap")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--num-steps", type=int, default=100, help="T")
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--strides", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--solver-steps", type=int, nargs="+", default=[5, 10, 20],
                        help="levels of the second-order ODE solvers")
    parser.add_argument("--n", type=int, default=2000, help="samples per sampler")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--ddim-seeds", type=int, nargs="*", default=[],
                        help="also train these seeds per data set and compare DDIM "
                             "(--ddim-steps) of probgen and diffusers (section "
                             "ddpm_2d_ddim_seeds)")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--skip-main", action="store_true",
                        help="only the --ddim-seeds study")
    add_quick(parser, "moons only, 20 training steps, 200 samples, stride 10, DDIM seeds 0 1")
    args = parser.parse_args()
    apply_quick(parser, args, datasets=["moons"], steps=20, n=200, strides=[10],
                solver_steps=[5], ddim_seeds=[0, 1])
    set_threads(args.threads)
    if not args.skip_main:
        main_study(args)
    if args.ddim_seeds:
        body = ddim_seed_study(args)
        print(body)
        if not args.no_write:
            write_section("ddpm_2d_ddim_seeds", body)


def main_study(args: argparse.Namespace) -> None:
    """The sampler table (section ``ddpm_2d``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import diffusers
        from diffusers import (
            DDIMScheduler,
            DDPMScheduler,
            DPMSolverMultistepScheduler,
            HeunDiscreteScheduler,
        )
    rows, solver_rows = [], []
    notes = []
    for name in args.datasets:
        model, trained, loss = train_ddpm(name, args, args.seed)
        notes.append(f"{name}: {trained} training steps, final loss {loss:.4f}")
        held_out = toy_sample(name, args.n, generator=torch.Generator().manual_seed(123))
        betas = model.schedule.betas.numpy()
        noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(7))

        def quality(x, ref=held_out):
            if not torch.isfinite(x).all():
                return "nan", "nan"
            return f"{wasserstein2(x, ref):.4f}", f"{mmd2(x, ref):.5f}"

        configs = [("ancestral", args.num_steps)] + [("ancestral", k) for k in args.strides] \
            + [("ddim", k) for k in [*args.strides, args.num_steps]]
        for sampler, k in configs:
            def ours(sampler=sampler, k=k, model=model, noise=noise):
                return model.run(args.n, noise=noise.clone(), sampler=sampler, steps=k,
                                 spacing="leading",
                                 generator=torch.Generator().manual_seed(11)).samples

            if sampler == "ancestral":
                sched = DDPMScheduler(num_train_timesteps=args.num_steps, trained_betas=betas,
                                      variance_type="fixed_large", clip_sample=False,
                                      timestep_spacing="leading")
                eta = None
            else:
                sched = DDIMScheduler(num_train_timesteps=args.num_steps, trained_betas=betas,
                                      clip_sample=False, set_alpha_to_one=True,
                                      timestep_spacing="leading")
                eta = 0.0

            def theirs(sched=sched, k=k, eta=eta, model=model, noise=noise):
                return diffusers_loop(model, sched, noise.clone(), k,
                                      torch.Generator().manual_seed(11), eta)[0]

            ours()  # warm-up
            x_ours, t_ours = timed(ours)
            x_theirs, t_theirs = timed(theirs)
            diff = (x_ours - x_theirs).abs().max().item()
            w_o, m_o = quality(x_ours)
            w_t, m_t = quality(x_theirs)
            rows.append([name, sampler if k == args.num_steps or sampler == "ddim"
                         else "strided ancestral", str(k), w_o, w_t, m_o, m_t, f"{diff:.1e}",
                         f"{1e3 * t_ours:.0f}", f"{t_theirs / t_ours:.2f}"])
            print(rows[-1], flush=True)
        solver_configs = [("dpm++2m", DPMSolverMultistepScheduler, {
            "algorithm_type": "dpmsolver++", "solver_order": 2}),
            ("edm_heun", HeunDiscreteScheduler, {"use_karras_sigmas": True})]
        for (sampler, cls, options), k in ((c, k) for c in solver_configs
                                            for k in args.solver_steps):
            def ours(sampler=sampler, k=k, model=model, noise=noise):
                return model.run(args.n, noise=noise.clone(), sampler=sampler, steps=k)

            sched = cls(num_train_timesteps=args.num_steps, trained_betas=betas, **options)

            def theirs(sched=sched, k=k, model=model, noise=noise):
                return diffusers_loop(model, sched, noise.clone(), k, None)

            ours()  # warm-up
            res_ours, t_ours = timed(ours)
            (x_theirs, calls), t_theirs = timed(theirs)
            nfe = int(res_ours.timesteps.numel()) if sampler == "dpm++2m" else 2 * k - 1
            w_o, m_o = quality(res_ours.samples)
            w_t, m_t = quality(x_theirs)
            solver_rows.append([name, f"{sampler} / {cls.__name__}", str(k), f"{nfe} / {calls}",
                                w_o, w_t, m_o, m_t, f"{1e3 * t_ours:.0f}",
                                f"{t_theirs / t_ours:.2f}"])
            print(solver_rows[-1], flush=True)
    header = ["data", "sampler", "steps", "W2 probgen", "W2 diffusers", "MMD² probgen",
              "MMD² diffusers", "max abs diff", "probgen ms", "time diffusers / probgen"]
    table = markdown_table(header, rows)
    ref = toy_sample(args.datasets[0], args.n, generator=torch.Generator().manual_seed(5))
    floor = wasserstein2(ref, toy_sample(args.datasets[0], args.n,
                                         generator=torch.Generator().manual_seed(123)))
    body = (
        "## ddpm_2d: probgen's DDPM/DDIM loops vs diffusers' schedulers on one network\n\n"
        + stamp(args.threads, f"; diffusers {diffusers.__version__}") + "\n\n"
        f"One VectorDDPM per data set (the course's conditional MLP, T = {args.num_steps}, "
        f"{args.schedule} schedule, noise prediction) trained for {args.minutes} min "
        f"(cap {args.steps} steps, batch {args.batch_size}): " + "; ".join(notes) + ". "
        f"Then {args.n} samples per sampler from the same start noise and the same seeded "
        "noise generator; W2 (exact) and MMD² against as many held-out points "
        f"(two independent {args.n}-point draws of {args.datasets[0]} are W2 "
        f"{floor:.4f} apart: the floor); time is one sampling pass, network calls included.\n\n"
        + table + "\n\n"
        "Second-order ODE solvers at `steps` levels, probgen vs diffusers on the same "
        "network (network calls: probgen / diffusers):\n\n"
        + markdown_table(["data", "solver (probgen / diffusers)", "steps", "calls",
                          "W2 probgen", "W2 diffusers", "MMD² probgen", "MMD² diffusers",
                          "probgen ms", "time diffusers / probgen"], solver_rows) + "\n"
    )
    print(body)
    if not args.no_write:
        write_section("ddpm_2d", body)


if __name__ == "__main__":
    main()
