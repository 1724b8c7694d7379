"""Speed of bfn's training step, one evaluation repeat and one sampling evaluation, with and without
torch.compile, in model FLOPs utilisation (MFU); JSON on stdout, progress on stderr.

    python benchmarks/gpu.py                 # a GPU: mnist, cifar10-256d, text8 at the paper's per-GPU batches
    python benchmarks/gpu.py --small         # the CPU (the default there): default, mnist-tiny, text8-tiny

Training step: random data of the preset's kind, the trainer's step (loss under autocast, backward,
gradient clipping, AdamW - fused on a GPU - and the EMA), `loss.item()` once per step as the trainer
does with log_every=1; the median of the timed steps after warm-up, with its interquartile range.
Model FLOPs: torch.utils.flop_counter.FlopCounterMode over one loss + backward (forward and backward
of the network and the flow, as the issue's table). MFU = model FLOPs/s over the GPU's datasheet
dense bf16 peak (named in the output), and over the rate of a large bf16 matmul measured in the same
run. Eval: one repeat of bfn eval's estimator over N random examples at its default batch (as many
as fit on a GPU); sampling: one network evaluation (BFN.predict) at the given batch. U-Nets take the
layout bfn gives them (channels-last where it measured faster). Compile time: the first call's time minus a
warm call's. Under 6 minutes on one H100/H200 with the defaults (set --steps lower to be quicker).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time

import torch

from bfncli import compiled
from bfncli.config import resolve_config
from bfncli.model import BFN
from bfncli.networks.layout import use_fast_layout

# Datasheet dense bf16 peaks (TFLOP/s, without sparsity), by a part of the device name.
PEAKS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
         "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0}
# (preset, per-GPU training batch, eval examples, eval batch (None: bfn eval's default), eval steps, sampling batch)
GPU_CASES = [("mnist", 512, 10_000, None, 784, 1000), ("cifar10-256d", 32, 10_000, None, 0, 100),
             ("text8", 416, 2_000, None, 0, 200)]
CPU_CASES = [("default", 64, 200, None, 0, 64), ("mnist-tiny", 32, 200, None, 784, 200), ("text8-tiny", 64, 200, None, 0, 200)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # the process's peak resident set, GiB


def datasheet_peak(device):
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name()
    for key, peak in PEAKS.items():
        if key in name:
            return name, peak
    return name, None


def matmul_rate(device, size: int = 8192, repeats: int = 20) -> float | None:
    """TFLOP/s of a large bf16 matmul: what this GPU achieves on the densest work there is."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def random_batch(model, batch: int, device):
    shape = (batch, *model.data_shape)
    if model.discrete:
        return torch.randint(0, model.flow.n_classes, shape, device=device)
    bins = model.cfg.output.num_bins or 256
    return (torch.randint(0, bins, shape, device=device).float() + 0.5) * 2 / bins - 1


