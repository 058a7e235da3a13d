"""Autoregressive models on binarized MNIST: test NLL after a CPU budget, sampling times.

For each binarization (``static``: threshold 128; ``dynamic``: a fresh Bernoulli draw of
every training batch, one fixed draw of the test set) and each model (MADE, PixelCNN,
Gated PixelCNN, ImageTransformer), train with the shared trainer for ``--minutes`` of
wall-clock time (the step count is calibrated, cosine schedule), then measure the test NLL
in nats per image on the 10000 test images, the time to sample 16 images, and, for the
transformer, the speed-up of key/value-cached over uncached sampling at 784 pixels (with a
check that both give the same images for one generator). The data come from
``probgen.run.experiment.build_data``, exactly what the CLI presets train on.

Results accumulate in ``autoregressive_mnist.json`` (keyed by binarization and model, so
runs of single models merge) and are rendered to the ``autoregressive_mnist`` section of
RESULTS.md; every row states the budget it was trained with. Without the MNIST files the
script exits with status 3 (``_common.MNIST_MISSING``) and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BENCH_DIR,
    Clock,
    add_quick,
    apply_quick,
    default_data_root,
    markdown_table,
    mnist_split,
    output_path,
    provenance,
    seconds_per_step,
    set_threads,
    update_json,
    write_section,
)

GOAL_GATED_DYNAMIC = 81.3  # PixelCNN's published NLL (nats) on dynamically binarized MNIST
GOAL_SPEEDUP = 5.0
SHAPE = [1, 28, 28]
# The benchmarked settings (the -mnist presets use the same).
MODELS: dict[str, dict] = {
    "MADE": {"kwargs": {"hidden_features": [1024, 1024]}, "batch_size": 128},
    "PixelCNN": {"kwargs": {"channels": 32, "layers": 6, "kernel_size": 3,
                            "first_kernel_size": 7, "layer_norm": True}, "batch_size": 64},
    "GatedPixelCNN": {"kwargs": {"channels": 32, "layers": 6, "kernel_size": 3,
                                 "first_kernel_size": 7}, "batch_size": 64},
    "ImageTransformer": {"kwargs": {"dim": 64, "heads": 4, "layers": 2}, "batch_size": 32},
}
BINARIZATIONS = {"static": "binarize", "dynamic": "dynamic_binarize"}
# --quick: small networks (sampling 784 pixels one by one dominates a smoke run)
QUICK_KWARGS = {"MADE": {"hidden_features": [64]}, "PixelCNN": {"channels": 8, "layers": 2},
                "GatedPixelCNN": {"channels": 8, "layers": 2},
                "ImageTransformer": {"dim": 16, "heads": 2, "layers": 1}}


class CurveClock(Clock):
    """A :class:`_common.Clock` that also keeps the training curve (the logged NLLs)."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(budget_s)
        self.curve: list[dict] = []

    def __call__(self, step: int, record: dict) -> bool:
        stop = super().__call__(step, record)
        if "nll" in record:
            self.curve.append({"step": step, "minutes": self.seconds / 60,
                               "train_nll": record["nll"]})
        return stop


@torch.no_grad()
def test_nll(model: nn.Module, test: torch.Tensor, batch_size: int = 500) -> float:
    """Mean -log p(x) in nats per image over the binarized test images."""
    model.eval()
    total = 0.0
    for start in range(0, test.shape[0], batch_size):
        total += float(-model.log_prob(test[start : start + batch_size]).double().sum())
    return total / test.shape[0]


def timed_sample(model: nn.Module, n: int, seed: int, **kwargs) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    x = model.sample(n, generator=torch.Generator().manual_seed(seed), **kwargs)
    return x, time.perf_counter() - t0


