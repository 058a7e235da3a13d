"""Flow matching on MNIST at a CPU wall-clock budget: FID, precision and recall in the bundled
MNIST classifier's feature space and bits/dim through the ODE, for samples drawn with 10, 20
and 50 Euler steps, with adaptive dopri5 (the reference), and with the fast samplers "ddim",
"dpm++2m" and "edm_heun" at 10 and 20 steps (NFE counted). Goal: a sampler at <= 20 network
calls within 10% of dopri5's FID.

The model is ``ImageFlowMatching`` (the time-conditional U-Net) on images scaled to
[-1, 1], trained by ``ConditionalFlowMatching`` on the conditional OT path (independent or
exact-OT minibatch coupling) for ``--minutes`` of wall-clock (the issue's protocol: 60 on 2
CPU cores). Bits/dim: uniform dequantization, the [-1, 1] scaling's log-determinant and the
exact change of variables along the ODE with a Hutchinson trace (dopri5, rtol = atol =
1e-5), on ``--bpd-images`` test images. FID/precision/recall (k = 3) use the bundled
classifier's 128-d features (not Inception) against ``--n-ref`` test images; the row
``test images`` is held-out test images against the same reference (the floor at this
sample size). Without the MNIST files the script exits with status 3
(``_common.MNIST_MISSING``) and a one-line message.
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
    output_path,
    publish,
    set_threads,
    stamp,
    thread_note,
)

from probgen.couplings import get_coupling  # noqa: E402
from probgen.data import ImagePreprocess  # noqa: E402
from probgen.inference import ConditionalFlowMatching  # noqa: E402
from probgen.metrics import fid, precision_recall  # noqa: E402
from probgen.models import ImageFlowMatching  # noqa: E402

#: (sampler, torchdiffeq method of sampler "ode", steps) of each row.
SOLVERS = (("ode", "euler", 10), ("ode", "euler", 20), ("ode", "euler", 50),
           ("ode", "dopri5", None),
           *((sampler, "dopri5", k) for sampler in ("ddim", "dpm++2m", "edm_heun")
             for k in (10, 20)))


def budget_note(minutes: float, threads: int) -> str:
    """What the run's budget is against the issue's protocol (60 minutes on 2 cores)."""
    if minutes >= 60 and threads >= 2:
        return "The issue's protocol: 60 minutes on 2 cores."
    if minutes >= 60:
        return thread_note(minutes, threads)
    return (f"**The issue's protocol is 60 minutes on 2 cores; a run of {minutes:g} minutes "
            "is far from it, so these numbers say that the pipeline works, not what flow "
            "matching reaches.**")

def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    train, _ = mnist_split(args.root, "train", "fm_mnist")
    test, _ = mnist_split(args.root, "test", "fm_mnist")
    torch.manual_seed(0)
    model = ImageFlowMatching((1, 28, 28), base_channels=args.channels,
                              channel_mults=(1, 2, 2))
    pre = ImagePreprocess(levels=256, transform="signed", shape=(1, 28, 28))
    coupling = None if args.coupling == "independent" else get_coupling(args.coupling)
    objective = ConditionalFlowMatching(model, model.path, coupling, preprocess=pre)
    history, steps_done, train_s = fit_for(args.minutes, objective, train.float(),
                                           steps=args.max_steps, batch_size=args.batch_size,
                                           lr=args.lr, warmup_steps=args.warmup,
                                           grad_clip=1.0, ema_decay=args.ema, log_every=20)
    first, last = loss_ends(history, 5)
    model.eval()

    classifier, f_real, f_other = mnist_reference(test, args.n_ref, args.n)
    rows, grids, scores = [], [], {}
    for sampler, method, steps in SOLVERS:
        g = torch.Generator().manual_seed(1)
        t0 = time.perf_counter()
        chunks, nfe = [], 0
        for i in range(0, args.n, args.batch):
            chunks.append(model.sample((min(args.batch, args.n - i),), sampler=sampler,
                                       method=method, steps=steps, generator=g))
            nfe = max(nfe, model.last_nfe)
        seconds = time.perf_counter() - t0
        images = pre.to_unit(torch.cat(chunks)).clamp(0, 1)
        grids.append(images[:10])
        with torch.no_grad():
            f_fake = classifier.features(images)
        pr = precision_recall(f_real, f_fake)
        label = (f"{method if sampler == 'ode' else sampler} {steps} steps" if steps
                 else "dopri5 (adaptive)")
        score = fid(f_real, f_fake)
        scores[label] = (score, nfe)
        rows.append([label, str(nfe), f"{score:.2f}", f"{pr.precision:.3f}",
                     f"{pr.recall:.3f}", f"{seconds:.0f}"])
        print(f"[fm_mnist] {rows[-1]}", flush=True)
    pr_floor = precision_recall(f_real, f_other)
    rows.append([f"test images ({args.n} vs {args.n_ref})", "-",
                 f"{fid(f_real, f_other):.2f}", f"{pr_floor.precision:.3f}",
                 f"{pr_floor.recall:.3f}", "-"])
    t0 = time.perf_counter()
    bpd = model.bits_per_dim(test[-args.bpd_images:], pre,
                             generator=torch.Generator().manual_seed(2))
    bpd_s = time.perf_counter() - t0
    bpd_nfe = model.last_solve.nfe

    ref, _ = scores["dopri5 (adaptive)"]
    for row in rows[:-1]:
        row.append(f"{scores[row[0]][0] / ref:.2f}")
    rows[-1].append("-")
    fast = {k: v for k, v in scores.items() if v[1] <= 20}
    if fast:
        label = min(fast, key=lambda k: fast[k][0])
        score, nfe = fast[label]
        met = score <= 1.1 * ref
        goal = (f"Goal: a sampler at <= 20 network calls within 10% of dopri5's FID {ref:.2f} "
                f"(<= {1.1 * ref:.2f}): best {label} ({nfe} calls) FID {score:.2f} = "
                f"{score / ref:.2f}x: **{'met' if met else 'not met'}**.")
    else:
        goal = "Goal (<= 20 calls within 10% of dopri5's FID): not measured."

    from probgen import plots

    fig = plots.plot_image_grid(torch.cat(grids), nrow=10)
    figure = output_path(Path(__file__).resolve().parent / "fm_mnist.png")
    plots.save_figure(fig, figure)
    table = markdown_table(["sampler", "NFE", "FID (probgen MNIST classifier)", "precision",
                            "recall", f"seconds for {args.n}", "FID / dopri5"], rows)
    body = (
        "## MNIST: flow matching at a CPU budget (fm_mnist)\n\n"
        f"{stamp(args.threads)}.\n\n"
        f"ImageFlowMatching (U-Net, {args.channels} base channels, "
        f"{sum(p.numel() for p in model.parameters())} parameters), conditional OT path, "
        f"{args.coupling} coupling, batch {args.batch_size}, Adam lr {args.lr} "
        f"({args.warmup} warm-up steps), EMA {args.ema}, stopped after {args.minutes:g} "
        f"minutes ({steps_done} steps, {train_s / 60:.1f} min; CFM loss {first:.3f} -> "
        f"{last:.3f}). {args.n} samples per sampler from the same prior draws; NFE is "
        f"`model.last_nfe`; ddim (eta 0), dpm++2m and edm_heun on the velocity's data "
        f"prediction at their default grids. "
        f"{budget_note(args.minutes, args.threads)}\n\n" + table + "\n\n"
        f"Bits/dim of {args.bpd_images} test images through the ODE (Hutchinson trace, "
        f"dopri5): **{float(bpd.mean()):.3f}** ({bpd_nfe} NFE, {bpd_s:.0f} s). "
        f"Samples (rows: the table's samplers in its order; same prior draws): "
        f"`benchmarks/fm_mnist.png`.\n\n{goal}\n")
    publish("fm-mnist", body, args.write, echo=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mnist_root(p)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--max-steps", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--coupling", default="independent",
                   choices=["independent", "exact_ot", "sinkhorn"])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--n-ref", type=int, default=5000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--bpd-images", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    add_quick(p, "5 steps of batch 16, U-Net base 8, 8 samples against 32, bits/dim of 2 "
                 "images")
    args = p.parse_args(argv)
    apply_quick(p, args, minutes=0.5, max_steps=5, batch_size=16, warmup=1, channels=8, n=8,
                n_ref=32, batch=8, bpd_images=2)
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args()))
