"""A learned vector per class, for class-conditional networks, with one extra "no class" entry.

A conditional network learns the conditional and the unconditional model at once: training
replaces some labels by "no class" (index ``num_classes``), and classifier-free guidance at
sampling time compares the two predictions. Each network adds the class vector to its time
conditioning (the U-Nets) or to every position's features (the transformer).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class ClassEmbedding(nn.Embedding):
    """``num_classes + 1`` vectors of width ``dim``; the last one stands for "no class".

    The vectors start at zero, so that a conditional network starts as exactly its unconditional
    twin (the same function for every class) and training alone makes the classes differ; a
    random start would instead add a fixed random offset per class to the time conditioning.
    """

    def __init__(self, num_classes: int, dim: int):
        if num_classes < 1:
            # Networks build one only for num_classes > 0; 0 means unconditional, without one.
            raise ValueError(f"num_classes must be 0 (unconditional) or positive, not {num_classes}")
        super().__init__(num_classes + 1, dim)
        self.num_classes = num_classes

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def forward(self, classes: Optional[Tensor], batch: int) -> Tensor:
        """(B,) class indices in 0..num_classes (num_classes: no class), or None: no class for
        every example -> (B, dim)."""
        if classes is None:
            classes = torch.full((batch,), self.num_classes, dtype=torch.long, device=self.weight.device)
        if classes.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"classes must be an integer tensor (int64), not {classes.dtype}")
        if classes.shape != (batch,):
            raise ValueError(f"classes must have shape ({batch},), one per example, not {tuple(classes.shape)}")
        # nn.Embedding's own failure on a bad index is an obscure IndexError on a CPU and a
        # device-side assert (which ends the process's use of the GPU) on CUDA.
        if batch and not bool(((classes >= 0) & (classes <= self.num_classes)).all()):
            raise ValueError(f"classes must be in 0..{self.num_classes} ({self.num_classes} = no class), "
                             f"got values from {int(classes.min())} to {int(classes.max())}")
        return super().forward(classes)


def refuse_classes(classes: Optional[Tensor]) -> None:
    """An unconditional network (num_classes = 0) must not silently ignore the classes it is given."""
    if classes is not None:
        raise ValueError("this network is unconditional (num_classes = 0): it takes no classes")
