"""Reading the paper's raw formats directly (no torchvision, no pickle): MNIST's IDX files, the CIFAR-10
binary version, the text8 zip; and the embedded data sets. Class labels are read only when asked for
(MNIST's label files are downloaded only then). Your own data is in :mod:`own_data`."""

from __future__ import annotations

import gzip
import os
import struct
import tarfile
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from bfncli.data.download import RemoteFile, ensure
from bfncli.data.examples import encode_text
from bfncli.errors import InputError, UserError

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST = {
    "train": RemoteFile("train-images-idx3-ubyte.gz", tuple(m + "train-images-idx3-ubyte.gz" for m in MNIST_MIRRORS),
                        md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "test": RemoteFile("t10k-images-idx3-ubyte.gz", tuple(m + "t10k-images-idx3-ubyte.gz" for m in MNIST_MIRRORS),
                       md5="9fb629c4189551a2d022fa330f9573f3"),
}
MNIST_LABELS = {
    "train": RemoteFile("train-labels-idx1-ubyte.gz", tuple(m + "train-labels-idx1-ubyte.gz" for m in MNIST_MIRRORS),
                        md5="d53e105ee54ea40749a09fcbcd1e9432"),
    "test": RemoteFile("t10k-labels-idx1-ubyte.gz", tuple(m + "t10k-labels-idx1-ubyte.gz" for m in MNIST_MIRRORS),
                       md5="ec29112dd5afa0611ce80d1b7f02629c"),
}
DIGIT_CLASSES = tuple("0123456789")  # MNIST and the embedded digits
CIFAR10_SIZES = {"train": 50000, "test": 10000}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10 = RemoteFile("cifar-10-binary.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
                     md5="c32a1d4ab5d03f1284b67883e8d87530")
TEXT8 = RemoteFile("text8.zip", ("https://mattmahoney.net/dc/text8.zip", "http://mattmahoney.net/dc/text8.zip"),
                   md5="f26f94c5209bc6159618bad4a559ff81", size=31_344_016)
TEXT8_CHARS = 100_000_000


# ------------------------------------------------------------------------------------ MNIST
def _read_idx(path: Path) -> bytes:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:
        raise InputError(f"'{path}' is not a readable (gzip) IDX file ({err}); delete it to download it again") from None


def read_idx_images(path: Path) -> Tensor:
    """An IDX3 file of uint8 images (gzip-compressed or not) -> (N, H, W) uint8."""
    data = _read_idx(path)
    if len(data) < 16 or struct.unpack(">I", data[:4])[0] != 0x803:
        raise InputError(f"'{path}' is not an IDX image file (bad magic number); delete it to download it again")
    n, h, w = struct.unpack(">III", data[4:16])
    if len(data) != 16 + n * h * w:
        raise InputError(f"'{path}' is truncated ({len(data) - 16} of {n * h * w} pixel bytes); delete it to download "
                         "it again")
    return torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).reshape(n, h, w)


def read_idx_labels(path: Path) -> Tensor:
    """An IDX1 file of uint8 labels (gzip-compressed or not) -> (N,) uint8."""
    data = _read_idx(path)
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != 0x801:
        raise InputError(f"'{path}' is not an IDX label file (bad magic number); delete it to download it again")
    n = struct.unpack(">I", data[4:8])[0]
    if len(data) != 8 + n:
        raise InputError(f"'{path}' is truncated ({len(data) - 8} of {n} labels); delete it to download it again")
    return torch.frombuffer(bytearray(data[8:]), dtype=torch.uint8)


def mnist_images(root: Path, part: str, download: bool, mirrors: list[str]) -> Tensor:
    return read_idx_images(ensure(MNIST[part], root / "mnist", download, mirrors))


def mnist_labels(root: Path, part: str, download: bool, mirrors: list[str], count: int) -> Tensor:
    """The digit (0..9) of each of the ``count`` images of an MNIST part."""
    path = ensure(MNIST_LABELS[part], root / "mnist", download, mirrors)
    labels = read_idx_labels(path)
    if labels.numel() != count:
        raise InputError(f"'{path}' has {labels.numel()} labels but {MNIST[part].name} has {count} images; "
                         "delete the one that does not belong to download it again")
    if labels.numel() and labels.max() > 9:
        raise InputError(f"'{path}' has labels above 9: not MNIST's label file; delete it to download it again")
    return labels.long()


