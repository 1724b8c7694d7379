"""Known parts for conditional sampling: a text prompt or template, an image plus a mask."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from bfncli.data.examples import ALPHABET
from bfncli.errors import InputError, UserError
from bfncli.samplers.conditioning import Condition

PLACEHOLDER = "?"


def encode_text(text: str, what: str) -> list[int]:
    """Characters to class indices: space or '_' is 0, a-z are 1..26."""
    bad = sorted({c for c in text if c != " " and c not in ALPHABET and c != PLACEHOLDER})
    if bad:
        shown = "".join(bad)
        raise UserError(f"{what} has characters outside the model's alphabet ({shown!r}); "
                        "text models know lower-case a-z and space")
    return [-1 if c == PLACEHOLDER else (0 if c == " " else ALPHABET.index(c)) for c in text]


def text_condition(prompt: Optional[str], template: Optional[str], seq_len: int) -> Condition:
    """``--prompt``: a known prefix. ``--template``: known characters with '?' where unknown."""
    if prompt is not None and template is not None:
        raise UserError("give either --prompt or --template, not both")
    text = prompt if prompt is not None else template
    what = "--prompt" if prompt is not None else "--template"
    if prompt is not None and PLACEHOLDER in prompt:
        raise UserError("--prompt is a plain prefix; use --template for '?' placeholders")
    if len(text) > seq_len:
        raise UserError(f"{what} has {len(text)} characters but the model's sequences have {seq_len}")
    codes = encode_text(text, what)
    values = torch.zeros(seq_len, dtype=torch.long)
    known = torch.zeros(seq_len, dtype=torch.bool)
    for i, code in enumerate(codes):
        if code >= 0:
            values[i], known[i] = code, True
    return Condition(values, known)


def image_condition(image: Optional[Path], mask: Optional[str], model, kind: str) -> Condition:
    """The known pixels of an image (a picture file or a samples file) outside the mask."""
    if image is None or mask is None:
        raise UserError("inpainting needs both --image (what is known) and --mask (what to fill in)")
    h, w, c = model.data_shape
    values = _load_known_image(Path(image), (h, w, c), kind, model)
    unknown = _load_mask(mask, (h, w))
    known = (~unknown).unsqueeze(-1).expand(h, w, c).contiguous()
    if known.all():
        raise UserError("--mask leaves nothing to fill in")
    return Condition(values, known)


def _load_known_image(path: Path, shape, kind: str, model) -> torch.Tensor:
    h, w, c = shape
    if not path.exists():
        raise InputError(f"--image '{path}' does not exist")
    if path.suffix == ".safetensors":
        from bfncli.samples_file import read_samples

        samples, meta = read_samples(path)
        if tuple(samples.shape[1:]) != shape:
            raise InputError(f"--image '{path}' holds examples of shape {tuple(samples.shape[1:])}; the model makes {shape}")
        return samples[0]
    pixels = _read_picture(path, "--image")  # (H, W, C) in [0, 1]
    if pixels.shape[:2] != (h, w):
        raise InputError(f"--image '{path}' is {pixels.shape[1]}x{pixels.shape[0]}; the model makes {w}x{h} images")
    if pixels.shape[2] != c:
        pixels = pixels.mean(-1, keepdim=True) if c == 1 else pixels[..., :1].expand(h, w, c)
    if kind == "binary_image":
        return (pixels > 0.5).long()
    from bfncli.flows.distributions import quantize

    bins = model.flow.num_bins or 256
    return quantize(pixels * 2 - 1, bins)


def _read_picture(path: Path, what: str) -> torch.Tensor:
    """(H, W, C) floats in [0, 1], scaled from the picture's own range (see bfncli.data.pictures)."""
    from bfncli.data.pictures import read_picture

    return read_picture(path, what).float() / 255


def _load_mask(mask: str, size: tuple[int, int]) -> torch.Tensor:
    """True where the image is unknown: a box 'top,left,height,width' or a mask picture (white = unknown)."""
    h, w = size
    parts = mask.split(",")
    if len(parts) == 4 and all(p.strip().lstrip("-").isdigit() for p in parts):
        top, left, height, width = (int(p) for p in parts)
        if height < 1 or width < 1 or top < 0 or left < 0 or top + height > h or left + width > w:
            raise UserError(f"--mask box {mask} does not fit a {h}x{w} image (top,left,height,width)")
        out = torch.zeros(h, w, dtype=torch.bool)
        out[top:top + height, left:left + width] = True
        return out
    path = Path(mask)
    if not path.exists():
        raise UserError(f"--mask must be 'top,left,height,width' or a mask image; '{mask}' is neither")
    pixels = _read_picture(path, "--mask")
    if pixels.shape[:2] != (h, w):
        raise InputError(f"--mask image is {pixels.shape[1]}x{pixels.shape[0]}; it must be {w}x{h} like the model's images")
    return pixels.mean(-1) > 0.5
