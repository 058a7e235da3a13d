"""Streaming statistics equal the all-at-once ones; every kind of sample source is read."""

from __future__ import annotations

import io

import pytest
import torch

from probgen.metrics import RunningMoments, collect_features, feature_moments, iter_batches


def _two_pass(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    mean = x.mean(0)
    xc = x - mean
    return mean, xc.T @ xc / (x.shape[0] - 1)


def test_batches_of_uneven_sizes_give_the_all_at_once_moments():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1037, 7, generator=g) @ torch.randn(7, 7, generator=g) + 3.0
    m = RunningMoments()
    for part in torch.split(x, [1, 2, 500, 34, 500]):
        m.update(part)
    mean, cov = _two_pass(x)
    assert m.count == 1037
    torch.testing.assert_close(m.mean, mean, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(m.covariance, cov, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.covariance, torch.cov(x.double().T), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block_rows", [None, 50, 333, 600])
def test_blocks_and_batches_of_any_size_give_the_all_at_once_moments(block_rows):
    # Whole blocks of a large batch are folded straight from the caller's tensor, the rest
    # is copied into the buffer: a caller that overwrites its batch right after update
    # (reusing one tensor) must not change the result.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1037, 7, generator=g) @ torch.randn(7, 7, generator=g) + 3.0
    mean, cov = _two_pass(x)
    for sizes in ([1037], [1, 2, 500, 34, 500], [49, 51, 937], [700, 337]):
        m = RunningMoments(block_rows=block_rows)
        for part in torch.split(x, sizes):
            batch = part.clone()
            m.update(batch)
            batch.fill_(float("nan"))
        assert m.count == 1037
        torch.testing.assert_close(m.mean, mean, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(m.covariance, cov, rtol=1e-12, atol=1e-12)


def test_large_offset_keeps_float64_accuracy():
    # Mean 1e6, variance 1: E[xx^T] - mu mu^T would lose every digit; the pairwise update
    # keeps the variance to ~1e-9 relative.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 3, generator=g, dtype=torch.float64) + 1e6
    m = RunningMoments()
    for part in x.split(999):
        m.update(part)
    _, cov = _two_pass(x)
    torch.testing.assert_close(m.covariance, cov, rtol=1e-9, atol=1e-9)


def test_merge_and_state_dict_round_trip():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(600, 4, generator=g)
    a, b = RunningMoments().update(x[:250]), RunningMoments().update(x[250:])
    merged = a.merge(b)
    whole = RunningMoments().update(x)
    torch.testing.assert_close(merged.covariance, whole.covariance, rtol=1e-12, atol=1e-12)
    buf = io.BytesIO()
    torch.save(merged.state_dict(), buf)
    buf.seek(0)
    back = RunningMoments.from_state_dict(torch.load(buf, weights_only=True))
    assert back.count == 600
    torch.testing.assert_close(back.mean, whole.mean)
    assert RunningMoments().merge(whole).count == 600


def test_sources_tensor_iterable_pairs_and_samplers():
    x = torch.arange(20.0).reshape(10, 2)
    assert [b.shape[0] for b in iter_batches(x, batch_size=4)] == [4, 4, 2]
    assert torch.equal(torch.cat(list(iter_batches(x, num_samples=5, batch_size=3))), x[:5])
    loader = [(x[:6], torch.zeros(6)), (x[6:], torch.zeros(4))]  # a labelled DataLoader
    assert torch.equal(torch.cat(list(iter_batches(loader, num_samples=8))), x[:8])
    calls = []

    def sample(shape):
        calls.append(shape)
        return torch.ones(*shape, 3)

    out = list(iter_batches(sample, num_samples=7, batch_size=3))
    assert calls == [(3,), (3,), (1,)] and sum(b.shape[0] for b in out) == 7
    dist = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    assert sum(b.shape[0] for b in iter_batches(dist, num_samples=9, batch_size=4)) == 9


def test_sampler_is_never_asked_for_more_than_one_batch():
    sizes = []

    def sample(shape):
        sizes.append(shape[0])
        return torch.randn(shape[0], 5)

    m = feature_moments(sample, num_samples=50_000, batch_size=1000)
    assert m.count == 50_000 and max(sizes) == 1000
    torch.testing.assert_close(m.mean, torch.zeros(5, dtype=torch.float64), atol=0.03, rtol=0)


def test_collect_features_applies_the_extractor():
    x = torch.randn(30, 1, 4, 4)
    f = collect_features(x, lambda b: b.flatten(1)[:, :3] * 2, batch_size=7)
    torch.testing.assert_close(f, x.flatten(1)[:, :3] * 2)
    assert collect_features(x).shape == (30, 16)


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="num_samples: required"):
        list(iter_batches(lambda s: torch.zeros(*s, 2)))
    with pytest.raises(ValueError, match="holds 3 samples"):
        list(iter_batches(torch.zeros(3, 2), num_samples=5))
    with pytest.raises(ValueError, match=r"asked for shape \(2,\)"):
        list(iter_batches(lambda s: torch.zeros(5, 2), num_samples=2))
    with pytest.raises(ValueError, match="source gave 3"):
        list(iter_batches([torch.zeros(3, 2)], num_samples=5))
    with pytest.raises(TypeError, match="expected a tensor, an iterable"):
        list(iter_batches(42))
    with pytest.raises(ValueError, match="vectors of size 3"):
        RunningMoments().update(torch.zeros(4, 3)).update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN or Inf"):
        RunningMoments().update(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="at least 2 vectors"):
        _ = RunningMoments().update(torch.zeros(1, 2)).covariance
    with pytest.raises(ValueError, match=r"features \(2, D\)"):
        collect_features(torch.zeros(2, 3), lambda b: b.sum())
