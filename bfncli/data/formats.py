"""Reading the raw formats directly (no torchvision, no pickle): MNIST's IDX files, the CIFAR-10
binary version, the text8 zip, folders of pictures, text files and tensor files."""

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
from bfncli.data.examples import DataSpec, TensorExamples, encode_text
from bfncli.errors import UserError

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
CIFAR10 = RemoteFile("cifar-10-binary.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
                     md5="c32a1d4ab5d03f1284b67883e8d87530")
TEXT8 = RemoteFile("text8.zip", ("https://mattmahoney.net/dc/text8.zip", "http://mattmahoney.net/dc/text8.zip"),
                   md5="f26f94c5209bc6159618bad4a559ff81", size=31_344_016)
TEXT8_CHARS = 100_000_000


# ------------------------------------------------------------------------------------ MNIST
def read_idx_images(path: Path) -> Tensor:
    """An IDX3 file of uint8 images (gzip-compressed or not) -> (N, H, W) uint8."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise UserError(f"'{path}' is not a readable (gzip) IDX file ({err}); delete it to download it again") from None
    if len(data) < 16 or struct.unpack(">I", data[:4])[0] != 0x803:
        raise UserError(f"'{path}' is not an IDX image file (bad magic number); delete it to download it again")
    n, h, w = struct.unpack(">III", data[4:16])
    if len(data) != 16 + n * h * w:
        raise UserError(f"'{path}' is truncated ({len(data) - 16} of {n * h * w} pixel bytes); delete it to download "
                        "it again")
    return torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).reshape(n, h, w)


def mnist_images(root: Path, part: str, download: bool, mirrors: list[str]) -> Tensor:
    return read_idx_images(ensure(MNIST[part], root / "mnist", download, mirrors))


# --------------------------------------------------------------------------------- CIFAR-10
def read_cifar10_binary(archive: Path) -> dict[str, Tensor]:
    """cifar-10-binary.tar.gz -> {"train": (50000, 32, 32, 3), "test": (10000, 32, 32, 3)} uint8.

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
        raise UserError(f"'{archive}' is not a readable CIFAR-10 binary archive ({err}); delete it to download it "
                        "again") from None
    out = {}
    for part, files in names.items():
        missing = [f for f in files if f not in found]
        if missing:
            raise UserError(f"'{archive}' lacks {', '.join(missing)}: is it the CIFAR-10 *binary* version?")
        blob = b"".join(found[f] for f in files)
        if len(blob) % 3073:
            raise UserError(f"'{archive}' has truncated records; delete it to download it again")
        records = torch.frombuffer(bytearray(blob), dtype=torch.uint8).reshape(-1, 3073)
        out[part] = records[:, 1:].reshape(-1, 3, 32, 32).permute(0, 2, 3, 1).contiguous()
    return out


def cifar10_images(root: Path, part: str, download: bool, mirrors: list[str]) -> Tensor:
    """CIFAR-10 pixels, decoded once from the archive and cached beside it."""
    directory = root / "cifar10"
    cached = _read_cache(directory / f"{part}.safetensors", (50000 if part == "train" else 10000, 32, 32, 3))
    if cached is not None:
        return cached
    parts = read_cifar10_binary(ensure(CIFAR10, directory, download, mirrors))
    for name, pixels in parts.items():
        _write_cache(directory / f"{name}.safetensors", pixels)
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
        raise UserError(f"'{archive}' {problem}; delete it to download it again")
    with zipfile.ZipFile(archive) as z:
        raw = z.read("text8")
    if set(raw) - set(b" abcdefghijklmnopqrstuvwxyz"):
        raise UserError(f"'{archive}' has characters outside text8's alphabet: not the text8 corpus")
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


