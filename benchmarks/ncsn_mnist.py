"""NCSN on MNIST at a short CPU wall-clock budget: FID, precision and recall in the bundled
MNIST classifier's feature space, sampling time (probgen's annealed Langevin against the
plain-PyTorch loop with the same network calls).

Without the MNIST files the script exits with status 3 (``_common.MNIST_MISSING``) and a
one-line message.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_mnist_root,
    add_quick,
    apply_quick,
    fit_for,
    loss_ends,
    markdown_table,
    mnist_reference,
    mnist_split,
    plain_annealed,
    publish,
    set_threads,
    stamp,
)

from probgen.data import ImagePreprocess  # noqa: E402
from probgen.inference import NoiseConditionalScoreMatching, ScoreSampler  # noqa: E402
from probgen.metrics import fid, precision_recall  # noqa: E402
from probgen.models import ConvScoreNet  # noqa: E402


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    train, _ = mnist_split(args.root, "train", "ncsn_mnist")
    test, _ = mnist_split(args.root, "test", "ncsn_mnist")
    torch.manual_seed(0)
    net = ConvScoreNet((1, 28, 28), hidden_channels=args.channels)
    pre = ImagePreprocess(levels=256, transform="scale", shape=(1, 28, 28))
    objective = NoiseConditionalScoreMatching(net, sigma_max=args.sigma_max,
                                              sigma_min=args.sigma_min,
                                              num_sigmas=args.levels, preprocess=pre)
    history, steps_done, train_s = fit_for(args.minutes, objective, train.float(),
                                           steps=args.max_steps, batch_size=args.batch_size,
                                           lr=args.lr, log_every=20)
    first, last = loss_ends(history, 5)
    net.eval()
    sigmas = objective.sigmas.tolist()
    sampler = ScoreSampler(net, (1, 28, 28), sigmas=sigmas, steps=args.steps_per_level,
                           eps=args.eps, denoise=True, init_std=1.0)
    g = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    samples = torch.cat([sampler.sample((min(args.batch, args.n - i),), generator=g)
                         for i in range(0, args.n, args.batch)]).clamp(0, 1)
    sample_s = time.perf_counter() - start
    # speed reference: the same chains (first batch) through the plain loop
    x0 = torch.randn(args.batch, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    plain_annealed(net, x0, sigmas, args.steps_per_level, args.eps,
                   torch.Generator().manual_seed(3), denoise=True)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    sampler.sample((args.batch,), generator=torch.Generator().manual_seed(3))
    ours_s = time.perf_counter() - start

    classifier, f_real, f_other = mnist_reference(test, args.n_ref, min(args.n, args.n_ref))
    with torch.no_grad():
        f_fake = classifier.features(samples)
    score = fid(f_real, f_fake)
    floor = fid(f_real, f_other)
    pr = precision_recall(f_real, f_fake)
    pr_floor = precision_recall(f_real, f_other)
    rows = [
        ["NCSN (probgen)", f"{steps_done} steps, {train_s / 60:.1f} min", f"{score:.2f}",
         f"{pr.precision:.3f}", f"{pr.recall:.3f}", f"{sample_s:.0f} s for {args.n}"],
        [f"test images ({args.n} vs {args.n_ref})", "-", f"{floor:.2f}",
         f"{pr_floor.precision:.3f}", f"{pr_floor.recall:.3f}", "-"],
    ]
    table = markdown_table(["samples", "training", "FID (probgen MNIST classifier)",
                            "precision", "recall", "sampling"], rows)
    speed = markdown_table(
        ["sampler", f"seconds for {args.batch} chains x {args.levels * args.steps_per_level} "
         "steps"], [["probgen ScoreSampler (annealed_langevin)", f"{ours_s:.1f}"],
                    ["plain PyTorch loop", f"{plain_s:.1f}"]])
    body = (
        "## MNIST: NCSN at a CPU budget\n\n"
        f"{stamp(args.threads)}.\n\n"
        f"A CPU budget, far from a converged NCSN (which trains for hours on GPUs): "
        f"ConvScoreNet ({args.channels} channels, {sum(p.numel() for p in net.parameters())} "
        f"parameters), NCSN loss over {args.levels} geometric levels {args.sigma_max} .. "
        f"{args.sigma_min}, batch {args.batch_size}, Adam lr {args.lr}, stopped after "
        f"{args.minutes} minutes ({steps_done} steps; loss {first:.1f} -> {last:.1f}). "
        f"Annealed Langevin, {args.steps_per_level} steps per level (NCSN v1 uses 100), "
        f"eps {args.eps}, final denoising step, {args.n} samples. FID, precision and recall "
        f"(k = 3) use the bundled MNIST classifier's 128-d features (not Inception) against "
        f"{args.n_ref} test images; the second row is held-out test images against the "
        f"same reference, the floor at this sample size.\n\n" + table + "\n\n" + speed + "\n")
    publish("ncsn-mnist", body, args.write)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    add_mnist_root(p)
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--sigma-max", type=float, default=1.0)
    p.add_argument("--sigma-min", type=float, default=0.01)
    p.add_argument("--levels", type=int, default=10)
    p.add_argument("--steps-per-level", type=int, default=20)
    p.add_argument("--eps", type=float, default=2e-5)  # technique 4 at T = 20: 2.3e-5
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--n-ref", type=int, default=2000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    add_quick(p, "5 steps of batch 16, 8 channels, 3 levels x 2 Langevin steps, 8 samples "
                 "against 32")
    args = p.parse_args(argv)
    apply_quick(p, args, minutes=0.02, max_steps=5, batch_size=16, channels=8, levels=3,
                steps_per_level=2, n=8, n_ref=32, batch=8)
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args()))
