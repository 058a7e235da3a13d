"""FID, KID and precision/recall: probgen vs torch-fidelity and pytorch-fid on 10 000 x 2048.

Every library gets the same two float32 feature sets per input, and its value is compared
with a float64 reference computed by a different route:

- FID reference: never forms a covariance. Each centred feature matrix is QR-factorized
  in float64 all at once (X_c = Q R, Householder), so S = R^T R / (n - 1) and
  tr (S1^(1/2) S2 S1^(1/2))^(1/2) = ||R1 R2^T||_* / sqrt((n1 - 1)(n2 - 1)), the nuclear norm
  from an SVD; no square root of a rounded eigenvalue is taken. probgen's fid rests on the
  same identity but streams 2500-row batches into R (a checked Cholesky factor of the
  float64 Gram matrix, or Householder QR when the check fails); the peers go through the
  covariances and the eigenvalues (or sqrtm) of their product.
- KID reference: the same subsets, every product, kernel value and sum in float64 (numpy),
  row sums added with math.fsum.

Inputs: "random" is two independent Gaussian sets (the second scaled by 1.1 and shifted
by 0.05); "MNIST features" are the 2048-d last-convolution activations (128 channels x
4 x 4, after ReLU: sparse, with a rank-deficient covariance) of probgen's bundled MNIST
classifier on the 10 000 MNIST test images and on the first 10 000 training images.

The peers import torchvision at module level; the torchvision wheels that install here
are CUDA builds that cannot load their operators against torch 2.13.0+cpu. The benchmark
therefore puts an empty stand-in module named torchvision into sys.modules (only in this
process) and calls the peers' statistic functions, which use numpy, scipy and torch only:
torch_fidelity.metric_fid.fid_features_to_statistics + fid_statistics_to_metric,
torch_fidelity.metric_kid.kid_features_to_metric, torch_fidelity.metric_prc
.calculate_precision_recall_full, and pytorch_fid.fid_score.calculate_frechet_distance on
the statistics pytorch_fid's calculate_activation_statistics computes (np.mean, np.cov).

    python benchmarks/metrics.py --root ../shared/data/mnist

Without the MNIST files (needed for the 2048-d input) the script exits with status 3
(``_common.MNIST_MISSING``) and a one-line message.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_quick,
    apply_quick,
    command_line,
    default_data_root,
    machine,
    markdown_table,
    mnist_split,
    set_threads,
    today,
    write_section,
)
from _peers import stub_torchvision  # noqa: E402

from probgen.metrics import fid, kid, mnist_classifier, precision_recall  # noqa: E402

# --------------------------------------------------------------------------- inputs


def random_inputs(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = 1.1 * torch.randn(n, d, generator=g) + 0.05
    return x, y


def mnist_inputs(root: str | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    net = mnist_classifier()
    test, _ = mnist_split(root, "test", "metrics")
    train, _ = mnist_split(root, "train", "metrics")
    with torch.no_grad():
        x = torch.cat([net.feature_map(b).flatten(1) for b in test[:n].split(1000)])
        y = torch.cat([net.feature_map(b).flatten(1) for b in train[:n].split(1000)])
    return x, y


# --------------------------------------------------------------------------- references


def fid_reference(x: torch.Tensor, y: torch.Tensor) -> float:
    """FID in float64 by QR factors and a nuclear norm (no covariance is formed)."""
    xs, ys = x.double(), y.double()
    mx, my = xs.mean(0), ys.mean(0)
    xc, yc = xs - mx, ys - my
    r1 = torch.linalg.qr(xc, mode="r").R
    r2 = torch.linalg.qr(yc, mode="r").R
    scale = math.sqrt((x.shape[0] - 1) * (y.shape[0] - 1))
    tr_sqrt = torch.linalg.svdvals(r1 @ r2.T).sum() / scale
    tr1 = (xc * xc).sum() / (x.shape[0] - 1)
    tr2 = (yc * yc).sum() / (y.shape[0] - 1)
    diff = mx - my
    return float(diff @ diff + tr1 + tr2 - 2 * tr_sqrt)


def kid_reference(x: np.ndarray, y: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> float:
    """KID over the given subsets, everything in float64, row sums added by math.fsum."""
    gamma = 1.0 / x.shape[1]
    m = ix.shape[1]
    values = []
    for s in range(ix.shape[0]):
        a, b = x[ix[s]].astype(np.float64), y[iy[s]].astype(np.float64)
        kxx = (a @ a.T * gamma + 1.0) ** 3
        kyy = (b @ b.T * gamma + 1.0) ** 3
        kxy = (a @ b.T * gamma + 1.0) ** 3
        sxx = math.fsum(kxx.sum(1).tolist()) - math.fsum(np.diagonal(kxx).tolist())
        syy = math.fsum(kyy.sum(1).tolist()) - math.fsum(np.diagonal(kyy).tolist())
        sxy = math.fsum(kxy.sum(1).tolist())
        values.append((sxx + syy) / (m * (m - 1)) - 2 * sxy / (m * m))
    return math.fsum(values) / len(values)


def fidelity_subsets(n1: int, n2: int, subsets: int, size: int, seed: int):
    """The subsets torch-fidelity's kid_features_to_metric draws (same RandomState calls)."""
    rng = np.random.RandomState(seed)
    ix, iy = [], []
    for _ in range(subsets):
        ix.append(rng.choice(n1, size, replace=False))
        iy.append(rng.choice(n2, size, replace=False))
    return np.stack(ix), np.stack(iy)


