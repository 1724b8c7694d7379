"""Your own data, read directly: folders of pictures (PNG/JPEG), text files, and tensor files
(.safetensors or .npy) already in the model's data layout.

Labels (read only when asked for):

- a folder of pictures is either flat (unlabeled) or has one subfolder per class, the usual
  ImageFolder layout (``root/cat/*.png``, ``root/dog/*.png``): the class names are the subfolder
  names in sorted order, a picture's label the position of its folder. Hidden subfolders (``.git``)
  are ignored; pictures in the root beside subfolders of pictures, and class subfolders without
  pictures, are errors. Unlabeled use reads every class's pictures, class by class.
- a .safetensors file may hold ``labels`` beside ``data``: integers, one per example, 0..C-1. The
  class names can be given as a JSON list of strings under the file's metadata key
  ``class_names``; then C is its length and a class may have no example. Without names every
  class 0..max must occur (a gap means a missing class or a wrong id) and the names are "0", "1"...
  A .npy file holds no labels.
- text files: none (text models are unconditional).
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from bfncli.data.examples import DataSpec, TensorExamples, encode_text
from bfncli.data.pictures import SUFFIXES, read_picture
from bfncli.errors import InputError, UserError


def read_text_file(path: Path) -> Tensor:
    if path.is_dir():
        raise InputError(f"--data '{path}' is a directory; for text give a file (a folder means images)")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read '{path}': {err.strerror or err}") from None
    if not raw.strip():
        raise InputError(f"'{path}' is empty; give a text file with some text in it")
    if b"\x00" in raw[:65536]:
        raise InputError(f"'{path}' looks binary, not like text; give a plain text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    codes = encode_text(text)
    if codes.numel() == 0:
        raise InputError(f"'{path}' has no letters a-z; text models learn text8's alphabet (a-z and space)")
    return codes




def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        raise InputError(f"cannot read the folder '{folder}': {err.strerror or err}") from None


def _pictures_in(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.suffix.lower() in SUFFIXES and p.is_file()]


def _folder_layout(folder: Path) -> tuple[list[Path], tuple[str, ...], list[int]]:
    """The picture files of a folder, its class names (() for a flat folder) and each file's class."""
    files = _pictures_in(folder)
    subfolders = [p for p in _entries(folder) if p.is_dir() and not p.name.startswith(".")]
    if files:
        classes = [d for d in subfolders if _pictures_in(d)]  # other subfolders were always ignored
        if classes:
            raise InputError(f"'{folder}' has pictures ({files[0].name}) beside subfolders of pictures "
                             f"({classes[0].name}/); put every picture in a subfolder named after its class, "
                             "or use a flat folder")
        return files, (), [0] * len(files)
    if not subfolders:
        raise InputError(f"'{folder}' has no PNG or JPEG images")
    files, labels = [], []
    for index, sub in enumerate(subfolders):
        pictures = _pictures_in(sub)
        if not pictures:
            raise InputError(f"class folder '{sub}' has no PNG or JPEG images; add its pictures or remove it")
        files += pictures
        labels += [index] * len(pictures)
    return files, tuple(d.name for d in subfolders), labels


def image_folder_spec(folder: Path, num_bins: int, labels: bool = False) -> DataSpec:
    if labels:
        pixels, _, names = read_labeled_image_folder(folder)
    else:
        pixels, names = read_image_folder(folder), ()
    return DataSpec("discretized", tuple(pixels.shape[1:]), num_bins=num_bins, class_names=names)


def read_image_folder(folder: Path) -> Tensor:
    """All pictures of a folder (or of its class subfolders, class by class), (N, H, W, C) uint8; one
    size; grey promoted to RGB if any is RGB."""
    return _read_image_folder(*_stamped(folder))[0]


def read_labeled_image_folder(folder: Path) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Pictures (N, H, W, C) uint8, labels (N,) int64 and class names of a folder of class subfolders."""
    pixels, labels, names = _read_image_folder(*_stamped(folder))
    if not names:
        raise InputError(f"'{folder}' is a flat folder of pictures, without labels; for classes put the pictures "
                         "in one subfolder per class (root/cat/*.png, root/dog/*.png)")
    return pixels, labels, names


def _stamped(folder: Path) -> tuple[Path, tuple[int, ...]]:
    """The folder and the modification times of it and its subfolders, so that a changed folder is read
    again."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise InputError(f"--data '{folder}' is not a folder of images")
    return folder, tuple(p.stat().st_mtime_ns for p in [folder, *_entries(folder)] if p.is_dir())