def run_one(name: str, binarization: str, args: argparse.Namespace) -> dict:
    from probgen import models
    from probgen.inference import MaximumLikelihood, fit
    from probgen.run.experiment import build_data

    config = {"data": {"name": "mnist", "root": str(args.data),
                       "preprocess": BINARIZATIONS[binarization]}}
    data = build_data(config, seed=args.seed)
    setting = MODELS[name]
    kwargs = {**setting["kwargs"], **json.loads(args.kwargs).get(name, {})}
    batch_size = args.batch_size or setting["batch_size"]
    torch.manual_seed(args.seed)
    model = models.MODELS[name](SHAPE, **kwargs)
    params = sum(p.numel() for p in model.parameters())
    objective = MaximumLikelihood(model, num_dims=784)
    budget_s = 60.0 * args.minutes
    t_step = seconds_per_step(objective, data.train, batch_size, args.lr, args.seed)
    steps = max(20, int(budget_s / t_step))
    warmup = min(100, steps // 10)
    print(f"[ar_mnist] {binarization}/{name}: {params} parameters, batch {batch_size}, "
          f"{t_step:.3f} s/step -> {steps} steps for {args.minutes} min", flush=True)
    clock = CurveClock(budget_s)
    fit(objective, data.train, steps=steps, batch_size=batch_size, lr=args.lr,
        lr_schedule="cosine", warmup_steps=warmup, grad_clip=args.grad_clip,
        log_every=args.log_every, seed=args.seed, progress=False, callbacks=[clock])
    model.eval()
    t0 = time.perf_counter()
    test = data.eval[: args.eval_size]
    nll = test_nll(model, test)
    eval_s = time.perf_counter() - t0
    samples, sample_s = timed_sample(model, args.sample_n, args.seed)
    result = {
        "model": name, "binarization": binarization, "params": params, "kwargs": kwargs,
        "batch_size": batch_size, "lr": args.lr, "budget_minutes": args.minutes,
        "train_minutes": clock.seconds / 60, "steps": clock.step, "scheduled_steps": steps,
        "test_images": int(test.shape[0]), "test_nll": nll,
        "test_bpd": nll / (784 * math.log(2)), "eval_seconds": eval_s,
        "sample_n": args.sample_n, "sample_seconds": sample_s,
        **provenance(args.threads),
        "curve": clock.curve,
    }
    print(f"[ar_mnist] {binarization}/{name}: test NLL {nll:.2f} nats/image "
          f"({result['test_bpd']:.4f} bits/dim) after {clock.step} steps in "
          f"{clock.seconds / 60:.1f} min; {args.sample_n} samples in {sample_s:.1f} s",
          flush=True)
    if name == "ImageTransformer" and args.uncached:
        plain, plain_s = timed_sample(model, args.sample_n, args.seed, use_cache=False)
        result.update(uncached_seconds=plain_s, speedup=plain_s / sample_s,
                      identical=bool(torch.equal(plain, samples)))
        print(f"[ar_mnist] uncached sampling {plain_s:.1f} s: speed-up "
              f"{result['speedup']:.1f}x, identical samples: {result['identical']}", flush=True)
    bits = samples.to(torch.uint8).reshape(-1).numpy()
    result["samples_packed"] = bytes(np.packbits(bits)).hex()
    return result


def plot_samples(results: dict, out: Path) -> None:
    """One row of samples per (binarization, model) that has saved samples."""
    from probgen.plots import plot_image_grid, save_figure

    rows = []
    for key in sorted(results):
        if "samples_packed" in results[key]:
            packed = np.frombuffer(bytes.fromhex(results[key]["samples_packed"]), np.uint8)
            pixels = np.unpackbits(packed)[: results[key]["sample_n"] * 784]
            rows.append((key, torch.from_numpy(pixels.astype(np.float32)).reshape(-1, *SHAPE)))
    if not rows:
        return
    n = max(x.shape[0] for _, x in rows)
    grid = torch.cat([torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 0, 0, n - x.shape[0]))
                      for _, x in rows])
    fig = plot_image_grid(grid, nrow=n, title="rows: " + ", ".join(k for k, _ in rows))
    save_figure(fig, out.with_suffix(".png"))