# --------------------------------------------------------------------------- runs


REPEATS = 5


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def interleaved(fns: dict, repeats: int) -> dict:
    """Runs every library once per round, ``repeats`` rounds, the order rotated by one
    each round (each library follows each other one as often, and background load hits
    all alike); returns {library: (value, median seconds, seconds of every round)}."""
    names = list(fns)
    times = {lib: [] for lib in fns}
    values = {}
    for r in range(repeats):
        for lib in names[r % len(names):] + names[: r % len(names)]:
            values[lib], seconds = timed(fns[lib])
            times[lib].append(seconds)
    return {lib: (values[lib], statistics.median(times[lib]), times[lib]) for lib in fns}


def ratio(rows: dict, lib: str, peer: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of lib's time / peer's time in the same round."""
    r = [a / b for a, b in zip(rows[lib][2], rows[peer][2], strict=True)]
    return statistics.median(r), min(r), max(r)


def fidelity_fid(x, y) -> float:
    """torch-fidelity's FID of two feature sets (its statistics, then its distance)."""
    from torch_fidelity import metric_fid

    s1 = metric_fid.fid_features_to_statistics(x)
    s2 = metric_fid.fid_features_to_statistics(y)
    return metric_fid.fid_statistics_to_metric(s1, s2, False)[metric_fid.KEY_METRIC_FID]


def run_fid(x, y):
    from pytorch_fid import fid_score

    def pytorch_fid():
        a, b = x.numpy(), y.numpy()  # calculate_activation_statistics: np.mean, np.cov
        m1, c1 = np.mean(a, axis=0), np.cov(a, rowvar=False)
        m2, c2 = np.mean(b, axis=0), np.cov(b, rowvar=False)
        return float(fid_score.calculate_frechet_distance(m1, c1, m2, c2))

    rows = interleaved({"probgen": lambda: fid(x, y, batch_size=2500),
                        "torch-fidelity": lambda: fidelity_fid(x, y),
                        "pytorch-fid": pytorch_fid}, REPEATS)
    ref, ref_s = timed(lambda: fid_reference(x, y))
    return rows, ref, ref_s


#: Other (samples, feature size) pairs for FID timings: few features (2-D toy data and
#: small classifiers) to mid-size ones and the usual 50 000 Inception-size vectors; random
#: inputs as above.
FID_SHAPES = ((2000, 256), (10_000, 64), (10_000, 128), (10_000, 512), (50_000, 64),
              (50_000, 512), (50_000, 2048))
QUICK_FID_SHAPES = ((500, 16), (1000, 64))  # --quick


def run_fid_shapes(seed: int, shapes: tuple = FID_SHAPES) -> list[list[str]]:
    """FID of probgen and torch-fidelity at ``shapes`` (values checked against the
    float64 reference).

    These calls take milliseconds, where alternating libraries call by call would time
    mostly the other library's BLAS threads, which keep spinning on the cores for a while
    after each call (OpenBLAS: about 0.1 s): so each library, after a 0.5 s pause, makes
    one untimed call and then REPEATS timed calls back to back, the library going first
    alternating from shape to shape.
    """
    rows = []
    for k, (n, d) in enumerate(shapes):
        x, y = random_inputs(n, d, seed)
        fns = {"probgen": lambda x=x, y=y: fid(x, y, batch_size=2500),
               "torch-fidelity": lambda x=x, y=y: fidelity_fid(x, y)}
        order = list(fns) if k % 2 == 0 else list(fns)[::-1]
        times, values = {}, {}
        for lib in order:
            time.sleep(0.5)  # the other library's BLAS threads stop spinning and sleep
            fns[lib]()
            runs = [timed(fns[lib]) for _ in range(REPEATS)]
            values[lib] = runs[-1][0]
            times[lib] = statistics.median(t for _, t in runs)
        ref = fid_reference(x, y)
        errors = {lib: abs(v - ref) / abs(ref) for lib, v in values.items()}
        rows.append([f"{n} x {d}", f"{times['probgen'] * 1e3:.1f}",
                     f"{times['torch-fidelity'] * 1e3:.1f}",
                     f"{times['torch-fidelity'] / times['probgen']:.2f}",
                     f"{errors['probgen']:.1e}", f"{errors['torch-fidelity']:.1e}"])
        print(f"  FID {n} x {d}: {rows[-1]}", flush=True)
    return rows


def run_kid(x, y, subsets: int, size: int, seed: int):
    from torch_fidelity import metric_kid

    ix, iy = fidelity_subsets(x.shape[0], y.shape[0], subsets, size, seed)
    idx = (torch.from_numpy(ix), torch.from_numpy(iy))

    def fidelity():
        out = metric_kid.kid_features_to_metric(
            x, y, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False)
        return out[metric_kid.KEY_METRIC_KID_MEAN]

    rows = interleaved({"probgen": lambda: kid(x, y, subsets=idx).mean,
                        "probgen (float64 products)":
                            lambda: kid(x, y, subsets=idx, matmul_dtype=torch.float64).mean,
                        "torch-fidelity": fidelity}, REPEATS)
    ref, ref_s = timed(lambda: kid_reference(x.numpy(), y.numpy(), ix, iy))
    return rows, ref, ref_s


def run_pr(x, y):
    from torch_fidelity import metric_prc

    def fidelity():
        # torch-fidelity's input 1 is the generated set: precision = share of input 1 inside
        # the manifold of input 2.
        p, r = metric_prc.calculate_precision_recall_full(y, x, neighborhood=3)
        return p, r

    return {"probgen": timed(lambda: tuple(precision_recall(x, y, k=3))),
            "probgen (float64)": timed(
                lambda: tuple(precision_recall(x, y, k=3, dtype=torch.float64))),
            "probgen (float32)": timed(
                lambda: tuple(precision_recall(x, y, k=3, dtype=torch.float32))),
            "torch-fidelity": timed(fidelity)}


def _ratio_cell(rows: dict, lib: str) -> str:
    """This library's time over probgen's, per round: median (min-max)."""
    if lib == "probgen":
        return "1"
    med, low, high = ratio(rows, lib, "probgen")
    return f"{med:.3f} ({low:.3f}-{high:.3f})"


def fmt(v: float) -> str:
    return f"{v:.10g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(default_data_root()),
                        help="MNIST folder (default: $PROBGEN_DATA, else ../shared/data)")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-pr", action="store_true")
    parser.add_argument("--skip-shapes", action="store_true",
                        help="skip the FID timings at other feature shapes")
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    add_quick(parser, "500 x 64 random features only (2048-d inputs, MNIST's included, cost "
                      "the peers ~10 s per matrix square root), KID on 2 subsets of 100, "
                      f"FID shapes {QUICK_FID_SHAPES}")
    args = parser.parse_args()
    apply_quick(parser, args, n=500, dim=64, kid_subsets=2, kid_subset_size=100)
    set_threads(args.threads)
    stub_torchvision()
    import pytorch_fid
    import torch_fidelity

    versions = (f"torch-fidelity {torch_fidelity.__version__}, pytorch-fid "
                f"{pytorch_fid.__version__}, numpy {np.__version__}")
    start_all = time.perf_counter()
    # Warm-up (BLAS/LAPACK thread pools, first-call costs), not timed.
    wx, wy = random_inputs(600, 64, 123)
    run_fid(wx, wy)
    run_kid(wx, wy, 2, 100, 0)

    inputs = {"random": random_inputs(args.n, args.dim, args.seed)}
    if args.dim == 2048:
        inputs["MNIST features"] = mnist_inputs(args.root, args.n)
    fid_rows, kid_rows, pr_rows, goals = [], [], [], []
    for name, (x, y) in inputs.items():
        print(f"{name}: x {tuple(x.shape)}, y {tuple(y.shape)}", flush=True)
        rows, ref, ref_s = run_fid(x, y)
        fastest = min((lib for lib in rows if lib != "probgen"), key=lambda lib: rows[lib][1])
        fastest_peer = rows[fastest][1]
        errors = {lib: abs(v - ref) / abs(ref) for lib, (v, _, _) in rows.items()}
        for lib, (v, s, _) in rows.items():
            agree = abs(v - rows["probgen"][0]) / abs(rows["probgen"][0])
            fid_rows.append([name, lib, fmt(v), f"{errors[lib]:.1e}", f"{agree:.1e}",
                             f"{s:.2f}", _ratio_cell(rows, lib)])
            print(f"  FID {lib}: {v:.10g} ({s:.2f} s), rel. error {errors[lib]:.1e}",
                  flush=True)
        fid_rows.append([name, "float64 reference (QR + nuclear norm)", fmt(ref), "0", "",
                         f"{ref_s:.2f}", ""])
        best_peer_error = min(e for lib, e in errors.items() if lib != "probgen")
        med, low, high = ratio(rows, "probgen", fastest)
        goals.append(
            f"- FID, {name}: probgen {rows['probgen'][1]:.2f} s vs fastest peer ({fastest}) "
            f"{fastest_peer:.2f} s, time ratio per round {med:.3f} (range {low:.3f}-{high:.3f}"
            f") ({'met' if med <= 1.0 else 'MISSED'}"
            f"); error {errors['probgen']:.1e} vs best peer {best_peer_error:.1e} "
            f"({'met' if errors['probgen'] <= best_peer_error else 'MISSED'}); values agree "
            f"to 1e-3: {'met' if max(errors.values()) < 1e-3 else 'MISSED'}")

        rows, ref, ref_s = run_kid(x, y, args.kid_subsets, args.kid_subset_size, 2020)
        errors = {lib: abs(v - ref) / abs(ref) for lib, (v, _, _) in rows.items()}
        for lib, (v, s, _) in rows.items():
            agree = abs(v - rows["probgen"][0]) / abs(rows["probgen"][0])
            kid_rows.append([name, lib, fmt(v), f"{errors[lib]:.1e}", f"{agree:.1e}",
                             f"{s:.2f}", _ratio_cell(rows, lib)])
            print(f"  KID {lib}: {v:.10g} ({s:.2f} s), rel. error {errors[lib]:.1e}",
                  flush=True)
        kid_rows.append([name, "float64 reference (numpy, fsum)", fmt(ref), "0", "",
                         f"{ref_s:.2f}", ""])
        peer_s = rows["torch-fidelity"][1]
        med, low, high = ratio(rows, "probgen", "torch-fidelity")
        goals.append(
            f"- KID, {name}: probgen {rows['probgen'][1]:.2f} s vs torch-fidelity "
            f"{peer_s:.2f} s, time ratio per round {med:.3f} (range {low:.3f}-{high:.3f}) "
            f"({'met' if med <= 1.0 else 'MISSED'}); error "
            f"{errors['probgen']:.1e} vs {errors['torch-fidelity']:.1e} "
            f"({'met' if errors['probgen'] <= errors['torch-fidelity'] else 'MISSED'}); "
            f"values agree to 1e-3: {'met' if max(errors.values()) < 1e-3 else 'MISSED'}")
        if not args.skip_pr:
            rows = run_pr(x, y)
            for lib, ((p, r), s) in rows.items():
                pr_rows.append([name, lib, f"{p:.4f}", f"{r:.4f}", f"{s:.2f}"])
                print(f"  PR {lib}: {p:.4f} {r:.4f} ({s:.2f} s)", flush=True)
            own, peer = rows["probgen"][1], rows["torch-fidelity"][1]
            same = rows["probgen"][0] == rows["probgen (float64)"][0]
            goals.append(
                f"- precision/recall, {name}: probgen {own:.2f} s vs torch-fidelity "
                f"{peer:.2f} s ({'met' if own <= peer else 'MISSED'}); equal to the float64 "
                f"computation: {'yes' if same else 'NO'}")
    shape_rows = [] if args.skip_shapes else run_fid_shapes(
        args.seed, QUICK_FID_SHAPES if args.quick else FID_SHAPES)
    total = time.perf_counter() - start_all
    body = (
        "## Sample metrics: probgen vs torch-fidelity and pytorch-fid\n\n"
        f"Command: `{command_line()}`  \n"
        f"Date: {today()}  \n"
        f"Machine: {machine(args.threads)}; {versions}; other jobs may have shared the "
        "cores.  \n"
        f"Setup: {args.n} x {args.dim} float32 features per set. 'random': x ~ N(0, I), "
        "y = 1.1 N(0, I) + 0.05. 'MNIST features': the 2048-d last-convolution activations "
        "(128 x 4 x 4 after ReLU) of probgen's bundled MNIST classifier on the 10 000 MNIST "
        "test images (x) and the first 10 000 training images (y). Every library gets the "
        f"same tensors; FID and KID times are the median of {REPEATS} calls each (statistics "
        "included), the libraries taking turns in an order rotated each round, after an "
        "untimed warm-up; 'time / probgen's' is the median (min-max) over rounds of the "
        "ratio of times within one round, which background load moves less than the times "
        "themselves, and the speed goals are judged on it; precision/recall one call each. The "
        "peers' statistic functions are called directly (torchvision, which "
        "they import at module level, cannot load against torch 2.13.0+cpu here, so an "
        "empty stand-in module is put in its place; the functions called do not use it). "
        "Relative error: |value - reference| / reference, against a float64 reference "
        "computed all at once (FID: one QR of each set of centred features and the nuclear "
        "norm of R1 R2^T, no covariance and no square root of a rounded eigenvalue; "
        "probgen streams 2500-row batches into R, by a Cholesky factorization of the float64 "
        "Gram matrix when its scaled condition number passes a check, else by QR; KID: numpy "
        f"float64 on the same subsets with fsum). KID: {args.kid_subsets} subsets of "
        f"{args.kid_subset_size}, the subsets torch-fidelity draws (seed 2020). Precision "
        "and recall: probgen's default (float32 distances, every comparison within the "
        "float32 rounding bound redone in float64, so float64 decisions), plain float64 and "
        f"plain float32, torch-fidelity's float32 cdist. Total wall time {total:.0f} s.\n\n"
        "### FID\n\n"
        + markdown_table(["input", "library", "FID", "rel. error vs ref.",
                          "rel. diff. vs probgen", "seconds", "time / probgen's"], fid_rows)
        + "\n\n### KID (mean over subsets)\n\n"
        + markdown_table(["input", "library", "KID", "rel. error vs ref.",
                          "rel. diff. vs probgen", "seconds", "time / probgen's"], kid_rows)
    )
    if shape_rows:
        body += ("\n\n### FID at other feature shapes (random inputs as above)\n\n"
                 "Each library: a 0.5 s pause, one untimed call, then 5 timed calls back to "
                 "back (calls of a "
                 "few milliseconds, where alternating call by call would mostly time the other "
                 "library's BLAS threads, still spinning after its call); which library goes "
                 "first alternates from shape to shape; statistics included, probgen with "
                 "batch_size=2500; milliseconds are medians.\n\n"
                 + markdown_table(["samples x features", "probgen ms", "torch-fidelity ms",
                                   "torch-fidelity / probgen", "probgen rel. error",
                                   "torch-fidelity rel. error"], shape_rows))
    if pr_rows:
        body += ("\n\n### Precision and recall (k = 3)\n\n"
                 + markdown_table(["input", "library", "precision", "recall", "seconds"],
                                  pr_rows))
    body += ("\n\nGoals (at least as fast as the fastest peer, more accurate against the "
             "float64 reference, values within 1e-3 relative):\n\n" + "\n".join(goals) + "\n")
    print(body)
    if not args.no_results:
        write_section("metrics", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
