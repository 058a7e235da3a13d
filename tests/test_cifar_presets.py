"""Every 3x32x32 preset builds and trains a few steps on CPU, on CIFAR batches written in
the published python-pickle format (the reader is tested in tests/test_cifar.py)."""

from __future__ import annotations

import hashlib
import json
import math
import pickle

import numpy as np
import pytest

from probgen.data import CIFAR_SETS
from probgen.run.config import list_presets, load_config
from probgen.run.experiment import fit_run

CIFAR_PRESETS = [n for n in list_presets() if n.endswith("-cifar10")]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for files in CIFAR_SETS["cifar10"][1].values():
        for name, _ in files:
            batch = {b"data": rng.randint(0, 256, (12, 3072)).astype(np.uint8),
                     b"labels": rng.randint(0, 10, 12).tolist()}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def test_the_course_families_have_cifar_presets():
    families = {load_config(n)["model"]["name"] for n in CIFAR_PRESETS}
    assert {"VAE", "VQVAE", "DCGAN", "MultiscaleRealNVP", "Glow", "PixelCNN", "ConvScoreNet",
            "DDPM", "ImageScoreSDE", "ImageFlowMatching"} <= families
    objectives = {load_config(n)["objective"]["name"] for n in CIFAR_PRESETS}
    assert {"wgan", "wgan_gp", "cfm", "ddpm", "ncsn", "sde_dsm", "ml", "elbo",
            "vqvae"} <= objectives
    for name in CIFAR_PRESETS:
        assert load_config(name)["data"]["name"] == "cifar10"


@pytest.mark.slow
@pytest.mark.parametrize("name", CIFAR_PRESETS)
def test_every_cifar_preset_trains_a_few_steps(tmp_path, cifar_root, name, monkeypatch):
    # the written batches' own MD5s stand in for the published ones
    folder, splits, key, classes = CIFAR_SETS["cifar10"]
    sums = {split: [(f, hashlib.md5((cifar_root / folder / f).read_bytes()).hexdigest())
                    for f, _ in files] for split, files in splits.items()}
    monkeypatch.setitem(CIFAR_SETS, "cifar10", (folder, sums, key, classes))
    config = load_config(name)
    gan = config["objective"]["name"] in ("wgan", "wgan_gp")
    overrides = [f"data.root={json.dumps(str(cifar_root))}", "train.steps=2",
                 f"train.batch_size={10 if gan else 4}", "train.log_every=1",
                 "train.warmup_steps=0",
                 "train.checkpoint_every=2", "sample.n=4", "train.threads=1"]
    if "eval_every" in config["train"]:
        overrides.append("train.eval_every=2")
    if "steps" in config.get("sample", {}):
        overrides.append("sample.steps=3")
    if "labels" in config.get("sample", {}):
        overrides.append("sample.labels=[0, 1, 2, 3]")
    if config["model"]["name"] == "PixelCNN":  # 3072 network calls per sample: a small net
        overrides += ["model.channels=12", "model.layers=2"]
    if "eval" in config and "num_samples" in config["eval"]:
        overrides.append("eval.num_samples=8")
    config = load_config(name, overrides)
    result = fit_run(config, out_dir=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert all(math.isfinite(v) for v in result.values() if isinstance(v, float)), result
