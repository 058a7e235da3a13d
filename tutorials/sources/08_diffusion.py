"""Cells of 08_diffusion.ipynb as ("md" | "code", source) pairs, for tutorials/build.py."""

from __future__ import annotations

CELLS: list[tuple[str, str]] = [
    ("md", r"""
    # Diffusion models: DDPM as a hierarchical VAE, DDIM, and guidance

    A denoising diffusion model destroys data with a fixed Gaussian *forward process* and
    learns to run it backwards. This notebook follows the lectures:

    1. the forward process: noise schedules, $q(x_s \mid x_0)$ and the posterior
       $q(x_{s-1} \mid x_s, x_0)$ in closed form (the course's numbers);
    2. DDPM as a hierarchical VAE: its variational bound, checked against the exact NLL of
       Gaussian data with the exact noise predictor;
    3. the noise-prediction reparametrization and training on 2-D moons (the course's
       $T = 100$, cosine schedule), then ancestral, strided DDPM and DDIM sampling;
    4. DDIM as a deterministic map: same noise, same sample; inversion data -> latent -> data;
    5. guidance: classifier-free guidance (label dropout, guidance weight) and classifier
       guidance with a noise-conditional classifier, measured by class accuracy;
    6. a U-Net DDPM on the 8x8 digits with its bits per dimension, and the same from the
       command line.

    The full run takes a few minutes on one CPU thread. With `PROBGEN_QUICK=1` every fit
    takes a few steps (a smoke test; the printed numbers are then meaningless).
    """),
    ("code", r"""
    %matplotlib inline
    import warnings

    # Figures render inline; the trainer's tqdm.auto warns in a kernel without ipywidgets:
    # we train with progress=False, so the warning is noise.
    warnings.filterwarnings("ignore", message="IProgress not found")
    """),
    ("code", r"""
    import os
    import time

    import torch
    from matplotlib.figure import Figure

    from probgen.data import ToySampler, load_digits, toy_sample
    from probgen.diffusion import NoiseSchedule, gaussian_epsilon
    from probgen.inference import DiffusionLoss, NoisyClassifierLoss, annealed_langevin, fit
    from probgen.metrics import mmd2, wasserstein2
    from probgen.models import DDPM, DiffusionModel, VectorDDPM
    from probgen.nn import ConditionalMLP
    from probgen.plots import plot_image_grid, plot_samples

    QUICK = os.environ.get("PROBGEN_QUICK") == "1"  # smoke-test mode: a few steps only


    def budget(steps: int) -> int:
        # Training steps: as given in the full run, about 1% of them in quick mode.
        return max(10, steps // 100) if QUICK else steps


    torch.set_num_threads(1)  # small models: one thread is fastest and stays fast on a busy CPU
    print("quick mode (numbers are meaningless)" if QUICK else "full run")
    """),
    ("md", r"""
    ## 1. The forward process

    With $\beta_s$ for the indices $s = 0, \dots, T-1$ (the course's convention: index 0 is
    already the first noisy state), $q(x_s \mid x_{s-1}) = \mathcal N(\sqrt{1-\beta_s}\,
    x_{s-1}, \beta_s I)$, and composing Gaussians gives every marginal in one step:
    $$q(x_s \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_s}\,x_0,\ (1-\bar\alpha_s) I\big),
    \qquad \bar\alpha_s = \prod_{r \le s} (1-\beta_r).$$
    Bayes' rule then gives the posterior, again Gaussian:
    $q(x_{s-1} \mid x_s, x_0) = \mathcal N(c_1 x_0 + c_2 x_s, \tilde\beta_s I)$ with
    $\tilde\beta_s = \beta_s (1-\bar\alpha_{s-1})/(1-\bar\alpha_s)$ (0 at index 0).

    Ho et al.'s linear schedule ($10^{-4} \to 0.02$ over 1000 steps) and Nichol & Dhariwal's
    cosine schedule ($\bar\alpha(u) \propto \cos^2(\tfrac{u + s}{1 + s}\tfrac\pi2)$, betas
    capped at 0.999) are built in (float64). The course's check, $T = 100$ cosine, index 5,
    $x_0 = 1$:
    """),
    ("code", r"""
    sched = NoiseSchedule.cosine(100)
    x0 = torch.ones(1, 1, dtype=torch.float64)
    step = torch.tensor([5])
    mean, var = sched.q_mean_variance(x0, step)
    noise = torch.ones_like(x0)
    print(f"forward mean {mean.item():.7f}, variance {var.item():.8f}, "
          f"x_t for noise 1: {sched.q_sample(x0, step, noise).item():.7f}")
    x_t = torch.ones_like(x0)  # x_t = noise = 1
    x0_hat = sched.convert(noise, x_t, step, "eps", "x0")
    post_mean, post_var, _ = sched.q_posterior(x0_hat, x_t, step)
    print(f"predicted x0 {x0_hat.item():.7f}, posterior mean {post_mean.item():.7f}, "
          f"posterior variance {post_var.item():.8f}")
    """),
    ("md", r"""
    These are the course's values (0.9944681, 0.01103322, 1.0995072; 0.8999391 up to the
    last digit, 0.9723116, 0.00222036). Below, $\bar\alpha_s$ of both schedules at
    $T = 1000$ (the cosine one destroys information more slowly at the start and ends at
    exactly 0), and 2-D moons noised to a few indices of the $T = 100$ cosine schedule.
    """),
    ("code", r"""
    lin, cos = NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000)
    fig = Figure(figsize=(13, 3.2))
    axes = fig.subplots(1, 5)
    axes[0].plot(lin.alphas_cumprod, label="linear")
    axes[0].plot(cos.alphas_cumprod, label="cosine")
    axes[0].set_title("alpha_bar (T = 1000)")
    axes[0].set_xlabel("step")
    axes[0].legend()
    moons = toy_sample("moons", 2000, generator=torch.Generator().manual_seed(0))
    for ax, s in zip(axes[1:], (0, 30, 60, 99)):
        noisy = sched.q_sample(moons.double(), s, generator=torch.Generator().manual_seed(1))
        plot_samples(noisy.float(), ax=ax, title=f"q(x_{s} | x_0)", bounds=(-4, 4))
    fig
    """),
    ("md", r"""
    ## 2. DDPM as a hierarchical VAE: the variational bound

    The latents are $x_{T-1}, \dots, x_0$; the *encoder* is the fixed forward process and
    the *decoder* the learned reverse process $p_\theta(x_{s-1} \mid x_s) =
    \mathcal N(\mu_\theta(x_s, s), \sigma_s^2 I)$. The ELBO splits into closed-form KL
    terms:
    $$-\log p_\theta(x) \le \underbrace{KL(q(x_{T-1} \mid x) \| \mathcal N(0, I))}_{\text{prior}}
    + \sum_{s \ge 1} \underbrace{KL(q(x_{s-1} \mid x_s, x) \| p_\theta(x_{s-1} \mid x_s))}_{L_s}
    \underbrace{- \log p_\theta(x \mid x_0)}_{\text{decoder}}.$$
    Writing $\mu_\theta$ through a noise prediction, $\hat x_0 = (x_s - \sqrt{1-\bar\alpha_s}
    \,\epsilon_\theta)/\sqrt{\bar\alpha_s}$ and $\mu_\theta = c_1 \hat x_0 + c_2 x_s$, makes
    each $L_s$ a weighted $\|\epsilon - \epsilon_\theta\|^2$ (Ho et al.'s reparametrization;
    dropping the weights gives the "simple" loss).

    For Gaussian data $\mathcal N(\mu, \Sigma)$ the best noise predictor is known in
    closed form, $\epsilon^*(x_s) = \sqrt{1-\bar\alpha_s}\,C_s^{-1}(x_s -
    \sqrt{\bar\alpha_s}\mu)$ with $C_s = \bar\alpha_s \Sigma + (1-\bar\alpha_s) I$
    (`gaussian_epsilon`). With it the reverse chain is linear-Gaussian, so its exact
    marginal $p_\theta(x)$ is a Gaussian we can propagate step by step; the bound
    (`variational_bound`, all $T$ terms, one noise draw per term) must lie above
    $-\log p_\theta(x)$ on average, and the data's mean bound above its entropy.
    """),
    ("code", r"""
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)


    class ExactEps(torch.nn.Module):
        # the exact noise prediction of N(mu, cov), called like a network: net(x, t) with
        # t = 1 - step / (T - 1), the step's probgen time (t = 1 the data end)
        def __init__(self, schedule):
            super().__init__()
            self.schedule, self.eps = schedule, gaussian_epsilon(schedule, mu, cov)

        def forward(self, x, t):
            return self.eps(x, self.schedule.step_of_time(t.double()))


    def exact_marginal(model):
        # p_theta(x) of the linear-Gaussian reverse chain, propagated from N(0, I)
        s_ = model.schedule
        eye = torch.eye(2, dtype=torch.float64)
        m, S = torch.zeros(2, dtype=torch.float64), eye.clone()
        for s in reversed(range(s_.num_steps)):
            ab = s_.alphas_cumprod[s]
            Ci = torch.linalg.inv(ab * cov + (1 - ab) * eye)
            A_x0 = (eye - (1 - ab) * Ci) / ab.sqrt()
            A = s_.posterior_mean_coef1[s] * A_x0 + s_.posterior_mean_coef2[s] * eye
            b = s_.posterior_mean_coef1[s] * (1 - ab) * Ci @ mu
            var = s_.betas[s] if (model.variance == "fixed_large" and s > 0) \
                else s_.posterior_log_variance_clipped[s].exp()
            m, S = A @ m + b, A @ S @ A.T + var * eye
        return torch.distributions.MultivariateNormal(m, S)


    data = torch.distributions.MultivariateNormal(mu, cov)
    g0 = torch.Generator().manual_seed(0)
    x = mu + torch.randn(2000, 2, dtype=torch.float64, generator=g0) @ torch.linalg.cholesky(cov).T
    gsched = NoiseSchedule.linear(200, 1e-4, 0.1)
    print(f"data entropy {data.entropy().item():.3f} nats; -log p_data on these points "
          f"{-data.log_prob(x).mean().item():.3f}")
    reps = 2 if QUICK else 10  # noise draws per point: the bound is a Monte Carlo estimate
    for variance in ("fixed_large", "fixed_small"):
        model = DiffusionModel(ExactEps(gsched), gsched, (2,), variance=variance).double()
        bound = model.variational_bound(x.repeat(reps, 1),
                                        generator=torch.Generator().manual_seed(1))
        nll = bound["nll"]
        exact = -exact_marginal(model).log_prob(x)
        print(f"{variance:11s}: mean bound {nll.mean().item():.3f} +- "
              f"{nll.std().item() / len(nll) ** 0.5:.3f} nats >= exact -log p_theta "
              f"{exact.mean().item():.3f} (prior {bound['prior'].mean():.1e}, decoder "
              f"{bound['decoder'].mean():.2f}, sum of KL terms "
              f"{bound['terms'][:, 1:].sum(1).mean():.2f})")
    """),
    ("md", r"""
    Both bounds sit above the exact NLL of the model they bound (up to the printed Monte Carlo
    error), and that NLL is a cross-entropy, above the data's own $-\log p$. With the reverse
    variance $\beta_s$ ("fixed_large") the bound is nearly tight; with the posterior's
    $\tilde\beta_s$ ("fixed_small") it is several nats loose, because at the first steps the
    true reverse variance is close to $\beta_s$, far above $\tilde\beta_s$. This is why
    learned variances (Nichol & Dhariwal's `variance="learned_range"`, trained by
    `DiffusionLoss(model, "hybrid")`) improve likelihoods.

    ## 3. Training on 2-D moons (the course's setting) and sampling

    `VectorDDPM` is the course's conditional MLP predicting $\epsilon$ with $T = 100$ and
    the cosine schedule; `DiffusionLoss` draws a step and noise per example and regresses
    the noise. Then three samplers, all from the same start noise:

    - **ancestral** DDPM over the 100 steps: $x_{s-1} = \mu_\theta(x_s) + \sigma_s z$;
    - **strided** DDPM over 20 of the steps (the chain respaced so its marginals are the
      original ones);
    - **DDIM** with $\eta = 0$: $x_{prev} = \sqrt{\bar\alpha_{prev}}\hat x_0 +
      \sqrt{1-\bar\alpha_{prev}}\,\hat\epsilon$, deterministic.

    Quality is the exact $W_2$ to 2000 held-out points (the floor, two independent draws
    of moons, is printed first) and $\mathrm{MMD}^2$. (`sampler=` also takes the
    probability-flow ODE solvers `"dpm++2m"`, `"dpm++3m"`, `"unipc"`, `"edm_heun"` and
    `"ode"`, the same names as for score SDEs and flow matching; notebook 10, section 4,
    compares them.)
    """),
    ("code", r"""
    torch.manual_seed(0)
    moons_model = VectorDDPM(2, num_steps=100, schedule="cosine")
    t0 = time.perf_counter()
    history = fit(DiffusionLoss(moons_model), ToySampler("moons"), steps=budget(4000),
                  batch_size=512, lr=2e-3, lr_schedule="cosine", ema_decay=0.995,
                  progress=False, log_every=100)
    print(f"trained {budget(4000)} steps in {time.perf_counter() - t0:.0f} s, "
          f"final noise MSE {history.final['loss']:.3f}")
    held_out = toy_sample("moons", 2000, generator=torch.Generator().manual_seed(5))
    other = toy_sample("moons", 2000, generator=torch.Generator().manual_seed(9))
    print(f"{'floor (data vs data)':25s} W2 {wasserstein2(other, held_out):6.3f}  MMD2 "
          f"{mmd2(other, held_out):8.5f}")
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(6))
    runs = {"ancestral, 100 steps": dict(sampler="ancestral"),
            "strided DDPM, 20 steps": dict(sampler="ancestral", steps=20),
            "DDIM, 20 steps": dict(sampler="ddim", steps=20),
            "DDIM, 100 steps": dict(sampler="ddim", steps=100),
            "DDIM, 100 steps, clip 4": dict(sampler="ddim", steps=100, clip=4.0)}
    samples = {}
    for name, kw in runs.items():
        t0 = time.perf_counter()
        x_ = moons_model.run(2000, noise=z, generator=torch.Generator().manual_seed(7),
                             **kw).samples
        seconds = time.perf_counter() - t0
        samples[name] = x_
        ok = bool(torch.isfinite(x_).all()) and x_.abs().max() < 50
        w2 = wasserstein2(x_, held_out) if ok else float("nan")
        mmd = mmd2(x_, held_out) if ok else float("nan")
        print(f"{name:25s} W2 {w2:6.3f}  MMD2 {mmd:8.5f}  {seconds:5.2f} s  "
              f"max |x| {x_.abs().max().item():.1f}")
    """),
    ("md", r"""
    Compare each row with the floor. One trap of this schedule: its last
    $\bar\alpha_{T-1} \approx 2\cdot 10^{-7}$, so $\hat x_0 = (x - \sqrt{1-\bar\alpha}\,
    \hat\epsilon)/\sqrt{\bar\alpha}$ multiplies the network's error at the first step by
    about 2000. Deterministic DDIM through the first steps one by one carries that error to
    the end (the stochastic samplers partly forget it through their fresh noise; diffusers'
    DDIMScheduler driving the same network gives the same numbers, see
    `benchmarks/ddpm_2d.py`), which is what `max |x|` shows when it happens. Clamping
    $\hat x_0$ to the data's range (`clip=4`) bounds it. The samples:
    """),
    ("code", r"""
    fig = Figure(figsize=(13, 3.2))
    axes = fig.subplots(1, 4)
    plot_samples(held_out, ax=axes[0], title="held-out data", bounds=(-4, 4))
    for ax, name in zip(axes[1:], ["ancestral, 100 steps", "DDIM, 20 steps",
                                   "DDIM, 100 steps, clip 4"]):
        plot_samples(samples[name], ax=ax, title=name, bounds=(-4, 4))
    fig
    """),
    ("md", r"""
    The same network is also a score: $\nabla\log q(x_s) = -\epsilon_\theta/\sqrt{1-
    \bar\alpha_s}$. `model.ve_score()` rescales it to the variance-exploding form
    `score(y, sigma)` that the score lecture's annealed Langevin sampler takes
    ($y = x_s/\sqrt{\bar\alpha_s}$ is data plus noise of level
    $\sigma^2 = (1-\bar\alpha_s)/\bar\alpha_s$), so that sampler applies unchanged:
    """),
    ("code", r"""
    score = moons_model.ve_score()
    ladder = score.sigmas(torch.arange(0, 95, 5))  # steps 90, 85, ..., 0 as VE levels
    with torch.no_grad():
        out = annealed_langevin(score, ladder[0] * torch.randn(2000, 2), ladder,
                                steps_per_level=20, eps=2e-4,
                                generator=torch.Generator().manual_seed(8))
    print(f"annealed Langevin with the DDPM's score: W2 "
          f"{wasserstein2(out.samples, held_out):.3f} (levels {ladder[0]:.2f} .. "
          f"{ladder[-1]:.3f})")
    """),
    ("md", r"""
    ## 4. DDIM is a deterministic map, and it inverts

    With $\eta = 0$ the sample is a function of the start noise (any generator gives the
    same result), and running the update forwards maps data to a latent that decodes back
    to the data, up to the discretization error of the underlying ODE. With the exact
    noise predictor of the Gaussian above, the latents of Gaussian data are standard
    normal, and the round-trip error shrinks with the number of steps:
    """),
    ("code", r"""
    gsched = NoiseSchedule.linear(1000)
    gauss = DiffusionModel(ExactEps(gsched), gsched, (2,)).double()
    zz = torch.randn(500, 2, dtype=torch.float64)
    a = gauss.run(500, noise=zz, sampler="ddim", steps=50,
                  generator=torch.Generator().manual_seed(1)).samples
    b = gauss.run(500, noise=zz, sampler="ddim", steps=50,
                  generator=torch.Generator().manual_seed(2)).samples
    print("same noise, different generators -> identical samples:", torch.equal(a, b))
    pts = x[:500]
    for steps in (20, 100, 1000):
        latent = gauss.encode(pts, steps=steps)
        back = gauss.decode(latent, steps=steps)
        print(f"{steps:5d} steps: latent mean {latent.mean(0).numpy().round(3)}, std "
              f"{latent.std(0).numpy().round(3)}, max round-trip error "
              f"{(back - pts).abs().max().item():.4f}")
    """),
    ("md", r"""
    ## 5. Guidance

    Three labelled Gaussian blobs overlap, so even a perfect conditional model puts some
    samples of class $y$ where the Bayes classifier says another class. A class-conditional
    network has one extra *null* label; training replaces each label by it with
    probability 0.2 (`label_dropout`), so one network gives both $\epsilon(x, y)$ and
    $\epsilon(x, \varnothing)$. **Classifier-free guidance** samples with
    $\hat\epsilon = \epsilon(x, \varnothing) + w\,(\epsilon(x, y) - \epsilon(x, \varnothing))$:
    $w = 0$ is the unconditional model, $w = 1$ the conditional one, $w > 1$ pushes samples
    towards where class $y$ is most distinguishable. **Classifier guidance** instead adds
    the gradient of a noise-conditional classifier $p_\phi(y \mid x_s, t)$ (called, like
    the network, at the step's probgen time $t = 1 - s/(T-1)$):
    $\hat\epsilon = \epsilon(x) - \lambda \sqrt{1-\bar\alpha_s}\,\nabla_x\log p_\phi(y
    \mid x_s, t)$. Accuracy is the share of samples of class 0 that the exact Bayes classifier
    (nearest centre) puts in class 0.
    """),
    ("code", r"""
    centres = torch.tensor([[0.0, 1.5], [-1.3, -0.75], [1.3, -0.75]])


    class Blobs:
        # labelled data for the trainer: sampler(n, generator) -> (x, y)
        def __call__(self, n, generator=None):
            y = torch.randint(0, 3, (n,), generator=generator)
            return centres[y] + 0.8 * torch.randn(n, 2, generator=generator), y


    def accuracy(x_, label):
        return (torch.cdist(x_, centres).argmin(1) == label).float().mean().item()


    torch.manual_seed(0)
    cond = VectorDDPM(2, num_steps=100, schedule="cosine", num_classes=3)
    fit(DiffusionLoss(cond, label_dropout=0.2), Blobs(), steps=budget(4000), batch_size=512,
        lr=2e-3, lr_schedule="cosine", ema_decay=0.995, progress=False, log_every=100)
    zc = torch.randn(3000, 2, generator=torch.Generator().manual_seed(3))
    guided = {}
    for w in (0.0, 1.0, 3.0):
        guided[w] = cond.run(3000, noise=zc, sampler="ddim", steps=50, labels=0, guidance=w,
                             generator=torch.Generator().manual_seed(4)).samples
        print(f"classifier-free guidance w = {w}: accuracy for class 0 "
              f"{accuracy(guided[w], 0):.3f}")
    """),
    ("md", r"""
    Accuracy rises with $w$. At $w = 0$ the label is ignored, so the number is the
    unconditional model's share of class-0 samples (1/3 in the data; the short training
    and DDIM-50 through the schedule's fragile first steps, see section 3, move it a
    little); $w = 1$ is the conditional model (the exact conditional gives 0.908, since the
    blobs overlap; this briefly trained one is sharper); $w = 3$ goes further, trading
    diversity for accuracy. Now the classifier
    route: an unconditional model plus a small MLP classifier of noisy points, trained on
    noised data at uniform steps (`NoisyClassifierLoss`). Scale 0 is again the
    unconditional model; the trained classifier is sharper than the Bayes posterior, so
    already scale 1 overshoots 0.908.
    """),
    ("code", r"""
    torch.manual_seed(0)
    uncond = VectorDDPM(2, num_steps=100, schedule="cosine")
    fit(DiffusionLoss(uncond), lambda n, generator=None: Blobs()(n, generator)[0],
        steps=budget(4000), batch_size=512, lr=2e-3, lr_schedule="cosine", ema_decay=0.995,
        progress=False, log_every=100)
    classifier = ConditionalMLP(2, [64, 64], out_features=3)
    fit(NoisyClassifierLoss(classifier, uncond.schedule), Blobs(), steps=budget(2000),
        batch_size=512, lr=2e-3, progress=False, log_every=100)
    for scale in (0.0, 1.0, 3.0):
        x_ = uncond.sample((3000,), sampler="ddim", steps=50, labels=0, classifier=classifier,
                           classifier_scale=scale, generator=torch.Generator().manual_seed(4))
        print(f"classifier guidance scale {scale}: accuracy for class 0 {accuracy(x_, 0):.3f}")
    fig = Figure(figsize=(10, 3.2))
    axes = fig.subplots(1, 3)
    for ax, w in zip(axes, (0.0, 1.0, 3.0)):
        plot_samples(guided[w], ax=ax, title=f"class 0, CFG w = {w}", bounds=(-4, 4))
        ax.scatter(centres[:, 0], centres[:, 1], c="red", marker="x")
    fig
    """),
    ("md", r"""
    ## 6. A U-Net DDPM on the 8x8 digits, and its bits per dimension

    Images go to the grid $2x/(L-1) - 1$ in $[-1, 1]$ ($L = 17$ levels for these digits).
    The decoder term of the bound is then a *discretized* Gaussian (the probability of
    the pixel's bin), so the bound is an upper bound on the NLL of the discrete data in
    bits per dimension, comparable with the flows' and autoregressive models' numbers.
    `DDPM` is a small time-conditional U-Net (8 -> 4 -> 8 here) with $T = 1000$ linear
    steps; samples come from DDIM with 50 steps (clamped to $[-1, 1]$).
    """),
    ("code", r"""
    train_x, _ = load_digits("train")
    test_x, _ = load_digits("test")
    torch.manual_seed(0)
    digits_model = DDPM((1, 8, 8), num_steps=1000, base_channels=32, channel_mults=(1, 2))
    t0 = time.perf_counter()
    history = fit(DiffusionLoss(digits_model, levels=17), train_x.float(),
                  steps=budget(3000), batch_size=128, lr=1e-3, lr_schedule="cosine",
                  ema_decay=0.995, progress=False, log_every=100)
    print(f"trained {budget(3000)} steps in {time.perf_counter() - t0:.0f} s, final noise "
          f"MSE {history.final['loss']:.3f}")
    n_bpd = 8 if QUICK else 100
    t0 = time.perf_counter()
    bound = digits_model.variational_bound(test_x[:n_bpd].float(), levels=17,
                                           generator=torch.Generator().manual_seed(0))
    print(f"bits/dim (upper bound, {n_bpd} test images, all 1000 terms): "
          f"{bound['bpd'].mean().item():.3f} +- {bound['bpd'].std().item() / n_bpd**0.5:.3f}"
          f" ({time.perf_counter() - t0:.0f} s); uniform pixels would be "
          f"{torch.log2(torch.tensor(17.0)).item():.3f}")
    images = digits_model.sample((64,), sampler="ddim", steps=50,
                                 generator=torch.Generator().manual_seed(1))
    plot_image_grid((images + 1) / 2, nrow=8, title="DDIM-50 samples")
    """),
    ("md", r"""
    ## 7. From the command line

    The presets are this notebook's experiments: `ddpm-moons` (the course's $T = 100$),
    `ddpm-digits`, and on MNIST `ddpm-mnist` ($T = 1000$) and `ddpm-cfg-mnist`
    (class-conditional, label dropout 0.1, guidance weight 3). `[objective] name = "ddpm"`
    takes `loss` (`simple`, `vlb`, `hybrid`), `label_dropout` and `vlb_weight`; the
    `[sample]` table's keys go to `model.sample` (`sampler`, `steps`, `eta`, `spacing`,
    `labels`, `guidance`). The evaluation reports the held-out noise MSE and an unbiased
    estimate of the bound (`test/nll`, and `test/bits_per_dim` for images); for 2-D data the
    run also draws the model's density (`density.png`) through its probability-flow ODE
    (`DDPM.log_prob`), one ODE solve per grid point, so here on a coarse 40x40 grid
    (`eval.resolution`, 200 by default).
    """),
    ("code", r"""
    import json

    from probgen.cli import main

    main(["fit", "ddpm-moons", "--out", "runs/ddpm-moons", "--quiet",
          "--set", f"train.steps={budget(3000)}", "--set", "eval.resolution=40"])
    with open("runs/ddpm-moons/eval.json") as f:
        result = json.load(f)
    print({k: round(v, 3) for k, v in result.items()})
    """),
]
