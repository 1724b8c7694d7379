"""``bfn eval``: the official test.py estimator, resumable, on one or many processes.

For each of R repeats, one pass over the data: per example one draw of the loss (t, the flow sample
and the Monte Carlo inside) and one of the reconstruction loss; the repeat's value is the mean over
examples (test.py's mean over equal batches). Reported: the mean over repeats and its standard error
std/sqrt(R) (population std), in nats per data dimension like test.py, plus bits and per-example totals.

The draws come in fixed blocks of examples seeded by (seed, repeat, block) alone
(:mod:`bfncli.jobs.eval_draws`), so the estimate does not depend on the batch size, which by default
fills the GPU; repeats can be split across processes, and an interrupted evaluation resumes where
it stopped: finished repeats are kept in a small JSON file in the cache directory, keyed by the
checkpoint and the settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from bfncli import compiled
from bfncli.atomic_files import file_sha256, write_text_atomic
from bfncli.checkpoint import load_model
from bfncli.config import resolve_config
from bfncli.errors import Interrupted, UserError
from bfncli.jobs.eval_draws import BLOCK, RepeatDraws
from bfncli.jobs.runtime import Runtime, require_memory, resolve_checkpoint, setup
from bfncli.log import bar_disabled, logger, resolved_config
from bfncli.networks.layout import use_fast_layout


def run_eval(
    checkpoint: Optional[Path],
    runs_dir: Path,
    overrides: dict[str, Any],
    sets: list[str],
    as_json: bool = False,
    deterministic: bool = False,
    unconditional: bool = False,
) -> dict[str, Any]:
    runtime = setup(deterministic)
    path = resolve_checkpoint(checkpoint, runs_dir, announce=runtime.is_main)
    model, info = load_model(path, "cpu")
    model.to(runtime.device)
    result, cfg = evaluate_model(model, info, runtime, overrides, sets, unconditional)
    if runtime.is_main:
        sys.stdout.write(json.dumps(result) + "\n" if as_json else format_report(result, cfg))
    return result


def evaluate_model(model, info, runtime: Runtime, overrides: dict[str, Any], sets, unconditional: bool = False,
                   progress: bool = True, weights: Optional[str] = None) -> tuple[dict[str, Any], Any]:
    """The work of ``bfn eval``, on a loaded model (on ``runtime.device``) and its checkpoint's
    ``info``: the report (what ``--json`` prints) and the config it was made with. ``weights``: a
    digest of the weights where they may differ from the checkpoint's (resumed repeats are kept
    under it)."""
    cfg = resolve_config(base=model.cfg.to_dict(), sets=sets, flags=overrides)
    resolved_config(cfg)
    classes = _classes_mode(cfg, unconditional)
    examples = _eval_examples(cfg, model, labels=classes == "labels")
    e = cfg.eval
    per_example = 4 * math.prod(model.data_shape) * (model.flow.n_classes if model.discrete else 1)
    batch = e.batch_size or fitting_batch(model, examples, e.steps, runtime.device, classes)
    batch = min(batch, len(examples))
    require_memory(8 * batch * per_example, f"a batch of {batch} examples", "lower --batch-size", runtime.device)
    use_fast_layout(model.net, runtime.device)
    calls = 2 * e.repeats * math.ceil(len(examples) / batch)  # the loss and the reconstruction, per batch
    if compiled.wanted(e.compile, runtime.device, calls, job="eval", model=model, examples=batch):
        compiled.compile_loss(model, runtime.device, setting=f"eval.compile={e.compile}")
    result = estimate(model, examples, e.steps, e.repeats, batch, e.seed, runtime,
                      state_key=_state_key(info, cfg, examples, classes, weights),
                      progress=progress and runtime.is_main, classes=classes)
    result.update(checkpoint=str(info.path), weights=info.weights, step=info.step, classes=classes)
    return result, cfg


def _classes_mode(cfg, unconditional: bool) -> Optional[str]:
    """What a class-conditional model is evaluated with: the examples' classes ("labels": the
    conditional likelihood) or none ("none": --class none, the unconditional one)."""
    if not cfg.network.num_classes:
        if unconditional:
            raise UserError("--class none asks a class-conditional model for its unconditional likelihood; this "
                            "model has no classes: drop --class")
        return None
    return "none" if unconditional else "labels"


def _eval_examples(cfg, model, labels: bool = False):
    """The evaluation data: the test split of the checkpoint's dataset, or the user's --data (with
    their classes for a class-conditional model)."""
    from bfncli.data import load_split

    own = cfg.data.dataset in ("images", "text", "tensor")
    examples = load_split(cfg.data, "all" if own else "test", labels=labels)
    if labels and list(examples.spec.class_names) != list(cfg.data.class_names):
        raise UserError(f"the evaluation data's classes ({', '.join(examples.spec.class_names)}) are not the "
                        f"model's ({', '.join(cfg.data.class_names)}); use data with the same classes, or "
                        "--class none for the unconditional likelihood")
    shape = tuple(examples.spec.shape)
    if shape != tuple(model.data_shape):
        source = f"'{cfg.data.path}'" if cfg.data.path else f"the {cfg.data.dataset} test split"
        raise UserError(
            f"{source} has examples of shape {shape}, but this model takes {tuple(model.data_shape)}"
        )
    want = "discretized" if not model.discrete else ("binary" if model.flow.n_classes == 2 else "text")
    if examples.spec.kind != want:
        raise UserError(f"the evaluation data is {examples.spec.kind} but this model needs {want} data")
    if len(examples) == 0:
        raise UserError("the evaluation data has no examples")
    return examples


# ------------------------------------------------------------------------------ estimator
@torch.inference_mode()
def estimate(model, examples, n_steps: int, repeats: int, batch_size: int, seed: int, runtime: Runtime,
             state_key: Optional[str] = None, progress: bool = True, classes: Optional[str] = None) -> dict[str, Any]:
    """Mean and standard error of the loss and the reconstruction loss over ``repeats`` passes.
    ``classes``: None (an unconditional model), "labels" (each example's class) or "none"."""
    from tqdm import tqdm

    model.eval()
    n = len(examples)
    starts = list(range(0, n, batch_size))
    state = _State(state_key, runtime.rank) if state_key else None
    done = state.load() if state else {}
    mine = [r for r in range(repeats) if r % runtime.world_size == runtime.rank and r not in done]
    if progress and done:
        logger.info(f"resuming: {min(len(done), repeats)} of {repeats} repeats already done")
    bar = tqdm(total=len(mine) * len(starts), desc="eval", unit="batch", file=sys.stderr, disable=bar_disabled(None if progress else True),
               dynamic_ncols=True)
    device = runtime.device
    try:
        for r in mine:
            draws = RepeatDraws(model, examples, n_steps, seed, r, device)
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            recon_sum = torch.zeros((), device=device, dtype=torch.float64)
            for start in starts:
                stop = min(start + batch_size, n)
                x, loss_draws, recon_noise = draws.batch(start, stop)
                c = _classes_of(model, examples, torch.arange(start, stop), classes, device)
                # per-example means summed: the batch's mean times its size
                loss_sum += model.loss_of_draws(x, *loss_draws, n_steps, c).double() * (stop - start)
                recon_sum += model.reconstruction_of_draws(x, recon_noise, c).double() * (stop - start)
                bar.update()
            done[r] = (loss_sum.item() / n, recon_sum.item() / n)
            if state:
                state.save(done)
            if progress:
                totals = [a + b for a, b in done.values()]
                bar.set_postfix(total=f"{sum(totals) / len(totals):.4f}", repeats=f"{len(done)}/{repeats}")
    except Interrupted:
        kept = f"the {len(done)} finished repeats are kept: run the same command again to continue" if state else ""
        raise Interrupted(kept) from None
    bar.close()
    done = _gather(done, runtime)
    values = [done[r] for r in range(repeats)]
    return summarise(values, n_steps, n, math.prod(model.data_shape), seed, batch_size)


def _classes_of(model, examples, index, mode: Optional[str], device):
    if mode is None:
        return None
    if mode == "none":
        return torch.full((len(index),), model.cfg.network.num_classes, device=device)
    return examples.labels_of(index).to(device)


def fitting_batch(model, examples, n_steps: int, device, classes: Optional[str] = None) -> int:
    """The default evaluation batch: on a GPU the most examples (whole blocks of draws, up to all of
    them) whose loss and reconstruction fit in half the free memory, measured on one block; elsewhere
    100 (a CPU gains nothing from more)."""
    n = len(examples)
    if torch.device(device).type != "cuda":
        return min(100, n)
    with torch.inference_mode():
        x, loss_draws, recon_noise = RepeatDraws(model, examples, n_steps, 0, 0, device).batch(0, min(BLOCK, n))
        c = _classes_of(model, examples, torch.arange(len(x)), classes, device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model.loss_of_draws(x, *loss_draws, n_steps, c)
        model.reconstruction_of_draws(x, recon_noise, c)
        torch.cuda.synchronize(device)
        per_example = max(torch.cuda.max_memory_allocated(device) - before, 1) / len(x)
        free = torch.cuda.mem_get_info(device)[0]
    return batch_for_memory(free / 2, per_example, n)


def batch_for_memory(budget: float, per_example: float, n: int) -> int:
    """Whole blocks of examples that fit ``budget`` bytes at ``per_example`` each (at least one
    block, at most every example)."""
    blocks = max(1, int(budget // (per_example * BLOCK)))
    return min(n, blocks * BLOCK)


def _gather(done: dict[int, tuple[float, float]], runtime: Runtime) -> dict[int, tuple[float, float]]:
    if runtime.world_size == 1:
        return done
    import torch.distributed as dist

    parts: list = [None] * runtime.world_size
    dist.all_gather_object(parts, done)
    merged: dict[int, tuple[float, float]] = {}
    for part in parts:
        merged.update(part)
    return merged


def summarise(values, n_steps: int, n_examples: int, n_dims: int, seed: int, batch_size: int) -> dict[str, Any]:
    losses = torch.tensor([v[0] for v in values], dtype=torch.float64)
    recons = torch.tensor([v[1] for v in values], dtype=torch.float64)
    totals = losses + recons
    root = math.sqrt(len(values))

    def stderr(x):
        return x.std(correction=0).item() / root

    total = totals.mean().item()
    return {
        "loss_mean": losses.mean().item(),
        "loss_stderr": stderr(losses),
        "recon_mean": recons.mean().item(),
        "recon_stderr": stderr(recons),
        "total_mean": total,
        "total_stderr": stderr(totals),
        "bits_per_dim": total / math.log(2),
        "nats_per_example": total * n_dims,
        "bits_per_example": total * n_dims / math.log(2),
        "n_steps": n_steps,
        "repeats": len(values),
        "n_examples": n_examples,
        "dims_per_example": n_dims,
        "batch_size": batch_size,
        "seed": seed,
    }


def format_report(r: dict[str, Any], cfg) -> str:
    ln2 = math.log(2)
    d = r["dims_per_example"]
    unit = {"text8": "char", "text": "char"}.get(cfg.data.dataset, "dim")
    example = {"mnist": "image", "cifar10": "image", "digits": "image", "images": "image"}.get(cfg.data.dataset,
                                                                                            "example")
    how = "continuous-time loss" if r["n_steps"] == 0 else f"{r['n_steps']}-step discrete-time loss"
    how += {"labels": ", conditional on each example's class", "none": ", unconditional (--class none)"}.get(
        r.get("classes"), "")
    lines = [
        f"checkpoint   {r['checkpoint']} ({r['weights']} weights, step {r['step']})",
        f"estimate     {how}, {r['repeats']} repeats over {r['n_examples']} examples of {d} dims (seed {r['seed']})",
        "",
        f"{'':16}{'nats/' + unit:>22}{'bits/' + unit:>22}{'nats/' + example:>24}",
    ]
    for label, mean, err in (("loss", r["loss_mean"], r["loss_stderr"]),
                             ("reconstruction", r["recon_mean"], r["recon_stderr"]),
                             ("total", r["total_mean"], r["total_stderr"])):
        lines.append(f"{label:<16}{_pm(mean, err):>22}{_pm(mean / ln2, err / ln2):>22}{_pm(mean * d, err * d):>24}")
    return "\n".join(lines) + "\n"


def _pm(mean: float, err: float) -> str:
    return f"{mean:.4f} ± {err:.4f}"


# --------------------------------------------------------------------------- resumable state
def _state_key(info, cfg, examples, classes: Optional[str], weights: Optional[str] = None) -> str:
    """What finished repeats are kept under: the checkpoint's weights, its config (the network that
    runs the weights) and the data by their content (changed data, weights or network never return
    stale numbers), the settings, and this bfn's version."""
    from bfncli import __version__
    from bfncli.checkpoint import CHECKSUM

    weights = weights or info.metadata.get(CHECKSUM) or file_sha256(info.path)
    ident = {
        "weights": weights, "checkpoint_config": info.metadata.get("config"), "network": cfg.network.model_dump(),
        "data": examples.fingerprint(), "eval": cfg.eval.model_dump(exclude={"repeats", "batch_size", "compile"}),
        "draws": f"blocks of {BLOCK}",  # the batch never changes a repeat's value; the blocks of draws do
        "flow": cfg.flow.model_dump(), "output": cfg.output.model_dump(), "classes": classes, "bfn": __version__,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


class _State:
    """Finished repeats of one evaluation, one small JSON file per process."""

    def __init__(self, key: str, rank: int):
        from bfncli.cache_dirs import bfn_cache_dir

        self.dir = bfn_cache_dir() / "eval"
        self.key = key
        self.path = self.dir / f"{key}.rank{rank}.json"

    def load(self) -> dict[int, tuple[float, float]]:
        done: dict[int, tuple[float, float]] = {}
        for file in self.dir.glob(f"{self.key}.rank*.json"):
            try:
                saved = json.loads(file.read_text())
                done.update({int(k): (float(v[0]), float(v[1])) for k, v in saved.items() if len(v) == 2})
            except (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError):
                continue  # a damaged progress file only costs its repeats
        return done

    def save(self, done: dict[int, tuple[float, float]]) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps({str(k): v for k, v in done.items()}))
        except OSError:
            pass  # resuming is a convenience: never fail an evaluation over it
