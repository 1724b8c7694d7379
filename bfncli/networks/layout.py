"""Memory layouts of the U-Nets: channels-last where it measured faster, with the same dropout masks.

A U-Net's convolutions run faster on some hardware with activations stored channels-last (NHWC)
instead of NCHW; the values are the same, only their order in memory differs (and with it the
rounding of the convolutions' sums). `benchmarks/channels_last.py` measures the network's forward
and backward both ways. On this project's CPU (2 cores, torch 2.13) channels-last took 0.93 (default
preset), 0.88 (mnist-tiny) and 0.81 (cifar10-256d) of the NCHW time; on GPUs it is not measured yet,
so they keep NCHW (add the device type to :data:`FASTER_ON` once measured).

Dropout draws its mask in memory order, so the layout would decide which activations a seeded run
drops; :class:`NCHWDropout` draws it over the NCHW layout whatever the input's, so a channels-last
run drops what an NCHW run (and the official code) drops.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Device types on which channels-last U-Nets measured faster (benchmarks/channels_last.py).
FASTER_ON = {"cpu"}


class NCHWDropout(nn.Dropout):
    """``nn.Dropout`` whose mask does not depend on the input's memory layout (NCHW order)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.dim() != 4 or x.is_contiguous():
            return super().forward(x)
        return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)


def use_fast_layout(model: nn.Module, device) -> bool:
    """Store a U-Net's weights channels-last where that measured faster (its convolutions then produce
    channels-last activations); other networks, and other devices, are left alone. True if changed."""
    if torch.device(device).type not in FASTER_ON or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    model.to(memory_format=torch.channels_last)
    return True