def results_body(results: dict) -> str:
    rows = []
    for key in sorted(results):
        r = results[key]
        rows.append([r["binarization"], r["model"], f"{r['params']:,}", str(r["batch_size"]),
                     f"{r['train_minutes']:.1f}", str(r["steps"]), f"**{r['test_nll']:.2f}**",
                     f"{r['test_bpd']:.4f}", f"{r['sample_seconds']:.1f}"])
    table = markdown_table(
        ["binarization", "model", "params", "batch", "train min", "steps",
         "test NLL (nats/image)", "bits/dim", "sample 16 (s)"], rows)
    lines = [
        "## MNIST: autoregressive models (MADE, PixelCNN, Gated PixelCNN, transformer)", "",
    ]
    commands = sorted({r["command"] for r in results.values()})
    lines += ["Commands: " + "; ".join(f"`{c}`" for c in commands) + "  ",
              f"Dates: {', '.join(sorted({r['date'] for r in results.values()}))}  ",
              f"Machine: {next(iter(results.values()))['machine']}  ",
              "Protocol: train with `probgen.inference.fit` (Adam, cosine after a short "
              "warm-up, step count calibrated to the budget, stopped at the budget); test NLL "
              "over the binarized MNIST test images (static: pixel >= 128; dynamic: training "
              "batches redrawn Bernoulli(intensity) every step, the test set drawn once with "
              "`torch.Generator().manual_seed(0)`); sampling times for 16 images after "
              "training (transformer: key/value cache). Settings: "
              + "; ".join(f"{k}: {v['kwargs']}" for k, v in MODELS.items()) + ".", "",
              table, ""]
    budgets = sorted({r["budget_minutes"] for r in results.values()})
    lines.append(f"**Budget actually used: {', '.join(f'{b:g}' for b in budgets)} minutes of "
                 "training per model** (the issue's protocol asks for 30 minutes per model and "
                 "binarization; rows at a smaller budget are not the 30-minute figure).")
    gated = results.get("dynamic/GatedPixelCNN")
    if gated:
        verdict = "met" if gated["test_nll"] <= GOAL_GATED_DYNAMIC else "not met"
        lines.append(f"Goal Gated PixelCNN <= {GOAL_GATED_DYNAMIC} nats on dynamic "
                     f"binarization: {verdict} at {gated['budget_minutes']:g} min "
                     f"({gated['test_nll']:.2f}).")
    for key in sorted(results):
        r = results[key]
        if "speedup" in r:
            verdict = "met" if r["speedup"] >= GOAL_SPEEDUP else "not met"
            lines.append(f"Transformer sampling ({key}), 16 images x 784 pixels: cached "
                         f"{r['sample_seconds']:.1f} s, uncached {r['uncached_seconds']:.1f} s"
                         f", speed-up **{r['speedup']:.1f}x** (goal >= {GOAL_SPEEDUP:g}x: "
                         f"{verdict}); identical samples for one generator: {r['identical']}.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0,
                   help="training wall-clock budget per model and binarization")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated, from {list(MODELS)}")
    p.add_argument("--binarization", default="static,dynamic",
                   help="comma-separated, from ['static', 'dynamic']")
    p.add_argument("--data", default=str(default_data_root()),
                   help="folder with the MNIST IDX files (or its mnist/ subfolder)")
    p.add_argument("--kwargs", default="{}",
                   help='JSON {model: {constructor overrides}}, e.g. \'{"MADE": {"orders": 4}}\'')
    p.add_argument("--batch-size", type=int, default=None, help="override every model's")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-size", type=int, default=10000)
    p.add_argument("--sample-n", type=int, default=16)
    p.add_argument("--uncached", action=argparse.BooleanOptionalAction, default=True,
                   help="also time uncached transformer sampling")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(BENCH_DIR / "autoregressive_mnist.json"),
                   help="results JSON (merged across runs); the samples figure is its .png")
    p.add_argument("--no-write", dest="write", action="store_false",
                   help="do not update benchmarks/RESULTS.md")
    add_quick(p, "dynamic binarization, every model shrunk (--kwargs) and trained for 0.6 s "
                 "at batch 8, 16 test images, 2 samples")
    args = p.parse_args(argv)
    apply_quick(p, args, minutes=0.01, binarization="dynamic", kwargs=json.dumps(QUICK_KWARGS),
                batch_size=8, eval_size=16, sample_n=2)
    for name in args.models.split(","):
        if name not in MODELS:
            p.error(f"--models: unknown {name!r}; expected some of {list(MODELS)}")
    for name in args.binarization.split(","):
        if name not in BINARIZATIONS:
            p.error(f"--binarization: unknown {name!r}; expected some of {list(BINARIZATIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    mnist_split(args.data, "test", "ar_mnist")  # exits when the files are missing
    out = output_path(args.out)
    for binarization in args.binarization.split(","):
        for name in args.models.split(","):
            # merged under a lock: runs of other models side by side keep their entries
            results = update_json(out, {f"{binarization}/{name}": run_one(name, binarization,
                                                                          args)})
            plot_samples(results, out)
            if args.write:  # after every model, so an interrupted run keeps what it measured
                path = write_section("autoregressive_mnist", results_body(results))
                print(f"[ar_mnist] wrote {path} section 'autoregressive_mnist'", flush=True)
    print(results_body(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
