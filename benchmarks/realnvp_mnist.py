"""Multi-scale RealNVP on dequantized MNIST: test bits/dim after a CPU wall-clock budget.

Without the MNIST files the script exits with status 3 (``_common.MNIST_MISSING``) and a
one-line message.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BENCH_DIR,
    add_quick,
    apply_quick,
    default_data_root,
    markdown_table,
    mnist_split,
    output_path,
    provenance,
    seconds_per_step,
    set_threads,
    write_section,
)

GOAL_BPD = 1.89


# --------------------------------------------------------------------------- model


def build_model(args: argparse.Namespace) -> nn.Module:
    """Builds ``probgen.models.<args.model>`` for (1, 28, 28) images.

    The named flags are passed under whichever names the constructor accepts; ``--kwargs``
    (JSON) is passed verbatim and wins.
    """
    from probgen import models

    cls = getattr(models, args.model)
    params = inspect.signature(cls).parameters
    wanted = {
        "shape": (1, 28, 28),
        "scales": args.scales,
        "hidden_channels": args.channels,
        "blocks": args.blocks,
        "actnorm": args.actnorm,
    }
    aliases = {
        "scales": ("scales", "num_scales", "levels"),
        "hidden_channels": ("hidden_channels", "channels", "hidden_features", "hidden"),
        "blocks": ("blocks", "res_blocks", "num_blocks", "residual_blocks", "depth"),
        "actnorm": ("actnorm",),
    }
    kwargs: dict = {"shape": wanted["shape"]}
    for key, names in aliases.items():
        for name in names:
            if name in params:
                kwargs[name] = wanted[key]
                break
        else:
            print(f"[realnvp_mnist] note: {args.model} has no argument for {key!r} "
                  f"(tried {list(names)}); its default is used.")
    kwargs.update(json.loads(args.kwargs))
    return cls(**kwargs)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def test_bits_per_dim(model: nn.Module, pre, images: Tensor, batch_size: int, seed: int) -> float:
    """Mean test bits/dim over ``images`` (uint8), with seeded uniform dequantization.

    bpd = (-log p(y) - ladj + D ln 256) / (D ln 2), ladj the logit's log|det| from the
    [0, 1)-scaled data: the density of the dequantized data on [0, 256)^D, a lower bound
    on the discrete log-likelihood.
    """
    from probgen.metrics.likelihood import bits_per_dim

    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    num_dims = math.prod(images.shape[1:])
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        y, ladj = pre(x, generator=g)
        nll = -model.log_prob(y)
        bpd = bits_per_dim(nll, num_dims, ladj=ladj, levels=pre.levels)
        total += float(bpd.double().sum())
        n += x.shape[0]
    model.train(was_training)
    return total / n


# --------------------------------------------------------------------------- main


class Clock:
    """fit callback: curve records, and a stop once the training time exceeds the budget.

    Training time excludes fit's evaluations on the subset: an evaluation record arrives
    right after the training record of the same step, so the time between the two
    callbacks is the evaluation's.
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.eval_s = 0.0
        self.train_s = 0.0
        self.train: list[dict] = []
        self.evals: list[dict] = []

    def start(self) -> None:
        self.t0 = self.last = time.perf_counter()

    def __call__(self, step: int, record: dict) -> bool:
        now = time.perf_counter()
        evals = {k: v for k, v in record.items() if k.startswith("eval/")}
        if evals:
            self.eval_s += now - self.last
            self.evals.append({"step": step, "train_minutes": self.train_s / 60,
                               "bits_per_dim": evals.get("eval/bits_per_dim", float("nan")),
                               "eval_seconds": now - self.last})
            print(f"[realnvp_mnist] step {step:6d}  {self.train_s / 60:6.2f} min  "
                  f"subset bpd {self.evals[-1]['bits_per_dim']:.4f}  "
                  f"(eval {now - self.last:.1f} s)", flush=True)
        else:
            self.train_s = now - self.t0 - self.eval_s
            self.train.append({"step": step, "train_minutes": self.train_s / 60,
                               "bits_per_dim": record.get("bits_per_dim", float("nan")),
                               "lr": record.get("lr", float("nan"))})
        self.last = now
        return self.train_s >= self.budget_s


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    from probgen.data import ImagePreprocess
    from probgen.inference import MaximumLikelihood, fit

    t_begin = time.perf_counter()
    train, _ = mnist_split(args.data, "train", "realnvp_mnist")
    test, _ = mnist_split(args.data, "test", "realnvp_mnist")
    pre = ImagePreprocess(levels=256, transform="logit", alpha=args.alpha)
    # A seeded random subset: MNIST's test set is ordered (its last 5000 digits, written by
    # students, are harder than its first 5000), so its first images are not representative.
    order = torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(args.seed))
    subset = test[order[: args.subset]]

    torch.manual_seed(args.seed)
    model = build_model(args)
    nparams = sum(p.numel() for p in model.parameters())
    objective = MaximumLikelihood(model, preprocess=pre)
    print(f"[realnvp_mnist] {args.model}: {nparams} parameters, batch {args.batch_size}, "
          f"lr {args.lr}, {args.threads} threads")

    budget_s = 60.0 * args.minutes
    if args.steps is None:
        t_step = seconds_per_step(objective, train, args.batch_size, args.lr, args.seed,
                                  warm=3, timed=args.calib_steps)
        steps = max(args.warmup + 2, int(budget_s / t_step))
    else:  # a fixed schedule; the budget still stops training
        t_step, steps = float("nan"), args.steps
    eval_every = max(1, steps // args.curve_points)
    print(f"[realnvp_mnist] calibration: {t_step:.3f} s/step -> schedule of {steps} steps "
          f"for {args.minutes} min (cosine after {args.warmup} warm-up steps), subset eval "
          f"every {eval_every} steps", flush=True)

    clock = Clock(budget_s)
    error = None
    clock.start()
    try:
        fit(objective, train, steps=steps, batch_size=args.batch_size, lr=args.lr,
            lr_schedule=args.schedule, warmup_steps=min(args.warmup, steps - 1),
            grad_clip=args.grad_clip, eval_data=subset, eval_every=eval_every,
            eval_batch_size=args.eval_batch_size, log_every=args.log_every, seed=args.seed,
            progress=False, callbacks=[clock])
    except FloatingPointError as e:  # NonFiniteLossError: report it, keep the curve
        error = str(e)
        print(f"[realnvp_mnist] training stopped: {error}")
    steps_done = clock.train[-1]["step"] if clock.train else 0
    train_s = clock.train_s
    if error is None and args.steps is None and train_s < 0.95 * budget_s:
        print(f"[realnvp_mnist] note: the schedule ended after {train_s / 60:.1f} of "
              f"{args.minutes} min: the calibration was slower than training (shared cores?)")

    t0 = time.perf_counter()
    n_final = min(args.final_eval_size, test.shape[0])
    final_images = test if n_final == test.shape[0] else test[order[:n_final]]
    final = test_bits_per_dim(model, pre, final_images, args.eval_batch_size, args.seed)
    final_eval_s = time.perf_counter() - t0
    total_s = time.perf_counter() - t_begin
    print(f"[realnvp_mnist] test bits/dim on {n_final} images: {final:.4f} "
          f"(eval {final_eval_s:.0f} s); {steps_done} steps in {train_s / 60:.1f} min "
          f"({train_s / max(steps_done, 1):.3f} s/step); total wall {total_s / 60:.1f} min")

    result = {
        **provenance(args.threads),
        "model": args.model, "params": nparams, "args": vars(args),
        "calibrated_s_per_step": t_step, "scheduled_steps": steps, "steps_done": steps_done,
        "train_minutes": train_s / 60, "subset_eval_seconds": clock.eval_s,
        "final_test_images": n_final, "final_test_bpd": final, "final_eval_seconds": final_eval_s,
        "total_minutes": total_s / 60, "error": error,
        "train_curve": clock.train, "subset_curve": clock.evals,
    }
    curve = output_path(args.curve)
    curve.write_text(json.dumps(result, indent=1))
    png = curve.with_suffix(".png")
    plot_curve(result, png)
    print(f"[realnvp_mnist] wrote {curve} and {png}")
    body = results_body(result, args)
    print(body)
    if args.write:
        path = write_section(args.section, body)
        print(f"[realnvp_mnist] wrote {path} section {args.section!r}")
    return 0 if error is None else 1


def plot_curve(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    tr = result["train_curve"]
    ax.plot([r["train_minutes"] for r in tr], [r["bits_per_dim"] for r in tr], lw=0.8,
            alpha=0.6, label="train (batch mean)")
    ev = result["subset_curve"]
    ax.plot([r["train_minutes"] for r in ev], [r["bits_per_dim"] for r in ev], "o-",
            label=f"test subset ({result['args']['subset']} images)")
    ax.axhline(GOAL_BPD, color="k", ls="--", lw=0.8, label=f"goal {GOAL_BPD}")
    ax.scatter([result["train_minutes"]], [result["final_test_bpd"]], marker="*", s=120,
               color="C3", zorder=3,
               label=f"test, {result['final_test_images']} images: "
                     f"{result['final_test_bpd']:.3f}")
    finite = [r["bits_per_dim"] for r in tr + ev if math.isfinite(r["bits_per_dim"])]
    if finite:
        ax.set_ylim(min(finite + [GOAL_BPD]) - 0.1, min(max(finite), 6.0) + 0.1)
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("bits/dim")
    ax.set_title(f"{result['model']} on MNIST ({result['params']} parameters)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_body(result: dict, args: argparse.Namespace) -> str:
    rows = [[str(r["step"]), f"{r['train_minutes']:.1f}", f"{r['bits_per_dim']:.4f}"]
            for r in result["subset_curve"]]
    table = markdown_table(["step", "training minutes", f"test bpd ({args.subset} images)"],
                           rows)
    verdict = "met" if result["final_test_bpd"] < GOAL_BPD else "MISSED"
    title = "MNIST: multi-scale RealNVP, bits/dim at a CPU budget"
    if args.section != "realnvp_mnist":
        title += f" ({args.section})"
    return (
        f"## {title}\n\n"
        f"Command: `{result['command']}`  \n"
        f"Date: {result['date']}  \n"
        f"Machine: {result['machine']}  \n"
        f"Model: `probgen.models.{result['model']}`, {result['params']} parameters "
        f"(scales {args.scales}, channels {args.channels}, blocks {args.blocks}, actnorm "
        f"{args.actnorm}, extra {args.kwargs}); batch {args.batch_size}, Adam lr {args.lr}, "
        f"{args.warmup} warm-up steps then {args.schedule}, grad clip {args.grad_clip}; "
        f"uniform dequantization, "
        f"logit with alpha {args.alpha}; bits/dim = (nll - ladj + D ln 256) / (D ln 2).  \n"
        f"Training: {result['steps_done']} steps in {result['train_minutes']:.1f} min "
        f"({60 * result['train_minutes'] / max(result['steps_done'], 1):.3f} s/step; "
        f"subset evaluations excluded: {result['subset_eval_seconds']:.0f} s); "
        f"total wall {result['total_minutes']:.1f} min.\n\n"
        f"**Test bits/dim on {result['final_test_images']} test images: "
        f"{result['final_test_bpd']:.4f}** (goal < {GOAL_BPD}: {verdict}; "
        f"evaluation took {result['final_eval_seconds']:.0f} s)"
        + (f"\n\nTraining stopped early: {result['error']}" if result["error"] else "")
        + f"\n\nCurve ({Path(args.curve).name}, {Path(args.curve).with_suffix('.png').name}):"
        f"\n\n{table}\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget")
    p.add_argument("--data", default=str(default_data_root()),
                   help="folder with the MNIST IDX files (or its mnist/ subfolder); default "
                        "$PROBGEN_DATA, else ../shared/data")
    p.add_argument("--model", default="MultiscaleRealNVP")
    p.add_argument("--scales", type=int, default=2)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--actnorm", action=argparse.BooleanOptionalAction, default=True,
                   help="ActNorm after every coupling (Glow-style, data-initialised)")
    p.add_argument("--kwargs", default="{}", help="JSON of extra constructor arguments")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--schedule", default="cosine", choices=["constant", "cosine", "linear"])
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--subset", type=int, default=2000,
                   help="test images (a seeded random subset) for the curve")
    p.add_argument("--curve-points", type=int, default=6)
    p.add_argument("--final-eval-size", type=int, default=10000)
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--calib-steps", type=int, default=10,
                   help="timed steps (after 3 untimed) that set the schedule's length")
    p.add_argument("--steps", type=int, default=None,
                   help="schedule length in steps instead of the calibrated one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curve", default=str(BENCH_DIR / "realnvp_mnist_curve.json"))
    p.add_argument("--section", default="realnvp_mnist",
                   help="RESULTS.md section to write (e.g. realnvp_mnist_pilot)")
    p.add_argument("--no-write", dest="write", action="store_false",
                   help="do not update benchmarks/RESULTS.md")
    add_quick(p, "3 s of training, batch 16, 8 channels and 1 block, calibration on 2 steps, "
                 "a 32-image curve subset, 64 final test images")
    args = p.parse_args(argv)
    apply_quick(p, args, minutes=0.05, channels=8, blocks=1, batch_size=16, warmup=2,
                subset=32, curve_points=2, final_eval_size=64, eval_batch_size=32,
                calib_steps=2)
    return args


if __name__ == "__main__":
    raise SystemExit(run(parse_args()))
