"""Throughput on one GPU: every image family at 3x32x32, fp32 vs bf16 vs compiled (issue 25).

Per family, training throughput (images per second through ``probgen.inference.fit``, the
one trainer, with ``precision="fp32"`` / ``"bf16"`` and ``compile=True``) and sampling
throughput at a fixed number of network calls (images per second), on CIFAR-shaped data:
random tensors of the right range by default (throughput does not depend on the pixels),
or CIFAR-10 from ``--root`` (``probgen.data.load_cifar``). Families:

- ``ddpm_unet``: ``DDPM((3, 32, 32), base_channels=64, channel_mults=(1, 2, 2, 2))``, the
  simple loss; sampling: DDIM, 20 calls;
- ``ddpm_dit``: a ``DiffusionModel`` on ``DiT((3, 32, 32), patch=2, hidden=256, depth=8,
  heads=4)``, the simple loss; sampling: DDIM, 20 calls;
- ``fm_unet``: ``ImageFlowMatching`` (OT path) on the same U-Net, conditional flow
  matching; sampling: DPM-Solver++(2M), 20 calls;
- ``sde_unet``: ``ImageScoreSDE`` (VP), continuous-time score matching; sampling:
  DPM-Solver++(2M), 20 calls;
- ``vae_conv``: ``VAE((3, 32, 32), latent 128, conv encoder/decoder, Gaussian)``, the
  ELBO; sampling: one decoder call;
- ``glow``: ``Glow((3, 32, 32), scales=3, steps=8)``, maximum likelihood; sampling: one
  inverse pass;
- ``pixelcnn``: ``PixelCNN((3, 32, 32), 256 categories)``, maximum likelihood; sampling:
  not timed (3072 network calls per image);
- ``wgan_gp``: ``DCGAN((3, 32, 32))`` with the WGAN-GP loss (5 critic steps; its own
  training step, so ``compile`` does not apply); sampling: one generator call.

Reference: the same U-Net as ``ddpm_unet`` through diffusers' training step
(``DDPMScheduler.add_noise`` and an MSE on the noise), fp32 and bf16 autocast, timed the
same way (``--no-diffusers`` skips it).

Timing: a warm-up ``fit`` (compilation included for ``compile=True``), then two runs of
``fit`` of ``warmup`` and ``warmup + steps`` steps with the device synchronized around each:
images/s = batch x steps / (the difference of their times), so fit's set-up cancels. The
defaults are sized for under 8 minutes on one GPU (not yet measured: no GPU has run it);
the table is written to ``benchmarks/RESULTS.md`` only with ``--write`` and only when it
ran on CUDA (the project never needs a GPU; CPU runs print the table and note it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    command_line,
    machine,
    markdown_table,
    set_threads,
    today,
    write_section,
)

FAMILIES = ("ddpm_unet", "ddpm_dit", "fm_unet", "sde_unet", "vae_conv", "glow", "pixelcnn",
            "wgan_gp")
MODES = ("fp32", "bf16", "compiled")
SAMPLE_CALLS = 20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(family: str, shape: tuple[int, int, int], width: int) -> tuple[object, object, str]:
    """``(model, objective, data kind)`` of a family; data kind ``"signed"`` ([-1, 1]
    floats) or ``"levels"`` (integers 0..255)."""
    from probgen.diffusion import NoiseSchedule
    from probgen.inference import (
        ELBO,
        Adversarial,
        ConditionalFlowMatching,
        ContinuousScoreMatching,
        DiffusionLoss,
        MaximumLikelihood,
    )
    from probgen.models import (
        DCGAN,
        DDPM,
        VAE,
        DiffusionModel,
        Glow,
        ImageFlowMatching,
        ImageScoreSDE,
        PixelCNN,
    )
    from probgen.nn import DiT

    unet = {"base_channels": width, "channel_mults": (1, 2, 2, 2) if shape[1] >= 16 else (1, 2)}
    if family == "ddpm_unet":
        model = DDPM(shape, **unet)
        return model, DiffusionLoss(model), "signed"
    if family == "ddpm_dit":
        hidden = 4 * width
        net = DiT(shape, patch=2, hidden=hidden, depth=8 if width >= 32 else 2, heads=4)
        model = DiffusionModel(net, NoiseSchedule.linear(1000), shape)
        return model, DiffusionLoss(model), "signed"
    if family == "fm_unet":
        model = ImageFlowMatching(shape, **unet)
        return model, ConditionalFlowMatching(model, model.path), "signed"
    if family == "sde_unet":
        model = ImageScoreSDE(shape, **unet)
        return model, ContinuousScoreMatching(model, model.sde), "signed"
    if family == "vae_conv":
        model = VAE(shape, latent_features=2 * width, encoder="conv", decoder="conv",
                    channels=width, likelihood="gaussian")
        return model, ELBO(model), "signed"
    if family == "glow":
        model = Glow(shape, scales=3 if shape[1] >= 16 else 2, steps=8 if width >= 32 else 2,
                     hidden_channels=2 * width)
        return model, MaximumLikelihood(model), "signed"
    if family == "pixelcnn":
        model = PixelCNN(shape, channels=2 * width, layers=8 if width >= 32 else 2,
                         categories=256)
        return model, MaximumLikelihood(model), "levels"
    if family == "wgan_gp":
        model = DCGAN(shape, latent_dim=128, hidden_channels=width)
        return model, Adversarial(model, "wasserstein", n_critic=5,
                                  gradient_penalty=10.0), "signed"
    raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}.")


def data_pool(kind: str, shape: tuple[int, ...], n: int, root: str | None) -> torch.Tensor:
    """``n`` CIFAR-shaped images: CIFAR-10's training images from ``root``, else random."""
    if root is not None:
        from probgen.data import load_cifar

        images = load_cifar("cifar10", root, "train")[0][:n]
    else:
        images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
    return images.float() if kind == "levels" else images.float() / 127.5 - 1.0