@lru_cache(maxsize=1)
def _read_image_folder(folder: Path, stamp: tuple[int, ...]) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    files, names, labels = _folder_layout(folder)
    pictures = [read_picture(f, "image") for f in files]
    first = pictures[0].shape[:2]
    for f, p in zip(files, pictures):
        if p.shape[:2] != first:
            raise InputError(f"images in '{folder}' differ in size: {files[0].relative_to(folder)} is "
                             f"{first[1]}x{first[0]}, {f.relative_to(folder)} is {p.shape[1]}x{p.shape[0]}; "
                             "resize them to one size")
    channels = max(p.shape[-1] for p in pictures)
    pixels = torch.stack([p.expand(*p.shape[:2], channels) for p in pictures])
    return pixels, torch.tensor(labels, dtype=torch.long), names


TENSOR_LAYOUTS = ("(N, H, W, C) floats in [-1, 1] (discretized images), (N, H, W, 1) integers 0/1 (binary images) "
                  "or (N, L) integers 0..26 (text)")


def read_tensor_file(path: Path, num_bins: int, labels: bool = False) -> TensorExamples:
    """A .safetensors (tensor 'data', or its only tensor besides 'labels') or .npy file of examples, used
    as is; with ``labels``, also the file's 'labels' tensor (see the module's docstring)."""
    suffix = path.suffix.lower()
    label_tensor, names_json = None, None
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                tensors = {name: f.get_tensor(name) for name in f.keys()}
                names_json = (f.metadata() or {}).get("class_names")
        except (SafetensorError, OSError, ValueError) as err:
            raise InputError(f"'{path}' is not a readable safetensors file ({str(err)[:80]})") from None
        label_tensor = tensors.pop("labels", None)
        if "data" in tensors:
            data = tensors["data"]
        elif "samples" in tensors:
            data = tensors["samples"]
        elif len(tensors) == 1:
            data = next(iter(tensors.values()))
        else:
            held = sorted(tensors) + (["labels"] if label_tensor is not None else [])
            raise InputError(f"'{path}' holds {', '.join(held) or 'no tensors'}; name the examples tensor 'data'")
    elif suffix == ".npy":
        if labels:
            raise InputError(f"'{path}': .npy files hold no labels; save the examples as 'data' and their classes as "
                             "'labels' in one .safetensors file")
        try:
            import numpy as np
        except ImportError:
            raise UserError("reading .npy files needs numpy: pip install numpy, or use .safetensors") from None
        _check_npy_size(path, np)
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise InputError(f"'{path}' is not a readable .npy array ({str(err)[:80]})") from None
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":  # not numbers (or complex)
            what = getattr(array, "dtype", type(array).__name__)
            raise InputError(f"'{path}' holds {what} values, not real numbers; expected {TENSOR_LAYOUTS}")
        data = torch.from_numpy(array)
    else:
        raise InputError(f"'{path}': tensor files are .safetensors or .npy")
    data, spec = _tensor_layout(data, path, num_bins)
    if not labels:
        return TensorExamples(data, spec)
    if spec.kind == "text":
        raise InputError(f"'{path}' holds text, and text models are unconditional: text has no class labels")
    if label_tensor is None:
        raise InputError(f"'{path}' has no 'labels' tensor; save each example's class (integers 0..C-1) as 'labels' "
                         "beside 'data'")
    label_tensor, names = checked_labels(label_tensor, data.shape[0], _class_names(names_json, path), f"'{path}'")
    return TensorExamples(data, DataSpec(spec.kind, spec.shape, spec.num_bins, spec.n_classes, names), label_tensor)


