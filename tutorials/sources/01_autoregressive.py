"""Cells of 01_autoregressive.ipynb as ("md" | "code", source) pairs, for tutorials/build.py."""

from __future__ import annotations

CELLS: list[tuple[str, str]] = [
    ("md", r"""
    # Autoregressive models: MADE, PixelCNN, Gated PixelCNN and a pixel transformer

    An autoregressive model writes the likelihood of an image with the chain rule,
    $$p(x) = \prod_{i=1}^{D} p(x_{o_i} \mid x_{o_1}, \dots, x_{o_{i-1}}),$$
    one conditional per pixel in a fixed order $o$, each computed by a network that must not
    look at pixel $o_i$ or anything after it. The likelihood is exact: `log_prob(x)` is a sum
    of $D$ log-probabilities, in **nats per image**; dividing by $D \ln 2$ gives **bits per
    dimension**. Sampling runs the chain one pixel at a time. This notebook covers:

    1. the exact checks: every model's probabilities over all $2^4$ binary 2x2 images sum
       to 1, and the logits of a pixel never depend on that pixel or later ones;
    2. four models trained on the binarized 8x8 digits with the shared trainer: held-out
       nats per image and bits per dimension, samples, and completions of half images;
    3. receptive fields: PixelCNN's blind spot and the Gated PixelCNN that removes it;
    4. the transformer's key/value cache: the same samples, at a fraction of the cost.

    The full run takes a few minutes on one CPU thread. With `PROBGEN_QUICK=1` every fit
    takes a few steps (a smoke test; the printed numbers are then meaningless). Every fit is
    seeded, so a rerun prints the same numbers (timings aside).
    """),
    ("code", r"""
    %matplotlib inline
    import warnings

    # Figures render inline (above); probgen's trainer imports tqdm.auto, which warns in a
    # kernel without ipywidgets: we train with progress=False, so the warning is noise.
    warnings.filterwarnings("ignore", message="IProgress not found")
    """),
    ("code", r"""
    import itertools
    import math
    import os
    import time

    import torch
    from matplotlib.figure import Figure

    from probgen.data import binarize, load_digits
    from probgen.inference import MaximumLikelihood, fit
    from probgen.models import MADE, GatedPixelCNN, ImageTransformer, PixelCNN, receptive_field
    from probgen.nn import causal_mask, conv_mask
    from probgen.plots import plot_image_grid, plot_receptive_field

    QUICK = os.environ.get("PROBGEN_QUICK") == "1"  # smoke-test mode: a few steps only


    def budget(steps: int) -> int:
        # Training steps: as given in the full run, about 1% of them in quick mode.
        return max(10, steps // 100) if QUICK else steps


    # These models are small: one thread is the fastest setting, and stays fast on a busy CPU.
    torch.set_num_threads(1)
    print("quick mode (numbers are meaningless)" if QUICK else "full run")
    """),
    ("md", r"""
    ## 1. Masks, and the chain rule checked by enumeration

    Each model enforces the order with a mask. PixelCNN's **masked convolutions** zero the
    kernel taps at and after the centre in raster order: type **A** (the first layer) also
    zeroes the centre, so a pixel never sees itself; type **B** (later layers) keeps it,
    since by then the centre holds features of earlier pixels only. Below: both 5x5 masks.
    The transformer's **causal mask** adds $-\infty$ to the attention scores of later
    positions; for length 2 it is $\begin{pmatrix}0 & -\infty\\ 0 & 0\end{pmatrix}$.
    """),
    ("code", r"""
    print("mask A (5x5):\n", conv_mask(5, "A")[0, 0].int())
    print("mask B (5x5):\n", conv_mask(5, "B")[0, 0].int())
    print("causal mask, length 2:\n", causal_mask(2))
    """),
    ("md", r"""
    A check against mathematics: on 2x2 binary images there are only 16 images, so the
    probabilities a model assigns to all of them must add up to exactly 1, whatever the
    weights (we perturb the initial weights so the distributions are far from uniform). The
    second column checks the autoregressive property directly: the autograd Jacobian of
    all logits with respect to the network's input, summed over the entries
    $\partial\,\text{logit}_i / \partial x_j$ with $j$ at or after $i$ in the order, must be
    exactly 0.
    """),
    ("code", r"""
    def small_models(shape: list[int]) -> dict[str, torch.nn.Module]:
        torch.manual_seed(0)
        models = {
            "MADE": MADE(shape, hidden_features=[32]),
            "MADE, 3 orders": MADE(shape, hidden_features=[32], orders=3),
            "PixelCNN": PixelCNN(shape, channels=8, layers=2, kernel_size=3,
                                 first_kernel_size=3),
            "GatedPixelCNN": GatedPixelCNN(shape, channels=8, layers=2, kernel_size=3,
                                           first_kernel_size=3),
            "ImageTransformer": ImageTransformer(shape, dim=16, heads=2, layers=2),
        }
        for model in models.values():
            model.double().eval()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.5 * torch.randn_like(p))
        return models


    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)),
                          dtype=torch.float64).reshape(16, 1, 2, 2)
    print(f"{'model':18s} {'sum of p over 16 images':>24s} {'|d logit_i / d x_j|, j >= i':>28s}")
    for name, model in small_models([1, 2, 2]).items():
        total = model.log_prob(images).exp().sum().item()
        h = model.encode(images[5:6])
        jac = torch.autograd.functional.jacobian(model.logits_from_input, h).abs()
        jac = jac.reshape(4, 4, -1).sum(-1)  # (pixel i, pixel j); the transformer's input
        #                                      is one-hot, so its last axis is summed over
        rank = torch.empty(4, dtype=torch.long)
        rank[model.order] = torch.arange(4)
        leak = jac[rank[None, :] >= rank[:, None]].sum().item()
        print(f"{name:18s} {total:24.12f} {leak:28.1f}")
    """),
    ("md", r"""
    ## 2. Four models on the binarized digits

    The 8x8 digits have intensities 0..16; `binarize` thresholds them at half the range
    (`x >= 8`), giving $D = 64$ binary pixels. Each model is a `torch.distributions`-style
    density, so the maximum-likelihood objective and the trainer are the very ones the flows
    use. The sizes are the `*-digits` presets' (`probgen fit made-digits` etc. train the
    same models from the command line).
    """),
    ("code", r"""
    train_raw, _ = load_digits("train")
    test_raw, _ = load_digits("test")
    train, test = binarize(train_raw, 8), binarize(test_raw, 8)
    D = 64
    print(f"train {tuple(train.shape)}, test {tuple(test.shape)}, "
          f"share of 1-pixels {train.mean().item():.3f}")


    def build(name: str) -> torch.nn.Module:
        torch.manual_seed(0)
        shape = [1, 8, 8]
        return {
            "MADE": lambda: MADE(shape, hidden_features=[512, 512]),
            "PixelCNN": lambda: PixelCNN(shape, channels=32, layers=4, kernel_size=3,
                                         first_kernel_size=5, layer_norm=True),
            "GatedPixelCNN": lambda: GatedPixelCNN(shape, channels=32, layers=4, kernel_size=3,
                                                   first_kernel_size=5),
            "ImageTransformer": lambda: ImageTransformer(shape, dim=64, heads=4, layers=2),
        }[name]()


    trained = {}
    print(f"{'model':17s} {'params':>8s} {'steps':>6s} {'seconds':>8s} "
          f"{'test nats/image':>16s} {'bits/dim':>9s}")
    for name in ["MADE", "PixelCNN", "GatedPixelCNN", "ImageTransformer"]:
        model = build(name)
        steps = budget(1500)
        start = time.perf_counter()
        fit(MaximumLikelihood(model), train, steps=steps, batch_size=128, lr=2e-3,
            lr_schedule="cosine", seed=0, progress=False)
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            nats = -model.log_prob(test).mean().item()
        trained[name] = model
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:17s} {params:8d} {steps:6d} {seconds:8.1f} {nats:16.2f} "
              f"{nats / (D * math.log(2)):9.4f}")
    """),
    ("md", r"""
    The table is the held-out negative log-likelihood on the 300 test digits. A model that
    ignored the image would need 64 bits (1 bit per pixel, 44.4 nats); the trained models
    need a fraction of that. Bits per dimension is the same number divided by $D \ln 2$.

    **Samples** are drawn pixel by pixel: 16 from each model, one row per model (in the
    order of the table).
    """),
    ("code", r"""
    grids = [trained[name].sample(16, generator=torch.Generator().manual_seed(1))
             for name in trained]
    plot_image_grid(torch.cat(grids), nrow=16, title=", ".join(trained))
    """),
    ("md", r"""
    **Completion.** `sample(n, given=x)` with $-1$ marking missing pixels (the course's
    convention; `mask=` is the explicit form) keeps every given pixel and draws the others
    from $p(x_i \mid x_{<i})$. With the top half given, that is exactly the conditional
    distribution of the bottom half. First row: the test digits; second row: their top
    halves; then three completions by each model, row by row.
    """),
    ("code", r"""
    originals = test[:8]
    given = originals.clone()
    given[:, :, 4:] = -1.0
    rows = [originals, torch.where(given < 0, 0.5, given)]
    for name, model in trained.items():
        for seed in range(3):
            done = model.sample(8, given=given, generator=torch.Generator().manual_seed(seed))
            assert torch.equal(done[:, :, :4], originals[:, :, :4])  # given pixels are kept
            rows.append(done)
    plot_image_grid(torch.cat(rows), nrow=8,
                    title="test digits, top halves (grey: missing), 3 completions per model")
    """),
    ("md", r"""
    ## 3. Receptive fields: the blind spot

    `receptive_field(model, (h, w))` takes the gradient of pixel $(h, w)$'s logits with
    respect to the network's input and returns the pixels where it exceeds $10^{-8}$, and
    its magnitude. Stacked 3x3 masked convolutions grow the field upwards and to the left,
    but one step to the right costs one row up: a wedge above and to the right of the pixel
    is never seen, however deep the network (**PixelCNN's blind spot**). The Gated PixelCNN
    splits the work into a vertical stack (all rows above, its output shifted down one row)
    and a horizontal stack (the current row, to the left), whose union covers every earlier
    pixel within reach. Below, untrained models on a 15x15 canvas with 1, 3, 5 and 6 layers
    (the probed pixel in red; darker blue, larger gradient).
    """),
    ("code", r"""
    fig = Figure(figsize=(10, 5.4))
    pixel = (10, 7)
    for row, cls in enumerate([PixelCNN, GatedPixelCNN]):
        for col, layers in enumerate([1, 3, 5, 6]):
            torch.manual_seed(0)
            kwargs = {"residual": False} if cls is PixelCNN else {}
            model = cls([1, 15, 15], channels=16, layers=layers, kernel_size=3,
                        first_kernel_size=3, **kwargs)
            binary, weighted = receptive_field(model, pixel,
                                               generator=torch.Generator().manual_seed(0))
            ax = fig.add_subplot(2, 4, 4 * row + col + 1)
            plot_receptive_field(binary, weighted, pixel, ax=ax,
                                 title=f"{cls.__name__}, {layers} layer(s)")
    fig.tight_layout()
    fig
    """),
    ("md", r"""
    The PixelCNN fields keep a white wedge up and to the right of the red pixel at every
    depth; the Gated PixelCNN fields cover the rows above across the whole width of their
    reach. MADE and the transformer have no locality at all: each conditional sees every
    earlier pixel.

    ## 4. Sampling with a key/value cache

    Sampling is sequential: $D$ steps. A transformer that recomputes the whole sequence at
    every step does $O(D)$ work per pixel. With a cache, step $t$ feeds a single token
    through the network, reading the keys and values of the earlier tokens from the cache.
    Both samplers use the same uniform random numbers, so for one generator they must
    return identical images. Below: an untrained ImageGPT-style transformer on 28x28 images
    (784 pixels), 2 images with each sampler.
    """),
    ("code", r"""
    torch.manual_seed(0)
    gpt = ImageTransformer([1, 28, 28], dim=64, heads=4, layers=2).eval()
    n = 2
    start = time.perf_counter()
    cached = gpt.sample(n, generator=torch.Generator().manual_seed(0))
    t_cached = time.perf_counter() - start
    start = time.perf_counter()
    plain = gpt.sample(n, generator=torch.Generator().manual_seed(0), use_cache=False)
    t_plain = time.perf_counter() - start
    print(f"cached:   {t_cached:6.2f} s for {n} images of 784 pixels")
    print(f"uncached: {t_plain:6.2f} s  (speed-up {t_plain / t_cached:.0f}x)")
    print("identical samples:", torch.equal(cached, plain))
    """),
    ("md", r"""
    The cache turns $D$ passes over up to $D$ tokens into $D$ passes over one token: the
    speed-up grows with the image size. `benchmarks/autoregressive_mnist.py` measures it
    after training on MNIST, together with the four models' test NLL on binarized MNIST
    (`benchmarks/RESULTS.md`).

    **Where next.** The same models are CLI presets (`probgen fit gated-pixelcnn-digits`,
    `probgen fit transformer-mnist --set data.root=...`); `probgen.nn` holds the masked
    layers (`MaskedLinear`, `MaskedMLP`, `MaskedConv2d`, `causal_mask`) for building others.
    """),
]
