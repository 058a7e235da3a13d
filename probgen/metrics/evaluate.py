"""Several sample metrics at once, from one pass over real and generated samples.

:func:`compare_samples` draws each source once, batch by batch, through the feature
extractor (and the classifier, for the Inception-style score), then computes every metric
asked for from the gathered features. :func:`run_sample_metrics` does it for a trained
run's model against its held-out data: what ``probgen eval RUN --metrics ...`` calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from probgen.metrics.frechet import frechet_distance_from_moments
from probgen.metrics.kernel import kid, mmd2
from probgen.metrics.manifold import density_coverage, precision_recall
from probgen.metrics.score import inception_score
from probgen.metrics.streaming import RunningMoments, Source, _apply, iter_batches
from probgen.metrics.transport import wasserstein2

__all__ = ["SAMPLE_METRICS", "compare_samples", "parse_metrics", "run_sample_metrics"]

#: Metric names and what each reports.
SAMPLE_METRICS: dict[str, str] = {
    "fid": "Frechet distance of Gaussians fitted to the features (FID in that space)",
    "kid": "KID: unbiased cubic-kernel MMD^2 over subsets (mean and std)",
    "pr": "improved precision and recall, k = 3",
    "dc": "density and coverage, k = 5",
    "mmd": "unbiased Gaussian-kernel MMD^2, median-heuristic bandwidths x (0.5, 1, 2)",
    "w2": "exact Wasserstein-2 between the features of equal-size subsets",
    "is": "Inception-style score of the classifier's probabilities (generated samples)",
}


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """Reads ``"fid,kid,pr"`` (or a list of names) into known metric names.

    Raises:
        ValueError: an unknown name (the message lists the allowed ones) or none at all.
    """
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in SAMPLE_METRICS]
    if unknown or not names:
        raise ValueError(
            f"metrics: unknown {unknown or 'empty list'}; allowed: {sorted(SAMPLE_METRICS)}."
        )
    return tuple(dict.fromkeys(names))


def compare_samples(
    real: Source,
    fake: Source,
    *,
    metrics: str | Sequence[str] = ("fid", "kid", "pr"),
    extractor: Callable[[Tensor], Tensor] | None = None,
    classifier: Callable[[Tensor], Tensor] | None = None,
    num_samples: int | None = None,
    batch_size: int = 500,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    w2_points: int = 2000,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Computes sample metrics between real and generated samples in one pass over each.

    Args:
        real: reference samples (tensor, iterable of batches or sampler; see
            :func:`probgen.metrics.iter_batches`).
        fake: generated samples, the same kinds (e.g. ``model.sample``).
        metrics: names from :data:`SAMPLE_METRICS`, as a list or ``"fid,kid,pr"``.
        extractor: features of a batch ``(b, *event) -> (b, D)``; ``None``: the flattened
            samples (raw coordinates, right for 2-D data).
        classifier: class probabilities of a batch, needed for ``"is"``.
        num_samples: samples taken from each source (required for samplers).
        batch_size: samples per batch.
        kid_subsets: KID's number of subsets.
        kid_subset_size: KID's subset size (cut to the number of samples).
        w2_points: W2 uses the first ``min(w2_points, N, M)`` samples of each set (the
            exact assignment is cubic in this number).
        generator: KID's subsets.
        device: where the extractor and classifier run.

    Returns:
        dict: ``fid``; ``kid``, ``kid_std``; ``precision``, ``recall``; ``density``,
        ``coverage``; ``mmd2``; ``w2``; ``is``, ``is_std`` (those asked for).

    Raises:
        ValueError: unknown metric names, or ``"is"`` without a classifier.
    """
    names = parse_metrics(metrics)
    if "is" in names and classifier is None:
        raise ValueError("metrics: 'is' needs a classifier (e.g. "
                         "probgen.metrics.mnist_classifier().probabilities).")
    feats: dict[str, Tensor] = {}
    moments: dict[str, RunningMoments] = {}
    probs: list[Tensor] = []
    needs_features = [n for n in names if n != "is"]
    for label, source in (("real", real), ("fake", fake)):
        parts, acc = [], RunningMoments()
        for batch in iter_batches(source, num_samples=num_samples, batch_size=batch_size):
            if needs_features:
                f = _apply(extractor, batch, device)
                acc.update(f)
                parts.append(f.detach().cpu())
            if label == "fake" and "is" in names:
                probs.append(_apply(classifier, batch, device).detach().cpu())
        if needs_features:
            feats[label], moments[label] = torch.cat(parts), acc
    out: dict[str, float] = {}
    x, y = feats.get("real"), feats.get("fake")
    for name in names:
        if name == "fid":
            out["fid"] = float(frechet_distance_from_moments(moments["real"], moments["fake"]))
        elif name == "kid":
            result = kid(x, y, num_subsets=kid_subsets, subset_size=kid_subset_size,
                         generator=generator)
            out["kid"], out["kid_std"] = result.mean, result.std
        elif name == "pr":
            out["precision"], out["recall"] = precision_recall(x, y)
        elif name == "dc":
            out["density"], out["coverage"] = density_coverage(x, y)
        elif name == "mmd":
            out["mmd2"] = mmd2(x, y)
        elif name == "w2":
            n = min(w2_points, x.shape[0], y.shape[0])
            out["w2"] = float(wasserstein2(x[:n], y[:n]))
        elif name == "is":
            out["is"], out["is_std"] = inception_score(torch.cat(probs))
    return out


