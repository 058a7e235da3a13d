"""VQ-VAE on dynamically binarized MNIST: reconstruction, codebook use, prior samples, FID.

Arms (same encoder/decoder networks, same seed, same batches, the same trainer
``probgen.inference.fit`` and the same per-image objective
``recon + codebook + 0.25 commitment``, squared distances summed per image):

- ``probgen-ema``: :class:`probgen.models.VQVAE` with the EMA codebook (decay 0.99,
  Laplace smoothing, dead-code restarts below one vector per batch);
- ``probgen-grad``: the same with a codebook trained by the codebook loss;
- ``vqtorch-ema``: the same networks with the quantizer of the peer library
  ``vector-quantize-pytorch`` (``VectorQuantize``: EMA decay 0.99, straight-through,
  dead-code threshold 1, no k-means init), its commitment loss rescaled from a mean to the
  per-image sum so the objective is the same.

Each arm trains for ``--minutes`` of wall-clock time; then, on the 10000 test images
(one fixed binarization), it reports the reconstruction NLL (nats/image, Bernoulli), the
mean squared error of the decoder mean, and the perplexity and usage of the codes over the
whole test set, plus ms per step. The first arm then gets its second stage: the training
set is encoded once to 7x7 code maps and a Gated PixelCNN prior (one-hot inputs) is fit
for ``--prior-minutes``; it reports the prior's test NLL (nats per code map), the negative
ELBO ``recon + prior NLL`` (an upper bound on the test NLL), and FID in the bundled MNIST
classifier's features of ``--num-samples`` prior samples against the binarized test set,
next to reference FIDs (binarized training images, test reconstructions, and decoded code
maps drawn uniformly at random: what the prior adds). A grid of prior samples is saved to
``benchmarks/vqvae_mnist.png``.

    python benchmarks/vqvae_mnist.py --minutes 1.5 --prior-minutes 2

Without the MNIST files the script exits with status 3 (``_common.MNIST_MISSING``) and a
one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BENCH_DIR,
    Clock,
    add_quick,
    apply_quick,
    command_line,
    default_data_root,
    machine,
    markdown_table,
    mnist_split,
    output_path,
    set_threads,
    today,
    write_section,
)

ARMS = ("probgen-ema", "probgen-grad", "vqtorch-ema")
MODEL = {"num_codes": 64, "code_dim": 16, "channels": 64, "downsample": 2, "blocks": 2,
         "prior_channels": 64, "prior_layers": 6, "prior_kernel_size": 3}
BETA = 0.25


class PeerQuantizer(nn.Module):
    """vector-quantize-pytorch's ``VectorQuantize`` behind probgen's quantizer protocol."""

    learns_by_gradient = False

    def __init__(self, num_codes: int, code_dim: int) -> None:
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.num_codes = num_codes
        self.vq = VectorQuantize(dim=code_dim, codebook_size=num_codes, decay=0.99,
                                 commitment_weight=1.0, threshold_ema_dead_code=1,
                                 kmeans_init=False, accept_image_fmap=True,
                                 rotation_trick=False)
        self.commit: Tensor | None = None

    def forward(self, z_e: Tensor) -> object:
        z_q, indices, commit = self.vq(z_e)
        self.commit = commit.reshape(()) * z_e[0].numel()  # mean -> per-image sum
        codes = z_q.detach()

        class Out:  # the fields the objective reads
            pass

        out = Out()
        out.z_q, out.codes, out.indices = z_q, codes, indices
        return out

    def quantize(self, z_e: Tensor) -> Tensor:
        was = self.vq.training
        self.vq.eval()
        try:
            return self.vq(z_e)[1]
        finally:
            self.vq.train(was)


class PeerLoss(nn.Module):
    """The same objective with the peer's commitment loss (its codebook learns by EMA)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from probgen.inference import code_perplexity, code_usage

        self.model, self.perplexity, self.usage = model, code_perplexity, code_usage

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        model = self.model
        out = model.quantizer(model.encode(x))
        recon = -model.decode(out.z_q).log_prob(x).mean()
        loss = recon + BETA * model.quantizer.commit
        k = model.quantizer.num_codes
        return {"loss": loss, "recon": recon.detach(),
                "perplexity": self.perplexity(out.indices, k),
                "usage": self.usage(out.indices, k)}