def timed(fn, device, steps: int, warmup: int):
    """(first call's seconds, the timed calls' seconds) after ``warmup`` untimed calls."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return first, times


def summary(first: float, times: list[float], examples: int, flops: float | None, peak, achievable) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    median = statistics.median(times)
    out = {"median_s": median, "iqr_s": [q[0], q[2]], "examples_per_s": examples / median,
           "first_call_s": first, "compile_s": max(first - median, 0.0)}
    if flops:
        rate = flops / median / 1e12
        out.update(tflops=rate, mfu_datasheet=rate / peak if peak else None,
                   mfu_matmul=rate / achievable if achievable else None)
    return out


def train_flops(model, x, n_steps) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model.loss(x, n_steps, None).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_train(base, batch, device, precision, compile_on, steps, warmup, peak, achievable):
    model = copy.deepcopy(base).to(device).train()
    use_fast_layout(model.net, device)  # as bfn train does
    ema = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda" or None)
    if compile_on:
        compiled.compile_loss(model, device)
    x = random_batch(model, batch, device)
    n_steps = model.cfg.train.loss_steps
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    flops = train_flops(copy.deepcopy(base).to(device), x, n_steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator(device=device).manual_seed(0)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"):
            loss = model.loss(x, n_steps, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1e-4)
        return loss.item()

    first, times = timed(step, device, steps, warmup)
    return {**summary(first, times, batch, flops, peak, achievable), "model_flops_per_example": flops / batch,
            "peak_memory_gib": peak_memory(device)}


def bench_eval(base, n_examples, batch, n_steps, device, compile_on):
    """One repeat of bfn eval's estimator (its draws, batches and layout), over random examples; batch
    None: the default (as many as fit on a GPU)."""
    from bfncli.data.examples import DataSpec, TensorExamples
    from bfncli.jobs.evaluate import estimate, fitting_batch
    from bfncli.jobs.runtime import Runtime
    from bfncli.samples_file import samples_kind

    model = copy.deepcopy(base).to(device).eval()
    use_fast_layout(model.net, device)
    spec = DataSpec(samples_kind(model).removesuffix("_image"), tuple(model.data_shape))
    examples = TensorExamples(random_batch(model, n_examples, "cpu"), spec)
    batch = batch or fitting_batch(model, examples, n_steps, device)
    if compile_on:
        compiled.compile_loss(model, device)
    runtime = Runtime(device)
    first, times = timed(lambda: estimate(model, examples, n_steps, 1, batch, 0, runtime, progress=False), device, 1, 1)
    return {"seconds": times[0], "first_call_s": first, "compile_s": max(first - times[0], 0.0),
            "examples": n_examples, "batch": batch, "n_steps": n_steps}


@torch.inference_mode()
def bench_sample(base, batch, device, compile_on, steps, warmup):
    model = copy.deepcopy(base).to(device).eval()
    use_fast_layout(model.net, device)
    if compile_on:
        compiled.compile_network(model, device)
    x = random_batch(model, batch, device)
    t = torch.full((batch,), 0.5, device=device)
    theta = model.flow.flow_sample(x, model._per_example(t, x))
    first, times = timed(lambda: model.predict(theta, t), device, steps, warmup)
    return {**summary(first, times, batch, None, None, None), "batch": batch}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the small presets (the default on a CPU)")
    parser.add_argument("--presets", nargs="*", help="only these presets")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (GPU 15, CPU 5)")
    parser.add_argument("--compile", choices=["both", "on", "off"], default="both")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_float32_matmul_precision("high")  # TF32 for float32, as bfn runs (not --deterministic)
    small = args.small or device.type == "cpu"
    steps = args.steps or (5 if small else 15)
    warmup = 2 if small else 5
    name, peak = datasheet_peak(device)
    achievable = matmul_rate(device)
    report = {"device": name or platform.processor() or "cpu", "cpu_threads": torch.get_num_threads(),
              "torch": torch.__version__, "cuda": torch.version.cuda, "datasheet_bf16_tflops": peak,
              "matmul_bf16_tflops": achievable, "results": []}
    precisions = ["bf16", "no"] if device.type == "cuda" else ["no"]
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    for preset, batch, n_eval, eval_batch, eval_steps, sample_batch in CPU_CASES if small else GPU_CASES:
        if args.presets and preset not in args.presets:
            continue
        torch.manual_seed(0)
        base = BFN(resolve_config(preset, environ={}))
        for compile_on in modes:
            row = {"preset": preset, "compile": compile_on, "batch": batch}
            for precision in precisions:
                sys.stderr.write(f"{preset}: training, {precision}, compile {compile_on}\n")
                row[f"train_{precision}"] = bench_train(base, batch, device, precision, compile_on, steps, warmup,
                                                        peak, achievable)
            sys.stderr.write(f"{preset}: one eval repeat, compile {compile_on}\n")
            row["eval"] = bench_eval(base, n_eval, eval_batch, eval_steps, device, compile_on)
            sys.stderr.write(f"{preset}: sampling evaluations, compile {compile_on}\n")
            row["sample"] = bench_sample(base, sample_batch, device, compile_on, steps, warmup)
            report["results"].append(row)
            torch._dynamo.reset()
    sys.stdout.write(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
