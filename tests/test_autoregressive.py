"""Autoregressive models against exact enumeration: normalization, Jacobian sparsity,
chi-square sampling, cached = uncached sampling, completion, receptive fields, units."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from probgen.models import (
    MADE,
    MODELS,
    GatedPixelCNN,
    ImageTransformer,
    PixelCNN,
    receptive_field,
)
from probgen.nn.masked import causal_mask

# name -> constructor(shape, categories, classes); small but complete configurations.
BUILDERS = {
    "MADE": lambda s, k=2, c=0: MADE(s, [24, 24], categories=k, classes=c),
    "MADE-random-order": lambda s, k=2, c=0: MADE(s, [24], categories=k, order="random",
                                                  random_degrees=True, classes=c, seed=3),
    "MADE-ensemble": lambda s, k=2, c=0: MADE(s, [24], categories=k, orders=3, classes=c),
    "PixelCNN": lambda s, k=2, c=0: PixelCNN(s, channels=6, layers=2, kernel_size=3,
                                             first_kernel_size=3, categories=k,
                                             layer_norm=True, classes=c),
    "GatedPixelCNN": lambda s, k=2, c=0: GatedPixelCNN(s, channels=6, layers=2, kernel_size=3,
                                                       first_kernel_size=3, categories=k,
                                                       classes=c),
    "ImageTransformer": lambda s, k=2, c=0: ImageTransformer(s, categories=k, dim=12, heads=2,
                                                             layers=2, classes=c),
}
NAMES = list(BUILDERS)


def _build(name, shape=(1, 2, 2), categories=2, classes=0, seed=0):
    torch.manual_seed(seed)
    model = BUILDERS[name](list(shape), categories, classes).double().eval()
    with torch.no_grad():  # move away from the near-uniform initialisation
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model


def _all_images(shape, categories):
    d = math.prod(shape)
    grid = list(itertools.product(range(categories), repeat=d))
    return torch.tensor(grid, dtype=torch.float64).reshape(-1, *shape)


def _ranks(model):
    rank = torch.empty(model.num_pixels, dtype=torch.long)
    rank[model.order] = torch.arange(model.num_pixels)
    return rank


def test_every_model_joins_the_registry():
    for name in ("MADE", "PixelCNN", "GatedPixelCNN", "ImageTransformer"):
        assert name in MODELS


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("categories,shape", [(2, (1, 2, 2)), (3, (1, 1, 3))])
def test_probabilities_of_all_images_sum_to_one(name, categories, shape):
    model = _build(name, shape, categories)
    x = _all_images(shape, categories)
    total = model.log_prob(x).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_class_conditional_models_normalize_per_class_and_use_the_class(name):
    model = _build(name, (1, 2, 2), classes=3)
    x = _all_images((1, 2, 2), 2)
    per_class = [model.log_prob(x, torch.full((16,), c)).exp() for c in range(3)]
    for p in per_class:
        assert p.sum().item() == pytest.approx(1.0, abs=1e-10)
    assert not torch.allclose(per_class[0], per_class[1])
    onehot = torch.nn.functional.one_hot(torch.full((16,), 2), 3).double()
    assert torch.allclose(model.log_prob(x, onehot).exp(), per_class[2])


@pytest.mark.parametrize("name", NAMES)
def test_samples_follow_log_prob_chi_square(name):
    model = _build(name, (1, 2, 2))
    x = _all_images((1, 2, 2), 2)
    probs = model.log_prob(x).exp().detach()
    n = 20000
    samples = model.sample(n, generator=torch.Generator().manual_seed(1))
    index = (samples.reshape(n, 4) * torch.tensor([8.0, 4, 2, 1], dtype=torch.float64)).sum(1)
    counts = torch.bincount(index.long(), minlength=16).double()
    result = stats.chisquare(counts.numpy(), (n * probs / probs.sum()).numpy())
    assert result.pvalue > 1e-3, (counts, n * probs)


@pytest.mark.parametrize("name", NAMES)
def test_categorical_samples_follow_log_prob_chi_square(name):
    model = _build(name, (1, 1, 3), categories=3)
    x = _all_images((1, 1, 3), 3)
    probs = model.log_prob(x).exp().detach()
    n = 20000
    samples = model.sample(n, generator=torch.Generator().manual_seed(2)).reshape(n, 3)
    index = (samples * torch.tensor([9.0, 3, 1], dtype=torch.float64)).sum(1).long()
    counts = torch.bincount(index, minlength=27).double()
    assert stats.chisquare(counts.numpy(), (n * probs).numpy()).pvalue > 1e-3


def _dense_jacobian(model, shape, categories=2):
    x = torch.randint(0, categories, (1, *shape)).double()
    h0 = model.encode(x)
    jac = torch.autograd.functional.jacobian(lambda h: model.logits_from_input(h), h0)
    d = model.num_pixels
    out_extra = 0 if categories == 2 else 1
    jac = jac[0].abs()  # (*event[, K], 1, *event[, K'])
    jac = jac.reshape(d, -1, *jac.shape[len(shape) + out_extra :]).sum(1) if out_extra else \
        jac.reshape(d, *jac.shape[len(shape):])
    return jac[:, 0].reshape(d, d, -1).sum(-1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("categories,shape", [(2, (1, 3, 3)), (3, (1, 3, 3)), (2, (3, 2, 2))])
def test_autoregressive_property_exactly(name, categories, shape):
    """Logits of pixel i have zero derivative w.r.t. every pixel j at or after i."""
    model = _build(name, shape, categories)
    jac = _dense_jacobian(model, shape, categories)
    rank = _ranks(model)
    later = rank[None, :] >= rank[:, None]
    assert (jac[later] == 0).all()
    last, first = model.order[-1], model.order[0]
    assert jac[last].sum() > 0 and jac[first].sum() == 0


def test_made_ensemble_orders_each_autoregressive():
    model = _build("MADE-ensemble", (1, 3, 3))
    x = torch.randint(0, 2, (1, 1, 3, 3)).double()
    for k in range(3):
        order = model.orders[k]
        rank = torch.empty(9, dtype=torch.long)
        rank[order] = torch.arange(9)
        jac = torch.autograd.functional.jacobian(
            lambda h, k=k: model.logits_from_input(h, index=k), x)[0, :, :, :, 0]
        jac = jac.reshape(9, 9)
        assert (jac[rank[None, :] >= rank[:, None]] == 0).all()
    assert not torch.equal(model.orders[0], model.orders[1])


def test_made_ensemble_is_the_mixture_of_its_orders():
    model = _build("MADE-ensemble", (1, 2, 2))
    x = _all_images((1, 2, 2), 2)

    def per_order(k):
        logits = model.logits_from_input(x, index=k)
        return torch.distributions.Bernoulli(logits=logits).log_prob(x).sum((1, 2, 3)).exp()

    mixture = sum(per_order(k) for k in range(3)) / 3
    assert torch.allclose(model.log_prob(x).exp(), mixture)


def test_receptive_field_pixelcnn_has_a_blind_spot_gated_does_not():
    shape = (1, 7, 7)
    pixel = (4, 3)
    past = torch.zeros(7, 7, dtype=torch.bool)
    past.view(-1)[: 4 * 7 + 3] = True  # every pixel before (4, 3) in raster order
    torch.manual_seed(0)
    pixelcnn = PixelCNN(shape, channels=8, layers=4, kernel_size=3, first_kernel_size=3).double()
    gated = GatedPixelCNN(shape, channels=8, layers=4, kernel_size=3,
                          first_kernel_size=3).double()
    g = torch.Generator().manual_seed(0)
    p_bin, p_weight = receptive_field(pixelcnn, pixel, generator=g)
    g_bin, _ = receptive_field(gated, pixel, generator=g)
    assert (p_bin <= past).all() and (g_bin <= past).all()  # never a later pixel
    assert torch.equal(g_bin, past)  # gated: the whole causal past within reach
    assert not p_bin[3, 5] and not p_bin[3, 6] and p_bin[3, 4]  # the blind spot, up-right
    assert p_weight.max() == 1 and p_weight[~p_bin].max() <= 1e-8


def test_receptive_field_checks_the_pixel():
    model = PixelCNN([1, 4, 4], channels=4, layers=1)
    with pytest.raises(ValueError, match=r"pixel: expected an index into \(4, 4\)"):
        receptive_field(model, (4, 0))


def test_transformer_causal_mask_for_length_two():
    model = ImageTransformer([2], dim=8, heads=2, layers=1)
    expected = torch.tensor([[0.0, float("-inf")], [0.0, 0.0]])
    assert torch.equal(model.mask, expected) and torch.equal(causal_mask(2), expected)


@pytest.mark.parametrize("categories,classes", [(2, 0), (4, 0), (2, 3)])
def test_cached_sampling_equals_uncached(categories, classes):
    model = _build("ImageTransformer", (2, 3, 3), categories, classes)
    context = torch.tensor([0, 2]) if classes else None
    a = model.sample(5, context, generator=torch.Generator().manual_seed(7))
    b = model.sample(5, context, generator=torch.Generator().manual_seed(7), use_cache=False)
    assert torch.equal(a, b)
    given = a.reshape(-1, 2, 3, 3)[0].clone()
    given[:, 1:] = -1
    c = model.sample(5, context, given=given, generator=torch.Generator().manual_seed(8))
    d = model.sample(5, context, given=given, generator=torch.Generator().manual_seed(8),
                     use_cache=False)
    assert torch.equal(c, d)


@pytest.mark.parametrize("name", NAMES)
def test_completion_keeps_the_given_pixels(name):
    model = _build(name, (1, 4, 4))
    images = torch.randint(0, 2, (6, 1, 4, 4)).double()
    given = images.clone()
    given[:, :, 2:] = -1  # the course's convention: -1 is missing
    out = model.sample(6, given=given, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, :2], images[:, :, :2])
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    mask = torch.rand(6, 1, 4, 4) < 0.5  # scattered given pixels, explicit mask
    out = model.sample(6, given=images, mask=mask)
    assert torch.equal(out[mask], images[mask])
    full = model.sample(6, given=images, mask=torch.ones_like(mask))
    assert torch.equal(full, images)


def test_completion_draws_from_the_exact_conditional():
    """Top row given: the completions' distribution is p(bottom row | top row)."""
    model = _build("GatedPixelCNN", (1, 2, 2))
    top = torch.tensor([1.0, 0.0], dtype=torch.float64)
    x = _all_images((1, 2, 2), 2)
    rows = (x[:, 0, 0] == top).all(1)
    probs = model.log_prob(x[rows]).exp().detach()
    probs = probs / probs.sum()
    given = torch.full((1, 2, 2), -1.0, dtype=torch.float64)
    given[0, 0] = top
    n = 8000
    out = model.sample(n, given=given, generator=torch.Generator().manual_seed(4))
    index = (out[:, 0, 1] * torch.tensor([2.0, 1], dtype=torch.float64)).sum(1).long()
    counts = torch.bincount(index, minlength=4).double()
    assert stats.chisquare(counts.numpy(), (n * probs).numpy()).pvalue > 1e-3


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("categories", [2, 256])
def test_log_prob_is_in_nats_per_image(name, categories):
    """With every parameter zero, each pixel is uniform: log p(x) = -D log K exactly."""
    model = BUILDERS[name]([1, 3, 3], categories, 0).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    x = torch.randint(0, categories, (4, 1, 3, 3)).double()
    expected = torch.full((4,), -9 * math.log(categories), dtype=torch.float64)
    assert torch.allclose(model.log_prob(x), expected)
    assert torch.allclose(model.distribution().log_prob(x), expected)


