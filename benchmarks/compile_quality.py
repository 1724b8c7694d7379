"""Does torch.compile change what training learns, and does it pay on this machine? The README's first
command (`bfn train`: the `default` preset, 2000 steps) with compile off and on, for several seeds,
each run in its own process; then each final checkpoint evaluated with the same estimator and seed
(common random numbers, so the comparison is paired).

    python benchmarks/compile_quality.py [--seeds 0,1,2] [--steps 2000] [--repeats 20] [--runs-dir DIR]

Prints, per run: wall time, the median training rate (steps/s over the logged steps after the first
50), the compile time the log reports, the last validation loss and the `bfn eval` total (nats/dim,
± its standard error); then the mean over seeds of each setting and the paired difference (on - off)
with its standard error over seeds. Runs already in DIR are reused (delete it to measure afresh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path


def bfn(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "bfncli", *map(str, args)], capture_output=True, text=True, **kwargs)


def one_run(runs_dir: Path, seed: int, compile_: str, steps: int, repeats: int) -> dict:
    name = f"compile-{compile_}-seed{seed}"
    folder = runs_dir / name
    record = folder / "benchmark.json"
    if record.exists():
        return json.loads(record.read_text())
    start = time.perf_counter()
    done = bfn("train", "--preset", "default", "--seed", seed, "--max-steps", steps, "--set", f"train.compile={compile_}",
               "--runs-dir", runs_dir, "--run-name", name)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [m["steps_per_s"] for m in metrics if "steps_per_s" in m and m.get("step", 0) > 50]
    vals = [m["val_loss"] for m in metrics if "val_loss" in m]
    said = re.search(r"compiled: .* took ([0-9.]+) s", done.stderr)
    checkpoint = max((folder / "checkpoints").glob("step-*/model.safetensors"))  # the last EMA weights
    evaluated = bfn("eval", "--checkpoint", checkpoint, "--repeats", repeats, "--seed", 0, "--json")
    if evaluated.returncode:
        raise SystemExit(f"eval of {name} failed:\n{evaluated.stderr[-2000:]}")
    report = json.loads(evaluated.stdout)
    result = {"seed": seed, "compile": compile_, "wall_s": wall, "steps_per_s": statistics.median(rates),
              "compile_s": float(said.group(1)) if said else None, "val_loss": vals[-1] if vals else None,
              "eval_total": report["total_mean"], "eval_stderr": report["total_stderr"], "checkpoint": str(checkpoint)}
    record.write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs-compile-quality"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for seed in seeds:
        for compile_ in ("off", "on"):
            r = one_run(args.runs_dir, seed, compile_, args.steps, args.repeats)
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
    import torch

    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; default preset, {args.steps} steps, "
          f"eval {args.repeats} repeats (seed 0) of each final checkpoint\n")
    print("| compile | seed | wall s | steps/s | compile s | last val loss | eval total (nats/dim) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        print(f"| {r['compile']} | {r['seed']} | {r['wall_s']:.0f} | {r['steps_per_s']:.2f} | {compile_s} | "
              f"{r['val_loss']:.4f} | {r['eval_total']:.4f} ± {r['eval_stderr']:.4f} |")
    print()
    for setting in ("off", "on"):
        rs = [r for r in results if r["compile"] == setting]
        totals = [r["eval_total"] for r in rs]
        sd = statistics.stdev(totals) if len(totals) > 1 else float("nan")
        print(f"compile {setting}: eval total {statistics.mean(totals):.4f} (sd over seeds {sd:.4f}), "
              f"{statistics.mean(r['steps_per_s'] for r in rs):.2f} steps/s, wall {statistics.mean(r['wall_s'] for r in rs):.0f} s")
    diffs = [on["eval_total"] - off["eval_total"] for off, on in zip(results[0::2], results[1::2])]
    if len(diffs) > 1:
        se = statistics.stdev(diffs) / len(diffs) ** 0.5
        print(f"paired difference on - off: {statistics.mean(diffs):+.2e} ± {se:.2e} nats/dim (standard error over "
              f"{len(diffs)} seeds)")


if __name__ == "__main__":
    main()