def train_throughput(family: str, mode: str, args: argparse.Namespace,
                     device: torch.device) -> float | None:
    """Training images per second of ``fit`` in ``mode`` (``None``: not applicable)."""
    from probgen.inference import fit

    torch.manual_seed(0)
    model, objective, kind = build(family, args.shape, args.width)
    if mode == "compiled" and hasattr(objective, "training_step"):
        return None
    data = data_pool(kind, args.shape, 4 * args.batch, args.root)
    options = {"precision": "bf16" if mode == "bf16" else "fp32",
               "compile": mode == "compiled", "device": str(device), "progress": False,
               "batch_size": args.batch, "lr": 1e-4, "log_every": 10**9}
    fit(objective, data, steps=args.warmup, **options)  # warm-up (and compilation)

    def seconds(steps: int) -> float:
        _sync(device)
        start = time.perf_counter()
        fit(objective, data, steps=steps, **options)
        _sync(device)
        return time.perf_counter() - start

    # the difference of two runs: the steps alone, without fit's set-up
    short, long = seconds(args.warmup), seconds(args.warmup + args.steps)
    return args.batch * args.steps / max(long - short, 1e-9)


def sample_throughput(family: str, args: argparse.Namespace,
                      device: torch.device) -> tuple[float | None, int | None]:
    """Sampling images per second at a fixed number of network calls, and the calls."""
    torch.manual_seed(0)
    model, _, _ = build(family, args.shape, args.width)
    model = model.to(device).eval()
    n = args.sample_batch
    generator = torch.Generator(device).manual_seed(0)
    draw: Callable[[], object]
    if family.startswith("ddpm"):
        calls = SAMPLE_CALLS

        def draw() -> object:
            return model.sample((n,), sampler="ddim", steps=calls, generator=generator)
    elif family in ("fm_unet", "sde_unet"):
        calls = SAMPLE_CALLS

        def draw() -> object:
            return model.sample((n,), sampler="dpm++2m", steps=calls, generator=generator)
    elif family in ("vae_conv", "glow"):
        calls = 1

        def draw() -> object:
            return model.sample((n,))
    elif family == "wgan_gp":
        calls = 1

        def draw() -> object:
            return model.sample((n,))
    else:
        return None, None
    with torch.no_grad():
        draw()
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.sample_rounds):
            draw()
        _sync(device)
    return n * args.sample_rounds / (time.perf_counter() - start), calls


