"""Cells of 11_bayesian_inference_with_deep_priors.ipynb as ("md" | "code", source) pairs,
for tutorials/build.py."""

from __future__ import annotations

CELLS: list[tuple[str, str]] = [
    ("md", r"""
    # Bayesian inference with deep generative priors

    A trained generative model is a prior $p(x)$. Given a measurement $y$ of an unknown
    signal $x$ (a noisy copy, a few observed pixels, a blurred or downsampled image) the
    answer of Bayes is the posterior $p(x \mid y) \propto p(x)\, p(y \mid x)$: not one
    reconstruction but a distribution of them. In probgen every density model is a Pyro
    distribution and every latent-variable model a Pyro program, so this is a few lines of
    Pyro; diffusion and flow-matching priors sample their posteriors through the same
    sampler layer as their priors, with a measurement guidance added to the prediction.

    This notebook covers:

    1. linear-Gaussian measurements $y = A x + \sigma_y n$ (denoising, inpainting,
       super-resolution) as Pyro likelihoods, and the exact posterior of a Gaussian prior;
    2. NUTS on a prior's density: the Gaussian (exact) and a trained normalizing flow on
       2-D data, against the posterior computed on a grid from the flow's own density;
    3. posterior sampling with path models: pseudo-inverse guidance (PiGDM, exact for
       Gaussian data) and DPS (biased, measured here), first with the exact prediction of
       Gaussian data, then with a flow-matching model trained on 2-D data;
    4. inpainting 8x8 digits with a DDPM prior (the top half observed);
    5. diffusion as a hierarchical VAE: DDPM's Pyro model and guide, whose ELBO is the
       variational bound.

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
    import math
    import os

    import pyro
    import pyro.distributions as dist
    import torch
    from matplotlib.figure import Figure
    from pyro.infer import MCMC, NUTS

    from probgen.data import ToySampler, load_digits, toy_sample
    from probgen.inference import (
        ConditionalFlowMatching,
        DiffusionLoss,
        MaximumLikelihood,
        fit,
        measurement_model,
        posterior_sample,
        variational_bound,
    )
    from probgen.measurements import Denoising, Inpainting, MatrixMeasurement
    from probgen.models import DDPM, RealNVP, VectorDDPM, VectorFlowMatching
    from probgen.paths import VPPath

    QUICK = os.environ.get("PROBGEN_QUICK") == "1"  # smoke-test mode: a few steps only
    torch.set_num_threads(1)


    def budget(steps: int) -> int:
        # training steps: the full count, or a handful in quick mode
        return max(10, steps // 100) if QUICK else steps


    print("quick mode (numbers are meaningless)" if QUICK else "full run")
    """),
    ("md", r"""
    ## 1. Measurements as Pyro likelihoods; the exact Gaussian posterior

    A `probgen.measurements.LinearMeasurement` is the operator $A$ (and its adjoint) with
    the noise level $\sigma_y$: `measurement(x)` is $A x$, `measurement.likelihood(x)` the
    Pyro distribution $N(A x, \sigma_y^2 I)$ of $y$, and `simulate(x)` draws a
    measurement. For a Gaussian prior $N(\mu, C)$ the posterior is Gaussian too,
    $C_y = (C^{-1} + A^\top A/\sigma_y^2)^{-1}$, $\mu_y = C_y(C^{-1}\mu + A^\top y/\sigma_y^2)$
    (`gaussian_posterior`). Here a 3-D Gaussian, observed through its first two
    coordinates.
    """),
    ("code", r"""
    torch.manual_seed(0)
    mean = torch.tensor([0.5, -0.3, 1.0], dtype=torch.float64)
    root = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.4, 0.3, 0.7]],
                        dtype=torch.float64)
    cov = root @ root.T
    measure = Inpainting(torch.tensor([True, True, False]), noise_std=0.3)
    x_true = mean + root @ torch.randn(3, dtype=torch.float64)
    y = measure.simulate(x_true.unsqueeze(0), generator=torch.Generator().manual_seed(1))[0]
    post_mean, post_cov = measure.gaussian_posterior(mean, cov, y)
    print("y =", [round(v, 3) for v in y.tolist()])
    print("posterior mean:", [round(v, 3) for v in post_mean.tolist()])
    print("posterior std: ", [round(v, 3) for v in post_cov.diagonal().sqrt().tolist()])
    """),
    ("md", r"""
    ## 2. NUTS on a prior's density

    `measurement_model(prior, measurement, y)` is the Pyro model `x ~ prior`,
    `y ~ measurement.likelihood(x)` (observed). NUTS on it samples the posterior of *any*
    prior with a differentiable density. With the Gaussian prior it must reproduce the
    closed form above.
    """),
    ("code", r"""
    prior = dist.MultivariateNormal(mean, cov)
    nuts = MCMC(NUTS(measurement_model(prior, measure, y)),
                num_samples=200 if QUICK else 1500, warmup_steps=100 if QUICK else 500,
                disable_progbar=True)
    pyro.set_rng_seed(0)
    nuts.run()
    xs = nuts.get_samples()["x"]
    print("NUTS mean:  ", [round(v, 3) for v in xs.mean(0).tolist()])
    print("exact mean: ", [round(v, 3) for v in post_mean.tolist()])
    print("NUTS std:   ", [round(v, 3) for v in xs.std(0).tolist()])
    print("exact std:  ", [round(v, 3) for v in post_cov.diagonal().sqrt().tolist()])
    """),
    ("md", r"""
    Now a *learned* prior: a RealNVP flow trained on the 2-D moons, and a noisy
    observation of a point, $y = x + 0.3\,n$ with $y = (-0.5, 0.9)$, near the upper moon.
    The posterior is the part of the moons' density near $y$. The flow's density is
    exact, so the same posterior can be computed on a grid, $p(x \mid y) \propto
    p_\theta(x)\,N(y; x, 0.3^2 I)$, and compared with NUTS's samples. (A posterior with
    separated modes, e.g. observing only $x_1 = 0$ where the slice crosses both moons, is
    harder: one NUTS chain tends to stay in one mode, so chains from several starts must
    agree before their samples are trusted; section 3 uses that case with samplers that
    start from noise.)
    """),
    ("code", r"""
    torch.manual_seed(0)
    flow = RealNVP(features=2, transforms=6, hidden_features=[64, 64])
    fit(MaximumLikelihood(flow), ToySampler("moons"), steps=budget(3000), batch_size=512,
        lr=2e-3, progress=False)
    flow.eval()
    first = MatrixMeasurement(torch.tensor([[1.0, 0.0]]), noise_std=0.1)
    noisy = Denoising((2,), noise_std=0.3)
    side = torch.linspace(-2.5, 3.0, 221)
    grid = torch.cartesian_prod(side, side * 0.8)


    def grid_posterior(measure, y):
        # the posterior's weights on the grid, from the flow's own density
        with torch.no_grad():
            return torch.softmax(flow.log_prob(grid) + measure.log_likelihood(grid, y), 0)


    y_flow = torch.tensor([-0.5, 0.9])
    weights = grid_posterior(noisy, y_flow)
    grid_mean = weights @ grid
    grid_std = (weights @ grid**2 - grid_mean**2).sqrt()
    pyro.set_rng_seed(1)
    nuts = MCMC(NUTS(measurement_model(flow.distribution(), noisy, y_flow)),
                num_samples=100 if QUICK else 800, warmup_steps=50 if QUICK else 300,
                disable_progbar=True)
    nuts.run()
    flow_post = nuts.get_samples()["x"].detach()
    print("grid posterior mean:", [round(v, 3) for v in grid_mean.tolist()],
          "std:", [round(v, 3) for v in grid_std.tolist()])
    print("NUTS posterior mean:", [round(v, 3) for v in flow_post.mean(0).tolist()],
          "std:", [round(v, 3) for v in flow_post.std(0).tolist()])

    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    prior_draws = flow.sample((2000,), generator=torch.Generator().manual_seed(2)).detach()
    ax1.scatter(*prior_draws.T, s=2, alpha=0.3, label="prior (flow samples)")
    ax1.scatter(*y_flow, marker="x", s=80, color="k", label="observation $y$")
    ax1.scatter(*flow_post.T, s=4, color="C3", label="posterior (NUTS)")
    ax1.set(title="NUTS with a flow prior", xlabel="$x_1$", ylabel="$x_2$")
    ax1.legend(loc="lower left", fontsize=8)
    marginal = weights.reshape(221, 221).sum(0)
    ax2.plot(side * 0.8, marginal / marginal.sum() / float(side[1] - side[0]) / 0.8,
             label="grid posterior")
    ax2.hist(flow_post[:, 1].numpy(), bins=40, density=True, alpha=0.5, label="NUTS")
    ax2.set(title="posterior marginal of $x_2$", xlabel="$x_2$", ylabel="density")
    ax2.legend(fontsize=8)
    fig
    """),
    ("md", r"""
    ## 3. Posterior sampling with path models: PiGDM and DPS

    A diffusion or flow-matching model has no cheap density, but its sampler follows a
    Gaussian path $x_t = \alpha_t x + \sigma_t\epsilon$ from noise to data, and the
    posterior's path has the score $\nabla\log p_t(x_t) + \nabla\log p(y \mid x_t)$.
    The second term is intractable; two approximations of it, both added by
    `probgen.inference.measurement_guided` to any prediction on any path, so *every*
    sampler (DDIM, DPM-Solver++, UniPC, EDM's Heun, the ODE) samples the posterior:

    - **PiGDM** approximates $p(x \mid x_t)$ by $N(\hat x(x_t), r_t^2 I)$: then
      $p(y \mid x_t) \approx N(A\hat x, r_t^2 AA^\top + \sigma_y^2 I)$. For Gaussian data
      with the true $r_t$ this is **exact**.
    - **DPS** uses $p(y \mid \hat x(x_t))$, i.e. $r_t = 0$: cheaper to state, biased.

    First with the *exact* prediction of Gaussian data ($N(0, c I)$, $c$ = 0.5, on the VP
    path), where PiGDM must reproduce the closed-form posterior and DPS's bias can be
    measured.
    """),
    ("code", r"""
    path = VPPath()
    c = 0.5
    zero, iso = torch.zeros(3, dtype=torch.float64), c * torch.eye(3, dtype=torch.float64)


    class ExactGaussian(torch.nn.Module):
        # the exact data prediction of N(0, cI) data on the path, as a path model
        prediction, path, t_sample = "data", path, path.t_end

        def guided(self):
            return lambda x, t: path.gaussian_prediction(x, t, zero, iso, "data")

        def prior_sample(self, n, generator=None):
            return torch.randn(n, 3, dtype=torch.float64, generator=generator)


    exact_mean, exact_cov = measure.gaussian_posterior(zero, iso, y)
    n = 500 if QUICK else 4000
    for method in ("pigdm", "dps"):
        out = posterior_sample(ExactGaussian(), measure, y, n, method=method,
                               sampler="dpm++2m", steps=40, data_variance=c,
                               generator=torch.Generator().manual_seed(3))
        s = out.samples
        print(f"{method:5s}: mean {[round(v, 3) for v in s.mean(0).tolist()]}, std "
              f"{[round(v, 3) for v in s.std(0).tolist()]} ({out.nfe} network calls)")
    print(f"exact: mean {[round(v, 3) for v in exact_mean.tolist()]}, std "
          f"{[round(v, 3) for v in exact_cov.diagonal().sqrt().tolist()]}")
    """),
    ("md", r"""
    PiGDM matches the exact posterior up to sampling error; DPS is pulled towards the
    measurement and too narrow (it treats $\hat x(x_t)$ as if it were $x$). Next, a
    flow-matching model trained on the moons, measured as in section 2 but at $x_1 = 0$,
    where the slice crosses both moons: the posterior has two modes, and the share of its
    mass on the upper one is read from the RealNVP's grid posterior (the two priors are
    different models of the same data, so they agree only roughly). DPS's
    step size matters: at $\zeta = 1$ it tends to collapse onto one branch of the slice,
    a smaller $\zeta$ keeps both but fits $y$ less tightly (probgen's `scale` multiplies
    the guidance in the score, whatever the sampler; DPS's own schedule is tuned for its
    ancestral sampler).
    """),
    ("code", r"""
    torch.manual_seed(0)
    fm = VectorFlowMatching(2)
    fit(ConditionalFlowMatching(fm, fm.path), ToySampler("moons"), steps=budget(3000),
        batch_size=512, lr=2e-3, progress=False)
    fm.eval()
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    y_zero = torch.tensor([0.0])
    upper = float(grid_posterior(first, y_zero)[grid[:, 1] > 0.4].sum())
    for ax, (method, scale) in zip(axes, [("pigdm", 1.0), ("dps", 1.0), ("dps", 0.1)],
                                   strict=True):
        out = posterior_sample(fm, first, y_zero, 300 if QUICK else 1000, method=method,
                               scale=scale, sampler="ddim", steps=50, data_variance=0.5,
                               generator=torch.Generator().manual_seed(4))
        s = out.samples.detach()
        ax.scatter(*prior_draws.T, s=2, alpha=0.2, label="moons")
        ax.scatter(*s.T, s=4, color="C3", label=f"{method}, scale {scale:g}")
        ax.set(title=f"flow matching prior, {method} (scale {scale:g})", xlabel="$x_1$",
               ylabel="$x_2$", xlim=(-2.5, 3.0), ylim=(-2.0, 2.0))
        ax.legend(loc="lower left", fontsize=8)
        print(f"{method} scale {scale:g}: x_1 mean {s[:, 0].mean():.3f} std "
              f"{s[:, 0].std():.3f}; share on the upper branch (x_2 > 0.4) "
              f"{(s[:, 1] > 0.4).float().mean():.2f} (RealNVP grid posterior: {upper:.2f})")
    fig
    """),
    ("md", r"""
    ## 4. Inpainting digits with a DDPM prior

    A DDPM trained on the 8x8 digits (pixels on $[-1, 1]$); the measurement observes the
    top half of a held-out digit with noise $\sigma_y = 0.05$; PiGDM samples the bottom
    half. Different samples complete the digit differently where the top half is
    ambiguous.
    """),
    ("code", r"""
    torch.manual_seed(0)
    train_x, _ = load_digits("train")
    test_x, _ = load_digits("test")
    digits = DDPM((1, 8, 8), num_steps=200, base_channels=32, channel_mults=(1, 2))
    fit(DiffusionLoss(digits, levels=17), train_x.float(), steps=budget(4000),
        batch_size=128, lr=2e-3, ema_decay=0.995, progress=False)
    digits.eval()
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    top = Inpainting(mask, noise_std=0.05)
    truth = test_x[:4].float() / 8.0 - 1.0  # the 0..16 levels on [-1, 1]
    fig = Figure(figsize=(9, 4.6))
    axes = fig.subplots(4, 7)
    for row in range(4):
        y_row = top.simulate(truth[row:row + 1], generator=torch.Generator().manual_seed(row))[0]
        out = posterior_sample(digits, top, y_row, 5, method="pigdm", sampler="ddim",
                               steps=50, data_variance=0.5,
                               generator=torch.Generator().manual_seed(10 + row))
        shown = [truth[row], top.adjoint(y_row.unsqueeze(0))[0]] + list(out.samples)
        for col, image in enumerate(shown):
            ax = axes[row, col]
            ax.imshow(image[0].clamp(-1, 1).detach().numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(["truth", "observed"][col] if col < 2 else f"sample {col - 1}",
                             fontsize=9)
    fig.suptitle("DDPM prior, PiGDM: posterior samples given the top half")
    fig
    """),
    ("md", r"""
    ## 5. Diffusion as a hierarchical VAE

    The lectures present DDPM as a VAE with $T$ latent layers: the model
    $p(x_{T}) \prod_t p_\theta(x_{t-1} \mid x_t)$ and a *fixed* encoder
    $q(x_{1:T} \mid x_0)$. probgen writes exactly that as a Pyro program
    (`DiffusionModel.hvae_model` and `hvae_guide`, or `model.as_vae()` for an object with
    `model` and `guide`), so Pyro's ELBO is the variational bound: with closed-form KLs
    (`TraceMeanField_ELBO`) its average equals the bound of `variational_bound`.
    """),
    ("code", r"""
    torch.manual_seed(0)
    small = VectorDDPM(2, num_steps=20, hidden_features=[64, 64])
    fit(DiffusionLoss(small), ToySampler("moons"), steps=budget(2000), batch_size=256,
        lr=2e-3, progress=False)
    small.eval()
    x = toy_sample("moons", 256, generator=torch.Generator().manual_seed(5))
    vae = small.as_vae()
    elbo = pyro.infer.TraceMeanField_ELBO()
    with torch.no_grad():
        pyro.set_rng_seed(0)
        draws = torch.tensor([elbo.loss(vae.model, vae.guide, x)
                              for _ in range(10 if QUICK else 100)]) / len(x)
        bound = variational_bound(small, x, generator=torch.Generator().manual_seed(6))
    print(f"Pyro's ELBO (negated), per example: {draws.mean():.3f} "
          f"+- {draws.std() / math.sqrt(len(draws)):.3f} nats")
    print(f"variational_bound:                 {bound['nll'].mean():.3f} "
          f"+- {bound['nll'].std() / math.sqrt(len(x)):.3f} nats")
    """),
    ("md", r"""
    The two agree within their Monte Carlo errors (the closed-form route draws one noise
    per step and example, hence its larger error): the same bound, computed once as a Pyro
    program and once term by term. From here the VAE machinery of notebook 03 applies
    unchanged: `Predictive(vae.model, num_samples=...)` samples the reverse process,
    `SVI(vae.model, vae.guide, ...)` trains it.

    **Summary.** One prior object, several exact or approximate posteriors: NUTS on any
    density model (flows, VAEs' latents, Gaussian priors), PiGDM and DPS on any model of a
    Gaussian path through the same samplers as its prior. On the same data, the command
    line runs the MNIST inpainting benchmark with `python benchmarks/inverse_mnist.py`.
    """),
]
