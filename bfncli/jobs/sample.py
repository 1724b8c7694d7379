"""``bfn sample``: draw samples (optionally conditional, optionally recording the flow) as safetensors.

The output file holds ``samples`` (N, *data_shape) in the model's data layout and metadata saying
what they are (``kind``: binary_image, discretized_image or text; ``num_bins``; the sampler, its steps
and network evaluations, seed, checkpoint; see bfncli/samples_file.py). Class-conditional samples
also hold ``classes`` (N,). With ``--trajectory`` the file also holds, for the recorded network
evaluations, the input distribution's parameters (``flow_input``) and the network's prediction
(``flow_prediction``), both (F, N, *shape), their indices ``flow_steps`` and times ``flow_times`` (F,).
"""

from __future__ import annotations

import json
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from bfncli import compiled
from bfncli.atomic_files import atomic_path, save_tensors, write_text_atomic
from bfncli.checkpoint import load_model
from bfncli.config import resolve_config
from bfncli.errors import UserError
from bfncli.jobs.runtime import require_memory, resolve_checkpoint, setup
from bfncli.log import bar_disabled, logger, resolved_config
from bfncli.networks.layout import use_fast_layout
from bfncli.samples_file import SAMPLES_FORMAT, samples_kind


FRAMES = 20  # steps --trajectory records unless --frames says otherwise
# The most --steps a sampling run may take: far more than any sampler needs (the paper's samples
# take 1,000 at most), and few enough that the solvers' time grids stay small.
MAX_STEPS = 1_000_000


def parse_shape(text: Optional[str], model, default_count: int) -> tuple[int, ...]:
    shape = tuple(model.data_shape)
    if text is None:
        return (default_count, *shape)
    entries = [p.strip() for p in text.split(",")]
    if not all(p.lstrip("-").isdigit() and p.isascii() for p in entries):
        empty = [str(i + 1) for i, p in enumerate(entries) if not p]
        what = f"has empty entries (at positions {', '.join(empty)})" if empty else "is not comma-separated integers"
        raise UserError(f"--shape '{text}' {what}; give the number of samples and the example's shape, e.g. "
                        f"--shape 4,{','.join(map(str, shape))}")
    parts = tuple(int(p) for p in entries)
    hint = f"this model makes examples of shape {','.join(map(str, shape))}: use --shape N,{','.join(map(str, shape))}"
    if len(parts) != len(shape) + 1 or parts[1:] != shape:
        raise UserError(f"--shape {text} cannot be produced; {hint}")
    if parts[0] < 1:
        raise UserError(f"--shape needs at least one sample; {hint}")
    return parts


def run_sample(
    checkpoint: Optional[Path],
    runs_dir: Path,
    shape: Optional[str] = None,
    steps: Optional[int] = None,
    seed: Optional[int] = None,
    batch_size: Optional[int] = None,
    output: Optional[Path] = None,
    trajectory: bool = False,
    frames: Optional[int] = None,
    prompt: Optional[str] = None,
    template: Optional[str] = None,
    image: Optional[Path] = None,
    mask: Optional[str] = None,
    sets: Optional[list[str]] = None,
    deterministic: bool = False,
    force: bool = False,
    sampler: Optional[str] = None,
    eta: Optional[float] = None,
    classes: Optional[str] = None,
    guidance: Optional[float] = None,
    summary: Optional[Path] = None,
) -> Optional[Path]:
    start = time.perf_counter()
    if summary is not None:
        _check_summary(summary, output, force)
    if output is None:
        _check_stdout()
    else:
        check_output_name(output)
    _check_counts(steps, batch_size, frames, trajectory)  # before anything is loaded
    runtime = setup(deterministic)
    path = resolve_checkpoint(checkpoint, runs_dir)
    if output is not None:
        check_output(output, path, force)
    model, info = load_model(path, "cpu")
    model.to(runtime.device)
    count = parse_shape(shape, model, 0)[0] if shape is not None else None
    tensors, meta = make_samples(
        model, str(path), runtime.device, count=count, steps=steps, seed=seed, batch_size=batch_size,
        sampler=sampler, eta=eta, classes=classes, guidance=guidance, prompt=prompt, template=template, image=image,
        mask=mask, trajectory=trajectory, frames=frames, sets=sets)
    written = write_samples(tensors, meta, output)
    if summary is not None:
        _write_summary(summary, meta, output, time.perf_counter() - start, runtime.device)
    return written


