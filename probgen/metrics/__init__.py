"""Metrics: likelihoods, grid integration of 2-D densities, and sample-quality metrics.

Sample metrics (FID, KID, MMD, precision/recall, density/coverage, W2, mode coverage,
Inception-style score) take features from any extractor; :func:`mnist_classifier` is the
bundled one for MNIST. Samples stream in batches (:func:`iter_batches`).
"""

from __future__ import annotations

from probgen.metrics.evaluate import (
    SAMPLE_METRICS,
    compare_samples,
    parse_metrics,
    run_sample_metrics,
)
from probgen.metrics.features import (
    FeatureExtractor,
    MNISTClassifier,
    as_mnist_images,
    inception_extractor,
    mnist_classifier,
)
from probgen.metrics.frechet import (
    fid,
    frechet_distance,
    frechet_distance_from_moments,
    gaussian_moments,
    trace_sqrt_product,
)
from probgen.metrics.inception import (
    INCEPTION_FEATURES,
    FIDInceptionV3,
    load_fid_inception,
    tf1_resize,
)
from probgen.metrics.integrate import density_grid, integrate_density_2d, parse_bounds
from probgen.metrics.kernel import (
    KID,
    gaussian_kernel,
    kid,
    median_bandwidth,
    mmd2,
    polynomial_kernel,
)
from probgen.metrics.likelihood import bits_per_dim, dequantized_bits_per_dim, nats_to_bits, nll
from probgen.metrics.manifold import (
    DensityCoverage,
    PrecisionRecall,
    density_coverage,
    knn_radii,
    precision_recall,
)
from probgen.metrics.modes import ModeCoverage, grid_centres, mode_coverage, ring_centres
from probgen.metrics.score import ClassifierScore, inception_score
from probgen.metrics.streaming import (
    RunningMoments,
    Source,
    collect_features,
    feature_moments,
    iter_batches,
)
from probgen.metrics.transport import wasserstein2

__all__ = [
    "bits_per_dim",
    "dequantized_bits_per_dim",
    "nats_to_bits",
    "nll",
    "density_grid",
    "integrate_density_2d",
    "parse_bounds",
    "FeatureExtractor",
    "MNISTClassifier",
    "as_mnist_images",
    "inception_extractor",
    "FIDInceptionV3",
    "INCEPTION_FEATURES",
    "load_fid_inception",
    "tf1_resize",
    "mnist_classifier",
    "fid",
    "frechet_distance",
    "frechet_distance_from_moments",
    "gaussian_moments",
    "trace_sqrt_product",
    "KID",
    "kid",
    "mmd2",
    "gaussian_kernel",
    "polynomial_kernel",
    "median_bandwidth",
    "PrecisionRecall",
    "DensityCoverage",
    "precision_recall",
    "density_coverage",
    "knn_radii",
    "ModeCoverage",
    "mode_coverage",
    "ring_centres",
    "grid_centres",
    "ClassifierScore",
    "inception_score",
    "RunningMoments",
    "Source",
    "iter_batches",
    "collect_features",
    "feature_moments",
    "wasserstein2",
    "SAMPLE_METRICS",
    "compare_samples",
    "parse_metrics",
    "run_sample_metrics",
]