# --------------------------------------------------------------------------------- CIFAR-10
def read_cifar10_binary(archive: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """cifar-10-binary.tar.gz -> {"train": (pixels, labels), "test": (pixels, labels)}: pixels
    (50000 or 10000, 32, 32, 3) uint8, labels (50000 or 10000,) uint8 (indices into CIFAR10_CLASSES).

    Each record is a label byte and 3072 pixel bytes (the red, green and blue planes, row-major).
    The five training batches are concatenated in order, like the official loader.
    """
    names = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and base in names["train"] + names["test"]:
                    found[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise InputError(f"'{archive}' is not a readable CIFAR-10 binary archive ({err}); delete it to download it "
                         "again") from None
    out = {}
    for part, files in names.items():
        missing = [f for f in files if f not in found]
        if missing:
            raise InputError(f"'{archive}' lacks {', '.join(missing)}: is it the CIFAR-10 *binary* version?")
        blob = b"".join(found[f] for f in files)
        if len(blob) % 3073:
            raise InputError(f"'{archive}' has truncated records; delete it to download it again")
        records = torch.frombuffer(bytearray(blob), dtype=torch.uint8).reshape(-1, 3073)
        out[part] = (records[:, 1:].reshape(-1, 3, 32, 32).permute(0, 2, 3, 1).contiguous(), records[:, 0].clone())
    return out


def cifar10_images(root: Path, part: str, download: bool, mirrors: list[str]) -> Tensor:
    """CIFAR-10 pixels, decoded once from the archive and cached beside it (with the labels)."""
    directory = root / "cifar10"
    cached = _read_cache(directory / f"{part}.safetensors", (CIFAR10_SIZES[part], 32, 32, 3))
    if cached is not None:
        return cached
    return _decode_cifar10(directory, part, download, mirrors)[0]


def cifar10_labels(root: Path, part: str, download: bool, mirrors: list[str]) -> Tensor:
    """The class (0..9, see CIFAR10_CLASSES) of each CIFAR-10 image, int64. Caches written before labels
    were kept hold pixels only: they are rebuilt from the archive."""
    directory = root / "cifar10"
    labels = _read_cached_labels(directory / f"{part}.safetensors", CIFAR10_SIZES[part])
    if labels is None:
        labels = _decode_cifar10(directory, part, download, mirrors)[1]
    if labels.numel() and labels.max() >= len(CIFAR10_CLASSES):
        raise InputError(f"'{directory / CIFAR10.name}' has labels above 9: not the CIFAR-10 binary archive")
    return labels.long()


def _decode_cifar10(directory: Path, part: str, download: bool, mirrors: list[str]) -> tuple[Tensor, Tensor]:
    parts = read_cifar10_binary(ensure(CIFAR10, directory, download, mirrors))
    for name, (pixels, labels) in parts.items():
        _write_cache(directory / f"{name}.safetensors", pixels, labels)
    return parts[part]


# ------------------------------------------------------------------------------------ text8
def check_text8_zip(path: Path) -> Optional[str]:
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("text8")
            if info.file_size != TEXT8_CHARS:
                return f"holds {info.file_size:,} characters instead of {TEXT8_CHARS:,}"
            if z.testzip() is not None:
                return "fails its CRC check"
    except (zipfile.BadZipFile, KeyError, OSError, EOFError):
        return "is not the text8 zip (no 'text8' member)"
    return None


def text8_split(root: Path, split: str, download: bool, mirrors: list[str]) -> Tensor:
    """text8 as uint8 codes, split 90/5/5 (cached beside the zip as raw bytes)."""
    directory = root / "text8"
    n = TEXT8_CHARS
    bounds = {"train": (0, n * 9 // 10), "val": (n * 9 // 10, n * 19 // 20), "test": (n * 19 // 20, n)}
    lo, hi = bounds[split]
    cached = _read_cache(directory / f"{split}.safetensors", (hi - lo,))
    if cached is not None:
        return cached
    archive = directory / TEXT8.name
    if not archive.exists():
        ensure(TEXT8, directory, download, mirrors)
    problem = check_text8_zip(archive)  # downloads are checksummed; a copy put there by hand is checked here
    if problem is not None:
        raise InputError(f"'{archive}' {problem}; delete it to download it again")
    with zipfile.ZipFile(archive) as z:
        raw = z.read("text8")
    if set(raw) - set(b" abcdefghijklmnopqrstuvwxyz"):
        raise InputError(f"'{archive}' has characters outside text8's alphabet: not the text8 corpus")
    table = bytes.maketrans(b" abcdefghijklmnopqrstuvwxyz", bytes(range(27)))
    codes = torch.frombuffer(bytearray(raw.translate(table)), dtype=torch.uint8)
    for name, (a, b) in bounds.items():
        _write_cache(directory / f"{name}.safetensors", codes[a:b])
    return codes[lo:hi]


# ---------------------------------------------------------------------------- embedded data
@lru_cache(maxsize=1)
def embedded_digits() -> Tensor:
    """The 1797 8x8 handwritten digits of the UCI 'Optical Recognition of Handwritten Digits'
    test set (as scikit-learn ships them; CC BY 4.0), grey levels 0..16."""
    from safetensors.torch import load_file

    return load_file(str(Path(__file__).with_name("digits.safetensors")))["images"]


@lru_cache(maxsize=1)
def embedded_digit_labels() -> Tensor:
    """The digit (0..9) each embedded image shows, int64 (1797,)."""
    from safetensors.torch import load_file

    return load_file(str(Path(__file__).with_name("digits.safetensors")))["labels"].long()


def python_help_text() -> Tensor:
    """The text of Python's own help topics (``pydoc_data``), in text8's alphabet."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise UserError("this Python has no pydoc_data module (its help text); use --data FILE.txt instead") from None
    return encode_text(" ".join(topics[key] for key in sorted(topics)))


# ----------------------------------------------------------------------------------- caches
def _read_cache(path: Path, shape: tuple[int, ...]) -> Optional[Tensor]:
    """Decoded pixels or text kept beside the downloaded archive (rebuilt if damaged)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        data = load_file(str(path))["data"]
    except (SafetensorError, OSError, KeyError, ValueError):
        return None
    return data if tuple(data.shape) == shape and data.dtype == torch.uint8 else None


def _read_cached_labels(path: Path, count: int) -> Optional[Tensor]:
    """The labels kept in a cache beside the pixels, or None (no cache, a damaged one, or one written
    before labels were kept)."""
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            labels = f.get_tensor("labels") if "labels" in f.keys() else None
    except (SafetensorError, OSError, ValueError):
        return None
    ok = labels is not None and tuple(labels.shape) == (count,) and labels.dtype == torch.uint8
    return labels if ok else None


def _write_cache(path: Path, data: Tensor, labels: Optional[Tensor] = None) -> None:
    from safetensors.torch import save_file

    tensors = {"data": data.contiguous()}
    if labels is not None:
        tensors["labels"] = labels.contiguous()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # only a cache: failing to write it costs time, nothing else
