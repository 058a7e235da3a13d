"""Cells of 04_discrete_latents.ipynb as ("md" | "code", source) pairs, for tutorials/build.py."""

from __future__ import annotations

CELLS: list[tuple[str, str]] = [
    ("md", r"""
    # Discrete latents: the Gumbel-softmax VAE and the VQ-VAE

    A Gaussian latent can be reparameterized, $z = \mu + \sigma\epsilon$, so the ELBO's
    gradient flows through the sample. A *categorical* latent cannot: $z$ jumps between
    classes. This notebook covers the two standard ways around it:

    1. the **Gumbel-max trick** and its continuous relaxation, the **Gumbel-softmax**
       (Concrete) distribution, with a temperature $\tau$; checked against the class
       probabilities at any temperature;
    2. a **Gumbel-softmax VAE** (several categorical latents) trained as a Pyro program by
       Pyro's ELBO, with the temperature annealed during training; its discrete model's
       log-likelihood by importance sampling; samples and reconstructions;
    3. the **VQ-VAE**: a deterministic encoder, nearest-code quantization, the
       straight-through gradient, codebook and commitment losses, an EMA codebook, and
       the codebook's usage and perplexity;
    4. its **second stage**: a PixelCNN prior over the code maps, samples from it, and
       the same two stages from the command line.

    Everything runs on the binarized 8x8 digits shipped with scikit-learn, in a few
    minutes on one CPU thread. With `PROBGEN_QUICK=1` each fit takes a few steps (a smoke
    test; the printed numbers are then meaningless).
    """),
    ("code", r"""
    %matplotlib inline
    import warnings

    # Figures render inline; the trainer's tqdm.auto warns in a kernel without ipywidgets:
    # we train with progress=False, so the warning is noise.
    warnings.filterwarnings("ignore", message="IProgress not found")
    """),
    ("code", r"""
    import math
    import os

    import pyro.distributions as dist
    import torch
    from matplotlib.figure import Figure

    from probgen.data import binarize, load_digits
    from probgen.inference import (
        ExponentialTemperature,
        RelaxedCategoricalELBO,
        VectorQuantizedLoss,
        code_perplexity,
        code_usage,
        encode_codes,
        fit,
        fit_code_prior,
        straight_through,
    )
    from probgen.models import VQVAE, GumbelSoftmaxVAE
    from probgen.plots import plot_image_grid

    QUICK = os.environ.get("PROBGEN_QUICK") == "1"  # smoke-test mode: a few steps only


    def budget(steps: int) -> int:
        # Training steps: as given in the full run, about 1% of them in quick mode.
        return max(10, steps // 100) if QUICK else steps


    torch.set_num_threads(1)  # small models: one thread is fastest and stays fast on a busy CPU
    print("quick mode (numbers are meaningless)" if QUICK else "full run")

    train_x, _ = load_digits("train")
    test_x, _ = load_digits("test")
    train = binarize(train_x, 8).float()  # the 8x8 digits have 17 grey levels: x >= 8 -> 1
    test = binarize(test_x, 8).float()
    print("train", tuple(train.shape), "test", tuple(test.shape))
    """),
    ("md", r"""
    ## 1. Gumbel-max and Gumbel-softmax

    With $g_k$ independent standard Gumbel noise, $\arg\max_k(\log\pi_k + g_k)$ is
    distributed as $\mathrm{Cat}(\pi)$ exactly (the Gumbel-max trick). Replacing the argmax
    by a softmax at temperature $\tau$,
    $$y_k = \frac{\exp((\log\pi_k + g_k)/\tau)}{\sum_j \exp((\log\pi_j + g_j)/\tau)},$$
    gives a point of the simplex that is differentiable in $\pi$: the Gumbel-softmax or
    Concrete distribution (Jang et al. 2017; Maddison et al. 2017), Pyro's
    `RelaxedOneHotCategorical`. Its argmax is still $\mathrm{Cat}(\pi)$ *at every
    temperature* (the softmax does not move the argmax); $\tau$ only sets how close $y$ is
    to a vertex: near one-hot as $\tau \to 0$ (with high-variance gradients), near uniform
    as $\tau \to \infty$. The straight-through variant returns the one-hot argmax and
    back-propagates the relaxed sample's gradient.

    Below: 50 000 draws at four temperatures; the argmax frequencies against $\pi$, and how
    close the samples are to one-hot (the mean of the largest coordinate).
    """),
    ("code", r"""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 50_000
    torch.manual_seed(0)
    print(f"{'tau':>5s}   argmax frequencies (pi = {[round(p, 2) for p in probs.tolist()]})"
          "   mean max_k y_k")
    for tau in (0.1, 0.5, 1.0, 5.0):
        y = dist.RelaxedOneHotCategorical(torch.tensor(tau), probs=probs).sample((n,))
        freq = torch.bincount(y.argmax(-1), minlength=4).float() / n
        print(f"{tau:5.1f}   {[round(f, 3) for f in freq.tolist()]}"
              f"{y.max(-1).values.mean().item():26.3f}")
    """),
    ("md", r"""
    The frequencies match $\pi$ to the Monte Carlo error ($\approx 0.002$) at every $\tau$,
    while the samples go from nearly one-hot ($\tau = 0.1$) to nearly flat ($\tau = 5$).
    (`tests/test_gumbel.py` runs a chi-square test of exactly this.)

    Training starts warm, where gradients have low variance, and cools: the course's
    exponential schedule $\tau_s = \max(\tau_{min}, \tau_0 e^{-r s})$.
    """),
    ("code", r"""
    schedule = ExponentialTemperature(initial=1.0, minimum=0.5, rate=1e-3)
    steps = torch.arange(0, 3001, 50)
    fig = Figure(figsize=(5, 2.6))
    ax = fig.subplots()
    ax.plot(steps, [schedule(int(s)) for s in steps])
    ax.set(xlabel="training step", ylabel="temperature", title=repr(schedule))
    fig.tight_layout()
    fig
    """),
    ("md", r"""
    ## 2. The Gumbel-softmax VAE

    `GumbelSoftmaxVAE` is a Pyro program: `model(x)` draws $L$ one-hot latents of $K$
    classes from the prior and $x \sim \mathrm{Bernoulli}(\mathrm{decoder}(z))$;
    `guide(x)` draws each latent from a `RelaxedOneHotCategorical` with the encoder's
    logits at the current temperature (a buffer of the model).
    `RelaxedCategoricalELBO` sets that temperature from the schedule at each training
    step and calls the ELBO objective, i.e. Pyro's ELBO through `differentiable_loss`.

    The KL term comes in two flavours (the `kl` argument):

    - `"relaxed"`: the prior is relaxed too (uniform class probabilities, the same
      temperature), and the KL is Pyro's one-sample Monte Carlo $\log q(y|x) - \log p(y)$:
      the ELBO *of the relaxed model*, a proper bound (Maddison et al.);
    - `"categorical"`: the analytic $\sum_l KL(\mathrm{Cat}(\pi_l)\,\|\,\mathrm{Unif}_K) =
      \sum_{l,k} \pi_{lk}\log(K\pi_{lk})$ of the discrete latents (Jang et al.), through
      `TraceMeanField_ELBO` (estimator `"meanfield"`).

    After training the latents are used as discrete: samples decode one-hot $z$ from the
    uniform prior, and `log_likelihood` estimates $\log p(x)$ of the *discrete* model by
    importance sampling from $\mathrm{Cat}(\pi(x))$ (it approaches the true value from
    below as the number of samples grows), which makes the variants comparable.
    """),
    ("code", r"""
    runs = {}
    for name, kwargs, estimator in [
        ("relaxed KL", {"kl": "relaxed"}, "trace"),
        ("categorical KL", {"kl": "categorical"}, "meanfield"),
        ("straight-through", {"kl": "relaxed", "hard": True}, "trace"),
    ]:
        torch.manual_seed(0)
        vae = GumbelSoftmaxVAE((1, 8, 8), latents=8, categories=8, hidden_features=[256, 128],
                               **kwargs)
        objective = RelaxedCategoricalELBO(vae, schedule=schedule, estimator=estimator)
        history = fit(objective, train, steps=budget(3000), batch_size=128, lr=1e-3,
                      log_every=50, progress=False)
        objective.eval()
        with torch.no_grad():
            out = objective(test)
            ll = vae.log_likelihood(test, num_samples=500,
                                    generator=torch.Generator().manual_seed(1)).mean().item()
        runs[name] = (vae, history)
        print(f"{name:17s} tau {vae.temperature.item():.2f}   test ELBO "
              f"{out['elbo'].item():7.2f} (recon {out['recon'].item():7.2f}, KL "
              f"{out['kl'].item():5.2f})   discrete log p(x) (IS, 500) {ll:7.2f} nats")
    """),
    ("md", r"""
    The relaxed and categorical ELBOs are bounds on different models (relaxed vs discrete
    latents), so the last column, the importance-sampled log-likelihood of the same
    discrete model, is the one to compare. 8 latents of 8 classes are only
    $8 \log_2 8 = 24$ bits, a tight bottleneck for 64 binary pixels; the KL column says how
    many nats of it each variant uses (at most $8 \log 8 = 16.6$ for the categorical KL).

    In this run the two relaxed-KL variants **collapsed**: their KL is 0, so the posterior
    equals the prior and the decoder ignores $z$, modelling all digits with one average
    (recon = ELBO = log-likelihood). The one-sample relaxed KL is noisy, and at the start
    the cheapest way to lower it is to make $q$ the prior; with the analytic categorical KL
    (no sampling noise in the KL) the latents carry 4.4 nats and the discrete model's
    log-likelihood is about 8 nats per digit better. Warming the KL weight up from 0
    (`RelaxedCategoricalELBO(..., anneal_steps=...)`) is the usual remedy.

    The training curves: the ELBO rises while the temperature falls to its floor.
    """),
    ("code", r"""
    fig = Figure(figsize=(9, 3))
    ax1, ax2 = fig.subplots(1, 2)
    for name, (vae, history) in runs.items():
        ax1.plot(history.values("step"), history.values("elbo"), label=name)
        ax2.plot(history.values("step"), history.values("temperature"), label=name)
    ax1.set(xlabel="step", ylabel="training ELBO (nats)", title="ELBO")
    ax2.set(xlabel="step", ylabel="tau", title="temperature")
    ax1.legend()
    fig.tight_layout()
    fig
    """),
    ("code", r"""
    vae = runs["relaxed KL"][0]
    with torch.no_grad():
        samples = vae.sample((32,), generator=torch.Generator().manual_seed(0))
        recon = vae.reconstruct(test[:16])
    fig = Figure(figsize=(9, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    plot_image_grid(samples, nrow=8, ax=ax1, title="samples: z ~ uniform one-hot")
    plot_image_grid(torch.cat([test[:16], recon]), nrow=8, ax=ax2,
                    title="test digits (top), reconstructions")
    fig
    """),
    ("md", r"""
    ## 3. VQ-VAE

    The VQ-VAE (van den Oord et al. 2017) has a deterministic posterior: the encoder gives
    a map of vectors $z_e$, each replaced by its nearest code of a codebook
    $\{e_k\}_{k=1}^K$, $z_q = e_{k^*}$, $k^* = \arg\min_k \|z_e - e_k\|^2$. The decoder
    reads $z_q$. The argmin has no gradient, so the **straight-through** estimator copies
    the decoder's gradient at $z_q$ to $z_e$ (the forward value is $z_q$; in the usual
    notation $z_e + \mathrm{sg}[z_q - z_e]$). The codes learn from the **codebook loss**
    $\|\mathrm{sg}[z_e] - e\|^2$, and the **commitment loss** $\beta\|z_e -
    \mathrm{sg}[e]\|^2$ ($\beta = 0.25$) keeps the encoder near its codes. With a uniform
    prior the KL is the constant $\log K$ per position, so the loss is not a Pyro ELBO:
    `VectorQuantizedLoss` is a plain objective in the same trainer.

    First the straight-through property, checked with autograd:
    """),
    ("code", r"""
    z_e = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    z_q = torch.randn(5, 3, dtype=torch.float64)
    loss_fn = lambda z: (z.sin() ** 2).sum()  # noqa: E731 (any non-linear loss)
    out = straight_through(z_e, z_q)
    loss_fn(out).backward()
    leaf = z_q.clone().requires_grad_(True)
    (grad_at_z_q,) = torch.autograd.grad(loss_fn(leaf), leaf)
    print("value is z_q:", torch.equal(out, z_q),
          "| dL/dz_e == dL/dz_q:", torch.equal(z_e.grad, grad_at_z_q))
    """),
    ("md", r"""
    Two ways to learn the codebook: by the codebook loss (a parameter), or by exponential
    moving averages (EMA, the paper's appendix): each step, $N_k \leftarrow \gamma N_k +
    (1-\gamma) n_k$ and $m_k \leftarrow \gamma m_k + (1-\gamma)\sum_{z_e \to k} z_e$ with
    $e_k = m_k / N_k$ (counts Laplace-smoothed), i.e. a running k-means. Codes that stop
    being used ("dead codes") can be restarted on encoder outputs.

    The **perplexity** $\exp(-\sum_k p_k\log p_k)$ of the code frequencies is the effective
    number of codes in use ($K$ when all are used equally, 1 when one takes everything);
    **usage** is the fraction of codes used at all. Both are logged during training.
    Here: 8 codes of dimension 8 on a 4x4 map per digit, one code per 2x2 patch of binary
    pixels (16 codes could name every possible patch, and the "compression" would be a
    lossless relabelling; with 8 it has to choose).
    """),
    ("code", r"""
    vq_runs = {}
    for name, kwargs in [("EMA codebook", {"ema": True, "dead_code_threshold": 1.0}),
                         ("gradient codebook", {"ema": False})]:
        torch.manual_seed(0)
        model = VQVAE([1, 8, 8], num_codes=8, code_dim=8, channels=32, downsample=1,
                      blocks=1, prior_channels=32, prior_layers=4, **kwargs)
        history = fit(VectorQuantizedLoss(model, beta=0.25), train, steps=budget(1500),
                      batch_size=64, lr=1e-3, log_every=25, progress=False)
        model.eval()
        with torch.no_grad():
            out = VectorQuantizedLoss(model).eval()(test)
            codes = model.encode_indices(test)
        vq_runs[name] = (model, history)
        print(f"{name:18s} test recon NLL {out['recon'].item():6.2f} nats/digit   "
              f"perplexity {code_perplexity(codes, 8).item():5.2f} of 8   "
              f"usage {code_usage(codes, 8).item():.2f}")
    """),
    ("code", r"""
    fig = Figure(figsize=(9, 3))
    ax1, ax2 = fig.subplots(1, 2)
    for name, (model, history) in vq_runs.items():
        ax1.plot(history.values("step"), history.values("recon"), label=name)
        ax2.plot(history.values("step"), history.values("perplexity"), label=name)
    ax1.set(xlabel="step", ylabel="nats per digit", title="reconstruction NLL (train)")
    ax2.set(xlabel="step", ylabel="perplexity", title="codebook perplexity (per batch)")
    ax1.legend()
    fig.tight_layout()
    fig
    """),
    ("md", r"""
    How often each code is used on the test digits, and the reconstructions (the decoder's
    Bernoulli means given the quantized codes):
    """),
    ("code", r"""
    model = vq_runs["EMA codebook"][0]
    with torch.no_grad():
        counts = torch.bincount(model.encode_indices(test).reshape(-1), minlength=8)
        recon = model.reconstruct(test[:16])
    fig = Figure(figsize=(10, 3.2))
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.4])
    ax1.bar(range(8), (counts / counts.sum()).tolist())
    ax1.set(xlabel="code", ylabel="frequency", title="code usage on the test digits")
    plot_image_grid(torch.cat([test[:16], recon]), nrow=8, ax=ax2,
                    title="test digits (top), VQ-VAE reconstructions")
    fig.tight_layout()
    fig
    """),
    ("md", r"""
    ## 4. The second stage: a PixelCNN prior over the codes

    The VQ-VAE's uniform prior is a poor generator: decoding a code map drawn uniformly
    gives noise. The second stage encodes the training set once into 4x4 maps of code
    indices and fits an autoregressive prior to them, here a Gated PixelCNN whose pixels
    are the 8 codes (fed to it as one-hot vectors: codes are names, not numbers).
    Sampling draws a code map from the prior and decodes it. With the deterministic
    posterior, $-\log p(x) \le -\log p(x | z_q(x)) - \log p_{prior}(z(x))$ (the KL of a point
    mass to the prior is minus the prior's log-probability), so the reconstruction NLL plus
    the prior's NLL is an upper bound on the model's test NLL. With only 1497 training
    digits the prior can overfit: its NLL on the test digits' code maps is tracked during
    training.
    """),
    ("code", r"""
    torch.manual_seed(0)
    codes = encode_codes(model, train)  # (N, 1, 4, 4) code maps, as the prior's pixels
    test_codes = encode_codes(model, test)
    history = fit_code_prior(model, train, steps=budget(800), batch_size=64, lr=1e-3,
                             eval_data=test_codes, eval_every=budget(800) // 8,
                             progress=False, log_every=25)
    with torch.no_grad():
        prior_nll = -model.prior.log_prob(test_codes).mean().item()
        recon_nll = VectorQuantizedLoss(model).eval()(test)["recon"].item()
    print(f"{codes.shape[0]} training code maps; prior test NLL {prior_nll:.2f} nats per map "
          f"(uniform: {16 * math.log(8):.2f})")
    print(f"bound on the test NLL: {recon_nll:.2f} + {prior_nll:.2f} = "
          f"{recon_nll + prior_nll:.2f} nats per digit")
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.plot([r["step"] for r in history.records if "nll" in r], history.values("nll"),
            label="training batches")
    ax.plot([r["step"] for r in history.records if "eval/nll" in r],
            history.values("eval/nll"), "o-", label="test code maps")
    ax.set(xlabel="step", ylabel="nats per code map", title="PixelCNN prior over the codes")
    ax.legend()
    fig.tight_layout()
    fig
    """),
    ("code", r"""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        prior_samples = model.sample((32,), generator=g)
        uniform_codes = torch.randint(0, 8, (32, 4, 4), generator=g)
        uniform_samples = model.decode_indices(uniform_codes).mean
    fig = Figure(figsize=(9, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    plot_image_grid(prior_samples, nrow=8, ax=ax1, title="codes from the PixelCNN prior")
    plot_image_grid(uniform_samples, nrow=8, ax=ax2, title="codes drawn uniformly")
    fig
    """),
    ("md", r"""
    Both stages also run inside one `fit` call: `TwoStageVQLoss(model, prior_start=S)`
    trains the autoencoder for steps $1..S$ and the prior on the codes of each batch after
    that (two parameter groups with their own optimizers). That is what the presets
    `vqvae-digits` and `vqvae-mnist` do from the command line (`[objective] name = "vqvae"`
    with `prior_start`); `gumbel-digits` and `gumbel-mnist` train the Gumbel-softmax VAE
    (`name = "gumbel_elbo"`). A short run:
    """),
    ("code", r"""
    from probgen.cli import main

    steps, start = (40, 20) if QUICK else (1200, 600)
    code = main(["fit", "vqvae-digits", "--out", "runs/vqvae-digits", "--quiet",
                 "--set", f"train.steps={steps}", "--set", f"objective.prior_start={start}",
                 "--set", f"train.eval_every={steps}"])
    """),
    ("md", r"""
    The run folder holds the checkpoint, `metrics.jsonl` (perplexity and usage during the
    first stage, the prior's NLL during the second), `eval.json` (test `recon`,
    `prior_nll`, `nelbo`, `perplexity`, `usage`) and `samples.png`, decoded prior samples.

    **Further reading.** Jang, Gu & Poole, *Categorical reparameterization with
    Gumbel-softmax* (2017); Maddison, Mnih & Teh, *The Concrete distribution* (2017);
    van den Oord, Vinyals & Kavukcuoglu, *Neural discrete representation learning*
    (2017); Razavi et al., *VQ-VAE-2* (2019). `benchmarks/vqvae_mnist.py` measures the
    VQ-VAE on MNIST against another library's quantizer.
    """),
]
