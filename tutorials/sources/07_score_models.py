"""Cells of 07_score_models.ipynb as ("md" | "code", source) pairs, for tutorials/build.py."""

from __future__ import annotations

CELLS: list[tuple[str, str]] = [
    ("md", r"""
    # Score models: Langevin dynamics, score matching and NCSN

    A *score* is the gradient of a log-density, $s(x) = \nabla_x \log p(x)$. It does not
    need the normalizing constant, and it is all Langevin dynamics needs to sample. This
    lecture notebook covers:

    1. Langevin dynamics with a known score: the unadjusted sampler (ULA), its step-size
       bias, and the Metropolis-adjusted one (MALA) that removes it;
    2. learning a score without a normalizing constant: implicit, sliced and denoising
       score matching, checked on a Gaussian where the answer is known;
    3. denoising score matching then Langevin on 2-D moons;
    4. why one noise level is not enough: the 0.95/0.05 two-mode mixture, where plain
       Langevin gets the weights wrong and annealed Langevin (NCSN) gets them right,
       first with the exact score, then with a learned one;
    5. NCSN on images: Song & Ermon's (2020) choice of the noise ladder, then a
       noise-conditional conv net on the 8x8 digits, and the same from the command line.

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
    from probgen.inference import (
        DenoisingScoreMatching,
        ImplicitScoreMatching,
        NoiseConditionalScoreMatching,
        ScoreSampler,
        SlicedScoreMatching,
        annealed_langevin,
        fit,
        langevin,
        mala,
    )
    from probgen.metrics import mmd2, wasserstein2
    from probgen.models import ConvScoreNet, ScoreMLP
    from probgen.plots import plot_image_grid, plot_samples
    from probgen.score import choose_sigmas, geometric_sigmas, two_modes

    QUICK = os.environ.get("PROBGEN_QUICK") == "1"  # smoke-test mode: a few steps only


    def budget(steps: int) -> int:
        # Training steps: as given in the full run, about 1% of them in quick mode.
        return max(10, steps // 100) if QUICK else steps


    def chain(steps: int) -> int:
        # Sampler steps: as given in the full run, a tenth of them in quick mode.
        return max(5, steps // 10) if QUICK else steps


    torch.set_num_threads(1)  # small models: one thread is fastest and stays fast on a busy CPU
    print("quick mode (numbers are meaningless)" if QUICK else "full run")
    """),
    ("md", r"""
    ## 1. Langevin dynamics with a known score

    The unadjusted Langevin algorithm repeats
    $$x \leftarrow x + \tfrac{\eta}{2}\, s(x) + \sqrt{\eta}\, z, \qquad z \sim \mathcal N(0, I).$$
    As $\eta \to 0$ and the number of steps grows, $x$ is distributed as $p$. At a finite step
    it is not: for $\mathcal N(0, s^2)$ the update is linear, $x \leftarrow (1 - \eta/(2s^2))x
    + \sqrt\eta z$, and its stationary variance solves $v = (1 - \eta/(2s^2))^2 v + \eta$:
    $$v = \frac{s^2}{1 - \eta/(4 s^2)}.$$
    MALA treats the same update as a proposal and accepts it with the Metropolis-Hastings
    probability, which makes $p$ exactly invariant at any step size. Below: 20 000 chains
    each, $s = 1$, three step sizes.
    """),
    ("code", r"""
    g = torch.Generator().manual_seed(0)
    chains, s2 = 20000, 1.0
    x0 = torch.zeros(chains, 1, dtype=torch.float64)
    print(f"{'eta':>5s} {'ULA var':>9s} {'theory s^2/(1-eta/4s^2)':>24s} {'MALA var':>9s} "
          f"{'MALA acc.':>9s}")
    for eta in (0.1, 0.5, 1.0):
        ula = langevin(x0, score=lambda x: -x / s2, steps=200, eta=eta, generator=g)
        adj = mala(x0, log_prob=lambda x: -0.5 * x.pow(2).sum(-1) / s2, steps=300, eta=eta,
                   generator=g)
        print(f"{eta:5.1f} {ula.samples.var().item():9.3f} {s2 / (1 - eta / (4 * s2)):24.3f} "
              f"{adj.samples.var().item():9.3f} {adj.acceptance.mean().item():9.2f}")
    """),
    ("md", r"""
    ULA's variance follows the formula (its bias grows with $\eta$); MALA's stays at 1 and
    pays with rejections. MALA needs the log-density up to a constant. Given only a score,
    `mala(score=...)` recovers the log-density *ratio* by integrating the score along the
    segment between the current point and the proposal (Gauss-Legendre; exact for a
    Gaussian's linear score).

    ## 2. Score matching: learning $s_\theta \approx \nabla \log p$ without $Z$

    We cannot regress on $\nabla\log p$ (unknown), but three losses have the same minimizer:

    - **implicit** (Hyvarinen 2005): $E_p[\operatorname{tr}\nabla_x s_\theta(x) +
      \tfrac12\|s_\theta(x)\|^2]$, which equals $\tfrac12 E_p\|s_\theta - \nabla\log p\|^2$
      minus a constant (integration by parts). The trace is exact for small $D$, or
      Hutchinson's $\epsilon^\top \nabla s\, \epsilon$ (both from `probgen.divergence`);
    - **sliced** (Song et al. 2019): random projections $v^\top \nabla s\, v$, one
      vector-Jacobian product whatever $D$;
    - **denoising** (Vincent 2011): $\tfrac12 E\|s_\theta(x + \sigma z) + z/\sigma\|^2$,
      minimized by the score of the *noisy* data $p * \mathcal N(0, \sigma^2 I)$; no
      derivatives of the network at all.

    On a 2-D Gaussian $\mathcal N(\mu, \Sigma)$ the true score is $-\Sigma^{-1}(x - \mu)$.
    Each loss is lower at the true score than at a wrong one (half the precision); and the
    implicit loss at the truth is $-\tfrac12 \operatorname{tr}\Sigma^{-1}$.
    """),
    ("code", r"""
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0])
    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]])
    data = mu + torch.randn(50000, 2) @ torch.linalg.cholesky(cov).T
    prec = torch.linalg.inv(cov)
    sigma = 0.5
    noisy_prec = torch.linalg.inv(cov + sigma**2 * torch.eye(2))


    def linear_score(P):
        return lambda x, level=None: -(x - mu) @ P.T


    losses = {
        "implicit (exact trace)": lambda s: ImplicitScoreMatching(s, divergence="exact"),
        "implicit (Hutchinson)": lambda s: ImplicitScoreMatching(s, divergence="hutchinson"),
        "sliced (4 projections)": lambda s: SlicedScoreMatching(s, num_projections=4),
    }
    print(f"{'loss':24s} {'true score':>11s} {'wrong score':>12s}")
    for name, make in losses.items():
        true, wrong = (make(linear_score(P))(data)["loss"].item() for P in (prec, 0.5 * prec))
        print(f"{name:24s} {true:11.3f} {wrong:12.3f}")
    true, wrong = (DenoisingScoreMatching(linear_score(P), sigma)(data)["loss"].item()
                   for P in (noisy_prec, prec))
    print(f"{'denoising, sigma=0.5':24s} {true:11.3f} {wrong:12.3f}   (true: the noisy "
          "data's score; wrong: the clean data's)")
    print(f"-1/2 tr(Sigma^-1) = {-0.5 * torch.trace(prec).item():.3f}")
    """),
    ("md", r"""
    ## 3. Denoising score matching, then Langevin, on 2-D moons

    A score MLP trained by denoising score matching at $\sigma = 0.1$, then 1000 steps of
    ULA from $\mathcal N(0, 2^2 I)$. The quality is measured against fresh data by the exact
    $W_2$ distance (an optimal assignment) and the MMD (`probgen.metrics`).
    """),
    ("code", r"""
    torch.manual_seed(0)
    moons_net = ScoreMLP(2, [128, 128])
    history = fit(DenoisingScoreMatching(moons_net, sigma=0.1), ToySampler("moons"),
                  steps=budget(3000), batch_size=512, lr=2e-3, lr_schedule="cosine",
                  progress=False)
    reference = toy_sample("moons", 2000, generator=torch.Generator().manual_seed(1))
    sampler = ScoreSampler(moons_net, (2,), sampler="langevin", steps=chain(1000), eta=0.005,
                           init_std=2.0)
    start = time.perf_counter()
    run = sampler.run(2000, generator=torch.Generator().manual_seed(2),
                     record_every=chain(1000) // 4)
    seconds = time.perf_counter() - start
    x = run.samples
    g = torch.Generator().manual_seed(9)
    print(f"sampling: {seconds:.2f} s for 2000 chains x {chain(1000)} steps")
    print(f"W2 = {float(wasserstein2(x, reference)):.3f}, MMD^2 = {float(mmd2(x, reference)):.4f}"
          f"   (two fresh data sets: W2 = "
          f"{float(wasserstein2(toy_sample('moons', 2000, generator=g), reference)):.3f})")

    fig = Figure(figsize=(14, 3.2), layout="constrained")
    axes = fig.subplots(1, 5)
    for ax, (i, state) in zip(axes, enumerate(run.trajectory)):
        plot_samples(state, ax=ax, title=f"Langevin step {chain(1000) // 4 * i}", bounds=4.0)
    fig
    """),
    ("code", r"""
    # The learned score field (arrows) over the data: it points towards the moons.
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax_field, ax_curve = fig.subplots(1, 2)
    grid = torch.stack(torch.meshgrid(torch.linspace(-3.5, 3.5, 21), torch.linspace(-3.5, 3.5, 21),
                                      indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        field = moons_net(grid)
    field = field / field.norm(dim=1, keepdim=True).clamp_min(1.0)
    ax_field.scatter(reference[:, 0], reference[:, 1], s=1, alpha=0.3)
    ax_field.quiver(grid[:, 0], grid[:, 1], field[:, 0], field[:, 1], angles="xy", width=0.004)
    ax_field.set_title("learned score s(x)")
    ax_field.set_aspect("equal")
    ax_curve.plot([r["step"] for r in history.records], [r["loss"] for r in history.records])
    ax_curve.set_xlabel("step")
    ax_curve.set_title("denoising score-matching loss")
    fig
    """),
    ("md", r"""
    ## 4. One noise level is not enough: the two-mode mixture

    $p = 0.95\,\mathcal N((5, 5), I) + 0.05\,\mathcal N((-5, -5), I)$. Its score is known
    in closed form at every noise level (a mixture of Gaussians convolved with
    $\mathcal N(0, \sigma^2 I)$ is the same mixture with variance $1 + \sigma^2$):
    `probgen.score.two_modes()`.

    Two failures of plain score-based sampling show here (Song & Ermon 2019):

    - between the modes $p$ is nearly 0, so data never lands there and a *learned* score
      is wrong there;
    - even with the *exact* score, Langevin chains cannot cross the empty region: each chain
      stays in the basin it starts in, so the mode weights are those of the start, not
      0.95/0.05. Near a mode the score does not even depend on the weights.

    Annealed Langevin runs Langevin on $p_{\sigma_1}, \dots, p_{\sigma_L}$, from a noise
    level $\sigma_1 = 20$ that blurs the two modes into one blob down to $\sigma_L = 0.5$,
    with step $\eta_i = \epsilon\,\sigma_i^2/\sigma_L^2$. At the large levels the chains
    spread in proportion to the mass.
    """),
    ("code", r"""
    mix = two_modes()
    g = torch.Generator().manual_seed(3)
    x0 = 16 * torch.rand(4000, 2, generator=g) - 8  # uniform on the box [-8, 8]^2
    ladder = geometric_sigmas(20.0, 0.5, 20)
    exact_plain = langevin(x0, score=mix.score, steps=chain(2000), eta=0.1, generator=g).samples
    exact_annealed = annealed_langevin(mix.score, x0, ladder, steps_per_level=chain(100), eps=0.1,
                                       generator=g).samples


    def weight(x):
        return (mix.assign(x) == 0).float().mean().item()


    print(f"weight of the (5, 5) mode: data 0.95 | exact score: plain Langevin "
          f"{weight(exact_plain):.3f}, annealed {weight(exact_annealed):.3f}")
    """),
    ("md", r"""
    Now learn the scores of all 20 levels with one noise-conditional network
    $s_\theta(x, \sigma)$ and NCSN's loss: a random level per example, the denoising loss
    weighted by $\sigma^2$, so that $\tfrac12 E\|\sigma s_\theta(x + \sigma z, \sigma) + z\|^2$
    has terms of order one at every level. The network embeds $\log\sigma$ and divides its
    output by $\sigma$. Then sample the same network both ways.
    """),
    ("code", r"""
    torch.manual_seed(0)
    ncsn_net = ScoreMLP(2, [128, 128], noise_conditional=True)
    ncsn = NoiseConditionalScoreMatching(ncsn_net, ladder)
    fit(ncsn, mix, steps=budget(4000), batch_size=1024, lr=2e-3, lr_schedule="cosine",
        progress=False)
    ncsn_net.eval()


    def learned_score(x, level=None):  # the network at sigma_L = 0.5 when no level is given
        with torch.no_grad():
            return ncsn_net(x, torch.full((x.shape[0],), 0.5) if level is None else level)


    g = torch.Generator().manual_seed(4)  # the same uniform start as with the exact score
    learned_plain = langevin(x0, score=learned_score, steps=chain(2000), eta=0.1,
                             generator=g).samples
    learned_annealed = annealed_langevin(learned_score, x0, ladder, steps_per_level=chain(100),
                                         eps=0.1, generator=g).samples
    print(f"weight of the (5, 5) mode with the learned score: plain Langevin "
          f"{weight(learned_plain):.3f}, annealed {weight(learned_annealed):.3f}")

    fig = Figure(figsize=(13, 3.4), layout="constrained")
    axes = fig.subplots(1, 4)
    for ax, x, title in zip(axes, (exact_plain, exact_annealed, learned_plain, learned_annealed),
                            ("exact score, plain", "exact score, annealed",
                             "learned score, plain", "learned score, annealed")):
        plot_samples(x, ax=ax, title=f"{title}: {weight(x):.2f}", bounds=10.0)
    fig
    """),
    ("md", r"""
    ## 5. NCSN on images

    **Choosing the ladder** (Song & Ermon 2020). $\sigma_1$ should be about the largest
    distance between two training images, so that at the top level the chains can reach
    any mode; consecutive levels should overlap, which in $D$ dimensions gives the ratio
    $\gamma$ solving $\Phi(\sqrt{2D}(\gamma-1)+3\gamma) - \Phi(\sqrt{2D}(\gamma-1)-3\gamma)
    = \tfrac12$; and the step factor $\epsilon$ should leave each level with the variance it
    should have after $T$ steps. `choose_sigmas` computes all three (scipy finds the roots).
    For the 8x8 digits scaled to [0, 1]:
    """),
    ("code", r"""
    digits, _ = load_digits("train")
    digits = digits.float() / 16  # 17 levels -> [0, 1]
    choice = choose_sigmas(digits, sigma_min=0.01, steps_per_level=100)
    print(f"sigma_1 = {choice.sigmas[0]:.2f}, ratio = {choice.ratio:.3f}, "
          f"L = {len(choice.sigmas)} levels, eps = {choice.eps:.2e} (T = 100)")
    """),
    ("md", r"""
    That ladder has dozens of levels; on a CPU budget we train NCSN v1's shorter one
    (10 levels from 1 to 0.01, $\epsilon = 2\cdot10^{-5}$, $T = 100$) with the small
    noise-conditional U-Net `ConvScoreNet`, and end with one denoising step
    $x + \sigma_L^2 s(x, \sigma_L)$.
    """),
    ("code", r"""
    torch.manual_seed(0)
    conv = ConvScoreNet((1, 8, 8), hidden_channels=32)
    images = digits.reshape(-1, 1, 8, 8)
    start = time.perf_counter()
    fit(NoiseConditionalScoreMatching(conv, sigma_max=1.0, sigma_min=0.01, num_sigmas=10),
        images, steps=budget(3000), batch_size=128, lr=1e-3, progress=False)
    print(f"training: {time.perf_counter() - start:.0f} s")
    digit_sampler = ScoreSampler(conv, (1, 8, 8), sigmas=geometric_sigmas(1.0, 0.01, 10),
                                 steps=chain(100), eps=2e-5, denoise=True, init_std=1.0)
    samples = digit_sampler.sample((64,), generator=torch.Generator().manual_seed(5))
    fig = Figure(figsize=(8, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    plot_image_grid(samples.clamp(0, 1), nrow=8, ax=left, title="NCSN samples")
    plot_image_grid(images[:64], nrow=8, ax=right, title="training digits")
    fig
    """),
    ("md", r"""
    ## The same from the command line

    Score objectives are ordinary `[objective]` names (`ism`, `ssm`, `dsm`, `ncsn`) trained
    by the one trainer; since a score model has no density, the run folder's figures and
    its sample metrics come from the `[sample]` table's Langevin sampler. The presets
    `dsm-moons`, `annealed-two-modes` and `ncsn-mnist` are this notebook's experiments:
    """),
    ("code", r"""
    import json

    from probgen.cli import main

    steps = budget(4000)
    main(["fit", "annealed-two-modes", "--out", "runs/two-modes", "--quiet",
          "--set", f"train.steps={steps}", "--set", f"sample.steps={chain(100)}"])
    with open("runs/two-modes/eval.json") as f:
        result = json.load(f)
    print("mode weights from the run folder:", result["sample/mode_weight_0"],
          result["sample/mode_weight_1"])
    """),
]
