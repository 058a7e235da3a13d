"""Cells of 06_evaluation.ipynb as ("md" | "code", source) pairs, for tutorials/build.py."""

from __future__ import annotations

CELLS: list[tuple[str, str]] = [
    ("md", r"""
    # Evaluating generative models: FID, KID, precision and recall

    A GAN, a diffusion model sampled by an SDE or a flow-matching model has no cheap
    likelihood, so families are compared through their *samples*: embed real and generated
    samples in a feature space and compare the two clouds. This notebook covers:

    1. the Frechet distance of two Gaussians and its closed forms (what FID computes);
    2. on 2-D data, what each metric sees: FID, KID, precision/recall, density/coverage,
       exact $W_2$ and mode coverage, for samplers that drop modes, blur them or add some;
    3. streaming: FID of 50 000 samples drawn batch by batch from a trained model;
    4. MNIST in the feature space of probgen's bundled classifier: FID, KID, precision,
       recall and the classifier score for corrupted digits (skipped, with a message, where
       the MNIST files are absent);
    5. the same from the command line: `probgen eval RUN --metrics fid,kid,pr`.

    The full run takes two to three minutes on one CPU thread. With `PROBGEN_QUICK=1` the
    fits take a few steps and the sample sizes shrink (a smoke test; the numbers are then
    meaningless). Everything is seeded.
    """),
    ("code", r"""
    %matplotlib inline
    import warnings

    # probgen's trainer imports tqdm.auto, which warns in a kernel without ipywidgets: we
    # train with progress=False, so the warning is noise.
    warnings.filterwarnings("ignore", message="IProgress not found")
    """),
    ("code", r"""
    import math
    import os
    import time
    from pathlib import Path

    import torch
    from matplotlib.figure import Figure

    import probgen
    from probgen.data import ToySampler, find_mnist, load_mnist, toy_sample
    from probgen.inference import MaximumLikelihood, fit
    from probgen.metrics import (
        density_coverage,
        fid,
        frechet_distance,
        inception_score,
        kid,
        mnist_classifier,
        mode_coverage,
        precision_recall,
        ring_centres,
        wasserstein2,
    )
    from probgen.models import RealNVP
    from probgen.plots import plot_image_grid, plot_samples

    QUICK = os.environ.get("PROBGEN_QUICK") == "1"  # smoke-test mode: a few steps only
    N = 1000 if QUICK else 10_000  # samples per set in sections 2 and 4
    torch.set_num_threads(1)
    print("quick mode (numbers are meaningless)" if QUICK else "full run")
    """),
    ("md", r"""
    ## 1. The Frechet distance of two Gaussians

    FID fits a Gaussian to each cloud of features and reports the squared Wasserstein-2
    (Frechet) distance between the two Gaussians,
    $$d^2 = \lVert\mu_1-\mu_2\rVert^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
    - 2\operatorname{tr}\big(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}\big)^{1/2}.$$
    For isotropic Gaussians $\mathcal N(\mu_i, s_i^2 I_d)$ this is
    $\lVert\mu_1-\mu_2\rVert^2 + d\,(s_1-s_2)^2$: a mean shift and a wrong spread both cost.
    probgen computes the matrix square root through two symmetric eigendecompositions in
    float64, so the value is exact to rounding and never complex. Below, the isotropic
    formula next to `frechet_distance` in $d = 2048$ dimensions (the size of Inception
    features), and the identity $d^2(P, P) = 0$.
    """),
    ("code", r"""
    d = 2048
    g = torch.Generator().manual_seed(0)
    mu1 = torch.randn(d, generator=g, dtype=torch.float64)
    mu2 = mu1 + 0.01 * torch.randn(d, generator=g, dtype=torch.float64)
    s1, s2 = 1.0, 1.2
    eye = torch.eye(d, dtype=torch.float64)
    closed = float(((mu1 - mu2) ** 2).sum()) + d * (s1 - s2) ** 2
    print(f"closed form ||mu1-mu2||^2 + d (s1-s2)^2 = {closed:.10f}")
    print(f"frechet_distance                       = "
          f"{float(frechet_distance(mu1, s1**2 * eye, mu2, s2**2 * eye)):.10f}")
    print(f"frechet_distance(P, P)                 = "
          f"{float(frechet_distance(mu1, eye, mu1, eye)):.1e}")
    """),
    ("md", r"""
    ## 2. What each metric sees, on the ring of eight Gaussians

    The data: eight Gaussians of standard deviation $0.5/1.414$ on a circle. Five
    samplers of it:

    - **data**: fresh samples of the data itself (the best any model can do);
    - **drops 4 modes**: samples of four of the eight components only (mode collapse);
    - **blurred**: every component twice as wide;
    - **adds a mode**: the data plus a ninth component at the centre, with 1/9 of the mass;
    - **RealNVP**: a flow trained for a short while by maximum likelihood.

    For each we report, against 10 000 held-out data points, in the raw 2-D coordinates:
    FID; KID (unbiased, so about 0 for the data itself, up to its sampling noise; the cubic
    kernel of raw coordinates takes large values, and so does KID here); precision (the share of
    samples that land on the data's k-NN manifold, $k=3$) and recall (the share of data
    that lands on the samples' manifold); density and coverage (Naeem et al., $k = 5$;
    density is about 1 when the samples follow the data); the exact $W_2$ between 2000
    points of each (an optimal assignment by `scipy.optimize.linear_sum_assignment`); and
    the mode-collapse figures of the GAN literature: modes captured, and the share of
    *high-quality* samples (within 3 standard deviations of a mode; for 2-D Gaussian data
    this is $1 - e^{-9/2} = 98.9\%$).
    """),
    ("code", r"""
    std = 0.5 / 1.414
    centres = ring_centres(8).float()
    real = toy_sample("8gaussians", N, generator=torch.Generator().manual_seed(1))


    def ring(n, g, keep=8, scale=1.0, extra=False):
        k = torch.randint(0, keep, (n,), generator=g)
        x = centres[k] + scale * std * torch.randn(n, 2, generator=g)
        if extra:  # a ninth mode at the origin, 1/9 of the samples
            x[: n // 9] = std * torch.randn(n // 9, 2, generator=g)
        return x


    torch.manual_seed(0)
    flow = RealNVP(2, transforms=8, hidden_features=[64, 64])
    start = time.perf_counter()
    fit(MaximumLikelihood(flow), ToySampler("8gaussians"), steps=20 if QUICK else 2000,
        batch_size=512, lr=2e-3, progress=False, seed=0)
    print(f"RealNVP trained in {time.perf_counter() - start:.0f} s")

    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        samplers = {
            "data": toy_sample("8gaussians", N, generator=g),
            "drops 4 modes": ring(N, g, keep=4),
            "blurred": ring(N, g, scale=2.0),
            "adds a mode": ring(N, g, extra=True),
            "RealNVP": flow.sample((N,)),
        }
    header = (f"{'sampler':14s} {'FID':>7s} {'KID':>8s} {'prec.':>6s} {'recall':>6s} "
              f"{'dens.':>6s} {'cover.':>6s} {'W2':>6s} {'modes':>5s} {'HQ %':>6s}")
    print(header)
    for name, x in samplers.items():
        p, r = precision_recall(real, x)
        dens, cov = density_coverage(real, x)
        w2 = wasserstein2(real[:2000], x[:2000])
        k = kid(real, x, generator=torch.Generator().manual_seed(0)).mean
        modes = mode_coverage(x, centres, std)
        print(f"{name:14s} {fid(real, x):7.3f} {k:8.3f} {p:6.3f} {r:6.3f} {dens:6.3f} "
              f"{cov:6.3f} {w2:6.3f} {modes.modes_captured:5d} "
              f"{100 * modes.high_quality:6.1f}")
    """),
    ("md", r"""
    How to read the table. FID, KID and $W_2$ are distances: small is good, and each
    bad sampler is far from the data, but one number cannot say *how* it is wrong. The
    precision/recall pair can: dropping modes keeps precision (every sample is plausible)
    and halves recall (half the data is never produced); blurring keeps recall and loses
    precision (samples between the modes); an extra mode loses about 1/9 of precision and
    keeps recall. Coverage follows recall, density follows precision. The mode counts say
    it in the GAN literature's words, with a caveat: the sampler that keeps 4 modes is
    credited with 6, because a handful of its 10 000 samples (tails of a kept mode) land
    within 3 standard deviations of a neighbouring dropped one, and one sample is enough
    to "capture" a mode by the VEEGAN rule; stricter evaluations ask for a minimum count
    (`mode_coverage(..., min_count=...)`). Blurred and extra modes show up as fewer
    high-quality samples. The trained RealNVP sits near the data on all of them, with
    fewer high-quality samples (97% against 99%): a flow is a continuous map of one
    Gaussian, so it leaves thin bridges of mass between the modes.
    """),
    ("code", r"""
    fig = Figure(figsize=(15, 3))
    for i, (name, x) in enumerate(samplers.items()):
        plot_samples(x[:2000], ax=fig.add_subplot(1, 5, i + 1), title=name, bounds=4.5)
    fig
    """),
    ("md", r"""
    ## 3. Streaming: 50 000 samples, one batch in memory at a time

    FID is usually reported on 50 000 samples. Any metric of `probgen.metrics` accepts,
    instead of a tensor, an iterable of batches (a `DataLoader`) or a *sampler*: a
    model's `sample` method, called for `batch_size` samples at a time until
    `num_samples` are drawn. The running mean and covariance are accumulated in float64
    (a pairwise update, exact up to rounding), so images never sit in memory all at once
    and the result equals the all-at-once one. Below, FID of the trained flow against
    the data, with 50 000 samples drawn from `flow.sample` in batches of 5 000, and the
    same from the already-drawn tensor of section 2 for comparison (fewer samples).
    """),
    ("code", r"""
    big = 2_000 if QUICK else 50_000
    reference = toy_sample("8gaussians", big, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    start = time.perf_counter()
    streamed = fid(reference, flow.sample, num_samples=big, batch_size=5000)
    print(f"FID, {big} streamed flow samples: {streamed:.4f} "
          f"({time.perf_counter() - start:.1f} s)")
    print(f"FID, {N} samples held in a tensor: {fid(real, samplers['RealNVP']):.4f}")
    """),
    ("md", r"""
    ## 4. MNIST, in the feature space of the bundled classifier

    On images, distances between raw pixels say little; FID compares *features* of a
    network trained on the data. probgen ships a small convolutional MNIST classifier
    (0.4 MB, loaded with `weights_only=True`, re-trainable with
    `benchmarks/train_mnist_features.py`); `net.features` maps images to 128-d vectors and
    `net.probabilities` to class probabilities. A FID in this space is the *FID of the
    probgen MNIST classifier*: its values are not comparable with the Inception FID of
    papers on natural images (`probgen.metrics.inception_extractor` offers that network,
    `probgen.metrics.FIDInceptionV3`, when its weights file is on the disk; nothing is
    downloaded).

    The MNIST files are read from `PROBGEN_DATA` or, in this repository, from
    `../shared/data/mnist`. `find_mnist(root)` returns the folder holding them, or `None`
    where they are absent: then this section prints one line saying where it looked and
    skips its cells (the other sections do not need MNIST).
    """),
    ("code", r"""
    root = os.environ.get("PROBGEN_DATA")
    if root is None:  # this repository's layout: shared/ beside the checkout
        root = Path(probgen.__file__).resolve().parents[2] / "shared" / "data"
    mnist_dir = find_mnist(root)  # None without the files: the cells below skip section 4
    if mnist_dir is None:
        print(f"MNIST files not found in {root} or {Path(root) / 'mnist'}: section 4 is "
              "skipped (set PROBGEN_DATA to the folder that holds them, or pass that folder "
              "as root in this cell).")
    """),
    ("md", r"""
    The cell below checks the classifier's test accuracy, then compares the test images
    with: other real digits (the training set), digits with Gaussian pixel noise, blurred
    digits, and a "collapsed" set made of copies of only the 0s and 1s.
    """),
    ("code", r"""
    if mnist_dir is not None:  # else section 4 is skipped (see the message above)
        test_x, test_y = load_mnist(mnist_dir, "test")
        train_x, train_y = load_mnist(mnist_dir, "train")
        net = mnist_classifier()
        with torch.no_grad():
            pred = torch.cat([net(b).argmax(1) for b in test_x.split(2000)])
        print(f"bundled classifier, test accuracy: {100 * (pred == test_y).double().mean():.2f}%")

        n = min(N, 10_000)
        real_img = test_x[:n]
        g = torch.Generator().manual_seed(4)
        unit = train_x[:n].float() / 255
        kernel = torch.ones(1, 1, 3, 3) / 9
        small_digits = torch.nonzero(train_y < 2).squeeze(1)
        sets = {
            "real (train)": unit,
            "noise 0.2": (unit + 0.2 * torch.randn(unit.shape, generator=g)).clamp(0, 1),
            "blurred 3x3": torch.nn.functional.conv2d(unit, kernel, padding=1),
            "only 0s and 1s": train_x[small_digits[:n]].float() / 255,
        }
        real_feats = torch.cat([net.features(b) for b in real_img.split(1000)])
        print(f"{'compared with test':18s} {'FID':>8s} {'KIDx1e3':>8s} {'prec.':>6s} "
              f"{'recall':>6s} {'score':>6s}")
        for name, imgs in sets.items():
            feats = torch.cat([net.features(b) for b in imgs.split(1000)])
            p, r = precision_recall(real_feats, feats)
            k = kid(real_feats, feats, generator=torch.Generator().manual_seed(0)).mean
            score = inception_score(imgs, net.probabilities).mean
            print(f"{name:18s} {fid(real_feats, feats):8.3f} {1e3 * k:8.3f} {p:6.3f} {r:6.3f} "
                  f"{score:6.2f}")
    """),
    ("md", r"""
    The classifier gets over 99% of the test digits right. Real training digits are
    close to the test digits on every metric (FID and KID near 0, precision and recall
    near the values two samples of one distribution reach). Noise and blur move the
    features: FID and KID grow, precision drops. The set of only 0s and 1s is sharp —
    its precision stays high — but recall collapses, and the classifier score (an
    Inception-style score, at most 10 for ten classes) falls to about 2, the number of
    classes left.
    """),
    ("code", r"""
    if mnist_dir is not None:  # else section 4 is skipped (see the message above)
        fig = Figure(figsize=(12, 3))
        for i, (name, imgs) in enumerate(sets.items()):
            plot_image_grid(imgs[:36], nrow=6, ax=fig.add_subplot(1, 4, i + 1), title=name)
        display(fig)
    """),
    ("md", r"""
    ## 5. From the command line

    `probgen eval RUN --metrics fid,kid,pr` adds sample metrics of a trained run against
    its held-out data to `eval.json` (other names: `dc`, `mmd`, `w2`, and `is` for MNIST
    runs). For MNIST runs the keys say the feature space
    (`samples/mnist_classifier/fid`); for 2-D runs they are computed on the coordinates
    (`samples/coordinates/...`). Here a short RealNVP run on the ring, then its
    evaluation with 5 000 samples.
    """),
    ("code", r"""
    import json

    from probgen.cli import main

    steps = 20 if QUICK else 1500
    main(["fit", "realnvp-moons", "--out", "runs/eval-demo", "--quiet",
          "--set", "data.name=8gaussians", "--set", f"train.steps={steps}",
          "--set", "eval.resolution=50", "--set", "data.eval_size=5000"])
    print("probgen eval runs/eval-demo --metrics fid,kid,pr,w2 --num-samples 5000")
    main(["eval", "runs/eval-demo", "--metrics", "fid,kid,pr,w2", "--num-samples", "5000"])
    """),
]
