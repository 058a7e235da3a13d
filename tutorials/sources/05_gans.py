"""Cells of 05_gans.ipynb as ("md" | "code", source) pairs, for tutorials/build.py."""

from __future__ import annotations

CELLS: list[tuple[str, str]] = [
    ("md", r"""
    # Generative adversarial networks

    A GAN's generator is an *implicit* distribution: noise $z \sim \mathcal N(0, I)$ pushed
    through a network, $x = G(z)$. It samples, but has no `log_prob`, so it cannot be
    trained by maximum likelihood. Instead a critic $D$ learns to tell data from samples, and
    what it learns is a divergence between the two distributions, which the generator then
    minimizes. This notebook covers:

    1. the optimal discriminator $D^*(x) = p(x) / (p(x) + q(x))$, checked on 1-D densities;
    2. f-GANs: every f-divergence as a variational bound, checked against the true values;
    3. a GAN on a 1-D mixture, with the divergence estimate as a training curve;
    4. the 8-Gaussian ring: non-saturating GAN, WGAN with weight clipping, WGAN-GP, the
       saturating GAN with 1 and 5 critic steps, mode coverage, and the critic's value and
       gradient-norm maps;
    5. a DCGAN on the 8x8 digits: class conditioning, the truncation trick, linear and
       spherical interpolation in latent space;
    6. the same from the command line.

    Every model here trains through the one trainer, `fit`; the objective `Adversarial`
    owns the alternation of critic and generator updates. The full run takes a few minutes
    on one CPU thread; with `PROBGEN_QUICK=1` every fit takes a few steps (a smoke test; the
    printed numbers are then meaningless).
    """),
    ("code", r"""
    %matplotlib inline
    import warnings

    # The trainer's tqdm.auto warns in a kernel without ipywidgets; we train with
    # progress=False, so the warning is noise.
    warnings.filterwarnings("ignore", message="IProgress not found")
    """),
    ("code", r"""
    import json
    import math
    import os

    import torch
    from matplotlib.figure import Figure
    from torch.distributions import Normal

    from probgen.data import ImagePreprocess, load_digits
    from probgen.fdivergences import F_DIVERGENCES, f_divergence_1d
    from probgen.gan_plots import plot_critic_1d, plot_critic_2d
    from probgen.inference import ADAM_BETAS, Adversarial, fit
    from probgen.metrics import mode_coverage, ring_centres
    from probgen.models import DCGAN, MLPGAN
    from probgen.plots import plot_image_grid, plot_training_curves

    QUICK = os.environ.get("PROBGEN_QUICK") == "1"  # smoke-test mode: a few steps only


    def budget(steps: int) -> int:
        # Training steps: as given in the full run, about 1% of them in quick mode.
        return max(5, steps // 100) if QUICK else steps


    STEPS_2D = 1500  # generator steps of each ring GAN (section 4)
    DIGIT_STEPS = 2000  # generator steps of the digits DCGAN (section 5)
    torch.set_num_threads(1)  # small models: one thread is fastest and stays fast on a busy CPU
    print("quick mode (numbers are meaningless)" if QUICK else "full run")
    print("Adam betas for GANs:", ADAM_BETAS)
    """),
    ("md", r"""
    ## 1. The optimal discriminator

    For a fixed generator with density $q$ and data density $p$, the discriminator
    $D = \sigma(\text{logit})$ trained with the cross-entropy
    $-E_p[\log D(x)] - E_q[\log(1 - D(x))]$ is optimal at
    $$D^*(x) = \frac{p(x)}{p(x) + q(x)}.$$
    We freeze the generator (`train_generator=False`: only the critic is a parameter group)
    at $x = 1.2 z$, so $q = \mathcal N(0, 1.2^2)$, take for $p$ a two-component mixture, and
    compare the trained discriminator with $D^*$.
    """),
    ("code", r"""
    def mixture(n, generator=None):
        # p = 0.5 N(-1, 0.5^2) + 0.5 N(1.5, 0.7^2), points of shape (n, 1)
        k = torch.randint(0, 2, (n,), generator=generator)
        eps = torch.randn(n, generator=generator)
        return torch.where(k == 0, -1.0 + 0.5 * eps, 1.5 + 0.7 * eps).unsqueeze(1)


    def mixture_density(x):
        return 0.5 * (Normal(-1.0, 0.5).log_prob(x).exp() + Normal(1.5, 0.7).log_prob(x).exp())


    def fixed_generator(mean, std, critic_hidden=(64, 64)):
        # A 1-D GAN whose generator is the affine map z -> mean + std * z.
        gan = MLPGAN(1, latent_dim=1, hidden_features=[], critic_hidden_features=list(critic_hidden))
        with torch.no_grad():
            gan.generator.net[0].weight.fill_(std)
            gan.generator.net[0].bias.fill_(mean)
        return gan


    torch.manual_seed(0)
    gan = fixed_generator(0.0, 1.2)
    fit(Adversarial(gan, "non_saturating", train_generator=False), mixture,
        steps=budget(1500), batch_size=1024, lr=2e-3, progress=False)

    x = torch.linspace(-3.0, 4.0, 400)
    p, q = mixture_density(x), Normal(0.0, 1.2).log_prob(x).exp()
    with torch.no_grad():
        d = torch.sigmoid(gan.critic(x.unsqueeze(1)))
    inside = (x > -2) & (x < 2.5)
    print(f"max |D - D*| on [-2, 2.5]: {float((d - p / (p + q))[inside].abs().max()):.3f}")
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, p, label="p (data)")
    ax.plot(x, q, label="q (generator)")
    ax.plot(x, p / (p + q), "k--", label="D* = p / (p + q)")
    ax.plot(x, d, "r", label="trained D")
    ax.legend(fontsize=8)
    fig
    """),
    ("md", r"""
    Where both densities have mass, the trained discriminator sits on $D^*$; far in the
    tails, where neither $p$ nor $q$ puts samples, nothing constrains it. Plugging $D^*$ into
    the GAN objective gives $2\,\mathrm{JS}(p, q) - \log 4$: the generator of the original GAN
    minimizes the Jensen-Shannon divergence.

    ## 2. f-GANs: every f-divergence is a critic's bound

    For convex $f$ with $f(1) = 0$, $D_f(P \| Q) = \int q f(p/q) \ge
    \sup_T E_P[T] - E_Q[f^*(T)]$, with the Fenchel conjugate $f^*$; a critic outputs $V(x)$
    and an output activation $g_f$ puts $T = g_f(V)$ in the domain of $f^*$ (Nowozin et al.
    2016). `probgen.fdivergences` holds the table; `f_divergence_1d` computes the true value
    by numerical integration. Below, each critic is trained between $P = \mathcal N(0, 1)$
    and a frozen $Q = \mathcal N(1, 1)$; its bound is then evaluated *exactly* (by a sum over a
    fine grid, not by sampling), so it must lie below the truth.
    """),
    ("code", r"""
    P, Q = Normal(0.0, 1.0), Normal(1.0, 1.0)
    grid = torch.linspace(-12.0, 13.0, 25001, dtype=torch.float64)
    dx = float(grid[1] - grid[0])
    rows = []
    for name in ["kl", "reverse_kl", "js", "pearson", "hellinger", "tv"]:
        torch.manual_seed(0)
        critic_gan = fixed_generator(1.0, 1.0, critic_hidden=(32, 32))
        fit(Adversarial(critic_gan, name, train_generator=False),
            lambda n, generator=None: torch.randn(n, 1, generator=generator),
            steps=budget(600), batch_size=1024, lr=3e-3, progress=False)
        div = F_DIVERGENCES[name]
        with torch.no_grad():
            t = div.activation(critic_gan.critic(grid.float().unsqueeze(1)).double())
        bound = float(((P.log_prob(grid).exp() * t
                        - Q.log_prob(grid).exp() * div.conjugate(t)) * dx).sum())
        rows.append((name, f_divergence_1d(name, P.log_prob, Q.log_prob), bound))
    print(f"{'divergence':12s} {'true D_f':>9s} {'critic bound':>13s} {'ratio':>6s}")
    for name, true, bound in rows:
        print(f"{name:12s} {true:9.4f} {bound:13.4f} {bound / true:6.3f}")
    """),
    ("md", r"""
    Every bound is below the true divergence (Fenchel's inequality holds for any critic) and
    the trained critics get within a few percent of it. The conventions are the paper's:
    `js` is twice the Jensen-Shannon divergence, `hellinger` is $\int(\sqrt p - \sqrt q)^2$
    and `tv` is $\tfrac12 \int |p - q|$.

    ## 3. A GAN on a 1-D mixture

    Now the generator trains too. `Adversarial` alternates one critic update and one
    generator update per trainer step (`n_critic=1`), and logs `divergence`: for the
    non-saturating GAN the critic's lower bound $\log 2 - L_D / 2$ on the Jensen-Shannon
    divergence. It rises while the critic wins and falls as the generator catches up.
    """),
    ("code", r"""
    torch.manual_seed(0)
    gan1d = MLPGAN(1, latent_dim=1, hidden_features=[64, 64])
    history = fit(Adversarial(gan1d, "non_saturating"), mixture, steps=budget(3000),
                  batch_size=256, lr=1e-3, betas=ADAM_BETAS, progress=False, log_every=25)
    samples = gan1d.sample((20000,))
    plot_critic_1d(gan1d.critic, (-3.5, 4.5), data=mixture(20000), samples=samples,
                   transform=torch.sigmoid, title="samples and the discriminator D(x)")
    """),
    ("code", r"""
    plot_training_curves(history.records, keys=["divergence", "critic_loss", "generator_loss"])
    """),
    ("md", r"""
    At the equilibrium the samples cover both components and $D \approx 1/2$ where the data
    lives: the discriminator can no longer tell them apart.

    ## 4. The 8-Gaussian ring: losses, critic steps, mode collapse

    The course's ring: 8 Gaussians at radius 2 with standard deviation 0.08, everything
    divided by 1.414. A sample is *high quality* within 3 standard deviations of its nearest
    centre; a mode is *captured* with at least 20 high-quality samples out of 2500
    (`mode_coverage`). We train, with the same networks and the course's Adam betas (0, 0.9):

    - the non-saturating GAN (1 critic step per generator step);
    - WGAN-GP (Wasserstein loss, gradient penalty 10, 5 critic steps);
    - WGAN with weight clipping at 0.01 (5 critic steps);
    - the original, saturating minimax GAN with 1 and with 5 critic steps.

    `n_critic` splits each trainer batch into that many chunks, one per critic update, so
    the batch size is 5 x 256 for the 5-step runs.
    """),
    ("code", r"""
    STD = 0.08 / 1.414
    CENTRES = ring_centres(8, radius=2 / 1.414).float()


    def ring(n, generator=None):
        k = torch.randint(0, 8, (n,), generator=generator)
        return CENTRES[k] + STD * torch.randn(n, 2, generator=generator)


    settings = {
        "non-saturating": ("non_saturating", dict(n_critic=1)),
        "WGAN-GP": ("wasserstein", dict(n_critic=5, gradient_penalty=10.0)),
        "WGAN (clip 0.01)": ("wasserstein", dict(n_critic=5, clip=0.01)),
        "saturating, 1 step": ("minimax", dict(n_critic=1)),
        "saturating, 5 steps": ("minimax", dict(n_critic=5)),
    }
    ring_gans, ring_histories = {}, {}
    for label, (loss, kw) in settings.items():
        torch.manual_seed(0)
        model = MLPGAN(2, latent_dim=2, hidden_features=[128, 128, 128])
        ring_histories[label] = fit(Adversarial(model, loss, **kw), ring, steps=budget(STEPS_2D),
                                    batch_size=256 * kw["n_critic"], lr=5e-4, betas=ADAM_BETAS,
                                    progress=False, log_every=50)
        ring_gans[label] = model
        s = model.sample((2500,), generator=torch.Generator().manual_seed(1))
        cov = mode_coverage(s, CENTRES, STD, min_count=20)
        print(f"{label:20s} modes {cov.modes_captured}/8, high quality {cov.high_quality:.2f}")
    """),
    ("code", r"""
    fig = Figure(figsize=(15, 3.2))
    data = ring(2000)
    for i, (label, model) in enumerate(ring_gans.items()):
        ax = fig.add_subplot(1, 5, i + 1)
        s = model.sample((2000,), generator=torch.Generator().manual_seed(1)).clamp(-3, 3)
        ax.scatter(data[:, 0], data[:, 1], s=1, c="lightgray")
        ax.scatter(s[:, 0], s[:, 1], s=1, c="tab:red", alpha=0.5)
        ax.set_xlim(-2.2, 2.2)
        ax.set_ylim(-2.2, 2.2)
        ax.set_aspect("equal")
        ax.set_title(label, fontsize=9)
    fig
    """),
    ("md", r"""
    At this budget (1500 generator steps) the non-saturating GAN and the saturating GAN
    with one critic step have found all eight modes. The saturating loss
    $E[\log(1 - D(G(z)))]$ has vanishing gradients where $D(G(z)) \approx 0$, that is,
    exactly when the discriminator wins; with 5 critic steps per generator step it wins
    more often, and the samples get worse: they lie on a curve through the modes (compare
    the high-quality shares printed above). The course sees a full collapse in this
    setting; in this run the effect is a loss of quality, not of modes (the same holds in
    `benchmarks/RESULTS.md`, section gan_2d). The non-saturating loss $-E[\log D(G(z))]$
    keeps its gradients.

    The Wasserstein GANs converge more slowly: each generator step costs five critic
    updates, and at this budget WGAN-GP has not reached the ring yet while the clipped WGAN
    still puts much of its mass between the modes (WGAN-GP needs many more steps on this
    ring; the benchmark's longer run finds all eight modes, still with mass in between).
    Their critics: the WGAN-GP critic's gradient norm is close to 1 over most of the plane,
    the penalty's target; the clipped critic, every weight within $\pm 0.01$, varies by a
    few thousandths over the whole box, with gradient norms around $10^{-3}$: a critic of
    tiny capacity.
    """),
    ("code", r"""
    plot_critic_2d(ring_gans["WGAN-GP"].critic, 2.5, 100, data=data,
                   samples=ring_gans["WGAN-GP"].sample((1000,)), title="WGAN-GP critic")
    """),
    ("code", r"""
    plot_critic_2d(ring_gans["WGAN (clip 0.01)"].critic, 2.5, 100, data=data,
                   samples=ring_gans["WGAN (clip 0.01)"].sample((1000,)),
                   title="WGAN critic with weights clipped to [-0.01, 0.01]")
    """),
    ("code", r"""
    fig = Figure(figsize=(10, 3))
    for i, label in enumerate(["WGAN-GP", "WGAN (clip 0.01)"]):
        ax = fig.add_subplot(1, 2, i + 1)
        recs = ring_histories[label].records
        ax.plot([r["step"] for r in recs], [r["divergence"] for r in recs])
        ax.set_title(f"{label}: critic's Wasserstein estimate")
        ax.set_xlabel("generator step")
    weights = torch.cat([p.detach().flatten() for p in ring_gans["WGAN (clip 0.01)"].critic.parameters()])
    print(f"clipped critic: weights in [{float(weights.min()):.4f}, {float(weights.max()):.4f}]")
    fig
    """),
    ("md", r"""
    The Wasserstein estimate $E[D(x)] - E[D(G(z))]$ of WGAN-GP falls as the generator
    learns, a useful training curve; the clipped critic's estimate is on the scale its tiny
    weights allow.

    ## 5. A DCGAN on the 8x8 digits: conditioning, truncation, interpolation

    `DCGAN` builds a deconvolutional generator and a convolutional critic for square images
    whose side is a multiple of 4 (28x28 MNIST; here 8x8, with maps 2 -> 4 -> 8). With
    `num_classes` the generator also takes a class embedding and the critic a projection
    term $\langle e(y), \phi(x)\rangle$ (Miyato & Koyama 2018). Pixels go to $[-1, 1]$
    (`ImagePreprocess(transform="signed")`), matching the generator's tanh.
    """),
    ("code", r"""
    train_x, train_y = load_digits("train")
    pre = ImagePreprocess(levels=17, transform="signed", shape=(1, 8, 8))
    torch.manual_seed(0)
    digits_gan = DCGAN((1, 8, 8), latent_dim=32, hidden_channels=32, num_classes=10)
    digits_history = fit(Adversarial(digits_gan, "non_saturating", preprocess=pre),
                         (train_x.float(), train_y.long()), steps=budget(DIGIT_STEPS),
                         batch_size=128, lr=5e-4, betas=ADAM_BETAS, progress=False, log_every=50)
    digits_gan.eval()
    labels = torch.arange(10).repeat_interleave(8)
    images = pre.to_unit(digits_gan.sample((80,), labels=labels,
                                           generator=torch.Generator().manual_seed(0)))
    plot_image_grid(images.clamp(0, 1), nrow=8)
    """),
    ("md", r"""
    Each row is one class (0 to 9). The **truncation trick** (Brock et al. 2019) draws the
    noise from the standard normal restricted to $[-\psi, \psi]$ in every coordinate: a
    smaller $\psi$ trades diversity for typicality. Below, the same classes with
    $\psi = \infty$ (no truncation), 1 and 0.3 (each column one class).
    """),
    ("code", r"""
    fig = Figure(figsize=(15, 2.8))
    for i, psi in enumerate([None, 1.0, 0.3]):
        ax = fig.add_subplot(1, 3, i + 1)
        x = pre.to_unit(digits_gan.sample((40,), psi=psi, labels=torch.arange(10).repeat(4),
                                          generator=torch.Generator().manual_seed(2)))
        plot_image_grid(x.clamp(0, 1), nrow=10, ax=ax)
        ax.set_title(f"psi = {psi if psi else 'inf'}")
    z = digits_gan.noise(100000, psi=0.3)
    print("largest |z| with psi = 0.3:", float(z.abs().max()))
    fig
    """),
    ("md", r"""
    **Latent interpolation**: a path from $z_0$ to $z_1$, decoded at a fixed class. Linear
    interpolation shortens the code in the middle ($\|(z_0 + z_1)/2\| \approx
    \|z_0\|/\sqrt 2$), off the shell where Gaussian codes live; spherical interpolation
    (slerp) keeps the norm (White 2016).
    """),
    ("code", r"""
    g = torch.Generator().manual_seed(5)
    z0, z1 = torch.randn(32, generator=g), torch.randn(32, generator=g)
    fig = Figure(figsize=(10, 3))
    for i, method in enumerate(["linear", "slerp"]):
        ax = fig.add_subplot(2, 1, i + 1)
        path = digits_gan.interpolate(z0, z1, steps=10, method=method, labels=3)
        plot_image_grid(pre.to_unit(path).clamp(0, 1), nrow=10, ax=ax)
        ax.set_title(method)
    fig
    """),
    ("md", r"""
    ## 6. From the command line

    The presets `gan-8gaussians` (WGAN-GP), `gan-digits` (non-saturating DCGAN) and
    `gan-mnist` (WGAN-GP DCGAN; needs the MNIST files) train the same models from a TOML
    file; `[objective] name` is `gan` (with `loss = ...`), `wgan`, `wgan_gp` or `fgan` (with
    `divergence = ...`), and `[train] betas = [0.0, 0.9]` sets the course's Adam. The run
    folder holds samples, training curves and the held-out divergence estimate.
    """),
    ("code", r"""
    from probgen.cli import main

    main(["fit", "gan-digits", "--out", "runs/gan-digits", "--quiet",
          "--set", f"train.steps={budget(1000)}"])
    with open("runs/gan-digits/eval.json") as f:
        print(json.load(f))
    """),
]