def make_samples(
    model,
    checkpoint: str,
    device,
    count: Optional[int] = None,
    steps: Optional[int] = None,
    seed: Optional[int] = None,
    batch_size: Optional[int] = None,
    sampler: Optional[str] = None,
    eta: Optional[float] = None,
    classes: Optional[str] = None,
    guidance: Optional[float] = None,
    prompt: Optional[str] = None,
    template: Optional[str] = None,
    image: Optional[Path] = None,
    mask: Optional[str] = None,
    trajectory: bool = False,
    frames: Optional[int] = None,
    sets: Optional[list[str]] = None,
    progress: bool = True,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The work of ``bfn sample``, on a loaded model (on ``device``): the tensors and the metadata of
    a samples file (see the module docstring). ``count``: --shape's N (None: bfn sample's default);
    ``classes``: --class as written on the command line; the rest as bfn sample's flags."""
    from bfncli.samplers import choose
    from bfncli.samplers.known_data import image_condition, text_condition

    _check_counts(steps, batch_size, frames, trajectory)
    frames = FRAMES if frames is None else frames
    chosen = {"steps": steps, "seed": seed, "batch_size": batch_size, "sampler": sampler, "eta": eta,
              "guidance": guidance}
    cfg = resolve_config(base=model.cfg.to_dict(), sets=sets or [],
                         flags={"sample": {k: v for k, v in chosen.items() if v is not None}})
    resolved_config(cfg)
    kind = samples_kind(model)
    s = cfg.sample
    method, method_steps = choose(s.sampler, s.steps, model.discrete)
    if method_steps < method.min_steps:
        which = f"'auto' chooses the '{method.name}' sampler here, which" if s.sampler == "auto" else \
            f"the '{method.name}' sampler"
        raise UserError(f"--steps {s.steps} is too few: {which} needs at least "
                        f"{method.evaluations(method.min_steps)} network evaluations")
    if s.eta is not None and not method.takes_eta:
        raise UserError(f"--eta sets where the ode/sde solvers start; the '{method.name}' sampler starts at t = 0")
    if s.steps > MAX_STEPS:
        raise UserError(f"--steps {s.steps} is more than the largest sensible value, {MAX_STEPS:,} (the paper's "
                        "samples take 1,000 steps at most, and the fast samplers far fewer)")
    if s.eta is not None:
        from bfncli.samplers.solvers import smallest_eta

        lowest = smallest_eta(model.flow, model.data_shape)
        if s.eta < lowest:
            raise UserError(f"--eta {s.eta:g} is too small for the float32 arithmetic the network and the solver run "
                            f"in (this model's schedule underflows below t = {lowest:.2g}); use --eta {lowest:.2g} or "
                            "more")

    count = _sample_count(count, classes, kind)
    condition = None
    if prompt is not None or template is not None:
        if kind != "text":
            raise UserError("--prompt/--template are for text models; use --image/--mask for images")
        condition = text_condition(prompt, template, model.data_shape[0])
    elif image is not None or mask is not None:
        if kind == "text":
            raise UserError("--image/--mask are for image models; use --prompt or --template for text")
        condition = image_condition(image, mask, model, kind)
    labels = class_labels(classes, count, cfg, kind)
    if s.guidance != 1.0 and (labels is None or bool((labels == cfg.network.num_classes).all())):
        raise UserError("--guidance mixes a class-conditional model's conditional and unconditional predictions; "
                        "this model has no classes" if cfg.network.num_classes == 0 else
                        "--guidance needs classes: drop --class none")

    evaluations = method.evaluations(method_steps)
    record_at = _frame_steps(evaluations - 1, frames) if trajectory else set()
    _require_memory(model, count, min(s.batch_size, count), evaluations, len(record_at), device)
    use_fast_layout(model.net, device)
    chunk = min(s.batch_size, count) * (1 if s.guidance == 1.0 else 2)  # guidance runs the network on 2B
    if compiled.wanted(s.compile, device, evaluations * math.ceil(count / s.batch_size), job="sample", model=model,
                       examples=chunk):
        compiled.compile_network(model, device, setting=f"sample.compile={s.compile}")
    from tqdm import tqdm

    bar = tqdm(total=evaluations * math.ceil(count / s.batch_size), desc=f"sample ({method.name})", unit="eval",
               file=sys.stderr, dynamic_ncols=True, disable=bar_disabled(None if progress else True))
    inputs: dict[int, list[Tensor]] = {}  # chunk -> recorded frames
    predictions: dict[int, list[Tensor]] = {}
    times: dict[int, float] = {}  # evaluation -> t

    def record(chunk, i, t, params, dist):
        bar.update()
        if i in record_at:
            inputs.setdefault(chunk, []).append(_view_input(model, params).cpu())
            predictions.setdefault(chunk, []).append(_view_prediction(model, dist).cpu())
            times[i] = t

    samples = draw_samples(model, count, method, method_steps, s.seed, s.batch_size, device, eta=s.eta,
                           condition=condition, labels=labels, guidance=s.guidance, callback=record)
    bar.close()
    tensors = {"samples": samples.contiguous()}
    if trajectory:
        tensors["flow_input"] = torch.cat([torch.stack(inputs[c]) for c in sorted(inputs)], 1).contiguous()
        tensors["flow_prediction"] = torch.cat([torch.stack(predictions[c]) for c in sorted(predictions)], 1).contiguous()
        tensors["flow_steps"] = torch.tensor(sorted(times))
        tensors["flow_times"] = torch.tensor([times[i] for i in sorted(times)], dtype=torch.float64)
    if condition is not None:
        tensors["known"] = condition.known.expand(count, *model.data_shape).contiguous().to(torch.uint8)
    meta = {
        "format": SAMPLES_FORMAT, "kind": kind, "sampler": method.name, "steps": str(method_steps),
        "evaluations": str(evaluations), "seed": str(s.seed), "checkpoint": checkpoint,
        "shape": json.dumps([count, *model.data_shape]),
        "num_bins": str(model.flow.num_bins or "") if not model.discrete else str(model.flow.n_classes),
    }
    if method.takes_eta:  # where the solver started, and on which grid: given or the default
        from bfncli.samplers.solvers import DEFAULT_ETA, DEFAULT_GRID

        data = "discrete" if model.discrete else "continuous"
        meta["eta"] = repr(s.eta if s.eta is not None else DEFAULT_ETA[data])
        meta["grid"] = DEFAULT_GRID[data]
    if labels is not None:
        tensors["classes"] = labels.contiguous()
        k = cfg.network.num_classes
        meta["class_names"] = json.dumps(list(cfg.data.class_names) or [str(i) for i in range(k)])
        meta["guidance"] = repr(s.guidance)
    if kind == "text":
        from bfncli.data.examples import ALPHABET

        meta["alphabet"] = ALPHABET
    return tensors, meta


