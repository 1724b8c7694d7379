"""What class conditioning costs a training step: the default preset's network with
network.num_classes = 0 and 10, on this machine's CPU.

A step is the loss's forward and backward pass as in training (t, the Bayesian-flow sample, the
network, the continuous-time loss), without the optimizer. The variants run in interleaved rounds
in a new random order each round, so that changes in the machine's load hit them alike; a round's
time is the median of its steps and each round gives one paired ratio. On a shared machine single
steps can take several times as long, so the summary is the median ratio with a distribution-free
95% interval, not a mean. A second, identical unconditional network (A/A) shows how large a
difference pure measurement noise makes.

Two clocks: wall time, and the process's CPU time. With one thread (THREADS = 1) the CPU time is
the work itself and hardly changes when other programs take the cores, so it resolves far smaller
differences than wall time; with more threads it also counts the threads' waiting.

The work the class adds (checking the classes, looking up their vectors, adding them, and the
backward pass of that) is also timed on its own, many times over: it bounds the cost from the
other side, far below what whole steps can resolve.

    python benchmarks/class_embedding_cost.py [ROUNDS] [STEPS_PER_ROUND] [THREADS]
"""

import random
import statistics
import sys
import time

import torch

from bfncli.config import resolve_config
from bfncli.model import BFN

NUM_CLASSES = 10
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def model(num_classes: int) -> BFN:
    torch.manual_seed(0)  # the same weights for every variant (the class vectors start at zero)
    cfg = resolve_config("default", sets=[f"network.num_classes={num_classes}"], environ={})
    return BFN(cfg).train()


def training_step(bfn: BFN, x: torch.Tensor, conditional: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    b = x.shape[0]

    def step():
        bfn.zero_grad(set_to_none=True)
        t = bfn.sample_t(b, 0, x.device, g)
        theta = bfn.flow.flow_sample(x, t.view(-1, 1, 1, 1), g)
        # Labels with a tenth replaced by "no class", as classifier-free guidance trains.
        classes = torch.randint(0, NUM_CLASSES + 1, (b,), generator=g) if conditional else None
        dist = bfn.predict(theta, t, classes)
        bfn.flow.continuous_time_loss(x.reshape(b, -1), dist, t.view(-1, 1)).mean().backward()

    return step


def median_step_seconds(step, steps: int) -> dict[str, float]:
    """Per clock, the median time of ``steps`` calls of ``step``."""
    times = {clock: [] for clock in CLOCKS}
    for _ in range(steps):
        start = {clock: now() for clock, now in CLOCKS.items()}
        step()
        for clock, now in CLOCKS.items():
            times[clock].append(now() - start[clock])
    return {clock: statistics.median(values) for clock, values in times.items()}


def median_with_interval(values: list[float]) -> tuple[float, float, float]:
    """The median and a 95% interval for it from order statistics (no assumption about the
    distribution): the ranks n/2 -+ 1.96 sqrt(n)/2 of the sorted values."""
    ordered, n = sorted(values), len(values)
    half_width = 1.96 * n**0.5 / 2
    low, high = max(0, int(n / 2 - half_width)), min(n - 1, int(n / 2 + half_width + 0.5))
    return statistics.median(ordered), ordered[low], ordered[high]


def added_work_seconds(bfn: BFN, batch: int, repeats: int = 2000) -> dict[str, float]:
    """Per step: the class embedding's forward (with its checks) and backward, plus the add."""
    embedding = bfn.net.class_embedding
    conditioning = torch.zeros(batch, embedding.embedding_dim, requires_grad=True)
    classes = torch.randint(0, NUM_CLASSES + 1, (batch,))

    def added():
        (conditioning + embedding(classes, batch)).backward(torch.ones_like(conditioning))

    return median_step_seconds(added, repeats)


def main(rounds: int, steps: int) -> None:
    cfg = resolve_config("default", environ={})
    batch, bins = cfg.train.batch_size, cfg.data.num_bins
    g = torch.Generator().manual_seed(1)
    x = (torch.randint(0, bins, (batch, *model(0).data_shape), generator=g).float() * 2 + 1) / bins - 1
    variants = {
        "unconditional": training_step(model(0), x, False, seed=2),
        "unconditional twin (A/A)": training_step(model(0), x, False, seed=2),
        f"num_classes={NUM_CLASSES}": training_step(model(NUM_CLASSES), x, True, seed=2),
    }
    for step in variants.values():  # warm-up: allocator, thread pool, first-call costs
        median_step_seconds(step, 3)
    times = {name: [] for name in variants}
    order = list(variants)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            times[name].append(median_step_seconds(variants[name], steps))

    print(f"default preset, batch {batch}, {torch.get_num_threads()} thread(s), {rounds} rounds x {steps} steps")
    added = added_work_seconds(model(NUM_CLASSES), batch)
    for clock in CLOCKS:
        print(f"{clock} time:")
        for name, rows in times.items():
            ms = sorted(row[clock] * 1000 for row in rows)
            print(f"  {name:26} median {statistics.median(ms):7.2f} ms/step  (rounds from {ms[0]:.2f} to {ms[-1]:.2f})")
        base = [row[clock] for row in times["unconditional"]]
        for name in list(variants)[1:]:
            ratios = [row[clock] / b for row, b in zip(times[name], base)]
            median, low, high = median_with_interval(ratios)
            print(f"  {name:26} / unconditional: median ratio {median:.4f}  (95% interval {low:.4f} to {high:.4f})")
        print(f"  the added work alone: {added[clock] * 1e6:.1f} us/step = "
              f"{added[clock] / statistics.median(base):.3%} of an unconditional step")


if __name__ == "__main__":
    if len(sys.argv) > 3:
        torch.set_num_threads(int(sys.argv[3]))
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
