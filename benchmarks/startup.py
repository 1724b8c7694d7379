"""A whole `bfn sample` process against the official sample.py doing the same, and how long bfn takes
to reach its first network evaluation. Runs alternate (official, bfn, official, ...) so that a
machine's drift hits both; prints the median wall time of each with its interquartile range.

    python benchmarks/startup.py --official DIR --official-python PY [--runs 8]

DIR is a checkout of nnaisense/bayesian-flow-networks, PY a Python that runs its sample.py (torch,
omegaconf, accelerate, rich, matplotlib; torchvision is only imported there, so a stand-in on
PYTHONPATH does). The network is the official CIFAR-10 (256 bins, discretized) one with random
weights, made by the official code, saved as a .pt file and converted with `bfn convert`; both draw
2 samples with the paper's sampler at 5 steps (6 network evaluations) on the CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MAKE_OFFICIAL = """
import sys, torch
from utils_train import make_config, make_bfn
torch.manual_seed(0)
bfn = make_bfn(make_config("configs/cifar10_discretized_256bins.yaml").model)
torch.save(bfn.state_dict(), sys.argv[1])
"""

# bfn as `bfn sample` runs it, printing the wall-clock time of its first network evaluation on stderr.
FIRST_EVALUATION = """
import sys, time
sys.argv = ["bfn", *sys.argv[1:]]
import bfncli.model as m
predict = m.BFN.predict
def first(self, *a, **k):
    if not getattr(first, "said", False):
        first.said = True
        sys.stderr.write(f"FIRST {time.time()!r}\\n")
    return predict(self, *a, **k)
m.BFN.predict = first
from bfncli.__main__ import run
run()
"""


def quartiles(xs):
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[1], q[2] - q[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of the official code")
    parser.add_argument("--official-python", default=sys.executable, help="the Python that runs the official code")
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    official = args.official.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        subprocess.run([args.official_python, "-c", MAKE_OFFICIAL, str(tmp / "cifar_ema.pt")], cwd=official,
                       env=env, check=True)
        subprocess.run([sys.executable, "-m", "bfncli", "convert", str(tmp / "cifar_ema.pt"), "--official-config",
                        str(official / "configs/cifar10_discretized_256bins.yaml"), "-o", str(tmp / "cifar.safetensors")],
                       env=env, check=True, capture_output=True)
        theirs = [args.official_python, "sample.py", "seed=1", "config_file=configs/cifar10_discretized_256bins.yaml",
                  f"load_model={tmp / 'cifar_ema.pt'}", "samples_shape=[2,32,32,3]", "n_steps=5",
                  f"save_file={tmp / 'o.pt'}"]
        ours = [sys.executable, "-c", FIRST_EVALUATION, "sample", "--checkpoint", str(tmp / "cifar.safetensors"),
                "--shape", "2,32,32,3", "--steps", "5", "--sampler", "paper", "-o", str(tmp / "b.safetensors"),
                "--force", "-q"]
        times = {"official": [], "bfn": [], "bfn_first_evaluation": []}
        for i in range(args.runs):
            for name, command in (("official", theirs), ("bfn", ours)):
                start_wall, start = time.time(), time.perf_counter()
                done = subprocess.run(command, cwd=official if name == "official" else tmp, env=env,
                                      capture_output=True, text=True)
                elapsed = time.perf_counter() - start
                if done.returncode:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
                times[name].append(elapsed)
                if name == "bfn":
                    first = next(float(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("FIRST"))
                    times["bfn_first_evaluation"].append(first - start_wall)
            print(f"run {i + 1}/{args.runs}: official {times['official'][-1]:.2f} s, bfn {times['bfn'][-1]:.2f} s "
                  f"(first evaluation at {times['bfn_first_evaluation'][-1]:.2f} s)", file=sys.stderr)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.runs} alternating runs each; CIFAR-10 network, 2 samples, paper sampler, 5 steps")
    for name, xs in times.items():
        median, iqr = quartiles(xs)
        print(f"{name:22} median {median:6.2f} s   IQR {iqr:5.2f} s   (min {min(xs):.2f}, max {max(xs):.2f})")
    ratio = [o / b for o, b in zip(times["official"], times["bfn"])]
    median, iqr = quartiles(ratio)
    print(f"{'official / bfn':22} median {median:6.2f}     IQR {iqr:5.2f}   (per pair of runs)")


if __name__ == "__main__":
    main()
