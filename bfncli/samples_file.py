"""The samples file: what ``bfn sample`` writes and ``bfn render`` / ``bfn eval --samples`` read.

A safetensors file (or stream) holding ``samples`` (N, *data_shape) in the model's data layout,
optionally the recorded flow (``flow_input``, ``flow_prediction``, ``flow_steps``) and the mask of
known values (``known``), with string metadata saying what the samples are:

    format     "bfn-samples"
    kind       binary_image, discretized_image, continuous_image or text
    num_bins   bins of discretized images (classes for binary images and text)
    steps, seed, checkpoint, shape, sampler ...   how they were drawn
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from torch import Tensor

from bfncli.errors import UserError

SAMPLES_FORMAT = "bfn-samples"
IMAGE_KINDS = ("binary_image", "discretized_image", "continuous_image")
KINDS = IMAGE_KINDS + ("text",)


def samples_kind(model) -> str:
    """What a model's samples are: binary_image, discretized_image, continuous_image or text."""
    if not model.discrete:
        return "discretized_image" if model.flow.output == "discretized_normal" else "continuous_image"
    return "binary_image" if model.flow.n_classes == 2 else "text"


def parse_samples(data: bytes, where: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a samples file's bytes, with one-line errors for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not data:
        hint = ("pipe samples in (bfn sample | bfn render) or give a samples file" if where == "standard input"
                else "draw samples into it with bfn sample -o FILE")
        raise UserError(f"{where} is empty; {hint}")
    try:
        size = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + size]) if 8 + size <= len(data) else None
        tensors = load(data)
    except (struct.error, ValueError, SafetensorError, UnicodeDecodeError):
        raise UserError(f"{where} is not a safetensors samples file; make one with bfn sample") from None
    meta = (header or {}).get("__metadata__") or {}
    if meta.get("format") == "bfn":
        raise UserError(f"{where} is a bfn checkpoint, not samples; draw samples with bfn sample --checkpoint ...")
    if meta.get("format") != SAMPLES_FORMAT or "samples" not in tensors:
        raise UserError(f"{where} is a safetensors file but not bfn samples (no 'samples' tensor / kind)")
    if meta.get("kind") not in KINDS:
        raise UserError(f"{where} holds samples of kind {meta.get('kind')!r}, which this bfn cannot read")
    return tensors, meta


def read_samples_file(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every tensor and the metadata of a samples file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"'{path}' is a folder, not a samples file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"'{path}' does not exist") from None
    except OSError as err:
        raise UserError(f"cannot read '{path}': {err.strerror or err}") from None
    return parse_samples(data, f"'{path}'")


def read_samples(path: Path) -> tuple[Tensor, dict[str, str]]:
    """The ``samples`` tensor and the metadata of a samples file."""
    tensors, meta = read_samples_file(path)
    return tensors["samples"], meta
