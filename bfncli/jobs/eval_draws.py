"""The random draws of one evaluation repeat, made in fixed blocks of examples.

``bfn eval`` (the official test.py estimator) draws, for every example, its data randomness (binary
MNIST is binarized afresh), the loss's draws (t, the flow's noise, the discrete-time loss's Monte
Carlo noise; :meth:`bfncli.model.BFN.draw`) and the reconstruction loss's flow noise. They are drawn
for blocks of :data:`BLOCK` consecutive examples, each block from generators seeded by (seed, repeat,
block) alone, and a batch is cut from the blocks it covers. So every example meets the same numbers
whatever the batch size: a batch that fills a GPU and a batch of 10 estimate the same quantity with
the same draws, and the result moves only by floating-point summation (tested).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

# Examples per block of draws. Changing it changes every reported figure (other draws), so it is fixed.
BLOCK = 100


def block_seed(seed: int, repeat: int, block: int, stream: int) -> int:
    """The seed of one block's generator: stream 0 for the data (CPU), 1 for the loss (the device)."""
    return (((seed * 1_000_003 + repeat) * 1_000_033 + block) * 2 + stream) % (2**63)


class RepeatDraws:
    """The draws of repeat ``repeat``: ``batch(start, stop)`` gives, for examples start..stop-1,
    (x, (t, flow_noise, mc_noise), recon_noise) on ``device``, the same for an example whichever
    batches it is asked for in. Batches are asked for in order; one block is kept between calls."""

    def __init__(self, model, examples, n_steps: int, seed: int, repeat: int, device):
        self.model, self.examples, self.n_steps = model, examples, n_steps
        self.seed, self.repeat, self.device = seed, repeat, torch.device(device)
        self._kept: Optional[tuple[int, tuple]] = None  # (block index, its draws)

    def _block(self, k: int) -> tuple:
        if self._kept is not None and self._kept[0] == k:
            return self._kept[1]
        n = len(self.examples)
        index = torch.arange(k * BLOCK, min((k + 1) * BLOCK, n))
        data_gen = torch.Generator().manual_seed(block_seed(self.seed, self.repeat, k, 0))
        gen = torch.Generator(device=self.device).manual_seed(block_seed(self.seed, self.repeat, k, 1))
        x = self.examples.batch(index, data_gen)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        t, flow_noise, mc_noise = self.model.draw(x, self.n_steps, gen)
        recon_noise = self.model.flow.flow_noise(x, gen)
        draws = (x, t, flow_noise, list(mc_noise), recon_noise)
        self._kept = (k, draws)
        return draws

    def batch(self, start: int, stop: int) -> tuple[Tensor, tuple[Tensor, Tensor, list[Tensor]], Tensor]:
        parts = []
        for k in range(start // BLOCK, (stop - 1) // BLOCK + 1):
            lo, hi = max(start - k * BLOCK, 0), min(stop - k * BLOCK, BLOCK)
            parts.append([_rows(d, lo, hi) for d in self._block(k)])
        if len(parts) == 1:
            x, t, flow_noise, mc_noise, recon_noise = parts[0]
        else:
            x, t, flow_noise, mc_noise, recon_noise = (_cat([p[i] for p in parts]) for i in range(5))
        return x, (t, flow_noise, mc_noise), recon_noise


def _rows(d, lo: int, hi: int):
    if isinstance(d, list):
        return [e[lo:hi] for e in d]
    return d[lo:hi]


def _cat(pieces: list):
    if isinstance(pieces[0], list):
        return [torch.cat([p[i] for p in pieces]) for i in range(len(pieces[0]))]
    return torch.cat(pieces)
