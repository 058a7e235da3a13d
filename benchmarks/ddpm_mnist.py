"""MNIST DDPM at a CPU budget: FID, precision and recall (bundled MNIST classifier features)
and bits per dimension (the full variational bound), DDIM at 10/20/50/100 steps against
ancestral sampling over all T = 1000 steps, with their sampling times.

The issue's protocol trains for 60 minutes on 2 CPU cores (``--minutes 60``) and measures
on 1000+ samples; the goal is DDIM-50 within 10% of ancestral-1000 FID at 20x less time.
All samplers start from the same noise. No peer library is run here (diffusers' schedulers
are compared on the same network in ``benchmarks/ddpm_2d.py``). Without the MNIST files the
script exits with status 3 (``_common.MNIST_MISSING``) and a one-line message.
"""

from __future__ import annotations

import argparse
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
    markdown_table,
    mnist_split,
    output_path,
    set_threads,
    thread_note,
    today,
    write_section,
)

from probgen.inference import DiffusionLoss, fit  # noqa: E402
from probgen.metrics import fid, mnist_classifier, precision_recall  # noqa: E402
from probgen.models import DDPM  # noqa: E402
from probgen.utils import atomic_torch_save  # noqa: E402


def budget_note(minutes: float, threads: int) -> str:
    """What the run's budget is against the issue's protocol (60 minutes on 2 cores)."""
    if minutes < 60:
        return ("**Short budget: the issue protocol is 60 min and >= 1000 samples; these "
                "numbers are far from it.** ")
    note = thread_note(minutes, threads)
    return note + " " if note else ""


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    train, _ = mnist_split(args.root, "test" if args.smoke else "train", "ddpm_mnist")
    test, _ = mnist_split(args.root, "test", "ddpm_mnist")
    torch.manual_seed(0)
    model = DDPM((1, 28, 28), num_steps=1000, schedule="linear",
                 base_channels=args.base_channels, channel_mults=(1, 2, 2),
                 attention_levels=(2,) if args.attention else (), dropout=args.dropout)
    params = sum(p.numel() for p in model.parameters())
    if args.load:  # a model trained (and saved with --save) by an earlier run
        saved = torch.load(args.load, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        steps_done, train_s = int(saved["steps"]), float(saved["seconds"])
        first, last = float(saved["first_loss"]), float(saved["last_loss"])
        budget, train_threads = float(saved["minutes"]), int(saved["threads"])
    else:
        objective = DiffusionLoss(model, levels=256)
        start = time.perf_counter()

        def out_of_time(step: int, record: dict) -> bool:
            return time.perf_counter() - start > 60 * args.minutes

        history = fit(objective, train.float(), steps=args.max_steps,
                      batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=min(100, args.max_steps // 10), grad_clip=1.0,
                      ema_decay=args.ema, log_every=20, progress=False, callbacks=out_of_time,
                      seed=0)
        train_s = time.perf_counter() - start
        budget, train_threads = args.minutes, args.threads
        steps_done = int(history.records[-1]["step"])
        first = sum(r["loss"] for r in history.records[:3]) / 3
        last = sum(r["loss"] for r in history.records[-3:]) / 3
        if args.save:  # the EMA weights fit leaves in the model
            atomic_torch_save({"model": model.state_dict(), "steps": steps_done,
                               "seconds": train_s, "first_loss": first, "last_loss": last,
                               "minutes": budget, "threads": train_threads},
                              output_path(args.save))
    model.eval()

    classifier = mnist_classifier()
    real = test[: args.n_ref].float() / 255
    other = test[args.n_ref: args.n_ref + args.n].float() / 255
    with torch.no_grad():
        f_real, f_other = classifier.features(real), classifier.features(other)
    noise = torch.randn(args.n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    rows = []
    floor = fid(f_real, f_other)
    pr = precision_recall(f_real, f_other)
    rows.append([f"held-out test images ({args.n})", "-", f"{floor:.2f}",
                 f"{pr.precision:.3f}", f"{pr.recall:.3f}", "-", "-"])
    results = {}
    runs = [("ancestral", 1000, "linspace", 0.0),
            *[("ddim", k, sp, eta) for eta in args.ddim_etas for sp in args.ddim_spacings
              for k in args.ddim_steps]]
    for sampler, steps, spacing, eta in runs:
        t0 = time.perf_counter()
        chunks = []
        for i in range(0, args.n, args.batch):
            z = noise[i: i + args.batch]
            chunks.append(model.run(z.shape[0], noise=z, sampler=sampler, steps=steps,
                                    spacing=spacing, eta=eta,
                                    generator=torch.Generator().manual_seed(2 + i)).samples)
        seconds = time.perf_counter() - t0
        images = ((torch.cat(chunks) + 1) / 2).clamp(0, 1)
        with torch.no_grad():
            f_fake = classifier.features(images)
        score = fid(f_real, f_fake)
        pr = precision_recall(f_real, f_fake)
        results[(sampler, steps, spacing, eta)] = (score, seconds)
        name = f"DDPM {sampler}" + (f" (eta {eta:g}, {spacing} spacing)" if sampler == "ddim"
                                    else "")
        rows.append([name, str(steps), f"{score:.2f}", f"{pr.precision:.3f}",
                     f"{pr.recall:.3f}", f"{seconds:.1f}", ""])
        print(rows[-1], flush=True)
    base_fid, base_s = results[("ancestral", 1000, "linspace", 0.0)]
    for row, key in zip(rows[1:], runs, strict=True):
        score, seconds = results[key]
        row[6] = f"{score / base_fid:.2f} FID, {base_s / seconds:.1f}x faster"
    t0 = time.perf_counter()
    bound = model.variational_bound(test[: args.bpd_images].float(), levels=256,
                                    generator=torch.Generator().manual_seed(3))
    bpd_s = time.perf_counter() - t0
    bpd = bound["bpd"]
    bpd_text = (f"{float(bpd.mean()):.3f} ± {float(bpd.std() / math.sqrt(bpd.numel())):.3f} "
                f"bits/dim (full bound over all 1000 steps on {args.bpd_images} test images, "
                f"{bpd_s:.0f} s; prior term {float(bound['prior'].mean()):.2e} nats, decoder "
                f"term {float(bound['decoder'].mean()):.1f} nats per image)")
    verdicts = []
    for eta, spacing in [(e, sp) for e in args.ddim_etas for sp in args.ddim_spacings]:
        goal = results.get(("ddim", 50, spacing, eta))
        if goal is None:
            continue
        within = goal[0] <= 1.1 * base_fid
        verdicts.append(f"DDIM-50 (eta {eta:g}, {spacing} spacing) FID {goal[0]:.2f} vs "
                        f"ancestral-1000 {base_fid:.2f} ({goal[0] / base_fid:.2f}x; goal <= "
                        f"1.10x) at "
                        f"{base_s / goal[1]:.1f}x less time (goal 20x, i.e. 50 of 1000 network "
                        f"calls): FID goal {'met' if within else 'not met'}")
    verdict = "; ".join(verdicts) or "not measured (no DDIM-50 run)"
    table = markdown_table(["samples", "steps", "FID (MNIST classifier)", "precision",
                            "recall", f"seconds for {args.n}", "vs ancestral-1000"], rows)
    body = (
        "## ddpm_mnist: DDPM on MNIST at a CPU budget (DDIM vs ancestral, FID, bits/dim)\n\n"
        f"`{command_line()}` ({today()}; {machine(args.threads)}).\n\n"
        f"DDPM (T = 1000, linear betas 1e-4..0.02, eps prediction, fixed_large variance), "
        f"U-Net base {args.base_channels} channels x (1, 2, 2), "
        f"{'attention at 7x7, ' if args.attention else ''}{params} parameters; simple loss, "
        f"batch {args.batch_size}, Adam lr {args.lr}, EMA {args.ema}, stopped after "
        f"{budget:g} min{' (loaded from ' + args.load + ')' if args.load else ''}: "
        f"{steps_done} steps, {train_s / 60:.1f} min "
        f"(loss {first:.3f} -> {last:.3f}). "
        f"{budget_note(budget, train_threads)}"
        f"FID, precision and recall (k = 3) in the bundled MNIST classifier's 128-d features "
        f"against {args.n_ref} test images; {args.n} samples per sampler from the same noise "
        f"(FID at this sample size is biased upwards; the first row is held-out test images, "
        f"the floor).\n\n" + table + "\n\n"
        f"Bits/dim (upper bound, EMA weights): {bpd_text}.\n\nGoal: {verdict}.\n")
    print(body)
    if args.write:
        print(f"wrote {write_section('ddpm-mnist', body)}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    here = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(here))
    p.add_argument("--minutes", type=float, default=60.0, help="training budget (wall clock)")
    p.add_argument("--max-steps", type=int, default=200000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--attention", action="store_true", help="self-attention at 7x7")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--n", type=int, default=1000, help="samples per sampler")
    p.add_argument("--n-ref", type=int, default=2000, help="test images as FID reference")
    p.add_argument("--batch", type=int, default=250, help="sampling batch")
    p.add_argument("--ddim-steps", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--ddim-etas", type=float, nargs="+", default=[0.0],
                   help="DDIM noise levels eta in [0, 1] (0: deterministic)")
    p.add_argument("--save", default=None, help="write the trained (EMA) model here")
    p.add_argument("--load", default=None,
                   help="skip training: sample from a model written by --save")
    p.add_argument("--ddim-spacings", nargs="+", default=["linspace", "quadratic"],
                   help="DDIM step spacings (see probgen.diffusion.spaced_timesteps)")
    p.add_argument("--bpd-images", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="train on the test split (smoke)")
    p.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    add_quick(p, "5 steps of batch 16, U-Net base 8, 8 samples against 32, DDIM 10 steps, "
                 "bound on 2 images")
    args = p.parse_args(argv)
    apply_quick(p, args, minutes=0.5, max_steps=5, batch_size=16, base_channels=8, n=8,
                n_ref=32, batch=8, ddim_steps=[10], bpd_images=2)
    return args


if __name__ == "__main__":
    raise SystemExit(run(parse_args()))