@pytest.mark.parametrize("name", NAMES)
def test_maximum_likelihood_fit_recovers_a_known_distribution(name):
    """Through the shared objective and trainer, every model learns a skewed 2x2 law."""
    from probgen.inference import MaximumLikelihood, fit

    torch.manual_seed(0)
    model = BUILDERS[name]([1, 2, 2], 2, 0)
    x = _all_images((1, 2, 2), 2).float()
    target = torch.softmax(torch.randn(16, generator=torch.Generator().manual_seed(5)) * 1.5, 0)

    def sampler(n, generator=None):
        return x[torch.multinomial(target, n, replacement=True, generator=generator)]

    def kl():
        model.eval()
        with torch.no_grad():
            return (target * (target.log() - model.log_prob(x))).sum()

    before = kl()
    fit(MaximumLikelihood(model), sampler, steps=400, batch_size=256, lr=1e-2, progress=False)
    after = kl()
    assert 0 <= after < min(0.03, before / 10), (before, after)


def test_distribution_view_shapes_and_support():
    model = _build("PixelCNN", (1, 2, 2), classes=2)
    d = model.distribution(torch.tensor([0, 1, 1]))
    assert d.batch_shape == (3,) and d.event_shape == (1, 2, 2)
    s = d.sample((4,))
    assert s.shape == (4, 3, 1, 2, 2)
    assert torch.allclose(d.log_prob(s), model.log_prob(s, torch.tensor([0, 1, 1]).expand(4, 3)))
    assert d.support.check(s).all()


