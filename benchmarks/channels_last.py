"""Channels-last U-Nets: the network's forward and backward with its weights and activations in the
usual NCHW layout and in channels-last (NHWC), on whatever device is here. Prints the median time of
each with its interquartile range and the ratio, for the U-Net presets.

    python benchmarks/channels_last.py [--steps 30] [--presets default,mnist-tiny,cifar10-256d] [--batch 8]

bfn builds its U-Nets' activations as contiguous NCHW on purpose: dropout draws its mask in memory
order, so the layout decides which activations a seeded run drops (the official code's choice).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from bfncli.config import resolve_config
from bfncli.model import BFN


def step_times(model, net_in, t, steps: int, device) -> list[float]:
    times = []
    for i in range(steps + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.net(net_in, t)
        out.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--presets", default="default,mnist-tiny,cifar10-256d")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()}, {os.cpu_count()} CPUs"
    print(f"{where}, torch {torch.__version__}; batch {args.batch}, median of {args.steps} forward+backward steps (IQR)")
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        cfg = resolve_config(preset, environ={})
        model = BFN(cfg).to(device).train()
        shape = (args.batch, *model.data_shape)
        net_in = torch.rand(shape, device=device) * 2 - 1
        t = torch.rand(shape, device=device)
        results = {}
        for layout in ("nchw", "channels_last"):
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
            xs = step_times(model, net_in, t, args.steps, device)
            q = statistics.quantiles(xs, n=4)
            results[layout] = q[1]
            print(f"{preset:14} {layout:14} {q[1] * 1e3:8.1f} ms  IQR {(q[2] - q[0]) * 1e3:6.1f} ms")
        print(f"{preset:14} channels_last / nchw = {results['channels_last'] / results['nchw']:.2f}")


if __name__ == "__main__":
    main()
