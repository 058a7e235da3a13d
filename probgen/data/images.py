"""Image data sets read offline: scikit-learn's 8x8 digits and MNIST from its IDX files."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from probgen.utils import atomic_write_bytes, check_choice

__all__ = [
    "DIGITS_LEVELS",
    "DIGITS_TEST_SIZE",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "find_mnist",
    "load_digits",
    "load_mnist",
    "read_idx",
]

#: Number of intensity levels of the 8x8 digits: integers 0..16.
DIGITS_LEVELS = 17
#: Size of the fixed held-out split of the digits (the other 1497 images are the train split).
DIGITS_TEST_SIZE = 300

#: ``split -> (images file, labels file)``, the standard IDX names without ``.gz``.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# MD5 of the DECOMPRESSED files, as published with the data set.
_MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
#: Where ``load_mnist(download=True)`` looks for the ``.gz`` files, in order.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
# IDX type byte -> big-endian NumPy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_CACHE: dict[tuple, tuple[Tensor, Tensor]] = {}


def load_digits(split: str = "train") -> tuple[Tensor, Tensor]:
    """Loads the 8x8 handwritten digits bundled with scikit-learn (1797 images, no download).

    The split is fixed and documented: ``numpy.random.RandomState(0).permutation(1797)``
    (a legacy NumPy stream, frozen by NumPy's compatibility policy); its first
    :data:`DIGITS_TEST_SIZE` = 300 indices are the ``"test"`` split, the other 1497 (in
    permuted order) the ``"train"`` split. ``"all"`` returns the 1797 images in their
    original order.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.

    Returns:
        tuple: images, float32 of shape ``(N, 1, 8, 8)`` holding integers ``0..16``
        (:data:`DIGITS_LEVELS` = 17 levels), and labels, int64 of shape ``(N,)``.

    Raises:
        ValueError: unknown ``split``.

    Example:
        >>> x, y = load_digits("test")
        >>> x.shape, x.dtype, int(x.max()), y.dtype
        (torch.Size([300, 1, 8, 8]), torch.float32, 16, torch.int64)
    """
    check_choice("split", split, ("train", "test", "all"))
    key = ("digits",)
    if key not in _CACHE:
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        images = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32)).reshape(-1, 1, 8, 8)
        labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
        _CACHE[key] = (images, labels)
    images, labels = _CACHE[key]
    if split == "all":
        return images.clone(), labels.clone()
    order = torch.from_numpy(np.random.RandomState(0).permutation(images.shape[0]))
    index = order[:DIGITS_TEST_SIZE] if split == "test" else order[DIGITS_TEST_SIZE:]
    return images[index].clone(), labels[index].clone()


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the file's suffix
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: not a valid gzip file ({e}).") from e
    return raw


def _parse_idx(data: bytes, source: str, magic: int | None) -> Tensor:
    if len(data) < 4:
        raise ValueError(f"{source}: too short for an IDX file ({len(data)} bytes).")
    found = int.from_bytes(data[:4], "big")
    if magic is not None and found != magic:
        raise ValueError(
            f"{source}: bad IDX magic number: expected {magic}, got {found} "
            f"(2051 = images, 2049 = labels)."
        )
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{source}: bad IDX magic number {found}: not an IDX file.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} bytes).")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{source}: IDX header announces sizes {dims} ({expected} bytes), "
            f"but the file has {len(data)} bytes."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def read_idx(
    path: str | os.PathLike, *, md5: str | None = None, magic: int | None = None
) -> Tensor:
    """Reads one IDX file (the format of MNIST and its relatives), gzip-compressed or raw.

    Compression is detected from the content (the gzip signature), not the suffix.

    Args:
        path: the file.
        md5: if given, the expected MD5 hex digest of the DECOMPRESSED bytes.
        magic: if given, the expected magic number (2051 for images, 2049 for labels).

    Returns:
        Tensor: the array with the shape the header announces, in the stored dtype
        (``uint8`` for MNIST).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: bad gzip stream, MD5 mismatch, bad magic number, or a size that does
            not match the header; the message names the file and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no IDX file at {path}.")
    data = _read_bytes(path)
    if md5 is not None:
        digest = hashlib.md5(data).hexdigest()
        if digest != md5:
            raise ValueError(
                f"{path}: MD5 of the decompressed bytes is {digest}, expected {md5}: "
                "the file is corrupt or not the published one; delete it and fetch it again."
            )
    return _parse_idx(data, str(path), magic)


def _roots(root: str | os.PathLike | None) -> list[Path]:
    if root is None:
        env = os.environ.get("PROBGEN_DATA")
        base = Path(env) if env else Path.home() / ".cache" / "probgen"
    else:
        base = Path(root)
    return [base, base / "mnist"]


def _find(name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


def find_mnist(
    root: str | os.PathLike | None = None,
    splits: str | tuple[str, ...] = ("train", "test"),
) -> Path | None:
    """The folder holding the MNIST files of ``splits``, or ``None`` where any is missing.

    Looks where :func:`load_mnist` looks, without reading or checking the files: in
    ``root`` and ``root/mnist``, ``root`` being ``PROBGEN_DATA``, else ``~/.cache/probgen``,
    when ``None``; each file may be gzip-compressed (``.gz``) or raw. Use it to skip MNIST
    work where the data is absent; passing the result as ``root`` to :func:`load_mnist`
    reads the files found.

    Args:
        root: the data folder (see above).
        splits: the split, or splits, whose image and label files must all be present.

    Returns:
        Path | None: the folder of the files (``root`` or ``root/mnist``; ``root`` itself
        when they are spread over both), or ``None`` when a file is missing.

    Raises:
        ValueError: an unknown split.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as empty:
        ...     print(find_mnist(empty))
        None
    """
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    for split in splits:
        check_choice("split", split, tuple(MNIST_FILES))
    folders = _roots(root)
    found = [_find(name, folders) for split in splits for name in MNIST_FILES[split]]
    if not found or any(path is None for path in found):
        return None
    parents = {path.parent for path in found}
    return parents.pop() if len(parents) == 1 else folders[0]


def _download(name: str, folder: Path) -> Path:
    errors = []
    for mirror in MNIST_MIRRORS:
        url = f"{mirror}{name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                payload = response.read()
            digest = hashlib.md5(gzip.decompress(payload)).hexdigest()
        except (OSError, EOFError) as e:
            errors.append(f"{url}: {e}")
            continue
        if digest != _MNIST_MD5[name]:
            errors.append(f"{url}: MD5 {digest}, expected {_MNIST_MD5[name]}")
            continue
        return atomic_write_bytes(folder / f"{name}.gz", payload)
    raise RuntimeError(f"Could not download {name}.gz from any mirror:\n  " + "\n  ".join(errors))


def load_mnist(
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    download: bool = False,
) -> tuple[Tensor, Tensor]:
    """Loads MNIST from its four standard IDX files, checked by MD5.

    The files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzip-compressed with a
    ``.gz`` suffix or raw) are looked up in ``root`` and ``root/mnist``. When ``root`` is
    ``None`` it is the environment variable ``PROBGEN_DATA``, else ``~/.cache/probgen``.
    The MD5 of the decompressed bytes must match the published value. Parsed tensors are
    cached in memory for the process (each call returns fresh copies).

    Args:
        root: the data folder (see above).
        split: ``"train"`` (60000 images) or ``"test"`` (10000 images).
        download: fetch missing files from :data:`MNIST_MIRRORS` into ``root/mnist``
            (written atomically, then MD5-checked). Needs a network connection.

    Returns:
        tuple: images, uint8 of shape ``(N, 1, 28, 28)`` with values 0..255, and labels,
        int64 of shape ``(N,)``.

    Raises:
        FileNotFoundError: a file is missing and ``download`` is false; the message names
            the files and the folders searched.
        ValueError: unknown ``split``, MD5 mismatch or a malformed file.

    Example:
        >>> images, labels = load_mnist("/path/to/data", "test")  # doctest: +SKIP
        >>> images.shape, labels.shape  # doctest: +SKIP
        (torch.Size([10000, 1, 28, 28]), torch.Size([10000]))
    """
    check_choice("split", split, tuple(MNIST_FILES))
    folders = _roots(root)
    paths = []
    for name in MNIST_FILES[split]:
        path = _find(name, folders)
        if path is None and download:
            path = _download(name, folders[1])
        if path is None:
            wanted = ", ".join(f"{n}.gz" for n in MNIST_FILES[split])
            raise FileNotFoundError(
                f"MNIST {split} split: {name}.gz (or {name}, uncompressed) not found in "
                f"{' or '.join(str(f) for f in folders)}. Put the files {wanted} in "
                f"{folders[1]} (or pass root=..., or set PROBGEN_DATA to the folder that "
                "holds them), or call load_mnist(..., download=True) when online."
            )
        paths.append(path)
    key = ("mnist", *(str(p.resolve()) for p in paths))
    if key not in _CACHE:
        images = read_idx(paths[0], md5=_MNIST_MD5[MNIST_FILES[split][0]], magic=_IMAGES_MAGIC)
        labels = read_idx(paths[1], md5=_MNIST_MD5[MNIST_FILES[split][1]], magic=_LABELS_MAGIC)
        _CACHE[key] = (images.unsqueeze(1), labels.long())
    images, labels = _CACHE[key]
    return images.clone(), labels.clone()