def test_log_prob_handles_batch_dimensions():
    model = _build("MADE", (1, 2, 2))
    x = torch.randint(0, 2, (3, 5, 1, 2, 2)).double()
    assert torch.allclose(model.log_prob(x).reshape(-1), model.log_prob(x.reshape(15, 1, 2, 2)))


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_explained(name):
    model = _build(name, (1, 2, 2))
    with pytest.raises(ValueError, match=r"binary pixels in \{0, 1\}; got values in \[0, 255\]"):
        model.log_prob(torch.tensor([0.0, 255.0, 3.0, 1.0]).reshape(1, 1, 2, 2))
    with pytest.raises(ValueError, match="some not integers"):
        model.log_prob(torch.full((1, 1, 2, 2), 0.5))
    with pytest.raises(ValueError, match=r"expected shape \(\.\.\., 1, 2, 2\)"):
        model.log_prob(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="unconditional"):
        model.log_prob(torch.zeros(1, 1, 2, 2), torch.tensor([0]))
    conditional = _build(name, (1, 2, 2), classes=2)
    with pytest.raises(ValueError, match="class-conditional"):
        conditional.sample(2)
    with pytest.raises(ValueError, match=r"labels in 0..1"):
        conditional.log_prob(torch.zeros(1, 1, 2, 2), torch.tensor([5]))
    with pytest.raises(ValueError, match="mask: expected a tensor of given's shape"):
        model.sample(2, given=torch.zeros(1, 2, 2), mask=torch.ones(2, 2))


