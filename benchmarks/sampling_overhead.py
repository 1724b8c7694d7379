"""Sampling cost is the network: time of n sampler steps / time of n bare network forward passes at
the same batch (the paper's mnist and text8 networks, random weights, CPU)."""

import sys
import time

import torch

from bfncli.config import resolve_config
from bfncli.model import BFN
from bfncli.samplers import SampleNoise, ancestral


def ratio(preset, batch, steps):
    torch.manual_seed(0)
    model = BFN(resolve_config(preset, environ={})).eval()
    shape = (batch, *model.data_shape)
    if model.discrete:
        theta = model.flow.prior(shape)
        net_in = model.flow.net_input(theta)
    else:
        net_in = torch.zeros(shape)
    t = torch.zeros(shape)
    with torch.inference_mode():
        model.net(net_in, t)  # warm-up
        start = time.perf_counter()
        for _ in range(steps + 1):  # the sampler runs the network n times plus once at t = 1
            model.net(net_in, t)
        bare = time.perf_counter() - start
    start = time.perf_counter()
    ancestral(model, SampleNoise(0, 0, batch), steps)
    sampled = time.perf_counter() - start
    print(f"{preset:6} batch {batch:3}, {steps} steps: sampler {sampled:7.2f} s, bare network {bare:7.2f} s, "
          f"ratio {sampled / bare:.3f}")


if __name__ == "__main__":
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    ratio("mnist", 16, steps)
    ratio("text8", 4, steps)
