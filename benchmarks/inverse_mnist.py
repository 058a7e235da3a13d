"""MNIST inverse problems with four trained priors: inpainting (top half observed) and
denoising, by NUTS and SVI over the latent of a normalizing flow and a VAE (through
``probgen.inference.measurement_model``) and by pseudo-inverse guidance (PiGDM) and DPS
with a DDPM and a flow-matching prior (through ``probgen.inference.posterior_sample``).

Priors (``--priors``, default all four), each trained for ``--minutes`` of wall clock, or
loaded from ``--load DIR`` (files ``DIR/<prior>.pt`` written by ``--save DIR``; a prior
missing there is trained):

- ``flow``: multi-scale RealNVP (2 scales, 32 channels, 2 residual blocks, ActNorm) on
  dequantized MNIST in logit space (alpha 0.05), maximum likelihood: the setting of
  ``benchmarks/realnvp_mnist.py`` and the ``realnvp-mnist`` preset;
- ``vae``: VAE, MLP 784-512-512, latent 32, Bernoulli pixels on dynamically binarized
  MNIST, mean-field ELBO: the ``vae`` setting of ``benchmarks/vae_mnist.py``;
- ``ddpm``: DDPM, T = 1000, linear betas, U-Net (``--channels`` x (1, 2, 2));
- ``fm``: ``ImageFlowMatching`` on the OT path, the same U-Net.

Routes. Signals live on the [-1, 1] pixel scale, where the measurements are declared:

- flow: ``measurement_model(flow.distribution(), m, y, latent=True, decode=...)`` samples
  the flow's base latent ``z ~ N(0, I)`` and pushes it through the flow and the logit
  preprocessing's inverse (``2 pre.to_unit(v) - 1``): the flow's density pushed forward to
  pixels is the prior. SVI with a mean-field Gaussian guide (``AutoNormal``) over ``z``
  (``--svi-steps``), and NUTS over ``z`` on the first ``--flow-nuts-images`` images only
  with a short chain (``--flow-nuts-warmup``, ``--flow-nuts-samples``,
  ``--flow-nuts-depth``): a 784-dimensional latent and a gradient through the flow per
  leapfrog step make a longer chain or more images too slow for this machine;
- VAE: ``z ~ N(0, I)``, ``x = 2 vae.decoder_mean(z) - 1`` (the Bernoulli means as gray
  pixels), NUTS (``--nuts-warmup``, ``--nuts-samples`` kept every
  ``nuts_samples / samples``-th) and SVI (``AutoNormal``) over ``z``;
- DDPM, FM: PiGDM and DPS (``--dps-scales``), DDIM eta 1 with ``--steps`` steps, the
  guided data prediction clamped to [-1, 1] (``--no-clip`` turns it off: then the
  guidance of the briefly trained DDPM drives every sample to non-finite values, see
  ``measurement_guided``'s ``clip``).

Every route runs all images of a task at once (``y`` of shape ``(images, ...)``:
``pyro.plate`` in ``measurement_model``; a batch for the path samplers). For ``--images``
test images, ``--samples`` posterior samples each, the table reports per task, prior and
method:

- RMSE on the hidden pixels (inpainting: the bottom half; denoising: every pixel) of the
  posterior mean over the samples and of one sample, on [0, 1] pixels;
- the bundled MNIST classifier's agreement with the true digit, over all samples;
- posterior diversity: the mean per-pixel standard deviation across the samples of one
  image, on the hidden pixels;
- the data fit: RMSE of ``A x - y`` on the [-1, 1] scale (the measurement noise standard
  deviation is the target);
- seconds per posterior sample: the route's wall time (NUTS warm-up and SVI fit included)
  over the samples it returned.

Baseline "observed only" fills the hidden pixels with the training mean (inpainting) or
returns ``y`` (denoising). PiGDM's :math:`r_t^2` uses the training images' mean per-pixel
variance as ``data_variance``. Without the MNIST files the script exits with status 3
(``_common.MNIST_MISSING``) and a one-line message.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_mnist_root,
    add_quick,
    apply_quick,
    fit_for,
    loss_ends,
    markdown_table,
    mnist_split,
    output_path,
    publish,
    set_threads,
    stamp,
)

from probgen.data import ImagePreprocess, dynamic_binarize  # noqa: E402
from probgen.inference import (  # noqa: E402
    ELBO,
    ConditionalFlowMatching,
    DiffusionLoss,
    MaximumLikelihood,
    measurement_model,
    posterior_sample,
)
from probgen.measurements import Denoising, Inpainting, LinearMeasurement  # noqa: E402
from probgen.metrics import mnist_classifier  # noqa: E402
from probgen.models import DDPM, VAE, ImageFlowMatching, MultiscaleRealNVP  # noqa: E402
from probgen.utils import atomic_torch_save  # noqa: E402

SHAPE = (1, 28, 28)
PRIORS = ("flow", "vae", "ddpm", "fm")
FLOW_PRE = ImagePreprocess(levels=256, transform="logit", alpha=0.05, shape=SHAPE)


def describe(name: str, args: argparse.Namespace) -> str:
    """A one-line description of the prior ``name``."""
    return {
        "flow": f"multi-scale RealNVP (2 scales, {args.flow_channels} channels, "
                f"{args.flow_blocks} blocks, ActNorm; logit space, alpha 0.05)",
        "vae": f"VAE (MLP {args.vae_hidden}-{args.vae_hidden}, latent {args.vae_latent}, "
               "Bernoulli, dynamically binarized)",
        "ddpm": f"DDPM (T = 1000, linear betas, U-Net base {args.channels} x (1, 2, 2))",
        "fm": f"ImageFlowMatching (OT path, U-Net base {args.channels} x (1, 2, 2))",
    }[name]


def build_prior(name: str, args: argparse.Namespace) -> torch.nn.Module:
    """The untrained prior ``name``."""
    torch.manual_seed(0)
    if name == "flow":
        return MultiscaleRealNVP(SHAPE, scales=2, hidden_channels=args.flow_channels,
                                 blocks=args.flow_blocks, actnorm=True)
    if name == "vae":
        return VAE(SHAPE, args.vae_latent, hidden_features=[args.vae_hidden] * 2,
                   likelihood="bernoulli")
    if name == "fm":
        return ImageFlowMatching(SHAPE, base_channels=args.channels, channel_mults=(1, 2, 2))
    return DDPM(SHAPE, num_steps=1000, schedule="linear", base_channels=args.channels,
                channel_mults=(1, 2, 2))


class Binarized:
    """Batches of training images, each pixel redrawn Bernoulli(intensity) per batch."""

    def __init__(self, images: torch.Tensor) -> None:
        self.intensity = images.float() / 255

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.randint(0, self.intensity.shape[0], (n,), generator=generator)
        return dynamic_binarize(self.intensity[idx], generator=generator)


def train_prior(name: str, model: torch.nn.Module, train: torch.Tensor,
                args: argparse.Namespace) -> dict:
    """Trains ``model`` for ``--minutes`` (or ``--max-steps``); returns a summary."""
    data, batch, ema, clip = train.float(), args.batch_size, args.ema, 1.0
    if name == "flow":
        objective, data = MaximumLikelihood(model, preprocess=FLOW_PRE), train
        ema, clip = None, None
    elif name == "vae":
        objective, data, batch, ema, clip = (ELBO(model, estimator="meanfield"), Binarized(train),
                                             128, None, None)
    elif name == "fm":
        pre = ImagePreprocess(levels=256, transform="signed", shape=SHAPE)
        objective = ConditionalFlowMatching(model, model.path, None, preprocess=pre)
    else:
        objective = DiffusionLoss(model, levels=256)
    history, steps, seconds = fit_for(args.minutes, objective, data, steps=args.max_steps,
                                      batch_size=batch, lr=args.lr,
                                      warmup_steps=min(100, args.max_steps // 10),
                                      grad_clip=clip, ema_decay=ema, log_every=20)
    first, last = loss_ends(history, 3)
    summary = {"steps": steps, "seconds": seconds, "first_loss": first, "last_loss": last,
               "minutes": args.minutes}
    print(f"[inverse_mnist] {name}: {summary}", flush=True)
    return summary


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


def load_or_train(name: str, train: torch.Tensor, args: argparse.Namespace
                  ) -> tuple[torch.nn.Module, dict]:
    """The prior ``name``: loaded from ``--load DIR`` when its file is there, else trained
    (and written to ``--save DIR``)."""
    model = build_prior(name, args)
    path = Path(args.load) / f"{name}.pt" if args.load else None
    if path is not None and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        summary = {**saved["summary"], "loaded": str(path)}
    else:
        summary = train_prior(name, model, train, args)
        if args.save:
            target = output_path(Path(args.save) / f"{name}.pt")
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({"model": model.state_dict(), "summary": summary}, target)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    summary["params"] = sum(p.numel() for p in model.parameters())
    return model, summary


def latent_model(name: str, model: torch.nn.Module, measurement: LinearMeasurement,
                 y: torch.Tensor) -> Callable[[], None]:
    """The Pyro model of the ``images`` signals measured by ``y`` under a flow or VAE
    prior, over its latent ``"z"``; ``"x"`` the signal on the [-1, 1] scale."""
    if name == "flow":
        return measurement_model(model.distribution(), measurement, y, latent=True,
                                 decode=lambda v: 2 * FLOW_PRE.to_unit(v) - 1)
    return measurement_model(model.prior_distribution(), measurement, y,
                             decode=lambda z: 2 * model.decoder_mean(z) - 1)


def signals(pyro_model: Callable[[], None], z: torch.Tensor) -> torch.Tensor:
    """The signals ``"x"`` ``(images, k, *SHAPE)`` of latents ``z`` ``(k, images, ...)``."""
    with torch.no_grad():
        out = [pyro.poutine.trace(pyro.poutine.condition(pyro_model, {"z": zk}))
               .get_trace().nodes["x"]["value"] for zk in z]
    return torch.stack(out, 1)


def run_nuts(pyro_model: Callable[[], None], args: argparse.Namespace, seed: int,
             budget: tuple[int, int, int]) -> tuple[torch.Tensor, str]:
    """``--samples`` NUTS draws per image, kept evenly from the chain's draws; ``budget``:
    (warm-up iterations, draws, max tree depth)."""
    from pyro.infer import MCMC, NUTS

    warmup, draws, depth = budget
    pyro.set_rng_seed(seed)
    kernel = NUTS(pyro_model, max_tree_depth=depth)
    mcmc = MCMC(kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=True)
    mcmc.run()
    z = mcmc.get_samples()["z"]
    keep = torch.linspace(0, z.shape[0] - 1, args.samples).round().long()
    label = (f"NUTS over z ({warmup} warm-up, {draws} draws, max tree depth {depth}, "
             f"step size {float(kernel.step_size):.3g})")
    return signals(pyro_model, z[keep]), label


def run_svi(pyro_model: Callable[[], None], args: argparse.Namespace, seed: int
            ) -> tuple[torch.Tensor, str]:
    """``--samples`` draws per image from a mean-field Gaussian guide over the latent."""
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = AutoNormal(pyro_model, init_scale=0.1)
    svi = SVI(pyro_model, guide, pyro.optim.ClippedAdam({"lr": args.svi_lr, "lrd": 0.999}),
              Trace_ELBO())
    losses = [svi.step() for _ in range(args.svi_steps)]
    with torch.no_grad():
        z = torch.stack([guide()["z"] for _ in range(args.samples)])
    label = (f"SVI over z (mean-field Gaussian, {args.svi_steps} steps, -ELBO "
             f"{statistics.fmean(losses[:5]):.4g} -> {statistics.fmean(losses[-5:]):.4g})")
    return signals(pyro_model, z), label


def run_guided(model: torch.nn.Module, measurement: LinearMeasurement, y: torch.Tensor,
               method: str, scale: float, data_variance: float, args: argparse.Namespace
               ) -> tuple[torch.Tensor, str]:
    """``--samples`` PiGDM or DPS draws per image, in batches of ``--batch``."""
    ys = y.repeat_interleave(args.samples, 0)
    chunks, nfe = [], 0
    for i in range(0, ys.shape[0], args.batch):
        out = posterior_sample(model, measurement, ys[i: i + args.batch],
                               ys[i: i + args.batch].shape[0], method=method,
                               sampler="ddim", steps=args.steps, eta=1.0, scale=scale,
                               data_variance=data_variance,
                               clip=(-1.0, 1.0) if args.clip else None,
                               generator=torch.Generator().manual_seed(1 + i))
        chunks.append(out.samples.detach())
        nfe = out.nfe
    name = "PiGDM" if method == "pigdm" else f"DPS (zeta {scale:g})"
    clip = ", x-hat clipped to [-1, 1]" if args.clip else ""
    return (torch.cat(chunks).reshape(y.shape[0], args.samples, *SHAPE),
            f"{name}, DDIM eta 1, {args.steps} steps ({nfe} NFE){clip}")


def row(task: str, prior: str, label: str, stats: dict | None, seconds: float | None
        ) -> list[str]:
    if stats is None:
        return [task, prior, label, "non-finite", "-", "-", "-", "-",
                "-" if seconds is None else f"{seconds:.3f}"]
    fmt = [f"{stats[k]:.3f}" if stats[k] == stats[k] else "-"
           for k in ("rmse_mean", "rmse_one", "agree", "diversity", "fit")]
    return [task, prior, label, *fmt, "-" if seconds is None else f"{seconds:.3f}"]


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    train, _ = mnist_split(args.root, "train", "inverse_mnist")
    test, test_labels = mnist_split(args.root, "test", "inverse_mnist")
    loads = [os.getloadavg()[0]]  # the cores are shared: the load says how much
    priors, summaries = {}, {}
    for name in args.priors:
        priors[name], summaries[name] = load_or_train(name, train, args)
    loads.append(os.getloadavg()[0])
    signed = train.float() / 127.5 - 1
    data_variance = float(signed.var(0).mean())
    train_mean = signed.mean(0)
    classifier = mnist_classifier()
    truth = test[: args.images].float() / 127.5 - 1
    labels = test_labels[: args.images].long()
    g = torch.Generator().manual_seed(0)
    rows = []
    for task, (measurement, hidden) in tasks(args).items():
        y = measurement.simulate(truth, generator=g)
        if isinstance(measurement, Inpainting):
            base = torch.where(hidden, train_mean, measurement.adjoint(y))
        else:
            base = y.clone()
        stats = evaluate(base[:, None], truth, labels, hidden, measurement, y, classifier)
        rows.append([task, "-", "observed only (baseline)", f"{stats['rmse_mean']:.3f}", "-",
                     f"{stats['agree']:.3f}", "-", "-", "-"])
        for name, model in priors.items():
            routes: list[Callable[[], tuple[torch.Tensor, str]]] = []
            if name in ("flow", "vae"):
                pm = latent_model(name, model, measurement, y)
                routes.append(partial(run_svi, pm, args, 0))
                if name == "vae":
                    routes.append(partial(run_nuts, pm, args, 0, (
                        args.nuts_warmup, args.nuts_samples, args.nuts_depth)))
                elif args.flow_nuts_images > 0:
                    few = min(args.flow_nuts_images, args.images)
                    routes.append(partial(run_nuts, latent_model(name, model, measurement,
                                                                 y[:few]), args, 0, (
                        args.flow_nuts_warmup, args.flow_nuts_samples, args.flow_nuts_depth)))
            else:
                routes += [partial(run_guided, model, measurement, y, m, s, data_variance, args)
                           for m, s in [("pigdm", 1.0)] + [("dps", s) for s in args.dps_scales]]
            for route in routes:
                start = time.perf_counter()
                samples, label = route()
                seconds = (time.perf_counter() - start) / (samples.shape[0] * samples.shape[1])
                n = samples.shape[0]
                if n < args.images:
                    label += f", first {n} images only"
                if not torch.isfinite(samples).all():
                    rows.append(row(task, name, label, None, seconds))
                else:
                    stats = evaluate(samples.clamp(-1, 1), truth[:n], labels[:n], hidden,
                                     measurement, y[:n], classifier)
                    rows.append(row(task, name, label, stats, seconds))
                print(f"[inverse_mnist] {' | '.join(rows[-1])}", flush=True)
    loads.append(os.getloadavg()[0])
    table = markdown_table(["task", "prior", "method", "RMSE hidden (posterior mean)",
                            "RMSE hidden (one sample)", "classifier agrees with digit",
                            "diversity (per-pixel sd)", "fit RMSE of A x - y",
                            "seconds per sample"], rows)
    lines = []
    for name, summary in summaries.items():
        loaded = f" (loaded from {summary['loaded']})" if "loaded" in summary else ""
        lines.append(f"- {name}: {describe(name, args)}, {summary['params']} parameters, "
                     f"trained {summary['steps']} steps in {summary['seconds'] / 60:.1f} min "
                     f"(budget {summary['minutes']:g} min; loss {summary['first_loss']:.3f} -> "
                     f"{summary['last_loss']:.3f}){loaded}")
    body = (
        "## inverse_mnist: MNIST inpainting and denoising with flow, VAE, DDPM and "
        "flow-matching priors (NUTS, SVI, PiGDM, DPS)\n\n"
        + stamp(args.threads, f"; 1-minute load average {loads[0]:.1f} at the start, "
                f"{loads[1]:.1f} after training, {loads[2]:.1f} at the end: the cores were "
                "shared with other jobs") + ".\n\n"
        "Priors, each trained for a fixed wall-clock budget:\n\n" + "\n".join(lines) + "\n\n"
        f"{args.images} test images (the first of the test set) x {args.samples} posterior "
        "samples per task; pixels on [0, 1] for the errors; NUTS and SVI run over the latent "
        "of the flow (its base, pushed through the flow and the logit's inverse) and of the "
        "VAE (its decoder mean), all images of a task in one plate of "
        "`measurement_model`; PiGDM data_variance "
        f"{data_variance:.3f} (training images, [-1, 1] scale); DPS's zeta multiplies the "
        "likelihood score (see probgen.inference.inverse). Seconds per sample: the route's "
        "wall time (NUTS warm-up, SVI fit) over the samples returned. **Short CPU training "
        "budgets: the priors are weak; the numbers show the routes and their relative "
        "behaviour, not what well-trained priors reach.**\n\n"
        f"{table}\n")
    publish("inverse-mnist", body, args.write, echo=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mnist_root(p)
    p.add_argument("--priors", nargs="+", choices=PRIORS, default=list(PRIORS))
    p.add_argument("--minutes", type=float, default=6.0,
                   help="training budget per prior (wall clock)")
    p.add_argument("--max-steps", type=int, default=200000)
    p.add_argument("--batch-size", type=int, default=64, help="flow, DDPM, FM (VAE: 128)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.995, help="DDPM and FM")
    p.add_argument("--channels", type=int, default=16, help="U-Net base channels")
    p.add_argument("--flow-channels", type=int, default=32)
    p.add_argument("--flow-blocks", type=int, default=2)
    p.add_argument("--vae-hidden", type=int, default=512)
    p.add_argument("--vae-latent", type=int, default=32)
    p.add_argument("--images", type=int, default=20, help="test images per task")
    p.add_argument("--samples", type=int, default=4, help="posterior samples per image")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--batch", type=int, default=80, help="posterior sampling batch")
    p.add_argument("--svi-steps", type=int, default=300)
    p.add_argument("--svi-lr", type=float, default=0.05)
    p.add_argument("--nuts-warmup", type=int, default=150, help="VAE: NUTS warm-up")
    p.add_argument("--nuts-samples", type=int, default=40, help="VAE: NUTS draws")
    p.add_argument("--nuts-depth", type=int, default=8, help="VAE: NUTS's max tree depth")
    p.add_argument("--flow-nuts-images", type=int, default=1,
                   help="images for NUTS over the flow's latent (0: skip)")
    p.add_argument("--flow-nuts-warmup", type=int, default=50)
    p.add_argument("--flow-nuts-samples", type=int, default=20)
    p.add_argument("--flow-nuts-depth", type=int, default=5)
    p.add_argument("--inpaint-noise", type=float, default=0.05)
    p.add_argument("--denoise-noise", type=float, default=0.5)
    p.add_argument("--dps-scales", type=float, nargs="*", default=[1.0, 0.1],
                   help="DPS's zeta values (a factor on the likelihood score)")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=True,
                   help="PiGDM/DPS: clamp the guided data prediction to [-1, 1] "
                        "(measurement_guided's clip)")
    p.add_argument("--save", default=None, help="write the trained priors to DIR/<prior>.pt")
    p.add_argument("--load", default=None, help="load priors from DIR/<prior>.pt (--save)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    add_quick(p, "5 training steps per prior, small networks, 2 images x 2 samples, "
                 "5 DDIM steps, 5 SVI steps, 6 NUTS iterations")
    args = p.parse_args(argv)
    apply_quick(p, args, minutes=0.2, max_steps=5, batch_size=8, channels=8, flow_channels=8,
                flow_blocks=1, vae_hidden=32, images=2, samples=2, steps=5, batch=4,
                svi_steps=5, nuts_warmup=3, nuts_samples=3, nuts_depth=3, flow_nuts_warmup=3,
                flow_nuts_samples=3, flow_nuts_depth=3)
    return args


if __name__ == "__main__":
    raise SystemExit(run(parse_args()))
