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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor

ALPHABET = "_abcdefghijklmnopqrstuvwxyz"  # index 0 is space, shown as '_' like the official code


@dataclass(frozen=True)
class DataSpec:
    kind: Literal["binary", "discretized", "text"]
    shape: tuple[int, ...]  # one example
    num_bins: Optional[int] = None  # discretized images
    n_classes: Optional[int] = None  # binary (2) and text (27)


class BinaryImages:
    """Grey-level images (N, H, W) as uint8 0..levels; binarized anew on every draw."""

    def __init__(self, grey: Tensor, levels: int = 255):
        self.grey, self.levels = grey, levels
        self.spec = DataSpec("binary", (*grey.shape[1:], 1), n_classes=2)

    def __len__(self) -> int:
        return self.grey.shape[0]

    def batch(self, index: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        p = self.grey[index].float() / self.levels
        return torch.bernoulli(p, generator=generator).long().unsqueeze(-1)


class DiscretizedImages:
    """Images (N, H, W, C) as uint8 0..levels, mapped to the centres of ``num_bins`` bins in [-1, 1]."""

    def __init__(self, pixels: Tensor, num_bins: int, levels: int = 255, flip: bool = False):
        self.pixels, self.num_bins, self.levels, self.flip = pixels, num_bins, levels, flip
        self.spec = DataSpec("discretized", tuple(pixels.shape[1:]), num_bins=num_bins)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def batch(self, index: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        from bfncli.flows.distributions import quantize

        x = quantize(self.pixels[index].float() / self.levels * 2 - 1, self.num_bins)
        if self.flip:
            flipped = torch.rand(x.shape[0], generator=generator) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(2), x)
        return x


class TextWindows:
    """Every window of ``seq_len`` characters of a text (uint8 codes), one example per start offset."""

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


class TensorExamples:
    """Examples given as they are, in the model's data layout."""

    def __init__(self, data: Tensor, spec: DataSpec):
        self.data, self.spec = data, spec

    def __len__(self) -> int:
        return self.data.shape[0]

    def batch(self, index: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return self.data[index]


class Subset:
    """Some examples of another set, in a fixed order."""

    def __init__(self, examples, indices: Tensor):
        self.examples, self.indices, self.spec = examples, indices, examples.spec

    def __len__(self) -> int:
        return self.indices.numel()

    def batch(self, index: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return self.examples.batch(self.indices[index], generator)


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


def decode_text(indices: Tensor) -> list[str]:
    """Class indices (B, L) -> strings, with '_' for space like the official code."""
    return ["".join(ALPHABET[int(i)] for i in row) for row in indices.reshape(indices.shape[0], -1)]
