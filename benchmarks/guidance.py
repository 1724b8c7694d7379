"""How well class-conditional samples are of the class asked for, against the guidance weight.

For a class-conditional checkpoint (e.g. the `default-cond` preset on the embedded digits), draw
the same number of samples of every class at each guidance weight w, and let a classifier trained
on the data set's real labels (bfn's sample-quality classifier, cached) say which class each
sample is. Reports, per w: the fraction classified as the class asked for +- its binomial standard
error, the Fréchet distance of all samples to the data (diversity and fidelity pay for guidance),
and prints a markdown table.

    bfn train --preset default-cond --set train.steps=5000 --set train.val_every=1000 --run-name digits-cond
    python benchmarks/guidance.py --checkpoint runs/digits-cond/best.safetensors --per-class 100
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import bfncli as bfn
from bfncli.metrics.classifier import classifier_for
from bfncli.samplers import choose


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--per-class", type=int, default=100, help="samples of each class at each weight")
    parser.add_argument("--guidance", default="0,1,2,3,5")
    parser.add_argument("--sampler", default="auto")
    parser.add_argument("--steps", type=int, default=20,
                        help="network evaluations per sample (for --sampler paper: its updates, one evaluation fewer)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = bfn.load(args.checkpoint, device="cpu")
    cfg = model.config
    k = cfg.network.num_classes
    if not k:
        sys.exit(f"{args.checkpoint} is not a class-conditional model")
    classifier = classifier_for(cfg.data, progress=False)
    method, steps = choose(args.sampler, args.steps, model.module.discrete)  # (what auto picks, for the summary)
    labels = torch.arange(k).repeat_interleave(args.per_class)
    rows = []
    for w in (float(x) for x in args.guidance.split(",")):
        start = time.perf_counter()
        try:
            samples = model.sample(len(labels), sampler=args.sampler, steps=args.steps, seed=args.seed, batch_size=500,
                                   classes=labels, guidance=w, progress=False)
        except bfn.BFNError as err:
            sys.exit(str(err))
        predicted, _ = classifier.predict_classes(samples)
        hits = (predicted == labels).float()
        accuracy = hits.mean().item()
        per_class = [hits[labels == c].mean().item() for c in range(k)]
        fd = model.evaluate(samples=samples, seed=args.seed, progress=False)
        rows.append({"w": w, "accuracy": accuracy, "stderr": math.sqrt(accuracy * (1 - accuracy) / len(labels)),
                     "worst_class": min(per_class), "fd": fd["fd"], "fd_std": fd["fd_std"]})
        print(f"w = {w:g}: accuracy {accuracy:.3f} +- {rows[-1]['stderr']:.3f} (worst class {min(per_class):.2f}), "
              f"FD {fd['fd']:.2f} +- {fd['fd_std']:.2f}  [{time.perf_counter() - start:.0f} s]", file=sys.stderr)
    print(f"classifier test accuracy on real {cfg.data.dataset}: {classifier.test_accuracy:.3f}; chance: {1 / k:.3f}; "
          f"{len(labels)} samples per weight ({args.per_class} per class), {method.name} with "
          f"{method.evaluations(steps)} network evaluations")
    print("| guidance w | samples of the class asked for | worst class | FD to the data |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['w']:g} | {r['accuracy']:.3f} ± {r['stderr']:.3f} | {r['worst_class']:.2f} | "
              f"{r['fd']:.2f} ± {r['fd_std']:.2f} |")


if __name__ == "__main__":
    main()
