"""Sample quality of every sampler against its budget of network evaluations (NFE).

For a checkpoint (any: images or text), draw the same number of samples with each sampler at each
NFE, from the same seeds (common random numbers), and measure them as `bfn eval --samples` does:

- images: the Fréchet distance (FD) in the features of the data set's classifier against the
  training split, +- the std over bootstrap resamples of the samples, and MMD^2 in pixel space +- its
  jackknife standard error;
- text: spelling accuracy (the fraction of words found in the training text's vocabulary) +- its
  standard error across samples.

Prints a markdown table (value +- noise), and draws quality against NFE into a PNG.

    python benchmarks/samplers.py --checkpoint runs/digits/checkpoints/step-00020000/model.safetensors \\
        --samples 2000 --plot docs/samplers-digits.png
    python benchmarks/samplers.py --checkpoint runs/pyhelp/.../model.safetensors --samples 400 \\
        --plot docs/samplers-pyhelp.png

`paper` with N evaluations makes N - 1 Bayesian updates (its --steps is N - 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import bfncli as bfn
from bfncli.jobs.sample import draw_samples
from bfncli.samplers import SAMPLERS, choose


def measure(model, samples, seed):
    """What `bfn eval --samples` says of them."""
    r = model.evaluate(samples=samples, seed=seed, progress=False)
    if r["measure"] == "spelling":
        return {"value": r["spelling_accuracy"], "noise": r["spelling_stderr"], "words": r["n_words"]}
    return {"value": r["fd"], "noise": r["fd_std"], "mmd2": r["mmd2"], "mmd2_noise": r["mmd2_stderr"],
            "fd_heldout": r["fd_heldout"], "classifier_accuracy": r["classifier_test_accuracy"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--samples", type=int, default=1000, help="samples per sampler and NFE")
    parser.add_argument("--nfe", default="5,10,20,50,100,200,1000")
    parser.add_argument("--samplers", default=",".join(["auto", *SAMPLERS]))
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eta", type=float, default=None, help="where the ode/sde solvers start (default: theirs)")
    parser.add_argument("--grid", choices=["lambda", "time", "early", "accuracy"], default=None,
                        help="the ode/sde solvers' time grid (default: lambda for continuous data, time for discrete)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG to draw quality against NFE into")
    parser.add_argument("--json", type=Path, default=None,
                        help="write every result here; results already in it (same checkpoint, samples, seed, eta and grid) "
                             "are kept and not measured again, so a long benchmark can be run in parts")
    args = parser.parse_args(argv)

    model = bfn.load(args.checkpoint, device="cpu")
    cfg = model.config
    text = model.kind == "text"
    label = "spelling accuracy" if text else "FD (classifier features)"
    nfes = [int(n) for n in args.nfe.split(",")]
    names = args.samplers.split(",")
    results = earlier_results(args)
    for name in names:
        for n in nfes:
            if any(r["sampler"] == name and r["nfe"] == n for r in results):
                continue
            method, steps = choose(name, n, model.module.discrete) if name == "auto" else (SAMPLERS[name], None)
            if args.grid and method.takes_eta:
                method = dataclasses.replace(method, options=(*method.options, ("grid", args.grid)))
            steps = steps if steps is not None else method.steps_for(n)
            if steps < method.min_steps:
                continue
            same = next((r for r in results if r["chosen"] == method.name and r["nfe"] == method.evaluations(steps)), None)
            if same is not None:  # auto picked a sampler already measured at this budget: same samples
                results.append({**same, "sampler": name})
                save(args, label, results)
                continue
            start = time.perf_counter()
            # (the sampler itself, with the --grid option the API does not offer)
            samples = draw_samples(model.module, args.samples, method, steps, args.seed, args.batch_size, "cpu",
                                   eta=args.eta if method.takes_eta else None)
            seconds = time.perf_counter() - start
            row = {"sampler": name, "chosen": method.name, "nfe": method.evaluations(steps), "seconds": seconds,
                   **measure(model, samples, args.seed)}
            results.append(row)
            extra = f"  MMD2 {row['mmd2']:.5f} +- {row['mmd2_noise']:.5f}" if "mmd2" in row else ""
            print(f"{name:>6} ({method.name}) NFE {row['nfe']:>5}: {label} {row['value']:.4f} +- {row['noise']:.4f}"
                  f"{extra}  [{seconds:.1f} s]", file=sys.stderr, flush=True)
            save(args, label, results)

    names = list(dict.fromkeys([*names, *(r["sampler"] for r in results)]))
    nfes = sorted({*nfes, *(r["nfe"] for r in results)})
    print(table(results, names, nfes, label))
    if args.plot:
        plot(results, names, label, args.plot, f"{cfg.data.dataset}: {args.samples} samples per point")


def save(args, label: str, results: list) -> None:
    if args.json:
        args.json.write_text(json.dumps({**settings(args), "measure": label, "results": results}, indent=1))


def settings(args) -> dict:
    """What the results depend on besides the sampler and NFE (the auto choice is in each row)."""
    return {"checkpoint": str(args.checkpoint), "samples": args.samples, "seed": args.seed, "eta": args.eta,
            "grid": args.grid}


def earlier_results(args) -> list:
    if args.json is None or not args.json.exists():
        return []
    earlier = json.loads(args.json.read_text())
    if any(earlier.get(k) != v for k, v in settings(args).items()):
        sys.exit(f"{args.json} holds results for other settings ({', '.join(settings(args))}); name another --json file")
    print(f"kept {len(earlier['results'])} results from {args.json}", file=sys.stderr)
    return earlier["results"]


def table(results, names, nfes, label):
    lines = [f"| sampler ({label}) | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for name in names:
        cells = []
        for n in nfes:
            row = next((r for r in results if r["sampler"] == name and r["nfe"] == n), None)
            cells.append("-" if row is None else f"{row['value']:.3g} ± {row['noise']:.2g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, names, label, path, title):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = [("value", "noise", label)] + ([("mmd2", "mmd2_noise", "MMD² (pixels)")] if "mmd2" in results[0] else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, noise, what) in zip(axes[0], panels):
        for name in names:
            rows = sorted((r for r in results if r["sampler"] == name), key=lambda r: r["nfe"])
            if rows:
                ax.errorbar([r["nfe"] for r in rows], [r[key] for r in rows], yerr=[r[noise] for r in rows],
                            marker="o", ms=3, capsize=2, label=name, lw=1.2 if name != "auto" else 2.5,
                            alpha=0.9 if name != "auto" else 0.5)
        ax.set_xscale("log")
        if key == "mmd2":  # unbiased: near zero and possibly negative for good samples
            ax.set_yscale("symlog", linthresh=1e-4)
            ax.axhline(0, color="grey", lw=0.8)
        elif "FD" in label:
            ax.set_yscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(what + (" (higher is better)" if "accuracy" in what else " (lower is better)"))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
