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

from bfncli.errors import InputError

SAMPLES_FORMAT = "bfn-samples"
TEXT_CLASSES = 27  # text8's alphabet: space and a..z
MIN_BINS, MAX_BINS = 2, 256  # data.num_bins' range
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
        raise InputError(f"{where} is empty; {hint}")
    try:
        size = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + size]) if 8 + size <= len(data) else None
        tensors = load(data)
    except (struct.error, ValueError, SafetensorError, UnicodeDecodeError):
        raise InputError(f"{where} is not a safetensors samples file; make one with bfn sample") from None
    meta = (header or {}).get("__metadata__") or {}
    if meta.get("format") == "bfn":
        raise InputError(f"{where} is a bfn checkpoint, not samples; draw samples with bfn sample --checkpoint ...")
    if meta.get("format") != SAMPLES_FORMAT or "samples" not in tensors:
        raise InputError(f"{where} is a safetensors file but not bfn samples (no 'samples' tensor / kind)")
    if meta.get("kind") not in KINDS:
        raise InputError(f"{where} holds samples of kind {meta.get('kind')!r}, which this bfn cannot read")
    check_samples(tensors, meta, where)
    return tensors, meta


# What each kind's values are: (dtype, dimensions, what they hold).
LAYOUTS = {
    "discretized_image": ("float", 4, "floats in [-1, 1], (N, H, W, C)"),
    "continuous_image": ("float", 4, "floats in [-1, 1], (N, H, W, C)"),
    "binary_image": ("int", 4, "integers 0/1, (N, H, W, 1)"),
    "text": ("int", 2, f"integers 0..{TEXT_CLASSES - 1}, (N, L)"),
}
BINS = {"binary_image": 2, "text": TEXT_CLASSES}


def check_samples(tensors: dict[str, Tensor], meta: dict[str, str], where: str) -> None:
    """One validation of a samples file for every reader (render, eval --samples, inpainting): the
    samples' dtype, shape and values fit their kind, the metadata's bins and the classes are sane.
    A file that fails was damaged or not written by bfn sample: a one-line error saying so."""
    import torch

    kind, samples = meta["kind"], tensors["samples"]
    again = "draw the samples again with bfn sample"
    dtype, dims, layout = LAYOUTS[kind]
    if samples.dim() != dims:
        raise InputError(f"{where} holds {kind.replace('_', ' ')} samples of shape {tuple(samples.shape)}; they must be "
                         f"{layout}; {again}")
    if samples.shape[0] == 0:
        raise InputError(f"{where} holds no samples (its shape is {tuple(samples.shape)}); draw some with bfn sample -o FILE")
    if samples.numel() == 0:
        raise InputError(f"{where} holds samples of shape {tuple(samples.shape)}, with no values; {again}")
    if (dtype == "float") != samples.is_floating_point() or samples.is_complex() or samples.dtype == torch.bool:
        got = str(samples.dtype).removeprefix("torch.")
        raise InputError(f"{where} holds {got} {kind.replace('_', ' ')} samples; they must be {layout}; {again}")
    if dtype == "float":
        if not bool(torch.isfinite(samples).all()):
            raise InputError(f"{where} holds samples with NaN or infinite values; {again}")
        low, high = float(samples.min()), float(samples.max())
        if low < -1 or high > 1:
            raise InputError(f"{where} holds image values from {low:g} to {high:g}, outside [-1, 1]; {again}")
    else:
        top = 1 if kind == "binary_image" else TEXT_CLASSES - 1
        low, high = int(samples.min()), int(samples.max())
        if low < 0 or high > top:
            what = "binary pixels are 0 or 1" if kind == "binary_image" else f"text ids are 0..{top} (space, a..z)"
            raise InputError(f"{where} holds values from {low} to {high}; {what}; {again}")
    _check_bins(meta, kind, where, again)
    _check_classes(tensors, meta, samples.shape[0], where, again)
    _check_flow(tensors, samples, where, again)


def _check_bins(meta: dict[str, str], kind: str, where: str, again: str) -> None:
    text = (meta.get("num_bins") or "").strip()
    if not text:
        if kind == "discretized_image":
            raise InputError(f"{where} does not say how many bins its discretized images have (num_bins); {again}")
        return
    if not text.isdigit() or not MIN_BINS <= int(text) <= MAX_BINS:
        raise InputError(f"{where} is damaged: its num_bins is {text!r}, not a whole number from {MIN_BINS} to "
                         f"{MAX_BINS}; {again}")
    expected = BINS.get(kind)
    if expected is not None and int(text) != expected:
        raise InputError(f"{where} is damaged: {kind.replace('_', ' ')} samples have {expected} classes, its num_bins "
                         f"says {text}; {again}")


def class_names_of(meta: dict[str, str]) -> list[str]:
    """The class names a samples file records (JSON in its metadata), [] if none."""
    try:
        names = json.loads(meta.get("class_names", "[]"))
    except ValueError:
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def _check_classes(tensors: dict[str, Tensor], meta: dict[str, str], count: int, where: str, again: str) -> None:
    import torch

    classes = tensors.get("classes")
    if classes is None:
        return
    names = class_names_of(meta)
    if not names:
        raise InputError(f"{where} holds classes but no class_names to say what they are; {again}")
    if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool or classes.dim() != 1 \
            or classes.shape[0] != count:
        raise InputError(f"{where} is damaged: its classes are {str(classes.dtype).removeprefix('torch.')} of shape "
                         f"{tuple(classes.shape)}, not one class id per sample ({count},); {again}")
    low, high = int(classes.min()), int(classes.max())
    if low < 0 or high > len(names):  # len(names) is "no class" (unconditional samples)
        raise InputError(f"{where} holds class ids from {low} to {high} but names {len(names)} classes (ids 0.."
                         f"{len(names) - 1}, {len(names)} for none); {again}")


def read_samples_file(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every tensor and the metadata of a samples file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"'{path}' is a folder, not a samples file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"'{path}' does not exist") from None
    except OSError as err:
        raise InputError(f"cannot read '{path}': {err.strerror or err}") from None
    return parse_samples(data, f"'{path}'")


def read_samples(path: Path) -> tuple[Tensor, dict[str, str]]:
    """The ``samples`` tensor and the metadata of a samples file."""
    tensors, meta = read_samples_file(path)
    return tensors["samples"], meta


def _check_flow(tensors: dict[str, Tensor], samples: Tensor, where: str, again: str) -> None:
    """A recorded flow (bfn sample --trajectory): F frames of the input distribution and the prediction
    for every sample, their evaluation indices and times."""
    import torch

    if "flow_input" not in tensors:
        return
    if not {"flow_prediction", "flow_steps"} <= tensors.keys():
        raise InputError(f"{where} is an incomplete trajectory (no flow_prediction/flow_steps); record it again with "
                         "bfn sample --trajectory")
    steps = tensors["flow_steps"]
    frames = steps.shape[0] if steps.dim() == 1 else -1
    for name in ("flow_input", "flow_prediction"):
        flow = tensors[name]
        if (frames < 1 or steps.is_floating_point() or not flow.is_floating_point() or flow.dim() < 2
                or tuple(flow.shape[:2]) != (frames, samples.shape[0])):
            raise InputError(f"{where} is a damaged trajectory: {name} has shape {tuple(flow.shape)} for "
                             f"{tuple(steps.shape)} frames of {samples.shape[0]} samples; record it again with bfn sample "
                             "--trajectory")
        if not bool(torch.isfinite(flow).all()):
            raise InputError(f"{where} is a damaged trajectory: {name} holds NaN or infinite values; {again}")
