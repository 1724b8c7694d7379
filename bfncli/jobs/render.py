"""``bfn render``: samples -> a PNG grid or text; a trajectory -> an animated GIF; a run -> loss curves."""

from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from bfncli.atomic_files import fsync_file
from bfncli.data.examples import decode_text as decode
from bfncli.errors import InputError, UserError
from bfncli.jobs.run_directory import read_metrics_counted
from bfncli.log import logger
from bfncli.samples_file import class_names_of, parse_samples, read_samples_file


# ------------------------------------------------------------------------------ pictures
def to_unit(samples: Tensor, kind: str) -> Tensor:
    """Images in [0, 1]: binary 1 = white ink; [-1, 1] data mapped linearly. Pictures with neither
    1 (grey) nor 3 (RGB) channels are shown channel by channel, side by side, in grey."""
    x = samples.float()
    x = x.clamp(0, 1) if kind == "binary_image" else ((x + 1) / 2).clamp(0, 1)
    if x.shape[-1] not in (1, 3):
        x = x.movedim(-1, -2).flatten(-2).unsqueeze(-1)  # (..., H, W, C) -> (..., H, C*W, 1)
    return x


def grid(images: Tensor, cols: Optional[int] = None, pad: int = 2, min_width: int = 480) -> Tensor:
    """(N, H, W, C) in [0, 1] -> one (rows*H', cols*W', C) picture, upscaled for small images."""
    n, h, w, c = images.shape
    cols = min(cols or math.ceil(math.sqrt(n)), n)
    rows = math.ceil(n / cols)
    scale = max(1, min_width // (cols * (w + pad)))
    if scale > 1:
        images = images.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        h, w = h * scale, w * scale
    canvas = torch.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 0.5)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        canvas[top : top + h, left : left + w] = images[i]
    return canvas


@contextmanager
def _writing(path: Path, fig=None):
    """Yields a temporary name (same folder and suffix, so the format is the same) that becomes
    ``path`` only when complete; an OSError becomes one line; ``fig`` is closed whatever happens."""
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        if path.is_dir():
            raise UserError(f"-o '{path}' is a folder; give the name of a file to write, e.g. '{path / path.name}'")
        if not path.parent.is_dir():
            raise UserError(f"the output folder '{path.parent}' does not exist; create it or choose another -o")
        yield partial
        fsync_file(partial)
        os.replace(partial, path)
    except OSError as err:
        raise UserError(f"cannot write '{path}': {err.strerror or err}", exit_code=1) from None
    finally:
        partial.unlink(missing_ok=True)
        if fig is not None:
            from matplotlib import pyplot as plt

            plt.close(fig)