def _check_counts(steps: Optional[int], batch_size: Optional[int], frames: Optional[int], trajectory: bool) -> None:
    for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--frames", frames)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if frames is not None and not trajectory:
        raise UserError("--frames sets how many steps --trajectory records; add --trajectory, or drop --frames")


def _require_memory(model, count: int, batch: int, evaluations: int, frames: int, device) -> None:
    """Refuse, naming the biggest part and the bytes it needs, a run whose samples, sampling state,
    time grid (a float per network evaluation, kept by the solvers) or recorded flow cannot fit."""
    values = math.prod(model.data_shape) * (model.flow.n_classes if model.discrete else 1)
    parts = [
        (count * 4 * math.prod(model.data_shape) + 8 * batch * 4 * values * (1 if model.discrete else 2),
         f"{count} samples in batches of {batch}", "draw fewer samples (--shape) or lower --batch-size"),
        (32 * evaluations, f"a time grid of {evaluations:,} network evaluations", "lower --steps"),
        (2 * 4 * frames * count * values, f"the recorded flow ({frames} frames of {count} samples)",
         "record fewer --frames or fewer samples"),
    ]
    total = sum(nbytes for nbytes, _, _ in parts)
    _, what, hint = max(parts)
    shown = [(n, w) for n, w, _ in parts if n >= 0.01 * total]
    said = what if len(shown) == 1 else " and ".join(f"{w} ({n / 2**30:.2f} GiB)" for n, w in shown)
    require_memory(total, said, hint, device)


