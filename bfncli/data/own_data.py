"""Your own data, read directly: folders of pictures (PNG/JPEG), text files, and tensor files
(.safetensors or .npy) already in the model's data layout."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from bfncli.data.examples import DataSpec, TensorExamples, encode_text
from bfncli.errors import UserError

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
