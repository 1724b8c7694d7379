"""Per-example random streams.

Each example drawn by ``bfn sample`` has its own generator, seeded by (seed, example index), so a
sample is the same whether it was drawn alone, in a batch of 1000, or in chunks of any size.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def example_seed(seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"bfn-sample:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SampleNoise:
    """Random draws for a batch of examples ``first .. first + count - 1`` of a sampling run."""

    def __init__(self, seed: int, first: int, count: int, device: torch.device | str = "cpu"):
        self.generators = [torch.Generator().manual_seed(example_seed(seed, first + j)) for j in range(count)]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def _draw(self, fn, shape: tuple[int, ...]) -> Tensor:
        # Drawn on the CPU, one example at a time, then moved in one transfer: identical on every device.
        out = torch.stack([fn(shape, generator=g) for g in self.generators])
        return out.to(self.device, non_blocking=True)

    def normal(self, *shape: int) -> Tensor:
        return self._draw(torch.randn, shape)

    def uniform(self, *shape: int) -> Tensor:
        return self._draw(torch.rand, shape)