def draw_samples(model, count: int, method, steps: int, seed: int, batch_size: int, device, eta=None,
                 condition=None, labels: Optional[Tensor] = None, guidance: float = 1.0, callback=None) -> Tensor:
    """``count`` samples with ``method`` (a Sampler), ``batch_size`` at a time. Sample j's randomness is
    its own stream seeded by (seed, j), so the batch size never changes the samples.
    ``callback(chunk, i, t, params, dist)`` sees every network evaluation of every chunk."""
    from bfncli.samplers import ConditionedModel, SampleNoise

    outputs = []
    for chunk, first in enumerate(range(0, count, batch_size)):
        n = min(batch_size, count - first)
        chunk_labels = None if labels is None else labels[first:first + n]
        conditioned = ConditionedModel(model, n, condition, chunk_labels, guidance, device)
        on_evaluation = None if callback is None else partial(callback, chunk)
        outputs.append(method.run(conditioned, SampleNoise(seed, first, n, device), steps, on_evaluation, eta=eta).cpu())
    return torch.cat(outputs)


def _class_list(text: str) -> list[str]:
    """The entries of --class A,B,C; empty ones (',,' or a trailing ',') are refused by position."""
    entries = [part.strip() for part in text.split(",")]
    empty = [str(i + 1) for i, part in enumerate(entries) if not part]
    if empty:
        raise UserError(f"--class '{text}' has empty entries (at positions {', '.join(empty)} of {len(entries)}); give "
                        "one class for all samples or one per sample, separated by commas")
    return entries


def _sample_count(count: Optional[int], classes: Optional[str], kind: str) -> int:
    """--shape's N; else as many as classes listed (--class 3,3,7); else 16 pictures or 4 texts."""
    listed = len(_class_list(classes)) if classes and "," in classes else None
    if count is not None:
        if listed is not None and listed != count:
            raise UserError(f"--class lists {listed} classes but --shape asks for {count} samples; give one class "
                            "per sample, or one class for all")
        return count
    return listed or (16 if kind != "text" else 4)


def class_labels(text: Optional[str], count: int, cfg, kind: str) -> Optional[Tensor]:
    """The class of every sample: --class NAME|INDEX, a list (one per sample), or 'none'
    (unconditional); by default the classes in turn. None for a model without classes."""
    k = cfg.network.num_classes
    if k == 0:
        if text is not None:
            if kind == "text":
                raise UserError("--class needs a class-conditional model; text models are unconditional: drop --class")
            raise UserError("--class needs a class-conditional model; this model was trained without classes (train "
                            "one with network.num_classes, e.g. --preset default-cond)")
        return None
    names = list(cfg.data.class_names) or [str(i) for i in range(k)]
    if text is None:
        return torch.arange(count) % k
    if text.strip().lower() == "none":
        return torch.full((count,), k)
    wanted = _class_list(text)
    out = []
    for item in wanted:
        if item in names:
            out.append(names.index(item))
        elif item.isdigit() and int(item) < k:
            out.append(int(item))
        else:
            raise UserError(f"--class {item!r} is not one of this model's {k} classes: {', '.join(names)} "
                            f"(or 0..{k - 1}, or none)")
    labels = torch.tensor(out)
    return labels.expand(count).clone() if len(out) == 1 else labels


def _frame_steps(steps: int, frames: int) -> set[int]:
    """Which steps to record: about ``frames`` of them, denser early on where the picture changes
    most, always including the first step and the final prediction (step n + 1, at t = 1)."""
    count = min(frames, steps + 1)
    chosen: list[int] = []
    for k in range(count):
        ideal = round((k / max(count - 1, 1)) ** 2 * steps)
        # Early ideals round to the same step: take the next free one, leaving room for the rest.
        lowest = chosen[-1] + 1 if chosen else 0
        chosen.append(min(max(ideal, lowest), steps - (count - 1 - k)))
    return {1 + step for step in chosen}


def _view_input(model, params: Tensor) -> Tensor:
    """The input distribution in a picture-friendly form: mu for images, P(class 1) for binary, theta for text."""
    if not model.discrete:
        return params.float()
    if model.flow.n_classes == 2:
        return params[..., 1].float()
    return params.float()


