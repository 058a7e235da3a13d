"""The CIFAR reader on batches written in the published python-pickle format."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

from probgen.data import CIFAR_SETS, find_cifar, load_cifar, read_cifar_batch
from probgen.data import cifar as cifar_module


def _batch(n: int, seed: int, *, cifar100: bool = False) -> dict:
    """A batch as the published files hold it: bytes keys, uint8 rows of 3072 values
    (red plane, green plane, blue plane, each row-major), labels as a list of ints."""
    rng = np.random.RandomState(seed)
    out = {b"batch_label": b"testing batch", b"data": rng.randint(0, 256, (n, 3072)).astype(
        np.uint8), b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    if cifar100:
        out[b"fine_labels"] = rng.randint(0, 100, n).tolist()
        out[b"coarse_labels"] = rng.randint(0, 20, n).tolist()
    else:
        out[b"labels"] = rng.randint(0, 10, n).tolist()
    return out


def _write(folder, name: str, batch: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture
def cifar10(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = {}
    for i, (name, _) in enumerate(CIFAR_SETS["cifar10"][1]["train"] + CIFAR_SETS["cifar10"][1][
            "test"]):
        batches[name] = _batch(7 + i, i)
        _write(folder, name, batches[name])
    return tmp_path, batches


def test_reads_the_pickle_layout_into_rgb_images(cifar10):
    root, batches = cifar10
    images, labels = load_cifar("cifar10", root, "train", check_md5=False)
    assert images.shape == (7 + 8 + 9 + 10 + 11, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.shape == (images.shape[0],)
    first = batches["data_batch_1"]
    row = first[b"data"][2]
    # channel c, pixel (i, j) is entry c * 1024 + 32 i + j of the row
    for c, i, j in [(0, 0, 0), (1, 5, 7), (2, 31, 31), (0, 17, 3)]:
        assert int(images[2, c, i, j]) == int(row[c * 1024 + 32 * i + j])
    assert labels[:7].tolist() == first[b"labels"]
    # the five training batches in order
    last = batches["data_batch_5"]
    assert labels[-11:].tolist() == last[b"labels"]
    test_images, test_labels = load_cifar("cifar10", root, "test", check_md5=False)
    assert test_images.shape == (12, 3, 32, 32)
    assert test_labels.tolist() == batches["test_batch"][b"labels"]


def test_the_published_md5_is_checked_before_unpickling(cifar10, monkeypatch):
    root, _ = cifar10
    with pytest.raises(ValueError, match=r"data_batch_1: MD5 is [0-9a-f]{32}, expected "
                                         r"c99cafc152244af753f735de768cd75f"):
        load_cifar("cifar10", root, "train")
    # with the files' own MD5s as the published ones, they load
    folder = root / "cifar-10-batches-py"
    sums = {split: [(f, hashlib.md5((folder / f).read_bytes()).hexdigest()) for f, _ in files]
            for split, files in CIFAR_SETS["cifar10"][1].items()}
    entry = CIFAR_SETS["cifar10"]
    monkeypatch.setitem(CIFAR_SETS, "cifar10", (entry[0], sums, entry[2], entry[3]))
    images, _ = load_cifar("cifar10", root, "test")
    assert images.shape == (12, 3, 32, 32)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    train, test = _batch(9, 1, cifar100=True), _batch(4, 2, cifar100=True)
    _write(folder, "train", train)
    _write(folder, "test", test)
    images, fine = load_cifar("cifar100", tmp_path, "train", check_md5=False)
    _, coarse = load_cifar("cifar100", tmp_path, "train", labels="coarse", check_md5=False)
    assert images.shape == (9, 3, 32, 32)
    assert fine.tolist() == train[b"fine_labels"]
    assert coarse.tolist() == train[b"coarse_labels"]
    with pytest.raises(ValueError, match="labels: expected 'fine' or 'coarse'"):
        load_cifar("cifar100", tmp_path, "train", labels="medium", check_md5=False)


def test_missing_corrupt_and_foreign_files_are_clear_errors(tmp_path, cifar10):
    assert find_cifar("cifar10", tmp_path / "nothing") is None
    with pytest.raises(FileNotFoundError, match="data_batch_1.*not found in"):
        load_cifar("cifar10", tmp_path / "nothing", "train")
    with pytest.raises(ValueError, match="split: expected one of"):
        load_cifar("cifar10", tmp_path, "valid")
    with pytest.raises(ValueError, match="name: expected one of"):
        load_cifar("cifar1000", tmp_path)
    root, _ = cifar10
    path = root / "cifar-10-batches-py" / "test_batch"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(ValueError, match="test_batch: not a CIFAR python-pickle batch"):
        read_cifar_batch(path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [1]}, protocol=2))
    with pytest.raises(ValueError, match="refused the global"):
        read_cifar_batch(path)
    _write(path.parent, "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="expected data of uint8 rows of 3072"):
        read_cifar_batch(path)
    _write(path.parent, "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(ValueError, match="expected 2 integer labels"):
        read_cifar_batch(path)
    _write(path.parent, "test_batch", {b"images": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(ValueError, match="expected the keys 'data' and 'labels'"):
        read_cifar_batch(path)


def test_results_are_fresh_copies(cifar10):
    root, _ = cifar10
    a, _ = load_cifar("cifar10", root, "test", check_md5=False)
    a.zero_()
    b, _ = load_cifar("cifar10", root, "test", check_md5=False)
    assert b.sum() > 0
    assert cifar_module._CACHE  # parsed once per process
