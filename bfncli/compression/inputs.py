"""What bfn compress codes, as chunks in the model's data layout, and how it is written back.

- text (a text model): the bytes themselves, which must all be in the model's alphabet (a-z and
  space: lower-casing or dropping characters would not be lossless, so nothing is changed); cut
  into chunks of the model's sequence length, the last one shorter (its padding is not coded);
- tensor files (.safetensors holding one tensor, 'data' or 'samples', as bfn sample writes them,
  or .npy) in the model's data layout, one chunk per example: class indices, or bin centres of
  the model's bins; written back in the same format, dtype and metadata;
- pictures (.png, .jpg) for models of 256-level pixels: the pixels are coded (not the file's other
  bytes: metadata, alpha), and written back as a PNG with the same pixels.

``content`` is what the header's checksum covers and what decompression must reproduce: the text's
bytes, the tensor's dtype, shape and bytes (and the file's metadata), or the picture's pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfncli.compression.kinds import Kind
from bfncli.errors import InputError

TEXT_ALPHABET = b" abcdefghijklmnopqrstuvwxyz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Prepared:
    x: torch.Tensor  # (N, *shape) chunks in the model's data layout
    valid: np.ndarray  # (N, D) bool: the dimensions that carry data
    info: dict[str, Any] = field(default_factory=dict)  # how to rebuild the content (goes in the header)
    content: bytes = b""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def sniff(data: bytes, name: str) -> str:
    """The input's format: text, safetensors, npy or image (from the name's suffix, else the bytes)."""
    suffix = Path(name).suffix.lower()
    if suffix in (".safetensors",):
        return "safetensors"
    if suffix == ".npy" or data[:6] == b"\x93NUMPY":
        return "npy"
    if suffix in IMAGE_SUFFIXES or data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        return "image"
    if len(data) > 10 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data):
        return "safetensors"
    return "text"


def prepare(data: bytes, name: str, model) -> Prepared:
    if not data:
        raise InputError(f"{name} is empty; there is nothing to compress")
    kind = Kind(model)
    fmt = sniff(data, name)
    text_model = model.discrete and len(kind.shape) == 1
    if fmt == "text":
        if not text_model:
            raise InputError(f"{name} looks like text, but this model codes {_what(kind)}; give a text model "
                            "(--checkpoint) or a .safetensors/.npy file of examples")
        return _text(data, name, kind)
    if fmt == "image":
        return _image(data, name, kind)
    return _tensor(data, name, fmt, kind)


def _what(kind: Kind) -> str:
    if kind.discrete:
        return "text" if len(kind.shape) == 1 else f"binary images of shape {kind.shape}"
    return f"images of shape {kind.shape} with {kind.bins} levels"


# ------------------------------------------------------------------------------------ text
def _text(data: bytes, name: str, kind: Kind) -> Prepared:
    table = np.full(256, -1, dtype=np.int64)
    table[np.frombuffer(TEXT_ALPHABET, dtype=np.uint8)] = np.arange(len(TEXT_ALPHABET))
    codes = table[np.frombuffer(data, dtype=np.uint8)]
    bad = np.flatnonzero(codes < 0)
    if bad.size:
        _outside_alphabet(data, int(bad[0]), name)
    length = kind.shape[0]
    n = math.ceil(len(codes) / length)
    x = np.zeros(n * length, dtype=np.int64)
    x[: len(codes)] = codes
    valid = np.zeros(n * length, dtype=bool)
    valid[: len(codes)] = True
    return Prepared(torch.from_numpy(x.reshape(n, length)), valid.reshape(n, length),
                    {"type": "text", "length": len(codes)}, data)


def _outside_alphabet(data: bytes, offset: int, name: str) -> None:
    text = data[: offset + 4].decode("utf-8", errors="replace")
    prefix = data[:offset].decode("utf-8", errors="replace")
    char = text[len(prefix)] if len(text) > len(prefix) else "?"
    line = prefix.count("\n") + 1
    column = len(prefix) - (prefix.rfind("\n") + 1) + 1
    raise InputError(f"{name}: character {char!r} at line {line}, column {column} (character {len(prefix) + 1}) is "
                    "outside the model's alphabet (a-z and space); changing it would not be lossless, so convert the "
                    "text first, e.g. tr -cs 'a-z' ' '")


def text_from(x: torch.Tensor, info: dict) -> bytes:
    codes = x.reshape(-1)[: int(info["length"])].numpy().astype(np.uint8)
    return np.frombuffer(TEXT_ALPHABET, dtype=np.uint8)[codes].tobytes()


# --------------------------------------------------------------------------------- tensors
def _tensor(data: bytes, name: str, fmt: str, kind: Kind) -> Prepared:
    info: dict[str, Any] = {"type": "tensor", "format": fmt}
    if fmt == "npy":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError):
            raise InputError(f"{name} is not a readable .npy array") from None
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            tensors = load(data)
            size = int.from_bytes(data[:8], "little")
            meta = (json.loads(data[8 : 8 + size]).get("__metadata__") or {})
        except (SafetensorError, ValueError, UnicodeDecodeError):
            raise InputError(f"{name} is not a readable safetensors file") from None
        key = next((k for k in ("data", "samples") if k in tensors), None)
        if key is None and len(tensors) == 1:
            key = next(iter(tensors))
        if key is None or len(tensors) > 1:
            held = ', '.join(sorted(tensors)) or 'no tensors'
            raise InputError(f"{name} holds {held}; compress a file that holds the examples alone (one tensor, 'data' "
                            "or 'samples')")
        tensor = tensors[key]
        info.update(key=key, metadata=meta)
    info.update(dtype=str(tensor.dtype).removeprefix("torch."), shape=list(tensor.shape))
    x = _examples(tensor, name, kind)
    return Prepared(x, np.ones((x.shape[0], math.prod(kind.shape)), dtype=bool), info, _tensor_content(tensor, info))


def _examples(tensor: torch.Tensor, name: str, kind: Kind) -> torch.Tensor:
    shape = tuple(kind.shape)
    if tensor.dim() != len(shape) + 1 or tuple(tensor.shape[1:]) != shape or tensor.shape[0] == 0:
        raise InputError(f"{name} has shape {tuple(tensor.shape)}, but this model codes examples of shape {shape} "
                        f"(N, {', '.join(map(str, shape))})")
    if kind.discrete:
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise InputError(f"{name} holds {str(tensor.dtype).removeprefix('torch.')} values; this model codes class "
                            f"indices 0..{kind.bins - 1} (integers)")
        x = tensor.long()
        if x.min() < 0 or x.max() >= kind.bins:
            raise InputError(f"{name} has values outside 0..{kind.bins - 1}, the classes this model codes")
        return x
    if not tensor.is_floating_point():
        raise InputError(f"{name} holds {str(tensor.dtype).removeprefix('torch.')} values; this model codes bin "
                        f"centres of {kind.bins} bins in [-1, 1] (floats)")
    from bfncli.flows.distributions import quantize

    x = tensor.float()
    exact = torch.equal(x.to(tensor.dtype), tensor)
    if not torch.isfinite(x).all() or not torch.equal(quantize(x, kind.bins), x) or not exact:
        raise InputError(f"{name} has values that are not centres of this model's {kind.bins} bins in [-1, 1]; "
                        "only those can be coded losslessly")
    return x


def _tensor_content(tensor: torch.Tensor, info: dict) -> bytes:
    head = json.dumps({k: info.get(k) for k in ("dtype", "shape", "metadata")}, sort_keys=True).encode()
    return head + b"\0" + tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_from(x: torch.Tensor, info: dict) -> tuple[torch.Tensor, bytes]:
    tensor = x.to(getattr(torch, info["dtype"])).reshape(info["shape"])
    return tensor, _tensor_content(tensor, info)


# -------------------------------------------------------------------------------- pictures
def _image(data: bytes, name: str, kind: Kind) -> Prepared:
    if kind.discrete or kind.bins != 256:
        raise InputError(f"{name} is a picture, but this model codes {_what(kind)}; pictures (256 levels) need a model "
                        "of 256-level images, or give a .safetensors/.npy file of bin centres")
    from PIL import Image

    try:
        picture = np.array(Image.open(io.BytesIO(data)).convert("RGB" if kind.shape[-1] == 3 else "L"))
    except Exception as err:  # PIL has many ways to fail on a bad file
        raise InputError(f"cannot read the picture {name} ({type(err).__name__}); is it a valid PNG or JPEG?") from None
    pixels = picture.reshape(*picture.shape[:2], -1)
    if tuple(pixels.shape) != tuple(kind.shape):
        raise InputError(f"{name} is {pixels.shape[1]}x{pixels.shape[0]} with {pixels.shape[2]} channel(s); this model "
                        f"codes {kind.shape[1]}x{kind.shape[0]} pictures with {kind.shape[2]}")
    x = (torch.from_numpy(pixels.astype(np.float32)) * 2 + 1) / 256 - 1  # the centre of bin v of 256
    info = {"type": "image", "shape": list(pixels.shape)}
    return Prepared(x.unsqueeze(0), np.ones((1, pixels.size), dtype=bool), info, pixels.tobytes())


def image_from(x: torch.Tensor, info: dict) -> tuple[np.ndarray, bytes]:
    pixels = torch.round((x[0] + 1) * 128 - 0.5).clamp(0, 255).to(torch.uint8).numpy()
    return pixels, pixels.tobytes()


def write_image(pixels: np.ndarray, path) -> None:
    from PIL import Image

    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path, format="PNG")
