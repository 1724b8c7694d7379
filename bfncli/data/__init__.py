"""Datasets: the paper's (binarized MNIST, CIFAR-10, text8), the embedded ones, and the user's own.

``load_split(cfg.data, "train" | "val" | "test")`` returns an example set (see
:mod:`bfncli.data.examples`); ``data_spec(cfg.data)`` says what the examples are without loading
them all. Every problem a user can cause raises :class:`~bfncli.errors.UserError`.

Class labels, for class-conditional models and the sample-quality classifier, come only when asked
for: ``load_split(cfg.data, split, labels=True)`` gives a set with ``labels`` (int64 (N,), 0..C-1)
and ``labels_of(index)``, and ``spec.class_names`` (C names); ``data_spec(cfg.data, labels=True)``
gives the class names alone. Without ``labels`` nothing is read, downloaded or changed. Labels exist
for the digits (0-9), MNIST (0-9; its label files are downloaded then), CIFAR-10 (airplane ...
truck), image folders with one subfolder per class, and .safetensors files with a ``labels``
tensor (see :mod:`bfncli.data.own_data`). Asking for them elsewhere is a UserError.

Splits:
- MNIST, CIFAR-10: the official test set; the training set split 99/1 into train/validation with
  the official code's generator seed (2147483647), so validation numbers are comparable.
- text8: the first 90M characters train, the next 5M validation, the last 5M test; every window
  of ``seq_len`` characters is an example, as in the official code.
- digits (embedded): 85% train, 5% validation, 10% test, fixed.
- pyhelp (embedded) and your own text: split 90/5/5 like text8.
- your own images: ``val_frac`` held out for validation, which is also the test split.
- your own tensor file: ``val_frac`` held out for validation; the test split is the whole file.
- ``all``, for your own data only: every example (``bfn eval --data`` evaluates all it is given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from bfncli.data import formats, own_data
from bfncli.data.examples import (
    ALPHABET,
    BinaryImages,
    DataSpec,
    DiscretizedImages,
    Subset,
    TextWindows,
    decode_text,
    encode_text,
    holdout,
)
from bfncli.errors import InputError, UserError

Split = Literal["train", "val", "test", "all"]
VISION_SPLIT_SEED = 2147483647  # the official code's validation split generator seed

__all__ = ["load_split", "data_spec", "describe_split", "DataSpec", "decode_text", "encode_text", "ALPHABET"]
TEXT_HAS_NO_LABELS = "text models are unconditional: text data has no class labels"


def data_spec(cfg, labels: bool = False) -> DataSpec:
    """What one example is, cheaply (with ``labels``: and the class names of its labels)."""
    name = cfg.dataset
    if labels and name in ("text8", "pyhelp", "text"):
        raise UserError(f"data.dataset '{name}': {TEXT_HAS_NO_LABELS}")
    if name == "mnist":
        return DataSpec("binary", (28, 28, 1), n_classes=2, class_names=formats.DIGIT_CLASSES if labels else ())
    if name == "cifar10":
        return DataSpec("discretized", (32, 32, 3), num_bins=cfg.num_bins,
                        class_names=formats.CIFAR10_CLASSES if labels else ())
    if name == "digits":
        return DataSpec("discretized", (8, 8, 1), num_bins=cfg.num_bins,
                        class_names=formats.DIGIT_CLASSES if labels else ())
    if name in ("text8", "pyhelp", "text"):
        if name == "text":
            _user_path(cfg)
        return DataSpec("text", (cfg.seq_len,), n_classes=27)
    if name == "images":
        return own_data.image_folder_spec(_user_path(cfg), cfg.num_bins, labels)
    return load_split(cfg, "test", labels).spec  # tensor files: the header is all there is


def load_split(cfg, split: Split, labels: bool = False):
    """The examples of one split of the configured dataset (with ``labels``: and their class labels)."""
    if split not in ("train", "val", "test", "all"):
        raise ValueError(split)
    name = cfg.dataset
    if split == "all" and name not in ("images", "text", "tensor"):
        raise ValueError("split 'all' is for the user's own data")
    if labels and name in ("text8", "pyhelp", "text"):
        raise UserError(f"data.dataset '{name}': {TEXT_HAS_NO_LABELS}")
    if name in ("mnist", "cifar10"):
        return _vision(cfg, split, labels)
    if name == "digits":
        images = formats.embedded_digits()
        train, val, test = holdout(images.shape[0], (0.85, 0.05, 0.10), seed=VISION_SPLIT_SEED)
        extra = dict(labels=formats.embedded_digit_labels(), class_names=formats.DIGIT_CLASSES) if labels else {}
        examples = DiscretizedImages(images.unsqueeze(-1), cfg.num_bins, levels=16, flip=False, **extra)
        return Subset(examples, {"train": train, "val": val, "test": test}[split])
    if name == "text8":
        return _text(formats.text8_split(Path(cfg.data_dir), split, cfg.download, cfg.mirrors), cfg, split)
    if name == "pyhelp":
        return _text(_split_90_5_5(formats.python_help_text(), split), cfg, split)
    if name == "text":
        codes = own_data.read_text_file(_user_path(cfg))
        return _text(codes if split == "all" else _split_90_5_5(codes, split), cfg, split)
    if name == "images":
        flip = cfg.horizontal_flip and split == "train"
        if labels:
            pixels, classes, names = own_data.read_labeled_image_folder(_user_path(cfg))
            examples = DiscretizedImages(pixels, cfg.num_bins, flip=flip, labels=classes, class_names=names)
        else:
            examples = DiscretizedImages(own_data.read_image_folder(_user_path(cfg)), cfg.num_bins, flip=flip)
        if split == "all":
            return examples
        train, val = holdout(len(examples), _fractions(len(examples), cfg.val_frac), seed=VISION_SPLIT_SEED)
        return Subset(examples, train if split == "train" else val)
    if name == "tensor":
        examples = own_data.read_tensor_file(_user_path(cfg), cfg.num_bins, labels)
        if split in ("test", "all"):
            return examples
        train, val = holdout(len(examples), _fractions(len(examples), cfg.val_frac), seed=VISION_SPLIT_SEED)
        return Subset(examples, train if split == "train" else val)
    raise UserError(f"unknown dataset '{name}'")


def describe_split(cfg, split: Split) -> str:
    """A split in words, for reports: 'the digits train split', "the val split of 'pictures'"."""
    if cfg.dataset in ("images", "text", "tensor"):
        return f"the {split} split of '{cfg.path}'"
    return f"the {cfg.dataset} {split} split"


def _user_path(cfg) -> Path:
    if cfg.path is None:
        raise UserError(f"data.dataset '{cfg.dataset}' needs a path: pass --data PATH (or set data.path)")
    path = Path(cfg.path)
    if not path.exists():
        raise InputError(f"--data '{path}' does not exist")
    return path


def _fractions(n: int, val_frac: float) -> tuple[float, float]:
    if n < 2:
        raise InputError(f"the data has {n} example(s); at least 2 are needed to hold one out for validation")
    val = max(val_frac, 1.0 / n)  # at least one validation example
    return (1 - val, val)


def _vision(cfg, split: Split, labels: bool):
    root = Path(cfg.data_dir)
    train_part = split in ("train", "val")
    part = "train" if train_part else "test"
    if cfg.dataset == "mnist":
        grey = formats.mnist_images(root, part, cfg.download, cfg.mirrors)
        extra = dict(labels=formats.mnist_labels(root, part, cfg.download, cfg.mirrors, grey.shape[0]),
                     class_names=formats.DIGIT_CLASSES) if labels else {}
        examples = BinaryImages(grey, **extra)
    else:
        pixels = formats.cifar10_images(root, part, cfg.download, cfg.mirrors)
        extra = dict(labels=formats.cifar10_labels(root, part, cfg.download, cfg.mirrors),
                     class_names=formats.CIFAR10_CLASSES) if labels else {}
        examples = DiscretizedImages(pixels, cfg.num_bins, flip=cfg.horizontal_flip and split == "train", **extra)
    if not train_part:
        return examples
    train, val = holdout(len(examples), (1 - cfg.val_frac, cfg.val_frac), seed=VISION_SPLIT_SEED)
    return Subset(examples, train if split == "train" else val)


def _split_90_5_5(codes: torch.Tensor, split: Split) -> torch.Tensor:
    n = codes.numel()
    a, b = int(n * 0.9), int(n * 0.95)
    return {"train": codes[:a], "val": codes[a:b], "test": codes[b:]}[split]


def _text(codes: torch.Tensor, cfg, split: Split):
    if codes.numel() <= cfg.seq_len:
        raise InputError(f"the {split} split of the text has {codes.numel()} characters, fewer than one sequence "
                         f"of data.seq_len={cfg.seq_len}; use more text or a shorter data.seq_len")
    return TextWindows(codes, cfg.seq_len)