def diffusers_reference(args: argparse.Namespace, device: torch.device,
                        bf16: bool) -> float | None:
    """Images/s of the ``ddpm_unet`` U-Net through diffusers' training step."""
    try:
        from diffusers import DDPMScheduler
    except Exception:  # noqa: BLE001 - the peer is optional: no row without it
        return None
    torch.manual_seed(0)
    model, _, _ = build("ddpm_unet", args.shape, args.width)
    net = model.network.to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    data = data_pool("signed", args.shape, 4 * args.batch, args.root).to(device)

    def step(i: int) -> None:
        x0 = data[(i * args.batch) % len(data):][:args.batch]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=device)
        x_t = scheduler.add_noise(x0, noise, t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.mse_loss(net(x_t, 1 - t / 999), noise)
        optimizer.zero_grad()
        loss.float().backward()
        optimizer.step()

    for i in range(args.warmup):
        step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    _sync(device)
    return args.batch * args.steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--sample-rounds", type=int, default=2)
    parser.add_argument("--width", type=int, default=64, help="base width of the networks")
    parser.add_argument("--size", type=int, default=32, help="image side (3 x size x size)")
    parser.add_argument("--root", default=None, help="CIFAR-10 folder (default: random data)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true",
                        help="record in RESULTS.md (only when run on CUDA)")
    add_quick(parser, "8x8 images, width 8, 2 timed steps, fp32/bf16 and one compiled family")
    args = parser.parse_args()
    apply_quick(parser, args, size=8, width=8, batch=8, steps=2, warmup=1, sample_batch=4,
                sample_rounds=1, families=["ddpm_unet", "ddpm_dit", "fm_unet", "vae_conv",
                                           "glow", "wgan_gp"])
    if args.quick and args.modes == list(MODES):
        args.modes = ["fp32", "bf16"]
    set_threads(args.threads)
    device = torch.device(args.device)
    args.shape = (3, args.size, args.size)
    start = time.perf_counter()
    rows = []
    for family in args.families:
        speeds = {mode: train_throughput(family, mode, args, device) for mode in args.modes}
        rate, calls = sample_throughput(family, args, device)
        rows.append([family] + [f"{speeds[m]:.1f}" if speeds.get(m) else "n/a"
                                for m in args.modes]
                    + [f"{rate:.1f}" if rate else "-", str(calls or "-")])
        print(f"[gpu] {family}: train {speeds}, sample {rate} at {calls} calls", flush=True)
    if args.quick:  # the compiled path once, on the smallest family
        print(f"[gpu] compiled ddpm_unet: "
              f"{train_throughput('ddpm_unet', 'compiled', args, device):.1f} images/s",
              flush=True)
    reference = []
    if not args.no_diffusers:
        for bf16 in (False, True):
            rate = diffusers_reference(args, device, bf16)
            if rate is not None:
                reference.append(["diffusers step, ddpm_unet's U-Net", "bf16" if bf16 else
                                  "fp32", f"{rate:.1f}"])
    minutes = (time.perf_counter() - start) / 60
    header = ["family", *[f"train images/s ({m})" for m in args.modes],
              "sampling images/s", "network calls per sample"]
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    body = (f"Command: `{command_line()}`  \nDate: {today()}; {machine(args.threads)}; device "
            f"{device}{name}; total {minutes:.1f} min.\n\n"
            f"Batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up steps "
            f"through `fit`; images 3x{args.size}x{args.size} "
            f"({'CIFAR-10' if args.root else 'random'}); sampling batch {args.sample_batch}."
            f"\n\n" + markdown_table(header, rows))
    if reference:
        body += "\n\n" + markdown_table(["reference", "precision", "train images/s"],
                                        reference)
    print(body)
    if args.write:
        if device.type != "cuda":
            print("[gpu] not written: RESULTS.md records this benchmark only from a GPU run",
                  flush=True)
        else:
            write_section("gpu", "## Throughput on one GPU: every image family at 3x32x32 "
                          "(gpu)\n\n" + body)


if __name__ == "__main__":
    main()
