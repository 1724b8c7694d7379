"""Does torch.compile pay for evaluation and sampling on the CPU, and where? Per preset: the eager and
compiled time per network call, measured in alternating pairs in one process (so a slow spell of the
machine hits both), the speed-up per pair with its interquartile range, and the compile time from a
cold inductor cache; from them the break-even point (the eager work, in seconds, that repays the
compile). `bfncli.compiled`'s rule for `auto` on the CPU is chosen from this table (README, Speed).

    python benchmarks/cpu_auto_compile.py [--presets default mnist-tiny ...] [--pairs 8]

Eval: one repeat of bfn eval's estimator over random examples (the loss and the reconstruction per
batch: two network calls each); sampling: BFN.predict at the batch named. Prints the table, then the
JSON on the last line. On 2 cores every preset takes about 40 minutes; the small ones about 8.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import random_batch  # noqa: E402

from bfncli import compiled  # noqa: E402
from bfncli.config import resolve_config  # noqa: E402
from bfncli.model import BFN  # noqa: E402
from bfncli.networks.layout import use_fast_layout  # noqa: E402

# (preset, eval examples, eval batch, eval steps, sampling batch): bfn's CPU defaults (eval 100,
# sample 16) where a call stays within seconds; the paper's networks at smaller batches.
CASES = [("default", 200, 100, 0, 16), ("mnist-tiny", 200, 100, 784, 16), ("text8-tiny", 200, 100, 0, 16),
         ("mnist", 16, 8, 784, 8), ("cifar10-256d", 16, 8, 0, 8), ("text8", 4, 2, 0, 2)]


def eval_call(model, n_examples, batch, n_steps):
    from bfncli.data.examples import DataSpec, TensorExamples
    from bfncli.jobs.evaluate import estimate
    from bfncli.jobs.runtime import Runtime
    from bfncli.samples_file import samples_kind

    spec = DataSpec(samples_kind(model).removesuffix("_image"), tuple(model.data_shape))
    examples = TensorExamples(random_batch(model, n_examples, "cpu"), spec)
    runtime = Runtime(torch.device("cpu"))
    return lambda: estimate(model, examples, n_steps, 1, batch, 0, runtime, progress=False)


def sample_call(model, batch):
    x = random_batch(model, batch, "cpu")
    t = torch.full((batch,), 0.5)
    theta = model.flow.flow_sample(x, model._per_example(t, x))

    def call():
        with torch.inference_mode():
            model.predict(theta, t)
    return call


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(base, job, make_call, pairs: int) -> dict:
    eager = copy.deepcopy(base)
    fast = copy.deepcopy(base)
    for m in (eager, fast):
        use_fast_layout(m.net, torch.device("cpu"))
    (compiled.compile_loss if job == "eval" else compiled.compile_network)(fast, torch.device("cpu"))
    run_eager, run_fast = make_call(eager), make_call(fast)
    first = seconds(run_fast)  # compiling included
    run_eager(), run_fast()  # warm
    times = {"eager": [], "compiled": []}
    for i in range(pairs):
        order = [("eager", run_eager), ("compiled", run_fast)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            times[name].append(seconds(fn))
    torch._dynamo.reset()
    ratios = [e / c for e, c in zip(times["eager"], times["compiled"])]
    q = statistics.quantiles(ratios, n=4)
    fast_s = statistics.median(times["compiled"])
    return {"eager_s": statistics.median(times["eager"]), "compiled_s": fast_s, "speedup": statistics.median(ratios),
            "speedup_iqr": [q[0], q[2]], "compile_s": max(first - fast_s, 0.0)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", help="only these presets")
    parser.add_argument("--pairs", type=int, default=8, help="alternating eager/compiled pairs timed")
    args = parser.parse_args(argv)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bfn-inductor-")  # cold: compile from scratch
    torch.set_float32_matmul_precision("high")
    rows = []
    for preset, n_eval, eval_batch, eval_steps, sample_batch in CASES:
        if args.presets and preset not in args.presets:
            continue
        torch.manual_seed(0)
        base = BFN(resolve_config(preset, environ={})).eval()
        for job, calls, make_call in (
                ("eval", 2 * math.ceil(n_eval / eval_batch), lambda m: eval_call(m, n_eval, eval_batch, eval_steps)),
                ("sample", 1, lambda m: sample_call(m, sample_batch))):
            sys.stderr.write(f"{preset}: {job}\n")
            r = paired(base, job, make_call, args.pairs)
            saving = 1 - 1 / r["speedup"]
            rows.append({"preset": preset, "job": job, "batch": eval_batch if job == "eval" else sample_batch,
                         "eager_call_s": r["eager_s"] / calls, "compiled_call_s": r["compiled_s"] / calls,
                         "speedup": r["speedup"], "speedup_iqr": r["speedup_iqr"], "compile_s": r["compile_s"],
                         "breakeven_eager_s": r["compile_s"] / saving if saving > 0 else math.inf})
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.pairs} alternating pairs")
    print("| preset | job, batch | eager s/call | compiled s/call | speed-up (IQR) | compile s (cold) | break-even, eager s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["speedup_iqr"]
        print(f"| {r['preset']} | {r['job']}, {r['batch']} | {r['eager_call_s']:.4f} | {r['compiled_call_s']:.4f} "
              f"| {r['speedup']:.2f} ({lo:.2f}-{hi:.2f}) | {r['compile_s']:.0f} | {r['breakeven_eager_s']:.0f} |")
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "pairs": args.pairs, "rows": rows}))


if __name__ == "__main__":
    main()