def build(arm: str, seed: int) -> tuple[nn.Module, nn.Module]:
    from probgen.inference import VectorQuantizedLoss
    from probgen.models import VQVAE

    torch.manual_seed(seed)
    ema = arm != "probgen-grad"
    model = VQVAE([1, 28, 28], ema=ema, dead_code_threshold=1.0, **MODEL)
    if arm == "vqtorch-ema":
        model.quantizer = PeerQuantizer(MODEL["num_codes"], MODEL["code_dim"])
        return model, PeerLoss(model)
    return model, VectorQuantizedLoss(model, beta=BETA)


@torch.no_grad()
def evaluate(model: nn.Module, test: Tensor) -> dict[str, float]:
    from probgen.inference import code_perplexity, code_usage

    model.eval()
    nll, mse, codes = 0.0, 0.0, []
    for x in test.split(1000):
        idx = model.quantizer.quantize(model.encode(x))
        px = model.decode(_lookup(model, idx))
        nll += float(-px.log_prob(x).sum())
        mse += float((px.mean - x).pow(2).flatten(1).mean(-1).sum())
        codes.append(idx)
    codes = torch.cat(codes)
    k = MODEL["num_codes"]
    n = test.shape[0]
    return {"recon_nll": nll / n, "mse": mse / n,
            "perplexity": float(code_perplexity(codes, k)), "usage": float(code_usage(codes, k))}