def test_constructor_errors():
    with pytest.raises(ValueError, match="order: expected 'raster', 'random' or a permutation"):
        MADE([4], order="zigzag")
    with pytest.raises(ValueError, match=r"permutation of 0..3 \(4 pixels\)"):
        MADE([4], order=[0, 1, 2])
    with pytest.raises(ValueError, match="image shape"):
        PixelCNN([4])
    with pytest.raises(ValueError, match="kernel_size: expected a positive odd int"):
        GatedPixelCNN([1, 4, 4], kernel_size=4)
    with pytest.raises(ValueError, match="not a multiple of heads"):
        ImageTransformer([1, 2, 2], dim=10, heads=4)
    with pytest.raises(ValueError, match="categories"):
        PixelCNN([1, 2, 2], categories=1)


def test_mnist_sized_models_run(mnist_root):
    from probgen.data import binarize, load_mnist

    images, _ = load_mnist(mnist_root, "test")
    x = binarize(images[:4])
    for name in NAMES:
        model = BUILDERS[name]([1, 28, 28], 2, 0)
        lp = model.log_prob(x)
        assert lp.shape == (4,) and torch.isfinite(lp).all() and (lp < 0).all()


@pytest.mark.parametrize("name", ["PixelCNN", "GatedPixelCNN"])
def test_row_cropped_sampling_changes_no_number(name):
    """Conv models sample on rows 0..i only; the full-image sampler gives the same images."""
    model = _build(name, (3, 4, 3), categories=4, classes=2)
    assert model.row_causal
    context = torch.tensor([1, 0])
    a = model.sample(3, context, generator=torch.Generator().manual_seed(1))
    model.row_causal = False
    b = model.sample(3, context, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_run_data_binarizations():
    from probgen.data import load_digits
    from probgen.run.config import ConfigError
    from probgen.run.experiment import build_data

    raw, _ = load_digits("test")
    static = build_data({"data": {"name": "digits", "preprocess": "binarize"}})
    assert torch.equal(static.eval, (raw >= 8).float())  # half of the 0..16 range
    dynamic = build_data({"data": {"name": "digits", "preprocess": "dynamic_binarize"}})
    again = build_data({"data": {"name": "digits", "preprocess": "dynamic_binarize"}}, seed=5)
    assert torch.equal(dynamic.eval, again.eval)  # one fixed test binarization
    assert set(dynamic.eval.unique().tolist()) == {0.0, 1.0}
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([dynamic.train(4000, generator=g) for _ in range(5)])
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    train, _ = load_digits("train")  # E[draw] = mean intensity, within 5 standard errors
    mean = train.mean() / 16
    assert abs(draws.mean() - mean) < 5 * math.sqrt(mean * (1 - mean) / draws.numel()) + 1e-3
    discrete = build_data({"data": {"name": "digits", "preprocess": "discrete"}})
    assert torch.equal(discrete.eval, raw) and discrete.preprocess.to_unit(raw).max() == 1
    with pytest.raises(ConfigError, match="alpha applies to logit preprocessing"):
        build_data({"data": {"name": "digits", "preprocess": "binarize", "alpha": 0.1}})


def test_plot_receptive_field_marks_the_field_and_the_pixel():
    from probgen.plots import plot_receptive_field

    model = PixelCNN([1, 5, 5], channels=4, layers=1, kernel_size=3, first_kernel_size=3)
    binary, weighted = receptive_field(model, (2, 2))
    fig = plot_receptive_field(binary, weighted, (2, 2), title="field")
    rgb = fig.axes[0].images[0].get_array()
    assert tuple(rgb[2, 2]) == pytest.approx((0.85, 0.1, 0.1))  # the probed pixel, red
    assert tuple(rgb[4, 4]) == (1.0, 1.0, 1.0)  # a later pixel: outside the field, white
    assert rgb[1, 2, 0] < 1.0 and rgb[1, 2, 2] == 1.0  # the pixel above: in the field, blue
    with pytest.raises(ValueError, match="pixel: expected an index"):
        plot_receptive_field(binary, weighted, (5, 0))
