r"""CIFAR-10 and CIFAR-100 read from their standard python-pickle batches, checked by MD5.

The published archives (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``) unpack into
``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
``batches.meta``) and ``cifar-100-python/`` (``train``, ``test``, ``meta``). Each batch is a
pickled dict whose ``data`` is a ``(N, 3072)`` uint8 array, one row per image: the 1024 red
values in row-major order, then the green, then the blue ones; labels are ``labels``
(CIFAR-10) or ``fine_labels`` / ``coarse_labels`` (CIFAR-100).

Pickle files can run code when loaded; these are read by an unpickler that builds only
NumPy arrays and plain Python containers and refuses every other object, and, unless the
caller turns it off, only after their MD5 matched the published value.

References:
    Learning Multiple Layers of Features from Tiny Images (Krizhevsky, 2009),
    https://www.cs.toronto.edu/~kriz/learning-features-2009-TR.pdf
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from probgen.utils import atomic_write_bytes, check_choice

__all__ = ["CIFAR_SETS", "CIFAR_URLS", "find_cifar", "load_cifar", "read_cifar_batch"]

#: ``name -> (folder, {split: [(file, md5), ...]}, label key, number of classes)``; the MD5
#: of each file as published with the data set.
CIFAR_SETS: dict[str, tuple[str, dict[str, list[tuple[str, str]]], str, int]] = {
    "cifar10": ("cifar-10-batches-py", {
        "train": [("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                  ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                  ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                  ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                  ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")],
        "test": [("test_batch", "40351d587109b95175f43aff81a1287e")],
    }, "labels", 10),
    "cifar100": ("cifar-100-python", {
        "train": [("train", "16019d7e3df5f24257cddd939b257f8d")],
        "test": [("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")],
    }, "fine_labels", 100),
}
#: ``name -> (archive URL, archive MD5)``, for ``download=True``.
CIFAR_URLS: dict[str, tuple[str, str]] = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85"),
}
_SIDE, _PIXELS = 32, 3 * 32 * 32
_CACHE: dict[tuple, tuple[Tensor, Tensor]] = {}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds NumPy arrays, dtypes and plain containers; refuses every other global."""

    _ALLOWED = {(f"numpy{core}.{module}", name) for core in ("._core", ".core")
                for module, name in (("multiarray", "_reconstruct"),
                                     ("numeric", "_frombuffer"))} | {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused the global {module}.{name} (a CIFAR batch holds "
                                     "only arrays, lists and strings)")


def read_cifar_batch(path: str | os.PathLike, *, md5: str | None = None,
                     label_key: str = "labels") -> tuple[Tensor, Tensor]:
    """Reads one CIFAR python-pickle batch.

    Args:
        path: the batch file.
        md5: the expected MD5 hex digest of the file (checked before unpickling), or
            ``None`` for no check (files that are not the published ones).
        label_key: ``"labels"`` (CIFAR-10), ``"fine_labels"`` or ``"coarse_labels"``
            (CIFAR-100).

    Returns:
        tuple: images, uint8 ``(N, 3, 32, 32)`` (RGB), and labels, int64 ``(N,)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: an MD5 mismatch, a file that is not a CIFAR batch (not a pickle, foreign
            objects, missing keys, a wrong shape or dtype); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no CIFAR batch at {path}.")
    raw = path.read_bytes()
    if md5 is not None:
        digest = hashlib.md5(raw).hexdigest()
        if digest != md5:
            raise ValueError(f"{path}: MD5 is {digest}, expected {md5}: the file is corrupt or "
                             "not the published one; delete it and fetch it again.")
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any unpickling failure means: not a CIFAR batch
        raise ValueError(f"{path}: not a CIFAR python-pickle batch ({e}).") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}.")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: expected the keys 'data' and {label_key!r}, got "
                         f"{sorted(map(str, batch))}.")
    data, labels = batch["data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
            data.shape[1] != _PIXELS):
        got = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise ValueError(f"{path}: expected data of uint8 rows of {_PIXELS} values, got {got}.")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: expected {data.shape[0]} integer labels, got shape "
                         f"{labels.shape} of {labels.dtype}.")
    images = torch.from_numpy(data.reshape(-1, 3, _SIDE, _SIDE).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def _roots(root: str | os.PathLike | None) -> list[Path]:
    if root is None:
        env = os.environ.get("PROBGEN_DATA")
        root = Path(env) if env else Path.home() / ".cache" / "probgen"
    return [Path(root)]


def find_cifar(name: str = "cifar10", root: str | os.PathLike | None = None) -> Path | None:
    """The folder holding every batch of ``name`` (``cifar10`` or ``cifar100``), or ``None``.

    Looks in ``root/<folder>`` and ``root`` itself (``<folder>`` being
    ``cifar-10-batches-py`` or ``cifar-100-python``; ``root`` is ``PROBGEN_DATA``, else
    ``~/.cache/probgen``, when ``None``), without reading the files.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as empty:
        ...     print(find_cifar("cifar10", empty))
        None
    """
    check_choice("name", name, CIFAR_SETS)
    folder, splits, _, _ = CIFAR_SETS[name]
    files = [f for split in splits.values() for f, _ in split]
    for base in _roots(root):
        for candidate in (base / folder, base):
            if all((candidate / f).is_file() for f in files):
                return candidate
    return None


def _download(name: str, base: Path) -> None:
    url, md5 = CIFAR_URLS[name]
    with urllib.request.urlopen(url, timeout=120) as response:
        payload = response.read()
    digest = hashlib.md5(payload).hexdigest()
    if digest != md5:
        raise RuntimeError(f"{url}: MD5 {digest}, expected {md5}.")
    folder, splits, _, _ = CIFAR_SETS[name]
    wanted = {f"{folder}/{f}" for split in splits.values() for f, _ in split}
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
        for member in archive.getmembers():
            if member.name in wanted and member.isfile():
                extracted = archive.extractfile(member)
                if extracted is not None:  # a regular file member always has content
                    atomic_write_bytes(base / member.name, extracted.read())


def load_cifar(
    name: str = "cifar10",
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    labels: str = "fine",
    download: bool = False,
    check_md5: bool = True,
) -> tuple[Tensor, Tensor]:
    """Loads CIFAR-10 or CIFAR-100 from the standard python-pickle batches.

    The batches are looked up as :func:`find_cifar` does; each file's MD5 must match the
    published value before it is unpickled (by an unpickler that builds nothing but arrays).
    Parsed tensors are cached in memory for the process (each call returns fresh copies).

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: the data folder (``PROBGEN_DATA``, else ``~/.cache/probgen``, when ``None``).
        split: ``"train"`` (50000 images) or ``"test"`` (10000 images).
        labels: CIFAR-100's ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
        download: fetch and unpack the archive into ``root`` when files are missing (MD5
            checked; needs a network connection).
        check_md5: compare each file with its published MD5 (turn off only for files of the
            same format that are not the published ones, e.g. subsets).

    Returns:
        tuple: images, uint8 ``(N, 3, 32, 32)`` with values 0..255 (RGB), and labels, int64
        ``(N,)``.

    Raises:
        FileNotFoundError: files missing and ``download`` false; the message names the
            files and the folders searched.
        ValueError: unknown names, an MD5 mismatch or a malformed file.

    Example:
        >>> images, labels = load_cifar("cifar10", "/path/to/data", "test")  # doctest: +SKIP
        >>> images.shape, labels.shape  # doctest: +SKIP
        (torch.Size([10000, 3, 32, 32]), torch.Size([10000]))
    """
    check_choice("name", name, CIFAR_SETS)
    folder, splits, label_key, _ = CIFAR_SETS[name]
    check_choice("split", split, splits)
    if name == "cifar100":
        if labels not in ("fine", "coarse"):
            raise ValueError(f"labels: expected 'fine' or 'coarse', got {labels!r}.")
        label_key = f"{labels}_labels"
    base = _roots(root)[0]
    found = find_cifar(name, root)
    if found is None and download:
        _download(name, base)
        found = find_cifar(name, root)
    if found is None:
        files = ", ".join(f for part in splits.values() for f, _ in part)
        raise FileNotFoundError(
            f"{name}: the batches {files} not found in {base / folder} or {base}. Unpack "
            f"the published python archive there (it creates {folder}/), pass root=..., set "
            f"PROBGEN_DATA, or call load_cifar(..., download=True) when online.")
    key = (name, split, label_key, check_md5, str(found.resolve()))
    if key not in _CACHE:
        parts = [read_cifar_batch(found / f, md5=md5 if check_md5 else None,
                                  label_key=label_key) for f, md5 in splits[split]]
        _CACHE[key] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    images, targets = _CACHE[key]
    return images.clone(), targets.clone()
