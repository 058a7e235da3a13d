"""MNIST inverse problems with a trained diffusion or flow-matching prior: inpainting (top
half observed) and denoising, by pseudo-inverse guidance (PiGDM) and DPS through
``probgen.inference.posterior_sample``.

A prior (``--prior fm``: ``ImageFlowMatching`` on the OT path; ``--prior ddpm``: ``DDPM``,
T = 1000, linear betas) is trained for ``--minutes`` of wall clock on 2 CPU cores or
fewer, or loaded from ``--load`` (a file written by ``--save``). For ``--images`` test
images, ``--samples`` posterior samples each, DDIM (eta 1, the ancestral sampler of the
path) with ``--steps`` steps, the table reports per task and method:

- RMSE on the hidden pixels (inpainting: the bottom half; denoising: every pixel) of the
  posterior mean over the samples and of one sample, on [0, 1] pixels;
- the bundled MNIST classifier's agreement with the true digit, over all samples;
- posterior diversity: the mean per-pixel standard deviation across the samples of one
  image, on the hidden pixels;
- the data fit: RMSE of ``A x - y`` on the model's [-1, 1] scale (the measurement noise
  standard deviation is the target);
- seconds per posterior sample.

Baselines: "observed only" fills the hidden pixels with the training mean (inpainting) or
returns ``y`` (denoising). PiGDM's :math:`r_t^2` uses the training images' mean per-pixel
variance as ``data_variance``. Without the MNIST files the script exits with status 3
(``_common.MNIST_MISSING``) and a one-line message.
"""

from __future__ import annotations

import argparse
import statistics
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
    today,
    write_section,
)

from probgen.data import ImagePreprocess  # noqa: E402
from probgen.inference import (  # noqa: E402
    ConditionalFlowMatching,
    DiffusionLoss,
    fit,
    posterior_sample,
)
from probgen.measurements import Denoising, Inpainting, LinearMeasurement  # noqa: E402
from probgen.metrics import mnist_classifier  # noqa: E402
from probgen.models import DDPM, ImageFlowMatching  # noqa: E402
from probgen.utils import atomic_torch_save  # noqa: E402

SHAPE = (1, 28, 28)


def build_prior(args: argparse.Namespace) -> torch.nn.Module:
    """The untrained prior of ``--prior``."""
    torch.manual_seed(0)
    if args.prior == "fm":
        return ImageFlowMatching(SHAPE, base_channels=args.channels, channel_mults=(1, 2, 2))
    return DDPM(SHAPE, num_steps=1000, schedule="linear", base_channels=args.channels,
                channel_mults=(1, 2, 2))