def python_help_text() -> Tensor:
    """The text of Python's own help topics (``pydoc_data``), in text8's alphabet."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise UserError("this Python has no pydoc_data module (its help text); use --data FILE.txt instead") from None
    return encode_text(" ".join(topics[key] for key in sorted(topics)))


# ------------------------------------------------------------------------------ user data
def read_text_file(path: Path) -> Tensor:
    if path.is_dir():
        raise UserError(f"--data '{path}' is a directory; for text give a file (a folder means images)")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read '{path}': {err.strerror or err}") from None
    if not raw.strip():
        raise UserError(f"'{path}' is empty; give a text file with some text in it")
    if b"\x00" in raw[:65536]:
        raise UserError(f"'{path}' looks binary, not like text; give a plain text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    codes = encode_text(text)
    if codes.numel() == 0:
        raise UserError(f"'{path}' has no letters a-z; text models learn text8's alphabet (a-z and space)")
    return codes


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"--data '{folder}' is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"'{folder}' has no PNG or JPEG images")
    return files


def _read_picture(path: Path) -> Tensor:
    """(H, W, C) uint8 with C = 1 (grey) or 3 (RGB; alpha dropped)."""
    from matplotlib import image as mpimg

    try:
        array = mpimg.imread(str(path))
    except Exception as err:  # PIL has many ways to fail on a bad file
        raise UserError(f"cannot read image '{path}' ({type(err).__name__}); is it a valid PNG or JPEG?") from None
    pixels = torch.tensor(array)  # a copy: the decoder's array is read-only
    if pixels.is_floating_point():
        pixels = (pixels * 255).round().clamp(0, 255)
    pixels = pixels.to(torch.uint8)
    if pixels.dim() == 2:
        pixels = pixels.unsqueeze(-1)
    if pixels.shape[-1] == 4:
        pixels = pixels[..., :3]
    if pixels.shape[-1] == 3 and torch.equal(pixels[..., 0], pixels[..., 1]) and torch.equal(pixels[..., 1], pixels[..., 2]):
        pixels = pixels[..., :1]  # grey stored as RGB
    return pixels


def image_folder_spec(folder: Path, num_bins: int) -> DataSpec:
    return DataSpec("discretized", tuple(read_image_folder(folder).shape[1:]), num_bins=num_bins)


def read_image_folder(folder: Path) -> Tensor:
    """All pictures of a folder, (N, H, W, C) uint8; one size; grey promoted to RGB if any is RGB."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise UserError(f"--data '{folder}' is not a folder of images")
    return _read_image_folder(folder, folder.stat().st_mtime_ns)  # a changed folder is read again


@lru_cache(maxsize=1)
def _read_image_folder(folder: Path, mtime_ns: int) -> Tensor:
    files = _image_files(folder)
    pictures = [_read_picture(f) for f in files]
    first = pictures[0].shape[:2]
    for f, p in zip(files, pictures):
        if p.shape[:2] != first:
            raise UserError(f"images in '{folder}' differ in size: {files[0].name} is {first[1]}x{first[0]}, "
                            f"{f.name} is {p.shape[1]}x{p.shape[0]}; resize them to one size")
    channels = max(p.shape[-1] for p in pictures)
    return torch.stack([p.expand(*p.shape[:2], channels) for p in pictures])


TENSOR_LAYOUTS = ("(N, H, W, C) floats in [-1, 1] (discretized images), (N, H, W, 1) integers 0/1 (binary images) "
                  "or (N, L) integers 0..26 (text)")


def read_tensor_file(path: Path, num_bins: int) -> TensorExamples:
    """A .safetensors (tensor 'data', or its only tensor) or .npy file of examples, used as is."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"'{path}' is not a readable safetensors file ({str(err)[:80]})") from None
        if "data" in tensors:
            data = tensors["data"]
        elif "samples" in tensors:
            data = tensors["samples"]
        elif len(tensors) == 1:
            data = next(iter(tensors.values()))
        else:
            raise UserError(f"'{path}' holds {', '.join(sorted(tensors))}; name the examples tensor 'data'")
    elif suffix == ".npy":
        try:
            import numpy as np
        except ImportError:
            raise UserError("reading .npy files needs numpy: pip install numpy, or use .safetensors") from None
        try:
            data = torch.from_numpy(np.load(path, allow_pickle=False))
        except (ValueError, OSError, EOFError) as err:
            raise UserError(f"'{path}' is not a readable .npy array ({str(err)[:80]})") from None
    else:
        raise UserError(f"'{path}': tensor files are .safetensors or .npy")
    return TensorExamples(*_tensor_layout(data, path, num_bins))


def _tensor_layout(data: Tensor, path: Path, num_bins: int) -> tuple[Tensor, DataSpec]:
    if data.numel() == 0 or data.dim() < 2:
        raise UserError(f"'{path}' has shape {tuple(data.shape)}; expected {TENSOR_LAYOUTS}")
    if data.is_floating_point():
        if data.dim() != 4:
            raise UserError(f"'{path}' holds floats of shape {tuple(data.shape)}; expected {TENSOR_LAYOUTS}")
        if not torch.isfinite(data).all() or data.min() < -1 or data.max() > 1:
            raise UserError(f"'{path}' has values outside [-1, 1]; discretized images are bin centres in [-1, 1]")
        return data.float(), DataSpec("discretized", tuple(data.shape[1:]), num_bins=num_bins)
    data = data.long()
    if data.dim() == 2:
        if data.min() < 0 or data.max() > 26:
            raise UserError(f"'{path}' has integers outside 0..26; text is 0 = space, 1..26 = a..z")
        return data, DataSpec("text", (data.shape[1],), n_classes=27)
    if data.dim() == 4 and data.shape[-1] == 1:
        if data.min() < 0 or data.max() > 1:
            raise UserError(f"'{path}' has integers outside 0/1; binary images are 0 or 1")
        return data, DataSpec("binary", tuple(data.shape[1:]), n_classes=2)
    raise UserError(f"'{path}' holds integers of shape {tuple(data.shape)}; expected {TENSOR_LAYOUTS}")


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


def _write_cache(path: Path, data: Tensor) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({"data": data.contiguous()}, str(tmp))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # only a cache: failing to write it costs time, nothing else