def _check_npy_size(path: Path, np) -> None:
    """A .npy file whose header promises more data than the file holds is malformed: say so before
    numpy allocates what the header claims (which may be more memory than any machine has)."""
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                return  # other versions: numpy's own checks
            read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _, dtype = read_header(f)
            have = os.fstat(f.fileno()).st_size - f.tell()
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"'{path}' is not a readable .npy array ({str(err)[:80]})") from None
    if dtype.hasobject:
        return  # refused below without reading it (no pickles)
    need = math.prod(shape) * dtype.itemsize
    if need > have:
        raise InputError(f"'{path}' is a malformed .npy file: its header says {tuple(shape)} values of {dtype} "
                         f"({need:,} bytes) but it holds {have:,} bytes of data; save the array again")


def _class_names(names_json: Optional[str], path: Path) -> Optional[tuple[str, ...]]:
    if names_json is None:
        return None
    try:
        names = json.loads(names_json)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise InputError(f"'{path}': the metadata 'class_names' must be a JSON list of distinct, non-empty strings")
    return tuple(names)


def checked_labels(labels: Tensor, count: int, names: Optional[tuple[str, ...]], where: str
                   ) -> tuple[Tensor, tuple[str, ...]]:
    """Labels as int64 (N,) and the class names, or a one-line error for any label tensor that cannot be
    one class id per example."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"{where}: 'labels' are {str(labels.dtype).replace('torch.', '')}; store the class ids as "
                         "integers 0..C-1")
    if labels.dim() != 1 or labels.numel() != count:
        raise InputError(f"{where}: 'labels' has shape {tuple(labels.shape)} but there are {count} examples; give one "
                         f"class id per example, shape ({count},)")
    labels = labels.long()
    if labels.min() < 0:
        raise InputError(f"{where}: 'labels' has negative values; class ids are 0..C-1")
    top = int(labels.max())
    if names is not None:
        if top >= len(names):
            raise InputError(f"{where}: 'labels' go up to {top} but 'class_names' names {len(names)} classes; name "
                             "every class, in class-id order")
        return labels, names
    if top >= count:  # every class 0..top must occur, so there can be at most as many as examples
        raise InputError(f"{where}: 'labels' go up to {top} but there are only {count} examples, so most classes "
                         "0..C-1 never occur; number the classes 0..C-1 without gaps, or name them all in the "
                         "metadata 'class_names'")
    missing = sorted(set(range(top + 1)) - set(labels.unique().tolist()))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"{where}: 'labels' go up to {top} but class(es) {shown} never occur; number the classes "
                         "0..C-1 without gaps, or name them all in the metadata 'class_names'")
    return labels, tuple(str(i) for i in range(top + 1))


def _tensor_layout(data: Tensor, path: Path, num_bins: int) -> tuple[Tensor, DataSpec]:
    if data.is_complex():
        raise InputError(f"'{path}' holds {str(data.dtype).removeprefix('torch.')} values; expected {TENSOR_LAYOUTS}")
    if data.numel() == 0 or data.dim() < 2:
        raise InputError(f"'{path}' has shape {tuple(data.shape)}; expected {TENSOR_LAYOUTS}")
    if data.is_floating_point():
        if data.dim() != 4:
            raise InputError(f"'{path}' holds floats of shape {tuple(data.shape)}; expected {TENSOR_LAYOUTS}")
        if not torch.isfinite(data).all() or data.min() < -1 or data.max() > 1:
            raise InputError(f"'{path}' has values outside [-1, 1]; discretized images are bin centres in [-1, 1]")
        return data.float(), DataSpec("discretized", tuple(data.shape[1:]), num_bins=num_bins)
    data = data.long()
    if data.dim() == 2:
        if data.min() < 0 or data.max() > 26:
            raise InputError(f"'{path}' has integers outside 0..26; text is 0 = space, 1..26 = a..z")
        return data, DataSpec("text", (data.shape[1],), n_classes=27)
    if data.dim() == 4 and data.shape[-1] == 1:
        if data.min() < 0 or data.max() > 1:
            raise InputError(f"'{path}' has integers outside 0/1; binary images are 0 or 1")
        return data, DataSpec("binary", tuple(data.shape[1:]), n_classes=2)
    raise InputError(f"'{path}' holds integers of shape {tuple(data.shape)}; expected {TENSOR_LAYOUTS}")
