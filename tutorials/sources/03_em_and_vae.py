"""Cells of 03_em_and_vae.ipynb as ("md" | "code", source) pairs, for tutorials/build.py."""

from __future__ import annotations

CELLS: list[tuple[str, str]] = [
    ("md", r"""
    # Latent-variable models: EM, the ELBO, VAEs and IWAE

    A latent-variable model $p(x) = \int p(x \mid z)\, p(z)\, dz$ is easy to sample and hard to
    evaluate. This notebook follows the lectures on latent-variable models:

    1. Gaussian helpers: KL divergence and negative log-likelihood of normals (the course's
       reference values);
    2. Gaussian mixtures on the course's "flower": exact EM, gradient maximum likelihood and
       variational EM with an amortized posterior (alternating and joint);
    3. the ELBO and the IWAE bound against an exact log-evidence (probabilistic PCA);
    4. posterior collapse, reproduced on the seminar's 2-D Gaussian;
    5. VAEs on the binarized 8x8 digits: a standard VAE, IWAE, a VampPrior, a flow prior
       with a flow posterior; test ELBO and importance-sampled log-likelihood, samples,
       reconstructions, interpolations, traversals, the aggregated posterior, active units;
    6. beta-VAE, KL annealing and free bits; the same models from the command line.

    Every model is a Pyro program (`model(x)`, `guide(x)`) trained by Pyro's own ELBO
    estimators inside probgen's one trainer. The full run takes a few minutes on one CPU
    thread; with `PROBGEN_QUICK=1` every fit takes a few steps (a smoke test: the printed
    numbers are then meaningless).
    """),
    ("code", r"""
    %matplotlib inline
    import warnings

    # The trainer's tqdm.auto warns in a kernel without ipywidgets; we train with
    # progress=False, so the warning is noise.
    warnings.filterwarnings("ignore", message="IProgress not found")
    """),
    ("code", r"""
    import math
    import os

    import numpy as np
    import torch
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse

    from probgen.data import binarize, load_digits
    from probgen.inference import ELBO, ExactEM, MaximumLikelihood, VariationalEM, fit
    from probgen.latent import (
        active_units,
        evidence_lower_bound,
        gaussian_kl,
        gaussian_nll,
        importance_log_likelihood,
        kl_per_dimension,
    )
    from probgen.models import VAE, GaussianMixtureModel, flower_mixture
    from probgen.plots import plot_density_2d, plot_image_grid

    QUICK = os.environ.get("PROBGEN_QUICK") == "1"  # smoke-test mode: a few steps only


    def budget(steps: int) -> int:
        # Training steps: as given in the full run, about 1% of them in quick mode.
        return max(5, steps // 100) if QUICK else steps


    torch.set_num_threads(1)  # small models: one thread is fastest and stays fast on a busy CPU
    print("quick mode (numbers are meaningless)" if QUICK else "full run")
    """),
    ("md", r"""
    ## 1. Gaussian KL and NLL

    `gaussian_kl(m1, s1, m2, s2)` and `gaussian_nll(x, m, s)` take means and **log standard
    deviations**: $N(2, e^3)$ below is the normal with mean 2 and standard deviation $e^3$.
    In that reading
    $KL(N(2, e^3) \| N(0, 1)) = \tfrac12(e^6 + 2^2 - 1 - 6) = 200.2144$,
    $KL(N(2, e^3) \| N(4, e^5)) = 2 + \tfrac{e^6 + 4}{2 e^{10}} - \tfrac12 = 1.50925$, and the
    NLL of 2 under $N(2, e^3)$ is $3 + \tfrac12 \log 2\pi = 3.9189$: the course's reference
    values. (Reading $e^3$ as a variance gives $\tfrac12(e^3 + 4 - 1 - 3) = 10.04$ for the
    first one instead.)
    """),
    ("code", r"""
    t = torch.tensor
    print(f"KL(N(2, e^3) || N(0, 1))   = {float(gaussian_kl(t(2.0), t(3.0))):.4f}")
    print(f"KL(N(2, e^3) || N(4, e^5)) = {float(gaussian_kl(t(2.0), t(3.0), t(4.0), t(5.0))):.5f}")
    print(f"NLL of 2 under N(2, e^3)   = {float(gaussian_nll(t(2.0), 2.0, 3.0)):.4f}")
    """),
    ("md", r"""
    ## 2. Gaussian mixtures on the flower

    The course's "flower" has 8 equally weighted components: $N(0, I)$ in the centre and 7
    petals at radius 6, each with variance 3 along its radius and 1 across it.
    `flower_mixture()` returns it as a `GaussianMixtureModel`, which is three things at once:
    a Distribution (`log_prob`, `sample`), a Pyro program with a discrete latent $c$
    (`model`, and an amortized `guide` $q(c \mid x)$), and a model with closed-form EM steps
    (`e_step`, `m_step`).
    """),
    ("code", r"""
    torch.manual_seed(0)
    flower = flower_mixture()
    x_flower = flower.sample((4000,))
    x_held = flower.sample((4000,))
    with torch.no_grad():
        true_ll = float(flower.log_prob(x_held).mean())
    print(f"held-out log-likelihood under the true mixture: {true_ll:.4f} nats/point")

    fig = Figure(figsize=(9, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.scatter(*x_flower[:2000].T, s=2, alpha=0.4)
    left.set_aspect("equal")
    left.set_title("2000 samples")
    with torch.no_grad():
        plot_density_2d(flower.log_prob, bounds=10.0, resolution=200, ax=right,
                        title="density")
    fig
    """),
    ("md", r"""
    **Exact EM.** The E-step computes the responsibilities
    $r_{nk} = \pi_k N(x_n; \mu_k, \Sigma_k) / \sum_j \pi_j N(x_n; \mu_j, \Sigma_j)$, the exact
    posterior over components; the M-step sets $\pi_k = N_k/N$, $\mu_k$ and $\Sigma_k$ to the
    responsibility-weighted mean and covariance. Each iteration maximizes a lower bound that
    touches the log-likelihood at the current parameters, so the log-likelihood never
    decreases. `ExactEM` runs one iteration per training step inside the trainer (full batch
    here), from k-means++ seeds with the data's covariance.
    """),
    ("code", r"""
    def seeded(**kwargs):
        # The common start of every method below: k-means++ seeds as means, the whole data's
        # covariance for every component, equal weights. (Left alone, ExactEM initializes
        # from a full k-means fit of the first batch, as scikit-learn does: little left to do.)
        torch.manual_seed(1)
        gmm = GaussianMixtureModel(2, 8, **kwargs)
        gmm.initialize(x_flower, generator=torch.Generator().manual_seed(3),
                       kmeans_iterations=0)
        cov = torch.cov(x_flower.T).expand(8, 2, 2)
        gmm.set_parameters(torch.full((8,), 1 / 8), gmm.loc.detach(), cov)
        return gmm


    gmm_em = seeded()
    history = fit(ExactEM(gmm_em), x_flower, steps=budget(100), batch_size=len(x_flower),
                  log_every=1, progress=False)
    em_curve = [r["log_likelihood"] for r in history.records]
    drops = np.diff(em_curve)
    print(f"EM: {len(em_curve)} iterations, log-likelihood {em_curve[0]:.4f} -> "
          f"{em_curve[-1]:.4f}; largest decrease between iterations {min(drops.min(), 0):.2e}")
    with torch.no_grad():
        print(f"held-out log-likelihood of the EM fit: {float(gmm_em.log_prob(x_held).mean()):.4f}"
              f" (true mixture {true_ll:.4f})")


    def ellipses(ax, gmm, color, label):
        cov = gmm.covariance().detach()
        for k in range(gmm.components):
            vals, vecs = torch.linalg.eigh(cov[k])
            angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))
            ax.add_patch(Ellipse(gmm.loc[k].detach().tolist(), 4 * float(vals[1].sqrt()),
                                 4 * float(vals[0].sqrt()), angle=angle, fill=False,
                                 color=color, lw=1.5, label=label if k == 0 else None))


    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_curve, ax_fit = fig.subplots(1, 2)
    ax_curve.plot(em_curve)
    ax_curve.set_xlabel("EM iteration")
    ax_curve.set_ylabel("mean log-likelihood (nats)")
    ax_curve.set_title("exact EM never goes down")
    ax_fit.scatter(*x_flower[:2000].T, s=2, alpha=0.2, color="gray")
    ellipses(ax_fit, flower, "black", "true (2 sd)")
    ellipses(ax_fit, gmm_em, "tab:red", "EM fit (2 sd)")
    ax_fit.set_xlim(-11, 11)
    ax_fit.set_ylim(-11, 11)
    ax_fit.set_aspect("equal")
    ax_fit.legend(loc="lower right", fontsize=8)
    fig
    """),
    ("md", r"""
    **Gradient maximum likelihood** treats the mixture as any density model:
    `MaximumLikelihood` + Adam on $-\log p(x)$. **Variational EM** keeps the latent $c$ and
    fits an amortized posterior $q(c \mid x) = \mathrm{Cat}(\mathrm{softmax}(f(x)))$ (an MLP)
    by gradient steps on the ELBO; here the ELBO is exact, because Pyro's `TraceEnum_ELBO`
    sums the guide's 8 categories instead of sampling them. The *alternating* schedule takes
    E-steps on the guide, then an M-step on the mixture; the *joint* one updates both at once.
    The gap $\log p(x) - \mathrm{ELBO} = KL(q(c \mid x) \| p(c \mid x)) \ge 0$ is reported at
    every step.
    """),
    ("code", r"""
    results = {"exact EM": float(gmm_em.log_prob(x_held).mean().detach())}
    gmm_ml = seeded()
    fit(MaximumLikelihood(gmm_ml), x_flower, steps=budget(2000), batch_size=500, lr=0.02,
        lr_schedule="cosine", progress=False)
    results["gradient ML"] = float(gmm_ml.log_prob(x_held).mean().detach())

    curves = {}
    for schedule in ("alternating", "joint"):
        gmm = seeded(hidden_features=[64, 64])
        h = fit(VariationalEM(gmm, schedule=schedule, e_steps=2), x_flower,
                steps=budget(1500), batch_size=500, lr=0.01, lr_schedule="cosine",
                log_every=10, progress=False)
        curves[schedule] = h.records
        results[f"variational EM ({schedule})"] = float(gmm.log_prob(x_held).mean().detach())
        gaps = [r["gap"] for r in h.records]
        print(f"variational EM ({schedule}): smallest gap log p(x) - ELBO over training "
              f"{min(gaps):.2e} (never negative), last gap {gaps[-1]:.4f} nats")

    print(f"\nheld-out log-likelihood (true mixture {true_ll:.4f}):")
    for name, value in results.items():
        print(f"  {name:28s} {value:.4f}")

    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (schedule, records) in zip(axes, curves.items()):
        steps = [r["step"] for r in records]
        ax.plot(steps, [r["log_likelihood"] for r in records], label="exact log-likelihood")
        ax.plot(steps, [r["elbo"] for r in records], label="ELBO")
        ax.set_title(f"variational EM, {schedule}")
        ax.set_xlabel("step")
        ax.legend()
    fig
    """),
    ("md", r"""
    All methods start from the same seeds. EM needs no learning rate and converges in a few
    dozen closed-form iterations; the gradient methods take thousands of Adam steps. Any of
    them can stop in a local optimum (a mixture's likelihood has many), so compare each
    number with the true mixture's. In variational EM the ELBO curve sits under the exact
    log-likelihood, and the gap shrinks as the amortized posterior learns the
    responsibilities.

    ## 3. The ELBO and the IWAE bound against an exact evidence

    Probabilistic PCA, $z \sim N(0, I_2)$, $x = Wz + \mu + \sigma\varepsilon$ in
    $\mathbb R^5$, has the evidence $p(x) = N(\mu, WW^T + \sigma^2 I)$ in closed form, and
    Tipping & Bishop give its maximum likelihood from the eigenvalues of the sample
    covariance. A VAE with linear encoder and decoder and a Gaussian likelihood with a
    learned scale *is* this model, so its ELBO can be compared with the exact evidence of
    its own parameters.
    """),
    ("code", r"""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 2, generator=g, dtype=torch.float64)
    mu = torch.randn(5, generator=g, dtype=torch.float64)
    x_pca = (torch.randn(2000, 2, generator=g, dtype=torch.float64) @ W.T + mu
             + 0.5 * torch.randn(2000, 5, generator=g, dtype=torch.float64))
    ev = torch.linalg.eigvalsh(torch.cov(x_pca.T, correction=0)).flip(0)
    best = float(-0.5 * (5 * math.log(2 * math.pi) + ev[:2].log().sum() + 3 * ev[2:].mean().log()
                         + 5))


    def exact_evidence(vae, x):
        lin = vae.decoder.net[0]
        cov = lin.weight @ lin.weight.T + torch.diag(vae.likelihood.log_scale.exp() ** 2)
        return torch.distributions.MultivariateNormal(lin.bias, cov).log_prob(x).mean()


    torch.manual_seed(0)
    linear = VAE((5,), 2, hidden_features=[], likelihood="gaussian", scale="learned").double()
    trace = []
    for _ in range(8):
        with torch.no_grad():
            trace.append((float(exact_evidence(linear, x_pca)),
                          float(evidence_lower_bound(linear.model, linear.guide, x_pca,
                                                     num_samples=100).mean())))
        fit(ELBO(linear), x_pca, steps=budget(100), batch_size=2000, lr=3e-2, progress=False)
    with torch.no_grad():
        trace.append((float(exact_evidence(linear, x_pca)),
                      float(evidence_lower_bound(linear.model, linear.guide, x_pca,
                                                 num_samples=100).mean())))
    for i, (lp, elbo) in enumerate(trace):
        print(f"after {budget(100) * i:4d} steps: log p(x) = {lp:8.4f}, ELBO = {elbo:8.4f}, "
              f"gap = {lp - elbo:.4f}")
    print(f"PPCA maximum likelihood (closed form): {best:.4f}")
    """),
    ("md", r"""
    The ELBO stays below the exact evidence at every step (up to the Monte Carlo error of
    its 100-sample estimate, about $10^{-3}$ nats here) and the gap closes: a linear VAE
    reaches the PPCA optimum (the diagonal Gaussian posterior can be exact here, because
    the ELBO's optimum picks orthogonal columns of $W$). Now give the trained decoder a
    fresh, poor encoder: the one-sample ELBO is far below $\log p(x)$, and the IWAE bound
    $\log \frac1k \sum_i p(x, z_i)/q(z_i \mid x)$ climbs back toward it as $k$ grows.
    """),
    ("code", r"""
    torch.manual_seed(7)
    linear.encoder = VAE((5,), 2, hidden_features=[]).double().encoder
    with torch.no_grad():
        lp = float(exact_evidence(linear, x_pca))
    ks = [1, 10, 100, 1000]
    bounds = [float(importance_log_likelihood(linear.model, linear.guide, x_pca, num_samples=k,
                                              chunk_size=100).mean()) for k in ks]
    for k, b in zip(ks, bounds):
        print(f"k = {k:5d}: IWAE bound {b:9.4f}   (log p(x) = {lp:.4f})")
    """),
    ("md", r"""
    ## 4. Posterior collapse

    The seminar's case: data from an axis-aligned Gaussian, mean $(2, 3)$, standard
    deviations $(3, 1)$. A VAE whose Gaussian decoder outputs its own variance can model
    this data with $p(x \mid z)$ alone, and the ELBO is highest when $q(z \mid x) = p(z)$:
    the KL term goes to zero, no latent unit is active, and the decoder ignores $z$.
    """),
    ("code", r"""
    torch.manual_seed(0)
    x_axis = torch.randn(5000, 2) * torch.tensor([3.0, 1.0]) + torch.tensor([2.0, 3.0])
    collapse = VAE((2,), 2, hidden_features=[32, 32], likelihood="gaussian", scale="decoder")
    h = fit(ELBO(collapse), x_axis, steps=budget(1500), batch_size=256, lr=3e-3, progress=False)
    with torch.no_grad():
        kl = kl_per_dimension(collapse.posterior(x_axis))
        count, variances = active_units(collapse.encode(x_axis))
        out = collapse.decoder(torch.randn(2000, 2))
    print(f"KL per latent dimension: {[round(v, 4) for v in kl.tolist()]}")
    print(f"active units (Var_x E[z|x] > 0.01): {count} of 2")
    print(f"decoder mean over z ~ p(z): {out[:, 0].mean(0).tolist()} "
          f"(spread across z: {out[:, 0].std(0).tolist()})")
    print(f"decoder std: {collapse.likelihood.scale(out).mean(0).tolist()}")
    """),
    ("md", r"""
    The decoder's mean is the data mean whatever $z$ is, its standard deviation is the data's
    (3, 1), and the posterior is the prior. Collapse is not a bug of the optimizer: it is the
    ELBO's optimum when the likelihood alone can model the data.

    ## 5. VAEs on the binarized digits

    The 8x8 digits, binarized at half the range. Four models with the same MLP encoder and
    decoder (64-256-256-8, Bernoulli pixels), trained for the same number of steps:

    - **VAE**: standard-normal prior, `TraceMeanField_ELBO` (closed-form KL);
    - **IWAE**: the same networks trained on the $k = 5$ bound (`RenyiELBO`, $\alpha = 0$);
    - **VampPrior**: $p(z) = \frac1K \sum_k q(z \mid u_k)$ with 50 learned pseudo-inputs;
    - **flows**: a MAF prior and an IAF posterior (conditioned on encoder features), both
      flows from `probgen.models` plugged in with no glue.

    Test numbers on the 300 held-out digits: the one-sample ELBO and the importance-sampled
    log-likelihood with $k = 1000$.
    """),
    ("code", r"""
    train_images, _ = load_digits("train")
    test_images, test_labels = load_digits("test")
    x_train, x_test = binarize(train_images, 8), binarize(test_images, 8)

    settings = {
        "VAE": ({}, {}),
        "IWAE (k=5)": ({}, {"estimator": "renyi", "num_particles": 5}),
        "VampPrior": ({"prior": "vamp", "prior_components": 50}, {}),
        "MAF prior + IAF posterior": ({"prior": "maf", "prior_hidden": [64, 64],
                                       "posterior": "iaf", "posterior_transforms": 2,
                                       "posterior_hidden": [64, 64], "context_features": 32},
                                      {"estimator": "trace"}),
    }
    vaes, table = {}, []
    for name, (model_kw, objective_kw) in settings.items():
        torch.manual_seed(0)
        vae = VAE((1, 8, 8), 8, hidden_features=[256, 256], **model_kw)
        fit(ELBO(vae, **objective_kw), x_train, steps=budget(4000), batch_size=128, lr=1e-3,
            lr_schedule="cosine", progress=False)
        vae.eval()
        with torch.no_grad():
            elbo = float(evidence_lower_bound(vae.model, vae.guide, x_test).mean())
        ll = float(vae.log_likelihood(x_test, num_samples=budget(1000), chunk_size=100).mean())
        vaes[name] = vae
        table.append((name, -elbo, -ll))
    print(f"{'model':28s} {'test -ELBO':>11s} {'test NLL (IS, k=1000)':>22s}")
    for name, nelbo, nll in table:
        print(f"{name:28s} {nelbo:11.2f} {nll:22.2f}")
    """),
    ("md", r"""
    The importance-sampled NLL is always below the $-$ELBO (the bound is loose by the KL of
    the posterior approximation). The models differ by a few nats on this small set; which
    one wins depends on the budget, and none of these numbers is a converged figure.

    Samples (decoder means at $z \sim p(z)$), reconstructions of test digits, interpolations
    between two test digits in latent space, and traversals of three latent coordinates of
    the standard VAE:
    """),
    ("code", r"""
    vae = vaes["VAE"]
    torch.manual_seed(0)
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    (a, b, c), (d, e, f) = fig.subplots(2, 3)
    plot_image_grid(vae.sample((36,)), nrow=6, ax=a, title="VAE samples")
    plot_image_grid(vaes["MAF prior + IAF posterior"].sample((36,)), nrow=6, ax=b,
                    title="MAF prior + IAF samples")
    plot_image_grid(vaes["VampPrior"].sample((36,)), nrow=6, ax=c, title="VampPrior samples")
    plot_image_grid(torch.cat([x_test[:18], vae.reconstruct(x_test[:18])]), nrow=6, ax=d,
                    title="test digits (top) and reconstructions")
    plot_image_grid(vae.interpolate(x_test[:4], x_test[4:8], steps=8).flatten(0, 1), nrow=8,
                    ax=e, title="interpolations")
    plot_image_grid(vae.traverse(x_test[:1], dims=[0, 1, 2],
                                 values=torch.linspace(-3, 3, 7)).flatten(0, 1), nrow=7,
                    ax=f, title="traversals of z_0, z_1, z_2")
    fig
    """),
    ("md", r"""
    **The aggregated posterior and active units.** With a 2-D latent the aggregated posterior
    $q(z) = \frac1N \sum_n q(z \mid x_n)$ can be drawn: the posterior means of the test digits
    arrange by class. With 8 latent dimensions, the KL per dimension and the active-unit
    count (Burda et al.: $\mathrm{Var}_x E_q[z_d] > 0.01$) say how many dimensions the VAE
    actually uses.
    """),
    ("code", r"""
    torch.manual_seed(0)
    vae2 = VAE((1, 8, 8), 2, hidden_features=[256, 256])
    fit(ELBO(vae2), x_train, steps=budget(4000), batch_size=128, lr=1e-3, lr_schedule="cosine",
        progress=False)
    z = vae2.encode(x_test)

    kl = kl_per_dimension(vae.posterior(x_test))
    count, _ = active_units(vae.encode(x_test))
    print(f"VAE (latent 8): active units {count} of 8; KL per dimension "
          f"{[round(v, 2) for v in kl.tolist()]}")

    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    points = left.scatter(z[:, 0], z[:, 1], c=test_labels, cmap="tab10", s=12)
    fig.colorbar(points, ax=left, label="digit")
    left.set_title("posterior means of the test digits (latent 2)")
    right.bar(range(8), kl.detach().numpy())
    right.set_xlabel("latent dimension")
    right.set_ylabel("KL (nats)")
    right.set_title("KL per dimension (latent 8)")
    fig
    """),
    ("md", r"""
    ## 6. beta-VAE, KL annealing and free bits

    `ELBO(vae, beta=..., anneal_steps=..., free_bits=...)` weighs the KL term by scaling the
    latent sample sites of model and guide with `pyro.poutine.scale` (annealing raises the
    weight linearly from $\beta/T$ to $\beta$ over $T$ steps), and free bits stops
    penalizing a latent dimension whose batch-mean KL is under $\lambda$ nats. A larger
    $\beta$ trades reconstruction for a posterior closer to the prior; the table gives the
    held-out reconstruction term, the KL, the active units and the number of dimensions
    carrying more than 0.5 nats for each setting.
    """),
    ("code", r"""
    rows = []
    for label, kw in [("beta = 1", {}), ("beta = 4, annealed over 1000 steps",
                                         {"beta": 4.0, "anneal_steps": 1000}),
                      ("beta = 4, free bits 0.5", {"beta": 4.0, "free_bits": 0.5})]:
        torch.manual_seed(0)
        model = VAE((1, 8, 8), 8, hidden_features=[256, 256])
        objective = ELBO(model, **kw)
        fit(objective, x_train, steps=budget(3000), batch_size=128, lr=1e-3, progress=False)
        with torch.no_grad():
            out = objective.eval()(x_test)
            kl = kl_per_dimension(model.posterior(x_test))
        count, _ = active_units(model.encode(x_test))
        rows.append((label, float(-out["recon"]), float(out["kl"]), count,
                     int((kl > 0.5).sum())))
    print(f"{'objective':36s} {'recon NLL':>10s} {'KL':>7s} {'active':>7s} {'KL>0.5':>7s}")
    for label, recon, kl, count, above in rows:
        print(f"{label:36s} {recon:10.2f} {kl:7.2f} {count:7d} {above:7d}")
    """),
    ("md", r"""
    The same models are presets of the command line (`probgen list` shows them all):
    `vae-digits`, `iwae-digits`, `beta-vae-digits` (conv ResNet networks),
    `vae-flows-digits`, `vae-categorical-digits` (17-way categorical pixels and a VampPrior),
    `vae-mnist`, `iwae-mnist`, `vae-vamp-mnist`, `vae-maf-mnist`, and for mixtures
    `gmm-flower` (exact EM on this section's flower), `gmm-ml-flower`, `vem-flower`,
    `gmm-8gaussians`, `vem-8gaussians` and `gmm-ml-pinwheel`. A run folder holds
    the checkpoint, the held-out ELBO (as `test/nll`, an upper bound on the NLL) and a figure
    of samples.
    """),
    ("code", r"""
    from probgen.cli import main

    # prints the held-out metrics of the run (eval.json)
    status = main(["fit", "vae-digits", "--out", "runs/vae-digits", "--quiet",
                   "--set", f"train.steps={budget(2000)}", "--set", "train.eval_every=500"])
    """),
]
