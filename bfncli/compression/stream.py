"""Many batches of chunks chained on one ANS stack, and the initial bits they borrow.

The first pops of a bits-back code need bits that are not there yet. The stack starts on a block
of seed words that both sides can regenerate (SHAKE-256 of a fixed label): the encoder pops from
it where it must, and every batch after the first pops from what the batches before it pushed, so
what one borrows the next pays back. The seed's bottom words that were never read are left out of
the file (the decoder regenerates them), so the file holds the net code plus the initial bits
actually used, which are reported separately. At the end the decoder must find the seed exactly:
that, with the data's checksum, tells a faithful decode from one that drifted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from bfncli.compression.coder import Stack

SEED_LABEL = b"bfn compress: initial bits"


def seed_words(count: int) -> np.ndarray:
    words = np.frombuffer(hashlib.shake_256(SEED_LABEL).digest(4 * count), dtype="<u4").astype(np.uint32)
    words[-1] |= 1  # an ANS stack's top word is never zero
    return words


@dataclass
class Encoded:
    payload: np.ndarray  # the words above the untouched seed
    seed: int  # seed words the stack started on
    untouched: int  # of which the first ones were never read (not in the payload)
    loss_nats: float  # the model's n-step loss of the chunks, summed (the loss's own estimator)
    dims: int  # valid data dimensions coded

    @property
    def initial_bits(self) -> int:
        return 32 * (self.seed - self.untouched)

    @property
    def bits(self) -> int:
        return 32 * len(self.payload)


def encode_batches(coder, batches, first_coords: int, tick: Optional[Callable[[], None]] = None) -> Encoded:
    """Encode [(x, valid)] in order on one stack. ``first_coords``: coded coordinates of the first
    batch, which sizes the seed (it is grown and the coding redone in the rare case it runs dry)."""
    count = max(1024, first_coords + 1024)  # about 32 bits a coordinate
    while True:
        seed = seed_words(count)
        stack = Stack(seed)
        loss: list = []
        for x, valid in batches:
            coder.encode(stack, x, valid, tick, loss)
        if stack.low > 8:
            break
        count *= 4
    words = stack.words()
    untouched = stack.low - 2  # the top two words of the seed were the coder's state
    if not np.array_equal(words[:untouched], seed[:untouched]):
        raise AssertionError("the untouched seed words changed")
    nats = float(sum(total.sum() for total, _ in loss))
    dims = int(sum(n for _, n in loss))
    return Encoded(words[untouched:].copy(), count, untouched, nats, dims)


def decode_batches(coder, payload: np.ndarray, seed: int, untouched: int, valids,
                   tick: Optional[Callable[[], None]] = None) -> Optional[list]:
    """The batches' x, in encoding order, or None if the decode drifted (the seed did not come back)."""
    start = seed_words(seed)
    stack = Stack(np.concatenate([start[:untouched], payload]))
    out = []
    try:
        for valid in reversed(valids):
            out.append(coder.decode(stack, valid, tick))
    except (ValueError, OverflowError):  # a drifted decode pushing values no window holds
        return None
    if not np.array_equal(stack.words(), start):
        return None
    return out[::-1]
