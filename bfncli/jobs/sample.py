"""``bfn sample``: draw samples (optionally conditional, optionally recording the flow) as safetensors.

The output file holds ``samples`` (N, *data_shape) in the model's data layout and metadata saying
what they are (``kind``: binary_image, discretized_image or text; ``num_bins``; steps, seed,
checkpoint). With ``--trajectory`` it also holds, for the recorded steps, the input distribution's
parameters (``flow_input``) and the network's prediction (``flow_prediction``), both (F, N, *shape),
and ``flow_steps`` (F,).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from bfncli.atomic_files import atomic_path, save_tensors
from bfncli.checkpoint import load_model
from bfncli.config import resolve_config
from bfncli.errors import UserError
from bfncli.jobs.runtime import resolve_checkpoint, setup
from bfncli.samples_file import SAMPLES_FORMAT, samples_kind


def parse_shape(text: Optional[str], model, default_count: int) -> tuple[int, ...]:
    shape = tuple(model.data_shape)
    if text is None:
        return (default_count, *shape)
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise UserError(f"--shape must be comma-separated integers, got '{text}'") from None
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
    frames: int = 20,
    prompt: Optional[str] = None,
    template: Optional[str] = None,
    image: Optional[Path] = None,
    mask: Optional[str] = None,
    sets: Optional[list[str]] = None,
    deterministic: bool = False,
    force: bool = False,
) -> Optional[Path]:
    from bfncli.samplers import SampleNoise, ancestral
    from bfncli.samplers.condition import image_condition, text_condition

    if output is None:
        _check_stdout()
    elif output.suffix != ".safetensors":
        raise UserError(f"samples are written as .safetensors; name the output e.g. '{output.with_suffix('.safetensors')}'")
    for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--frames", frames)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    runtime = setup(deterministic)
    path = resolve_checkpoint(checkpoint, runs_dir)
    if output is not None:
        _check_output(output, path, force)
    model, info = load_model(path, "cpu")
    flags = {"sample": {k: v for k, v in (("steps", steps), ("seed", seed), ("batch_size", batch_size)) if v is not None}}
    cfg = resolve_config(base=info.config.to_dict(), sets=sets or [], flags=flags)
    model.to(runtime.device)
    kind = samples_kind(model)
    s = cfg.sample
    steps, seed, chunk = s.steps, s.seed, s.batch_size
    full_shape = parse_shape(shape, model, 16 if kind != "text" else 4)

    condition = None
    if prompt is not None or template is not None:
        if kind != "text":
            raise UserError("--prompt/--template are for text models; use --image/--mask for images")
        condition = text_condition(prompt, template, model.data_shape[0])
    elif image is not None or mask is not None:
        if kind == "text":
            raise UserError("--image/--mask are for image models; use --prompt or --template for text")
        condition = image_condition(image, mask, model, kind)

    n = full_shape[0]
    record_at = _frame_steps(steps, frames) if trajectory else set()
    outputs, traj_in, traj_pred = [], [], []
    from tqdm import tqdm

    bar = tqdm(total=steps * math.ceil(n / chunk), desc="sample", unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=None)
    for first in range(0, n, chunk):
        count = min(chunk, n - first)
        noise = SampleNoise(seed, first, count, runtime.device)
        ins, preds = [], []

        def callback(i, params, dist):
            if i <= steps:
                bar.update()
            if i in record_at:
                ins.append(_view_input(model, params).cpu())
                preds.append(_view_prediction(model, dist).cpu())

        outputs.append(ancestral(model, noise, steps, callback=callback, condition=condition).cpu())
        if trajectory:
            traj_in.append(torch.stack(ins))
            traj_pred.append(torch.stack(preds))
    bar.close()
    tensors = {"samples": torch.cat(outputs).contiguous()}
    if trajectory:
        tensors["flow_input"] = torch.cat(traj_in, 1).contiguous()
        tensors["flow_prediction"] = torch.cat(traj_pred, 1).contiguous()
        tensors["flow_steps"] = torch.tensor(sorted(record_at))
    if condition is not None:
        tensors["known"] = condition.known.expand(n, *model.data_shape).contiguous().to(torch.uint8)
    meta = {
        "format": SAMPLES_FORMAT, "kind": kind, "steps": str(steps), "seed": str(seed),
        "checkpoint": str(path), "shape": json.dumps(list(full_shape)),
        "num_bins": str(model.flow.num_bins or "") if not model.discrete else str(model.flow.n_classes),
    }
    if kind == "text":
        from bfncli.data.examples import ALPHABET

        meta["alphabet"] = ALPHABET
    return _write(tensors, meta, output)


def _frame_steps(steps: int, frames: int) -> set[int]:
    """Which steps to record: about ``frames`` of them, denser early on where the picture changes
    most, always including the first step and the final prediction (step n + 1, at t = 1)."""
    count = min(frames, steps + 1)
    return {1 + round((k / max(count - 1, 1)) ** 2 * steps) for k in range(count)}


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


def _check_output(output: Path, checkpoint: Path, force: bool) -> None:
    """Never overwrite the checkpoint being sampled from; anything else only with --force."""
    if output.exists() and checkpoint.exists() and output.resolve() == checkpoint.resolve():
        raise UserError(f"-o '{output}' is the checkpoint being sampled from; choose another output file")
    if output.is_dir():
        raise UserError(f"-o '{output}' is a folder; give a file name such as '{output / 'samples.safetensors'}'")
    if output.exists() and not force:
        raise UserError(f"'{output}' already exists; pass --force to overwrite it or choose another -o")
    if not output.parent.is_dir():
        raise UserError(f"the output folder '{output.parent}' does not exist")


def _write(tensors: dict[str, Tensor], meta: dict[str, str], output: Optional[Path]) -> Optional[Path]:
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
    sys.stderr.write(f"wrote {tensors['samples'].shape[0]} samples to {output}\n")
    return output
