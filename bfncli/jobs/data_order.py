"""Which examples each training step sees, and the seeds of every random draw: pure functions of the step.

Every random draw of optimizer step s (which examples, the time t, the flow sample, the Monte Carlo
noise, dropout) comes from a generator seeded by ``mix(seed, what, s, slot)``, so a resumed run
replays exactly what the uninterrupted one would have done.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import torch

LARGE_DATASET = 10_000_000  # above this many examples, draw indices at random instead of epoch permutations


def mix(*parts: Any) -> int:
    """A 63-bit seed from any tuple of values (stable across runs and machines)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# ------------------------------------------------------------------------------- data order
class DataOrder:
    """Which examples each (step, micro-step, rank) trains on: a pure function of the step.

    The global batch of step s is positions [s B, (s+1) B) of the endless sequence of epochs, each
    a permutation of the training set seeded by (seed, epoch). Ranks and micro-steps take
    consecutive slices. Huge datasets (text8: every offset is an example) draw uniformly instead.
    """

    def __init__(self, n_examples: int, global_batch: int, micro_batch: int, seed: int):
        self.n = n_examples
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.seed = seed
        self._epoch: Optional[int] = None
        self._perm: Optional[torch.Tensor] = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._epoch != epoch:
            g = torch.Generator().manual_seed(mix(self.seed, "epoch", epoch))
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def indices(self, step: int, slot: int) -> torch.Tensor:
        """Indices for micro-batch ``slot`` (= micro * world_size + rank) of optimizer step ``step``."""
        if self.n > LARGE_DATASET:
            g = torch.Generator().manual_seed(mix(self.seed, "draw", step, slot))
            return torch.randint(0, self.n, (self.micro_batch,), generator=g)
        start = step * self.global_batch + slot * self.micro_batch
        positions = torch.arange(start, start + self.micro_batch)
        epochs, offsets = positions // self.n, positions % self.n
        out = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():
            sel = epochs == epoch
            out[sel] = self._permutation(int(epoch))[offsets[sel]]
        return out

    def position(self, step: int) -> dict[str, int]:
        consumed = step * self.global_batch
        return {"examples_seen": consumed, "epoch": consumed // self.n, "offset": consumed % self.n}