def _save_png(picture: Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    array = picture.numpy()
    with _writing(path) as partial:
        if array.shape[-1] == 1:
            plt.imsave(str(partial), array[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            plt.imsave(str(partial), array)


def terminal_preview(images: Tensor, cols: Optional[int] = None) -> str:
    """Images drawn with half-block characters and 24-bit colour."""
    pic = grid(images, cols, pad=1, min_width=0)
    if pic.shape[-1] == 1:
        pic = pic.expand(-1, -1, 3)
    if pic.shape[0] % 2:
        pic = torch.cat([pic, torch.zeros(1, *pic.shape[1:])])
    rgb = (pic * 255).round().to(torch.uint8).tolist()
    lines = []
    for y in range(0, len(rgb), 2):
        cells = []
        for top, bottom in zip(rgb[y], rgb[y + 1]):
            cells.append(f"\x1b[38;2;{top[0]};{top[1]};{top[2]}m\x1b[48;2;{bottom[0]};{bottom[1]};{bottom[2]}m▀")
        lines.append("".join(cells) + "\x1b[0m")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ the command
def run_render(source: Optional[Path], output: Optional[Path], cols: Optional[int], preview: bool) -> Optional[Path]:
    if source is not None and Path(source).is_dir():
        return render_run(Path(source), output)
    if source is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UserError("no samples given: pipe them in (bfn sample | bfn render) or name a samples file")
        tensors, meta = parse_samples(sys.stdin.buffer.read(), "standard input")
    else:
        tensors, meta = read_samples_file(Path(source))
    result = render_samples(tensors, meta, output, cols)
    if isinstance(result, str):
        sys.stdout.write(result)
        return None
    if preview and meta["kind"] != "text" and "flow_input" not in tensors:
        sys.stdout.write(terminal_preview(to_unit(tensors["samples"], meta["kind"]), cols))
    return result


def render_samples(tensors: dict[str, Tensor], meta: dict[str, str], output: Optional[Path],
                   cols: Optional[int]) -> Union[Path, str]:
    """The work of ``bfn render`` on a samples file's tensors and metadata (checked by
    samples_file.check_samples): the picture (or text file) written, or, for text without
    ``output``, the text itself."""
    kind = meta["kind"]
    if "flow_input" in tensors:  # complete and sane: see samples_file.check_samples
        return render_trajectory(tensors, meta, output, cols)
    samples = tensors["samples"]
    if kind == "text":
        if output is not None and output.suffix.lower() in (".png", ".gif"):
            raise UserError("text samples render as text; drop -o, or use -o FILE.txt")
        text = "\n".join(decode(samples, space=" ")) + "\n"
        if output is None:
            return text
        with _writing(output) as partial:
            partial.write_text(text)
        logger.info(f"wrote {samples.shape[0]} lines of text to {output}")
        return output
    output = output or Path("samples.png")
    if output.suffix.lower() != ".png":
        raise UserError(f"image grids are PNG files; name the output e.g. '{output.with_suffix('.png')}'")
    images = to_unit(samples, kind)
    if "classes" in tensors:
        _save_class_rows(images, tensors["classes"], class_names_of(meta), output, cols)
    else:
        _save_png(grid(images, cols), output)
    logger.info(f"wrote a grid of {samples.shape[0]} {kind.replace('_', ' ')}s to {output}")
    return output


def _count(meta: dict[str, str], key: str, default: int) -> int:
    try:
        return int(meta.get(key, default))
    except ValueError:
        raise InputError(f"the samples file is damaged: its '{key}' is {meta[key]!r}, not a number; draw the "
                         "samples again") from None


def _save_class_rows(images: Tensor, classes: Tensor, names: list[str], output: Path, cols: Optional[int]) -> None:
    """The pictures grouped by class, in class order, each class starting a new row and labelled with
    its name; a class with more pictures than fit in a row (``cols``, by default about the square
    root of the count) continues on the rows below."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    classes = classes.reshape(-1).long()  # one per sample (checked when the file was read)
    order = sorted(set(classes.tolist()))
    groups = [images[classes == c] for c in order]
    width = cols or min(max(len(g) for g in groups), max(10, math.ceil(math.sqrt(len(images)))))
    blank = torch.full_like(images[0], 0.5)
    blocks, ticks, top, total_rows = [], [], 0, 0
    for group in groups:
        rows = math.ceil(len(group) / width)
        padded = torch.cat([group, blank.expand(rows * width - len(group), *blank.shape)])
        block = grid(padded, width, min_width=0)
        ticks.append(top + block.shape[0] / rows / 2)  # the middle of the class's first row
        top += block.shape[0]
        total_rows += rows
        blocks.append(block)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * width + 1.5), max(1.5, 0.6 * total_rows + 0.4)))
    picture = torch.cat(blocks).numpy()
    ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks(ticks)
    ax.set_yticklabels([_class_label(c, names) for c in order])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout()
    with _writing(output, fig) as partial:
        fig.savefig(str(partial), dpi=100)


def _class_label(index: int, names: list[str]) -> str:
    """A class's name; the index one past the last class is "no class" (unconditional samples)."""
    if 0 <= index < len(names):
        return names[index]
    return "none" if names and index == len(names) else str(index)


def render_trajectory(tensors: dict[str, Tensor], meta: dict[str, str], output: Optional[Path],
                      cols: Optional[int]) -> Path:
    """The flow, frame by frame: input distribution (left) and the network's prediction (right).
    A .gif is an animation; a .png is a strip of all frames (inputs above, predictions below)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import animation
    from matplotlib import pyplot as plt

    kind = meta["kind"]
    inputs, preds, steps = tensors["flow_input"], tensors["flow_prediction"], tensors["flow_steps"].tolist()
    total = _count(meta, "steps", int(steps[-1]))
    evaluations = _count(meta, "evaluations", total + 1)
    times = tensors["flow_times"].tolist() if "flow_times" in tensors else [(i - 1) / max(total, 1) for i in steps]
    output = output or Path("flow.gif")
    if output.suffix.lower() not in (".gif", ".png"):
        raise UserError(f"a trajectory renders as an animated .gif or a .png strip, not '{output.suffix}'")
    if kind != "text" and output.suffix.lower() == ".png":
        frames = torch.cat([to_unit(inputs[:, 0], kind), to_unit(preds[:, 0], kind)])  # the first sample
        _save_png(grid(frames, cols or inputs.shape[0]), output)
        logger.info(f"wrote the flow ({len(steps)} frames) to {output}")
        return output

    if kind == "text":  # the most likely character under each distribution
        panels = [(decode(inputs[f].argmax(-1)), decode(preds[f].argmax(-1))) for f in range(len(steps))]
        size = (12, 0.8 + 0.15 * inputs.shape[1])
    else:
        panels = [(grid(to_unit(inputs[f], kind), cols, min_width=160), grid(to_unit(preds[f], kind), cols, min_width=160))
                  for f in range(len(steps))]
        h, w = panels[0][0].shape[:2]
        size = (8, 0.9 + 4 * h / w)
    fig, axes = plt.subplots(1, 2, figsize=size)
    for ax, title in zip(axes, ("input distribution", "prediction")):
        ax.set_axis_off()
        ax.set_title(title, fontsize=10)
    artists = []

    def draw(f):
        for artist in artists:
            artist.remove()
        artists.clear()
        final = steps[f] >= evaluations
        label = "t = 1 (final)" if final else f"evaluation {steps[f]} of {evaluations}  (t = {times[f]:.3f})"
        fig.suptitle(label, fontsize=10)
        for ax, panel in zip(axes, panels[f]):
            if kind == "text":
                artists.append(ax.text(0, 1, "\n".join(panel), family="monospace", fontsize=7, va="top",
                                       transform=ax.transAxes))
            else:
                grey = panel.shape[-1] == 1
                pixels = (panel[..., 0] if grey else panel).numpy()
                artists.append(ax.imshow(pixels, cmap="gray" if grey else None,
                                         vmin=0, vmax=1))
        return artists

    with _writing(output, fig) as partial:
        if output.suffix.lower() == ".gif":
            animation.FuncAnimation(fig, draw, frames=len(steps), blit=False).save(
                str(partial), writer=animation.PillowWriter(fps=3), dpi=80)
        else:  # text as a .png: the final frame
            draw(len(steps) - 1)
            fig.savefig(str(partial), dpi=100)
    logger.info(f"wrote the flow ({len(steps)} frames) to {output}")
    return output


def render_run(run_dir: Path, output: Optional[Path]) -> Path:
    """Loss curves of a training run, from its metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        raise InputError(f"'{run_dir}' is not a bfn run directory (no metrics.jsonl); train one with bfn train")
    train, val = [], []
    try:
        records, skipped = read_metrics_counted(metrics)
    except OSError as err:
        raise InputError(f"cannot read '{metrics}': {err.strerror or err}") from None
    if skipped:
        logger.warning(f"skipped {skipped} damaged line{'s' if skipped > 1 else ''} of {metrics} (not JSON records "
                       "with a step); the curves show the rest")
    for record in records:
        if isinstance(record.get("loss"), (int, float)):
            train.append((record["step"], record["loss"]))
        if isinstance(record.get("val_loss"), (int, float)):
            val.append((record["step"], record["val_loss"]))
    if not train:
        raise InputError(f"'{metrics}' has no training steps yet")
    output = output or run_dir / "loss.png"
    fig, ax = plt.subplots(figsize=(7, 4))
    steps, losses = zip(*train)
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="training loss")
    window = max(1, len(losses) // 50)
    if window > 1:
        smooth = torch.tensor(losses).unfold(0, window, 1).mean(-1).tolist()
        ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"training loss (mean of {window})")
    if val:
        ax.plot(*zip(*val), "o-", label="validation (EMA, continuous-time loss)")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per dimension")
    ax.set_yscale("log")
    ax.set_title(run_dir.name)
    ax.legend()
    fig.tight_layout()
    with _writing(output, fig) as partial:
        fig.savefig(str(partial), dpi=110)
    logger.info(f"wrote the loss curves of {run_dir.name} to {output}")
    return output
