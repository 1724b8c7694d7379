"""One training step of the paper's networks, split into its parts (CPU, small batches).

data: building the batch; flow: t and the Bayesian-flow sample; network: forward and backward of
the network alone; loss: output distribution and continuous-time loss (forward and backward);
optimizer: gradient clipping, AdamW and the EMA update. The overhead of BFN over a plain network
step is data + flow + loss.
"""

import sys
import time

import torch

from bfncli.config import resolve_config
from bfncli.data.examples import BinaryImages, TextWindows
from bfncli.model import BFN


def timed(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - start) / repeats, out


def bench(preset, batch, repeats):
    torch.manual_seed(0)
    cfg = resolve_config(preset, environ={})
    model = BFN(cfg).train()
    ema = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    if cfg.flow.n_classes == 2:
        examples = BinaryImages(torch.randint(0, 256, (1000, 28, 28), dtype=torch.uint8))
    else:
        examples = TextWindows(torch.randint(0, 27, (100_000,), dtype=torch.uint8), cfg.data.seq_len)
    index = torch.arange(batch)
    times = {}
    times["data"], x = timed(lambda: examples.batch(index, g), repeats)
    t = model.sample_t(batch, 0, "cpu", g)
    shape_t = t.reshape(-1, *([1] * (x.dim() - 1)))
    times["flow"], theta = timed(lambda: model.flow.flow_sample(x, shape_t, g), repeats)
    t_net = shape_t.expand(x.shape)
    net_in = model.flow.net_input(theta)

    def network():
        out = model.net(net_in, t_net)
        out.backward(torch.ones_like(out) * 1e-3)
        return out

    times["network"], raw = timed(network, repeats)
    raw = raw.detach().requires_grad_(True)

    def loss():
        params_ = raw.reshape(batch, -1, raw.shape[-1])
        dist = model.flow.output_distribution(params_)
        value = model.flow.continuous_time_loss(x.reshape(batch, -1), dist, t.reshape(-1, 1)).mean()
        value.backward()
        return value

    times["loss"], _ = timed(loss, repeats)

    def step():
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1e-4)

    times["optimizer"], _ = timed(step, repeats)
    total = sum(times.values())
    core = times["network"] + times["optimizer"]
    overhead = times["data"] + times["flow"] + times["loss"]
    parts = "  ".join(f"{k} {v * 1000:8.2f} ms ({v / total:5.1%})" for k, v in times.items())
    print(f"{preset:6} batch {batch:3}: {parts}  | BFN overhead over network+optimizer: {overhead / core:.2%}")


if __name__ == "__main__":
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    bench("mnist", 8, repeats)
    bench("text8", 2, repeats)
