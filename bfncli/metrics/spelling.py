"""Spelling accuracy of generated text: the fraction of generated words found in the vocabulary of the
model's training text (the measure of Graves et al. 2023 and of the BFN solvers' text experiments,
defined here precisely).

Text is in text8's alphabet (0 = space, 1..26 = a..z); a word is a maximal run of letters.

- Vocabulary: every distinct word of the training text (text8's, pyhelp's or your file's training
  split). The split's last word may be cut by the split; one fragment among some 10^5 words does not
  matter.
- Measured words: samples are fixed-length windows, so a word touching either end of a sample may be
  cut off and is not measured, unless it is the sample's only word: a sample without any inner
  space (a typical failure) then counts as one misspelt word instead of vanishing from the measure.
- Accuracy: found words / measured words, pooled over all samples.
- Noise: a sample's words are not independent of each other, the samples are. The standard error is
  that of a ratio estimator across samples (Cochran, *Sampling Techniques*, 3rd ed. 1977, ch. 6):
  with c_i found and w_i measured words in sample i and R = sum c / sum w,
  SE = sqrt(n / (n - 1) * sum_i (c_i - R w_i)^2) / sum_i w_i over the n samples with any measured
  word. With one word per sample it is the usual sqrt(R (1 - R) / (n - 1)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

_LETTERS = bytes.maketrans(bytes(range(27)), b" abcdefghijklmnopqrstuvwxyz")
_CHUNK = 1 << 24  # characters split at once while building a vocabulary: bounded memory for text8


@dataclass(frozen=True)
class SpellingAccuracy:
    accuracy: float  # found / measured words, pooled
    stderr: Optional[float]  # across samples (None with fewer than 2 samples with words)
    n_words: int  # measured words
    n_found: int
    n_samples: int  # samples given
    n_samples_measured: int  # samples with at least one measured word


def _as_bytes(codes: Tensor) -> bytes:
    return codes.to(torch.uint8).contiguous().numpy().tobytes().translate(_LETTERS)


def vocabulary(codes: Tensor) -> frozenset[bytes]:
    """The distinct words of a text given as codes 0..26 (any shape; read in order)."""
    text = _as_bytes(codes.reshape(-1))
    words: set[bytes] = set()
    start = 0
    while start < len(text):
        end = text.find(b" ", start + _CHUNK)  # cut at a space, never inside a word
        end = len(text) if end < 0 else end
        words.update(text[start:end].split())
        start = end
    return frozenset(words)


def vocabulary_of_windows(windows: Tensor) -> frozenset[bytes]:
    """The distinct words of separate windows of text (N, L), e.g. a tensor file of examples: words
    touching a window's ends may be cut off and are left out, as in the samples."""
    return frozenset(w for row in windows.reshape(windows.shape[0], -1) for w in measured_words(_as_bytes(row)))


def measured_words(sample: bytes) -> list[bytes]:
    """The words of one sample that are measured (see the module's docstring)."""
    words = sample.split()
    if len(words) <= 1:
        return words
    if not sample.startswith(b" "):
        words = words[1:]
    if not sample.endswith(b" "):
        words = words[:-1]
    return words


def spelling_accuracy(samples: Tensor, vocab: frozenset[bytes]) -> SpellingAccuracy:
    """The spelling accuracy of text samples (N, L) of codes 0..26 against a vocabulary."""
    counts = []  # (found, measured) per sample with measured words
    for row in samples.reshape(samples.shape[0], -1):
        words = measured_words(_as_bytes(row))
        if words:
            counts.append((sum(w in vocab for w in words), len(words)))
    found = sum(c for c, _ in counts)
    total = sum(w for _, w in counts)
    n = len(counts)
    accuracy = found / total if total else float("nan")
    stderr = None
    if n >= 2:
        residuals = sum((c - accuracy * w) ** 2 for c, w in counts)
        stderr = math.sqrt(n / (n - 1) * residuals) / total
    return SpellingAccuracy(accuracy, stderr, total, found, samples.shape[0], n)