def _view_prediction(model, dist) -> Tensor:
    b = dist.probs.shape[0] if model.discrete else dist.mean.shape[0]
    if not model.discrete:
        return dist.mean.reshape(b, *model.data_shape).float()
    probs = dist.probs.reshape(b, *model.data_shape, -1)
    return (probs[..., 1] if model.flow.n_classes == 2 else probs).float()


def _check_stdout() -> None:
    """Samples go to standard output only when it is a pipe or a file that is open."""
    stream = sys.stdout
    try:
        usable = stream is not None and stream.fileno() >= 0
    except (OSError, ValueError):
        usable = False
    if not usable:
        raise UserError("standard output is closed; pass -o FILE to write the samples to a file")
    if stream.isatty():
        raise UserError("samples are binary (safetensors): pipe them (bfn sample | bfn render) or pass -o FILE")


def check_output_name(output: Path) -> None:
    if Path(output).suffix != ".safetensors":
        raise UserError(f"samples are written as .safetensors; name the output e.g. "
                        f"'{Path(output).with_suffix('.safetensors')}'")


def check_output(output: Path, checkpoint: Path, force: bool) -> None:
    """Never overwrite the checkpoint being sampled from; anything else only with --force."""
    if output.exists() and checkpoint.exists() and output.resolve() == checkpoint.resolve():
        raise UserError(f"-o '{output}' is the checkpoint being sampled from; choose another output file")
    if output.is_dir():
        raise UserError(f"-o '{output}' is a folder; give a file name such as '{output / 'samples.safetensors'}'")
    if output.exists() and not force:
        raise UserError(f"'{output}' already exists; pass --force to overwrite it or choose another -o")
    if not output.parent.is_dir():
        raise UserError(f"the output folder '{output.parent}' does not exist")


def write_samples(tensors: dict[str, Tensor], meta: dict[str, str], output: Optional[Path]) -> Optional[Path]:
    """A samples file at ``output`` (atomically), or on standard output where ``output`` is None."""
    from safetensors.torch import save

    if output is None:
        data = save(tensors, metadata=meta)
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise  # the reader went away: the CLI ends quietly
        except OSError as err:
            raise UserError(f"cannot write the samples to standard output: {err.strerror or err}; pass -o FILE",
                            exit_code=1) from None
        return None
    try:
        with atomic_path(output) as tmp:
            save_tensors(tensors, tmp, meta)
    except OSError as err:
        raise UserError(f"cannot write '{output}': {err.strerror or err}", exit_code=1) from None
    logger.info(f"wrote {tensors['samples'].shape[0]} samples to {output}")
    return output


def _check_summary(summary: Path, output: Optional[Path], force: bool) -> None:
    """--json FILE: a new file (or with --force), or '-' for standard output when the samples go to -o."""
    if str(summary) == "-":
        if output is None:
            raise UserError("--json - would mix the summary into the samples on standard output; give --json FILE, "
                            "or write the samples with -o FILE")
        return
    if summary.is_dir():
        raise UserError(f"--json '{summary}' is a folder; give a file name such as '{summary / 'summary.json'}'")
    if summary.exists() and not force:
        raise UserError(f"'{summary}' already exists; pass --force to overwrite it or choose another --json file")
    if not summary.parent.is_dir():
        raise UserError(f"the folder of --json '{summary}' does not exist")


def _write_summary(summary: Path, meta: dict[str, str], output: Optional[Path], seconds: float, device) -> None:
    """What was drawn, how and where, as one JSON object (the samples file's metadata, decoded)."""
    record: dict = {"output": str(output) if output is not None else "-"}
    for key, value in meta.items():
        if key in ("format", "alphabet"):
            continue
        record[key] = value
        if key in ("steps", "evaluations", "seed", "shape", "num_bins", "eta", "guidance", "class_names") and value:
            record[key] = json.loads(value)
    record["samples"] = record["shape"][0]
    record.update(seconds=round(seconds, 3), device=str(device))
    text = json.dumps(record) + "\n"
    if str(summary) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        write_text_atomic(summary, text)
    except OSError as err:
        raise UserError(f"cannot write '{summary}': {err.strerror or err}", exit_code=1) from None