def train_prior(model: torch.nn.Module, train: torch.Tensor, args: argparse.Namespace
                ) -> dict:
    """Trains ``model`` for ``--minutes`` (or ``--max-steps``); returns a summary."""
    if args.prior == "fm":
        pre = ImagePreprocess(levels=256, transform="signed", shape=SHAPE)
        objective = ConditionalFlowMatching(model, model.path, None, preprocess=pre)
    else:
        objective = DiffusionLoss(model, levels=256)
    start = time.perf_counter()

    def out_of_time(step: int, record: dict) -> bool:
        return time.perf_counter() - start > 60 * args.minutes

    history = fit(objective, train.float(), steps=args.max_steps, batch_size=args.batch_size,
                  lr=args.lr, warmup_steps=min(100, args.max_steps // 10), grad_clip=1.0,
                  ema_decay=args.ema, log_every=20, progress=False, callbacks=out_of_time,
                  seed=0)
    records = history.records
    return {"steps": int(records[-1]["step"]), "seconds": time.perf_counter() - start,
            "first_loss": statistics.fmean(r["loss"] for r in records[:3]),
            "last_loss": statistics.fmean(r["loss"] for r in records[-3:]),
            "minutes": args.minutes}


def tasks(args: argparse.Namespace) -> dict[str, tuple[LinearMeasurement, torch.Tensor]]:
    """Each task's measurement and its hidden-pixel mask (where the error is measured)."""
    top = torch.zeros(SHAPE, dtype=torch.bool)
    top[:, : SHAPE[1] // 2] = True
    return {
        f"inpainting (top half, noise {args.inpaint_noise:g})":
            (Inpainting(top, args.inpaint_noise), ~top),
        f"denoising (noise {args.denoise_noise:g})":
            (Denoising(SHAPE, args.denoise_noise), torch.ones(SHAPE, dtype=torch.bool)),
    }


def evaluate(samples: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor,
             hidden: torch.Tensor, measurement: LinearMeasurement, y: torch.Tensor,
             classifier: torch.nn.Module) -> dict[str, float]:
    """Metrics of ``samples`` ``(images, k, 1, 28, 28)`` on [-1, 1] against ``truth``."""
    unit = ((samples + 1) / 2).clamp(0, 1)
    true_unit = ((truth + 1) / 2).clamp(0, 1)
    n, k = unit.shape[:2]
    h = hidden.expand_as(true_unit)
    mean = unit.mean(1)
    rmse_mean = float(((mean - true_unit)[h] ** 2).mean().sqrt())
    rmse_one = float(((unit[:, 0] - true_unit)[h] ** 2).mean().sqrt())
    with torch.no_grad():
        pred = classifier.probabilities(unit.reshape(n * k, *SHAPE)).argmax(-1)
    agree = float((pred == labels.repeat_interleave(k)).float().mean())
    diversity = float(unit.std(1)[h.expand(n, *SHAPE)].mean()) if k > 1 else float("nan")
    fit_rmse = float(((measurement(samples.reshape(n * k, *SHAPE)) - y.repeat_interleave(k, 0))
                      ** 2).mean().sqrt())
    return {"rmse_mean": rmse_mean, "rmse_one": rmse_one, "agree": agree,
            "diversity": diversity, "fit": fit_rmse}


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    train, _ = mnist_split(args.root, "train", "inverse_mnist")
    test, test_labels = mnist_split(args.root, "test", "inverse_mnist")
    model = build_prior(args)
    params = sum(p.numel() for p in model.parameters())
    if args.load:
        saved = torch.load(args.load, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        summary = saved["summary"]
    else:
        summary = train_prior(model, train, args)
        if args.save:
            atomic_torch_save({"model": model.state_dict(), "summary": summary},
                              output_path(args.save))
    model.eval()
    signed = train.float() / 127.5 - 1
    data_variance = float(signed.var(0).mean())
    train_mean = signed.mean(0)
    classifier = mnist_classifier()
    truth = test[: args.images].float() / 127.5 - 1
    labels = test_labels[: args.images].long()
    g = torch.Generator().manual_seed(0)
    methods = [("pigdm", 1.0)] + [("dps", s) for s in args.dps_scales]
    rows = []
    for task, (measurement, hidden) in tasks(args).items():
        y = measurement.simulate(truth, generator=g)
        if isinstance(measurement, Inpainting):
            base = torch.where(hidden, train_mean, measurement.adjoint(y))
        else:
            base = y.clone()
        stats = evaluate(base[:, None], truth, labels, hidden, measurement, y, classifier)
        rows.append([task, "observed only (baseline)", f"{stats['rmse_mean']:.3f}", "-",
                     f"{stats['agree']:.3f}", "-", "-", "-"])
        for method, scale in methods:
            chunks, seconds, nfe = [], 0.0, 0
            ys = y.repeat_interleave(args.samples, 0)
            for i in range(0, ys.shape[0], args.batch):
                start = time.perf_counter()
                out = posterior_sample(model, measurement, ys[i: i + args.batch],
                                       ys[i: i + args.batch].shape[0], method=method,
                                       sampler="ddim", steps=args.steps, eta=1.0, scale=scale,
                                       data_variance=data_variance,
                                       generator=torch.Generator().manual_seed(1 + i))
                seconds += time.perf_counter() - start
                chunks.append(out.samples.detach())
                nfe = out.nfe
            samples = torch.cat(chunks).reshape(args.images, args.samples, *SHAPE)
            if not torch.isfinite(samples).all():
                rows.append([task, f"{method} (scale {scale:g})", "non-finite", "-", "-", "-",
                             "-", f"{seconds / ys.shape[0]:.3f}"])
                continue
            stats = evaluate(samples.clamp(-1, 1), truth, labels, hidden, measurement, y,
                             classifier)
            label = "PiGDM" if method == "pigdm" else f"DPS (zeta {scale:g})"
            rows.append([task, f"{label}, DDIM eta 1, {args.steps} steps ({nfe} NFE)",
                         f"{stats['rmse_mean']:.3f}", f"{stats['rmse_one']:.3f}",
                         f"{stats['agree']:.3f}", f"{stats['diversity']:.3f}",
                         f"{stats['fit']:.3f}", f"{seconds / ys.shape[0]:.3f}"])
            print(f"[inverse_mnist] {task} {label}: {rows[-1][2:]}", flush=True)
    table = markdown_table(["task", "method", "RMSE hidden (posterior mean)",
                            "RMSE hidden (one sample)", "classifier agrees with digit",
                            "diversity (per-pixel sd)", "fit RMSE of A x - y",
                            "seconds per sample"], rows)
    prior = (f"ImageFlowMatching (OT path, U-Net base {args.channels} x (1, 2, 2))"
             if args.prior == "fm" else
             f"DDPM (T = 1000, linear betas, U-Net base {args.channels} x (1, 2, 2))")
    body = (
        "## inverse_mnist: MNIST inpainting and denoising with a trained prior (PiGDM, DPS)\n\n"
        f"`{command_line()}` ({today()}; {machine(args.threads)}).\n\n"
        f"Prior: {prior}, {params} parameters, trained {summary['steps']} steps in "
        f"{summary['seconds'] / 60:.1f} min (budget {summary['minutes']:g} min; loss "
        f"{summary['first_loss']:.3f} -> {summary['last_loss']:.3f})"
        f"{' (loaded from ' + args.load + ')' if args.load else ''}. "
        f"{args.images} test images x {args.samples} posterior samples; pixels on [0, 1]; "
        f"PiGDM data_variance {data_variance:.3f} (training images, [-1, 1] scale); "
        f"DPS scale zeta multiplies the likelihood score (see probgen.inference.inverse). "
        "**A short CPU training budget: the prior is weak, these numbers show the pipeline "
        "and the methods' relative behaviour, not what a well-trained prior reaches.**\n\n"
        f"{table}\n")
    print(body)
    if args.write:
        print(f"wrote {write_section('inverse-mnist', body)}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    here = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(here))
    p.add_argument("--prior", choices=["fm", "ddpm"], default="fm")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget (wall clock)")
    p.add_argument("--max-steps", type=int, default=200000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--channels", type=int, default=16, help="U-Net base channels")
    p.add_argument("--images", type=int, default=50, help="test images per task")
    p.add_argument("--samples", type=int, default=4, help="posterior samples per image")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--batch", type=int, default=100, help="posterior sampling batch")
    p.add_argument("--inpaint-noise", type=float, default=0.05)
    p.add_argument("--denoise-noise", type=float, default=0.5)
    p.add_argument("--dps-scales", type=float, nargs="*", default=[1.0, 0.1],
                   help="DPS's zeta values (a factor on the likelihood score)")
    p.add_argument("--save", default=None, help="write the trained prior here")
    p.add_argument("--load", default=None, help="skip training: load a prior from --save")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    add_quick(p, "5 training steps, U-Net base 8, 2 images x 2 samples, 5 DDIM steps")
    args = p.parse_args(argv)
    apply_quick(p, args, minutes=0.2, max_steps=5, batch_size=8, channels=8, images=2,
                samples=2, steps=5, batch=4)
    return args


if __name__ == "__main__":
    raise SystemExit(run(parse_args()))