def _lookup(model: nn.Module, idx: Tensor) -> Tensor:
    q = model.quantizer
    if isinstance(q, PeerQuantizer):
        codes = q.vq.get_codes_from_indices(idx)  # channels first for image feature maps
        return codes if codes.shape[1] == MODEL["code_dim"] else codes.movedim(-1, 1)
    return q.lookup(idx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="training budget of each arm's autoencoder (wall clock)")
    parser.add_argument("--prior-minutes", type=float, default=30.0,
                        help="training budget of the PixelCNN prior (first arm)")
    parser.add_argument("--steps", type=int, default=None,
                        help="also stop each autoencoder arm after this many steps (equal "
                             "steps make arms comparable on a loaded machine)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"subset of {ARMS}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=2000, help="prior samples for FID")
    parser.add_argument("--root", type=Path, default=default_data_root())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    add_quick(parser, "every arm and the prior for 5 steps of batch 16, 16 prior samples")
    args = parser.parse_args()
    apply_quick(parser, args, minutes=0.01, prior_minutes=0.01, steps=5, batch_size=16,
                num_samples=16)
    set_threads(args.threads)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {unknown}; allowed: {list(ARMS)}")

    from probgen import data as pdata
    from probgen.inference import encode_codes, fit
    from probgen.metrics import fid, mnist_classifier
    from probgen.plots import plot_image_grid, save_figure
    from probgen.utils import atomic_write_text

    train_x, _ = mnist_split(args.root / "mnist", "train", "vqvae_mnist")
    test_x, _ = mnist_split(args.root / "mnist", "test", "vqvae_mnist")
    intensity = train_x.float() / 255

    def sampler(n: int, generator: torch.Generator | None = None) -> Tensor:
        idx = torch.randint(0, intensity.shape[0], (n,), generator=generator)
        return torch.bernoulli(intensity[idx], generator=generator)

    test = pdata.dynamic_binarize(test_x.float() / 255,
                                  generator=torch.Generator().manual_seed(0))
    rows, results = [], {}
    first_model = None
    for arm in arms:
        model, objective = build(arm, args.seed)
        clock = Clock(60 * args.minutes)
        fit(objective, sampler, steps=args.steps or 10**7, batch_size=args.batch_size, lr=5e-4,
            grad_clip=1.0, log_every=10, seed=args.seed, progress=False, callbacks=clock)
        ms = 1e3 * clock.seconds / max(clock.step, 1)
        stats = evaluate(model, test)
        results[arm] = {**stats, "steps": clock.step, "ms_per_step": ms,
                        "minutes": clock.seconds / 60}
        print(arm, json.dumps(results[arm]), flush=True)
        if first_model is None and arm.startswith("probgen"):
            first_model = (arm, model)
    base_ms = results[arms[0]]["ms_per_step"]
    for arm in arms:
        r = results[arm]
        rows.append([arm, f"{r['minutes']:.2f}", str(r["steps"]), f"{r['ms_per_step']:.1f}",
                     f"{r['ms_per_step'] / base_ms:.2f}", f"{r['recon_nll']:.2f}",
                     f"{r['mse']:.4f}", f"{r['perplexity']:.1f}", f"{r['usage']:.2f}"])

    prior_lines = []
    if first_model is not None:
        arm, model = first_model
        train_bin = pdata.dynamic_binarize(intensity, generator=torch.Generator().manual_seed(1))
        codes = encode_codes(model, train_bin, batch_size=1000)
        test_codes = encode_codes(model, test, batch_size=1000)
        from probgen.inference import MaximumLikelihood

        clock = Clock(60 * args.prior_minutes)
        fit(MaximumLikelihood(model.prior), codes, steps=10**7, batch_size=args.batch_size,
            lr=1e-3, grad_clip=1.0, log_every=10, seed=args.seed, progress=False,
            callbacks=clock)
        model.eval()
        with torch.no_grad():
            prior_nll = float(torch.cat([-model.prior.log_prob(c)
                                         for c in test_codes.split(1000)]).mean())
            t0 = time.perf_counter()
            samples = torch.cat([model.sample((min(500, args.num_samples - s),),
                                              generator=torch.Generator().manual_seed(s))
                                 for s in range(0, args.num_samples, 500)])
            sample_s = time.perf_counter() - t0
            uniform = torch.randint(0, MODEL["num_codes"], (args.num_samples, 7, 7),
                                    generator=torch.Generator().manual_seed(2))
            random_codes = torch.cat([model.decode_indices(u).mean
                                      for u in uniform.split(500)])
            recons = torch.cat([model.reconstruct(x) for x in test[:args.num_samples]
                                .split(500)])
            net = mnist_classifier()
            feats = {name: torch.cat([net.features(b) for b in imgs.split(500)])
                     for name, imgs in {
                         "test": test, "prior samples": samples,
                         "uniform random codes": random_codes,
                         "test reconstructions": recons,
                         "binarized train images": train_bin[:args.num_samples]}.items()}
        fids = {name: fid(feats["test"], f) for name, f in feats.items() if name != "test"}
        fig = plot_image_grid(samples[:64], nrow=8)
        save_figure(fig, output_path(BENCH_DIR / "vqvae_mnist.png"))
        recon = results[arm]["recon_nll"]
        prior_lines = [
            f"Second stage ({arm}): Gated PixelCNN prior over the 7x7 code maps, "
            f"{clock.step} steps in {clock.seconds / 60:.2f} min; test prior NLL "
            f"{prior_nll:.2f} nats per code map; negative ELBO recon + prior NLL = "
            f"{recon + prior_nll:.2f} nats per image (an upper bound on the test NLL); "
            f"{args.num_samples} samples in {sample_s:.1f} s.",
            "",
            markdown_table(["images vs the binarized test set", "FID (MNIST classifier)"],
                           [[k, f"{v:.2f}"] for k, v in fids.items()]),
            "",
            "![prior samples](vqvae_mnist.png)",
        ]
        results["prior"] = {"steps": clock.step, "prior_nll": prior_nll,
                            "nelbo": recon + prior_nll, "fid": fids, "sample_s": sample_s}
        print(json.dumps(results["prior"]), flush=True)

    short = args.minutes < 30 or args.prior_minutes < 30
    body = "\n".join([
        "## VQ-VAE on dynamically binarized MNIST (benchmarks/vqvae_mnist.py)",
        "",
        f"`{command_line()}`, {today()}; {machine(args.threads)}.",
        "",
        f"Budget: {args.minutes:g} min per autoencoder arm"
        + (f" or {args.steps} steps, whichever comes first" if args.steps else "")
        + f", {args.prior_minutes:g} min for "
        "the prior" + (" -- shorter than the 30 + 30 minutes (`--minutes 30 "
                       "--prior-minutes 30`) of the full protocol, so these numbers are not "
                       "converged." if short else "."),
        f"Model: 64 codes of dimension 16 on a 7x7 map, encoder/decoder with 64 channels and "
        f"2 residual blocks, beta {BETA}, Adam 5e-4, batch {args.batch_size}. "
        "Reconstruction NLL in nats/image (Bernoulli); perplexity and usage of the codes "
        "of the 10000 test images; ms/step ratio relative to the first arm, in this one "
        "run. Peer: vector-quantize-pytorch 1.32.0 (its VectorQuantize in place of probgen's "
        "quantizer).",
        "",
        markdown_table(["arm", "minutes", "steps", "ms/step", "time ratio",
                        "test recon NLL", "test MSE", "perplexity", "usage"], rows),
        "",
        *prior_lines,
    ])
    atomic_write_text(output_path(BENCH_DIR / "vqvae_mnist.json"), json.dumps(results, indent=2))
    print(body)
    if not args.no_write:
        write_section("vqvae_mnist", body)


if __name__ == "__main__":
    main()
