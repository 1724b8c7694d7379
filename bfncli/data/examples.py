"""Example sets: data held in memory as compact integers, batches built with vectorised ops.

Every set has ``spec`` (what the examples are), ``len()`` and ``batch(index, generator)``, which
returns a batch in the official data layout:

- binary images: int64 (B, H, W, 1) in {0, 1}, freshly binarized on every draw (dynamic
  binarization: each pixel is 1 with its grey level as probability);
- discretized images: float32 (B, H, W, C) at the bin centres (2k + 1)/K - 1 of K bins in [-1, 1],
  optionally flipped left-right at random (per example);
- text: int64 (B, L), 0 for space and 1..26 for a..z.

Randomness (binarization, flips) comes only from the generator passed in, so a batch is a pure
function of (index, generator state): training resumes bit for bit.

Class labels (for class-conditional models and the sample-quality classifier) travel beside the
examples, never inside the batches: an image set loaded with labels has ``labels``, int64 (N,) with
values 0..C-1, and ``spec.class_names``, C names; ``labels_of(index)`` gives the labels of the
examples that ``batch(index, ...)`` gives (a flip does not change a label). A set loaded without
labels has ``labels = None`` and ``spec.class_names = ()``; its batches are the same either way.
``spec.n_classes`` is something else: the classes of the *data* values (2 for binary pixels, 27
for text characters).

``fingerprint()`` is a hash of what a set holds (stored values, labels, preprocessing settings,
and for a subset its indices): caches of things trained on the data are keyed by it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor

ALPHABET = "_abcdefghijklmnopqrstuvwxyz"  # index 0 is space, shown as '_' like the official code


@dataclass(frozen=True)
class DataSpec:
    kind: Literal["binary", "discretized", "text"]
    shape: tuple[int, ...]  # one example
    num_bins: Optional[int] = None  # discretized images
    n_classes: Optional[int] = None  # classes of the data values: binary (2) and text (27)
    class_names: tuple[str, ...] = ()  # classes of the examples' labels; () = no labels loaded


class _Labeled:
    """What every example set has for labels: ``labels`` (int64 (N,) or None) and ``labels_of``."""

    labels: Optional[Tensor] = None

    def labels_of(self, index: Tensor) -> Tensor:
        """The labels of the examples ``batch(index)`` returns, int64."""
        if self.labels is None:
            raise ValueError("these examples were loaded without labels: load_split(..., labels=True)")
        return self.labels[index]


def _digest(*parts) -> str:
    """sha256 over tensors' bytes (with dtype and shape) and other values' reprs."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()


