"""Several metrics in one pass, and `probgen eval RUN --metrics` on a short 2-D run."""

from __future__ import annotations

import json

import pytest
import torch

from probgen.cli import main
from probgen.metrics import (
    compare_samples,
    fid,
    kid,
    parse_metrics,
    precision_recall,
    wasserstein2,
)


def test_compare_samples_equals_the_single_metrics():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 3, generator=g), torch.randn(600, 3, generator=g) + 0.5
    out = compare_samples(x, y.split(100), metrics="fid,kid,pr,dc,mmd,w2",
                          kid_subsets=5, kid_subset_size=200,
                          generator=torch.Generator().manual_seed(1), w2_points=300)
    assert out["fid"] == pytest.approx(fid(x, y), rel=1e-10)
    expected = kid(x, y, num_subsets=5, subset_size=200,
                   generator=torch.Generator().manual_seed(1))
    assert out["kid"] == pytest.approx(expected.mean, rel=1e-10)
    assert (out["precision"], out["recall"]) == tuple(precision_recall(x, y))
    assert out["w2"] == pytest.approx(wasserstein2(x[:300], y[:300]), rel=1e-12)
    assert {"density", "coverage", "mmd2", "kid_std"} <= set(out)


def test_parse_metrics_rejects_unknown_names():
    assert parse_metrics("FID, kid,pr,fid") == ("fid", "kid", "pr")
    with pytest.raises(ValueError, match="allowed"):
        parse_metrics("fid,inception")
    with pytest.raises(ValueError, match="needs a classifier"):
        compare_samples(torch.randn(10, 2), torch.randn(10, 2), metrics="is")


def test_cli_eval_with_sample_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "realnvp-moons", "--out", str(out), "--quiet", "--set",
                 "train.steps=60", "--set", "data.eval_size=1500", "--set",
                 "eval.resolution=20", "--set", "sample.n=100"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--metrics", "fid,kid,pr,w2",
                 "--num-samples", "1000"]) == 0
    result = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "eval.json").read_text())
    assert result == saved and "test/nll" in result
    assert result["samples/num_samples"] == 1000
    assert 0 < result["samples/coordinates/fid"] < 10
    assert 0 <= result["samples/coordinates/precision"] <= 1
    assert 0 <= result["samples/coordinates/recall"] <= 1
    assert {"samples/coordinates/kid", "samples/coordinates/kid_std",
            "samples/coordinates/w2"} <= set(result)
    # Same seed, same samples: the numbers repeat exactly.
    assert main(["eval", str(out), "--metrics", "fid", "--num-samples", "1000"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["samples/coordinates/fid"] == result["samples/coordinates/fid"]
    assert main(["eval", str(out), "--metrics", "fid,bogus"]) == 2
    assert "allowed" in capsys.readouterr().err
    assert main(["eval", str(out), "--metrics", "is"]) == 2
    assert "MNIST only" in capsys.readouterr().err
    assert main(["eval", str(out), "--metrics", "fid", "--num-samples", "999999"]) == 2


class _Replay(torch.nn.Module):
    """A 'model' whose samples are given images mapped to model space (or noise)."""

    def __init__(self, pre, images, noise=False):
        super().__init__()
        self.pre, self.images, self.noise, self.at = pre, images, noise, 0

    def sample(self, shape):
        n = shape[0]
        x = self.images[self.at : self.at + n]
        self.at += n
        if self.noise:
            x = torch.randint(0, 256, x.shape, dtype=torch.uint8)
        return self.pre(x, dequantize=False)[0]


@pytest.mark.mnist
def test_run_metrics_on_mnist_use_the_classifier_features(mnist_root):
    from probgen.data import ImagePreprocess, load_mnist
    from probgen.metrics import run_sample_metrics
    from probgen.run.experiment import DataBundle

    test, _ = load_mnist(mnist_root, "test")
    train, _ = load_mnist(mnist_root, "train")
    pre = ImagePreprocess(levels=256, transform="logit", alpha=0.05, flatten=True,
                          shape=(1, 28, 28))
    data = DataBundle("mnist", "image", None, test[:1000].float(), (784,), pre)
    # Samples that are real digits (other ones): FID near 0, precision and recall high;
    # uniform noise: FID large, precision 0.
    good = run_sample_metrics(_Replay(pre, train[:1000]), data, "fid,pr,is", num_samples=1000)
    bad = run_sample_metrics(_Replay(pre, train[:1000], noise=True), data, "fid,pr",
                             num_samples=1000)
    assert set(good) == {"samples/mnist_classifier/fid", "samples/mnist_classifier/precision",
                         "samples/mnist_classifier/recall", "samples/mnist_classifier/is",
                         "samples/mnist_classifier/is_std", "samples/num_samples"}
    assert good["samples/mnist_classifier/fid"] < 5
    assert good["samples/mnist_classifier/precision"] > 0.7
    assert good["samples/mnist_classifier/is"] > 8.5
    assert bad["samples/mnist_classifier/fid"] > 50 * good["samples/mnist_classifier/fid"]
    assert bad["samples/mnist_classifier/precision"] < 0.05