def run_sample_metrics(
    model: Any,
    data: Any,
    metrics: str | Sequence[str],
    *,
    num_samples: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Compares a run's model samples with its held-out data (``probgen eval --metrics``).

    The feature space depends on the data, and every key names it:

    - MNIST: the bundled classifier's 128-d features (``samples/mnist_classifier/fid`` is
      the *FID of the probgen MNIST classifier*, not an Inception FID); ``"is"`` uses its
      class probabilities. Model samples are mapped to discrete pixels as the data are.
    - other images (the 8x8 digits): pixels scaled to [0, 1] (``samples/pixels/...``).
    - 2-D toy data: the raw coordinates (``samples/coordinates/...``).

    Args:
        model: has ``sample(shape)`` returning model-space samples.
        data: a :class:`probgen.run.experiment.DataBundle` (``kind``, ``name``, ``eval``,
            ``preprocess``).
        metrics: names from :data:`SAMPLE_METRICS`, e.g. ``"fid,kid,pr"``.
        num_samples: samples of each set (default: the held-out size, at most 10 000).
        batch_size: samples drawn per model call.
        seed: seeds the model's sampling (global RNG) and KID's subsets.

    Returns:
        dict: ``samples/<space>/<metric>`` values and ``samples/num_samples``.

    Raises:
        ValueError: no held-out data (reverse-KL runs), unknown metrics, ``"is"`` on data
            without a classifier, or ``num_samples`` larger than the held-out set.
    """
    names = parse_metrics(metrics)
    if getattr(data, "eval", None) is None:
        raise ValueError("metrics: this run has no held-out data (a reverse-KL run), so its "
                         "samples cannot be compared with data.")
    real = data.eval[0] if isinstance(data.eval, tuple) else data.eval  # (x, y) with labels
    n = min(real.shape[0], 10_000) if num_samples is None else num_samples
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= real.shape[0]:
        raise ValueError(f"num_samples: expected an int in 2..{real.shape[0]} (the held-out "
                         f"size), got {num_samples!r}.")
    extractor = classifier = None
    sample = model.sample
    if data.kind == "image":
        pre = data.preprocess
        levels = getattr(pre, "levels", None) or getattr(pre, "values", None)
        if not isinstance(levels, int):
            raise ValueError("metrics: the run's image preprocessing does not say its number "
                             "of pixel levels.")
        real = real.float() / (levels - 1)

        def sample(shape: tuple[int, ...]) -> Tensor:
            y = model.sample(shape)
            if hasattr(pre, "to_discrete"):
                return pre.to_discrete(y).float() / (levels - 1)
            return pre.to_unit(y).clamp(0, 1)

        if data.name == "mnist":
            from probgen.metrics.features import mnist_classifier

            net = mnist_classifier()
            space, extractor, classifier = "mnist_classifier", net.features, net.probabilities
        else:
            space = "pixels"
    else:
        space = "coordinates"
    if "is" in names and classifier is None:
        raise ValueError(f"metrics: 'is' needs a classifier of the data, which exists for "
                         f"MNIST only (this run's data: {data.name!r}).")
    torch.manual_seed(seed)
    values = compare_samples(
        real[:n], sample, metrics=names, extractor=extractor, classifier=classifier,
        num_samples=n, batch_size=batch_size, kid_subset_size=min(1000, n),
        generator=torch.Generator().manual_seed(seed),
    )
    out = {f"samples/{space}/{key}": value for key, value in values.items()}
    out["samples/num_samples"] = float(n)
    return out