class BinaryImages(_Labeled):
    """Grey-level images (N, H, W) as uint8 0..levels; binarized anew on every draw."""

    def __init__(self, grey: Tensor, levels: int = 255, labels: Optional[Tensor] = None,
                 class_names: Sequence[str] = ()):
        self.grey, self.levels, self.labels = grey, levels, labels
        self.spec = DataSpec("binary", (*grey.shape[1:], 1), n_classes=2, class_names=tuple(class_names))

    def fingerprint(self) -> str:
        return _digest("binary", self.grey, self.levels, self.labels, self.spec.class_names)

    def __len__(self) -> int:
        return self.grey.shape[0]

    def batch(self, index: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        p = self.grey[index].float() / self.levels
        return torch.bernoulli(p, generator=generator).long().unsqueeze(-1)


class DiscretizedImages(_Labeled):
    """Images (N, H, W, C) as uint8 0..levels, mapped to the centres of ``num_bins`` bins in [-1, 1]."""

    def __init__(self, pixels: Tensor, num_bins: int, levels: int = 255, flip: bool = False,
                 labels: Optional[Tensor] = None, class_names: Sequence[str] = ()):
        self.pixels, self.num_bins, self.levels, self.flip = pixels, num_bins, levels, flip
        self.labels = labels
        self.spec = DataSpec("discretized", tuple(pixels.shape[1:]), num_bins=num_bins,
                             class_names=tuple(class_names))

    def fingerprint(self) -> str:
        return _digest("discretized", self.pixels, self.num_bins, self.levels, self.flip, self.labels,
                       self.spec.class_names)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def batch(self, index: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        from bfncli.flows.distributions import quantize

        x = quantize(self.pixels[index].float() / self.levels * 2 - 1, self.num_bins)
        if self.flip:
            flipped = torch.rand(x.shape[0], generator=generator) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(2), x)
        return x


class TextWindows(_Labeled):
    """Every window of ``seq_len`` characters of a text (uint8 codes), one example per start offset.
    Text has no labels: text models are unconditional."""

    def __init__(self, codes: Tensor, seq_len: int):
        if codes.numel() <= seq_len:
            raise ValueError("text shorter than one sequence")
        self.codes, self.seq_len = codes, seq_len
        self.offsets = torch.arange(seq_len)
        self.spec = DataSpec("text", (seq_len,), n_classes=27)

    def __len__(self) -> int:
        return self.codes.numel() - self.seq_len

    def batch(self, index: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return self.codes[index.unsqueeze(1) + self.offsets].long()

    def fingerprint(self) -> str:
        return _digest("text", self.codes, self.seq_len)


class TensorExamples(_Labeled):
    """Examples given as they are, in the model's data layout (labels, if any, in ``spec.class_names``'
    order)."""

    def __init__(self, data: Tensor, spec: DataSpec, labels: Optional[Tensor] = None):
        self.data, self.spec, self.labels = data, spec, labels

    def fingerprint(self) -> str:
        return _digest("tensor", self.data, self.spec, self.labels)

    def __len__(self) -> int:
        return self.data.shape[0]

    def batch(self, index: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return self.data[index]


class Subset(_Labeled):
    """Some examples of another set, in a fixed order (their labels too)."""

    def __init__(self, examples, indices: Tensor):
        self.examples, self.indices, self.spec = examples, indices, examples.spec
        self.labels = None if examples.labels is None else examples.labels[indices]

    def __len__(self) -> int:
        return self.indices.numel()

    def batch(self, index: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return self.examples.batch(self.indices[index], generator)

    def fingerprint(self) -> str:
        return _digest("subset", self.examples.fingerprint(), self.indices)


def holdout(n: int, fractions: tuple[float, ...], seed: int = 2147483647) -> list[Tensor]:
    """Split range(n) like torch.utils.data.random_split(range(n), fractions, generator(seed)).

    With fractions (0.99, 0.01) and the seed 2147483647 this is exactly the official code's
    train/validation split of the MNIST and CIFAR-10 training sets.
    """
    lengths = [int(n * f) for f in fractions]
    for i in range(n - sum(lengths)):  # the remainder goes round-robin, as random_split does
        lengths[i % len(lengths)] += 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for length in lengths:
        out.append(perm[start : start + length])
        start += length
    return out


def encode_text(text: str) -> Tensor:
    """Any text -> text8's alphabet: lower case; accents removed; every run of other characters a
    single space. Returns uint8 codes (0 = space, 1..26 = a..z)."""
    import re
    import unicodedata

    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    clean = re.sub(r"[^a-z]+", " ", ascii_text).strip()
    table = bytes.maketrans(b" abcdefghijklmnopqrstuvwxyz", bytes(range(27)))
    if not clean:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(clean.encode().translate(table)), dtype=torch.uint8).clone()


def decode_text(indices: Tensor, space: str = "_") -> list[str]:
    """Class indices (B, L) -> strings, with '_' for space like the official code (``space=" "``
    gives the text as it reads: what ``bfn render`` prints)."""
    alphabet = space + ALPHABET[1:]
    return ["".join(alphabet[int(i)] for i in row) for row in indices.reshape(indices.shape[0], -1)]
