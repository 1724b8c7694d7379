"""The ``bfn`` command: one small function per sub-command.

Each function parses its options, builds a config where it takes one, and hands over to a job in
:mod:`bfncli.jobs`. Heavy imports (torch) happen inside the functions so that ``bfn --help``
answers at once. User errors become one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from bfncli import completion
from bfncli.errors import Interrupted, UserError, out_of_memory_message, raise_interrupted
from bfncli.hub import HUB_SPEC_HELP, is_hub_spec
from bfncli.log import NORMAL, QUIET, VERBOSE, logger, resolved_config, set_verbosity
from bfncli.options import eval_flags, eval_unconditional, refuse_likelihood_flags, train_config
from bfncli.specs import local_checkpoint

HELP_OPTIONS = ["-h", "--help"]
app = typer.Typer(
    name="bfn",
    help="Train, evaluate and sample Bayesian Flow Networks (Graves et al., 2023).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": HELP_OPTIONS},
)

# ------------------------------------------------------------------------ shared options
PresetOpt = typer.Option(None, "--preset", "-p", help="A preset experiment (bfn train --list-presets lists them).",
                         autocompletion=completion.presets)
ConfigOpt = typer.Option(None, "--config", "-c", help="A YAML config file, layered over the preset.")
SetOpt = typer.Option(
    [], "--set", "-s", metavar="KEY.PATH=VALUE", help="Override any config field, e.g. train.batch_size=64 (repeatable)."
)
RunsDirOpt = typer.Option(Path("runs"), "--runs-dir", help="Where runs live.", envvar="BFN_RUNS_DIR")
CheckpointOpt = typer.Option(
    None, "--checkpoint", metavar="SPEC", autocompletion=completion.checkpoints,
    help=f"A bfn .safetensors file, a run folder (its newest checkpoint), {HUB_SPEC_HELP} (default: the newest "
         "checkpoint under --runs-dir).",
)
DataOpt = typer.Option(None, "--data", help="Your own data: an image folder, a text file or a .safetensors/.npy tensor.")
DataDirOpt = typer.Option(None, "--data-dir", help="Where the paper's datasets are kept (default ./data).")
DeterministicOpt = typer.Option(
    False, "--deterministic", help="Strict reproducibility: highest-precision matmuls, deterministic algorithms."
)


# -q/-v are options of every command and of bfn itself: `bfn train -q` and `bfn -q train` are the same.
def _verbosity(level: int, flag: str):
    def callback(ctx: typer.Context, value: bool) -> None:
        if not value:
            return
        other = ctx.meta.setdefault("bfn.verbosity", flag)  # meta is shared by bfn's and the command's context
        if other != flag:
            raise typer.BadParameter(f"{other} and {flag} contradict each other; give one of them")
        set_verbosity(level)
    return callback


QuietOpt = typer.Option(False, "--quiet", "-q", callback=_verbosity(QUIET, "-q"), is_eager=True, expose_value=False,
                        help="Errors only: no information, warnings or progress bars.")
VerboseOpt = typer.Option(False, "--verbose", "-v", callback=_verbosity(VERBOSE, "-v"), is_eager=True,
                          expose_value=False, help="Debug lines too: the resolved config, device and versions, timings.")


def _json_flag(ctx: typer.Context, value: bool) -> None:
    ctx.meta["bfn.json"] = value  # eager: known when --version's (not eager) callback runs


def _version(ctx: typer.Context, value: bool) -> None:
    if value:
        from bfncli.versions import describe, versions

        info = versions()
        typer.echo(json.dumps(info) if ctx.meta.get("bfn.json") else describe(info))
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version,
                                 help="Show the versions of bfn, Python, torch (CUDA, GPUs) and accelerate."),
    as_json: bool = typer.Option(False, "--json", callback=_json_flag, is_eager=True, expose_value=False,
                                 help="With --version: one JSON object."),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Train, evaluate and sample Bayesian Flow Networks (Graves et al., 2023)."""


# ------------------------------------------------------------------------------- train
@app.command(
    epilog="""[bold]Examples[/bold]

  [dim]# the embedded default (8x8 digits), no download[/dim]
  bfn train

  [dim]# the paper's binarized MNIST experiment[/dim]
  bfn train --preset mnist --data-dir ~/data

  bfn train --preset text8-tiny --set train.batch_size=32 --max-steps 500

  [dim]# print the resolved config and stop[/dim]
  bfn train --preset cifar10-256d --dry-run

  [dim]# continue after an interruption[/dim]
  bfn train --resume auto --run-name my-run

  [dim]# fine-tune the released MNIST weights[/dim]
  bfn train --preset mnist --init official:mnist --set optim.lr=1e-5

  accelerate launch --multi_gpu --num_processes 8 -m bfncli train --preset text8
""",
)
def train(
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    sets: List[str] = SetOpt,
    data: Optional[Path] = DataOpt,
    data_dir: Optional[Path] = DataDirOpt,
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Name of the run directory (default: preset-date-time).",
                                           autocompletion=completion.run_names),
    runs_dir: Path = RunsDirOpt,
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Total optimizer steps (train.steps)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", min=1, help="Steps between checkpoints."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (train.seed)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="'auto' (newest valid checkpoint of the run) or a checkpoint path.",
                                         autocompletion=completion.resume),
    init: Optional[str] = typer.Option(
        None, "--init", metavar="SPEC",
        help=f"Start a new run from these weights (raw and EMA), at step 0 with a fresh optimizer: a bfn .safetensors "
             f"file, {HUB_SPEC_HELP}.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate everything, print the resolved config as YAML, stop."),
    list_presets: bool = typer.Option(False, "--list-presets", help="List the presets and stop."),
    deterministic: bool = DeterministicOpt,
    as_json: bool = typer.Option(False, "--json", help="With --list-presets: one JSON object on stdout."),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Train a BFN (continuous-time loss, EMA, crash-safe checkpoints, exact resume)."""
    if list_presets:
        _print_presets(as_json)
        return
    cfg = train_config(preset=preset, config_file=config, sets=sets, data=data, data_dir=data_dir,
                       max_steps=max_steps, checkpoint_every=checkpoint_every, seed=seed)
    resolved_config(cfg)
    if dry_run:
        sys.stdout.write(cfg.to_yaml())
        return
    from bfncli.jobs.train import run_training

    run_training(cfg, preset=preset, run_name=run_name, runs_dir=runs_dir, resume=resume, deterministic=deterministic,
                 init=init)


def _print_presets(as_json: bool = False) -> None:
    from bfncli.config import DEFAULT_PRESET, list_presets

    presets = list_presets()
    if as_json:
        typer.echo(json.dumps({"default": DEFAULT_PRESET, "presets": presets}))
        return
    width = max(map(len, presets))
    for name, description in presets.items():
        mark = " (default)" if name == DEFAULT_PRESET else ""
        typer.echo(f"{name:<{width}}  {description}{mark}")


# -------------------------------------------------------------------------------- eval
@app.command(
    name="eval",
    epilog="""[bold]Examples[/bold]

  [dim]# newest checkpoint under ./runs, its test split[/dim]
  bfn eval

  bfn eval --checkpoint mnist.safetensors --steps 784 --repeats 2000

  [dim]# the released weights: mnist, cifar10-256d, cifar10-16d, cifar10-256c, cifar10-16c, text8[/dim]
  bfn eval --checkpoint official:mnist --steps 784 --repeats 2000

  bfn eval --checkpoint hf://rupspace/pretrained-BFNs/cifar10_256d_ema.pt --steps 0 --repeats 100

  bfn eval --checkpoint text8.safetensors --steps 0 --json

  bfn eval --checkpoint cifar.safetensors --data my_images.npy --batch-size 50

  [dim]# sample quality instead (images: FD and MMD²; text: spelling)[/dim]
  bfn sample --shape 1000,8,8,1 --steps 100 -o s.safetensors
  bfn eval --samples s.safetensors
""",
)
def eval_(
    checkpoint: Optional[str] = CheckpointOpt,
    runs_dir: Path = RunsDirOpt,
    steps: Optional[int] = typer.Option(None, "--steps", help="n >= 1: the n-step discrete-time loss; 0: continuous time."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Passes over the data (the official test.py's n_repeats)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Examples per batch (default: 100 on the CPU, as many as fit on a GPU); never changes the estimate."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    data: Optional[Path] = DataOpt,
    data_dir: Optional[Path] = DataDirOpt,
    sets: List[str] = SetOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    deterministic: bool = DeterministicOpt,
    samples: Optional[Path] = typer.Option(
        None, "--samples", help="Measure these samples' quality (a bfn sample -o file) instead of the likelihood, against the "
        "checkpoint that drew them (or --checkpoint)."
    ),
    class_: Optional[str] = typer.Option(
        None, "--class", metavar="none", autocompletion=completion.no_class,
        help="Class-conditional models: 'none' gives the unconditional likelihood "
        "(default: conditional on each example's class)."
    ),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Evaluate a checkpoint: the paper's loss with standard errors (nats, bits, per example), or its samples."""
    flags = eval_flags(steps, repeats, batch_size, seed, data, data_dir)
    unconditional = eval_unconditional(class_)
    path = local_checkpoint(checkpoint)  # before torch is imported: a bad spec or download fails at once
    if samples is not None:
        refuse_likelihood_flags(steps, repeats, batch_size, class_)
        from bfncli.jobs.quality import run_quality

        run_quality(samples, path, runs_dir, sets=sets, as_json=as_json, deterministic=deterministic, overrides=flags)
        return
    from bfncli.jobs.evaluate import run_eval

    run_eval(
        checkpoint=path,
        runs_dir=runs_dir,
        overrides=flags,
        sets=sets,
        as_json=as_json,
        deterministic=deterministic,
        unconditional=unconditional,
    )


# ------------------------------------------------------------------------------ sample
def _sampler_help() -> str:
    from bfncli.samplers import AUTO, SAMPLERS

    best = " / ".join(sorted(set(AUTO.values())))
    lines = [f"auto: the sampler measured best from 10 evaluations on ({best}; the default; at 5, ode beats it on "
             "some models)"]
    lines += [f"{s.name}: {s.summary}" for s in SAMPLERS.values()]
    return "Sampler: " + "; ".join(lines) + "."


SAMPLER_HELP = _sampler_help()


@app.command(
    epilog="""[bold]Examples[/bold]

  [dim]# a PNG grid (samples.png) of 4 samples of the newest run under runs/ (bfn train's default: 8x8 digits)[/dim]
  bfn sample --shape 4,8,8,1 | bfn render

  bfn sample --steps 1000 --seed 3 -o samples.safetensors

  [dim]# from the released weights (mnist, cifar10-256d, ..., text8)[/dim]
  bfn sample --checkpoint official:mnist --shape 4,28,28,1 | bfn render

  [dim]# a text model (bfn train --preset pyhelp --run-name pyhelp) completing a prompt[/dim]
  bfn sample --checkpoint runs/pyhelp/best.safetensors --prompt "in the beginning" | bfn render

  bfn sample --trajectory -o flow.safetensors && bfn render flow.safetensors -o flow.gif

  [dim]# 10 network evaluations (auto: the fast SDE solver) instead of the paper's 100 or 1000 updates[/dim]
  bfn sample --steps 10 | bfn render

  [dim]# a named sampler: the deterministic probability-flow ODE solver[/dim]
  bfn sample --sampler ode --steps 20 | bfn render

  [dim]# a class-conditional model (bfn train --preset default-cond --run-name digits-cond): sevens, sharpened by guidance[/dim]
  bfn sample --checkpoint runs/digits-cond/best.safetensors --class 7 --guidance 2 | bfn render
""",
)
def sample(
    checkpoint: Optional[str] = CheckpointOpt,
    runs_dir: Path = RunsDirOpt,
    shape: Optional[str] = typer.Option(None, "--shape", help="Comma-separated, batch first, then the model's data shape, e.g. 4,8,8,1."),
    sampler: Optional[str] = typer.Option(None, "--sampler", metavar="NAME", help=SAMPLER_HELP,
                                          autocompletion=completion.samplers),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="Network evaluations (default: the checkpoint's sample.steps); for 'paper', its n updates."
    ),
    eta: Optional[float] = typer.Option(None, "--eta", help="ode/sde: the time the solver starts at, in (0, 1)."),
    class_: Optional[str] = typer.Option(
        None, "--class", metavar="CLASS[,CLASS...]", autocompletion=completion.classes,
        help="Class-conditional models: a class name or index for all samples, one per sample, or 'none' "
        "(default: the classes in turn).",
    ),
    guidance: Optional[float] = typer.Option(
        None, "--guidance", help="Classifier-free guidance weight w (1: the conditional model; > 1: sharper classes)."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per network batch (chunks)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output .safetensors (default: stdout if piped)."),
    trajectory: bool = typer.Option(False, "--trajectory", help="Record the flow at chosen steps, for an animation."),
    frames: Optional[int] = typer.Option(None, "--frames", help="With --trajectory: how many steps to record "
                                                               "(default 20)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Text: a known prefix to continue."),
    template: Optional[str] = typer.Option(None, "--template", help="Text: known characters with '?' where unknown."),
    image: Optional[Path] = typer.Option(None, "--image", help="Inpainting: an image file or a samples file."),
    mask: Optional[str] = typer.Option(None, "--mask", help="Inpainting: a mask image (white = unknown) or a box 'top,left,height,width'."),
    sets: List[str] = SetOpt,
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output file."),
    deterministic: bool = DeterministicOpt,
    summary: Optional[Path] = typer.Option(
        None, "--json", metavar="FILE", help="Also write a summary (what was drawn, how, where; timing) as one JSON "
        "object to FILE ('-': stdout, when the samples go to -o)."),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Draw samples (optionally conditional, with any sampler) as safetensors."""
    path = local_checkpoint(checkpoint)  # before torch is imported: a bad spec or download fails at once
    from bfncli.jobs.sample import run_sample

    run_sample(
        checkpoint=path, runs_dir=runs_dir, shape=shape, steps=steps, seed=seed, batch_size=batch_size,
        output=output, trajectory=trajectory, frames=frames, prompt=prompt, template=template, image=image,
        mask=mask, sets=sets, deterministic=deterministic, force=force, sampler=sampler, eta=eta,
        classes=class_, guidance=guidance, summary=summary,
    )


# ------------------------------------------------------------------------------ render
@app.command(
    epilog="""[bold]Examples[/bold]

  [dim]# writes samples.png (images) or prints text[/dim]
  bfn sample | bfn render

  bfn render samples.safetensors -o grid.png --cols 8

  [dim]# a trajectory as an animation[/dim]
  bfn render flow.safetensors -o flow.gif

  [dim]# the run's loss curves[/dim]
  bfn render runs/my-run
""",
)
def render(
    source: Optional[Path] = typer.Argument(None, help="A samples file or a run directory (default: stdin)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Picture or text file to write (default: samples.png for samples, flow.gif for a trajectory, RUN/loss.png for a run folder; text samples print to stdout)."),
    cols: Optional[int] = typer.Option(None, "--cols", min=1, help="Images per row."),
    preview: bool = typer.Option(False, "--preview", help="Also draw the images in the terminal."),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Turn samples into a PNG grid, text, or an animation of the flow; or plot a run."""
    from bfncli.jobs.render import run_render

    run_render(source=source, output=output, cols=cols, preview=preview)


# ----------------------------------------------------------------------------- convert
@app.command(
    epilog="""[bold]Examples[/bold]

  bfn convert mnist_ema.pt --preset mnist -o mnist.safetensors

  [dim]# recognises the preset from the weights[/dim]
  bfn convert cifar10_256d_ema.pt

  bfn convert my_ema.pt --official-config configs/cifar10_discretized_16bins.yaml -o mine.safetensors

  [dim]# back to the official layout[/dim]
  bfn convert mnist.safetensors -o mnist_ema.pt

  [dim]# a released file from the Hub (mnist, cifar10-256d, ..., text8), into ./mnist_ema.safetensors[/dim]
  bfn convert official:mnist

  bfn convert hf://OWNER/REPO@v1/mine_ema.pt --official-config mine.yaml -o mine.safetensors
""",
)
def convert(
    source: str = typer.Argument(..., metavar="SOURCE", help=f"An official .pt state dict or a bfn .safetensors "
                                                              f"checkpoint: a local file, {HUB_SPEC_HELP}."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where to write (default: beside the input; "
                                                                       "a Hub file: into the current folder)."),
    preset: Optional[str] = PresetOpt,
    official_config: Optional[Path] = typer.Option(None, "--official-config", help="The official YAML config of the .pt file."),
    sets: List[str] = SetOpt,
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output file."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as one JSON object on stdout."),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Convert official .pt checkpoints to bfn safetensors, and back."""
    from bfncli.specs import fetch

    path = fetch(source)  # before torch is imported: a bad spec or download fails at once
    from bfncli.convert import conversion_record, run_convert

    written = run_convert(source=path, output=output, preset=preset, official_config=official_config, sets=sets,
                          force=force, downloaded=is_hub_spec(source))
    if as_json:
        typer.echo(json.dumps(conversion_record(source, written)))


# ------------------------------------------------------------------ compress / decompress
@app.command(
    epilog="""[bold]Examples[/bold]

  [dim]# text with a text model: writes notes.txt.bfnz[/dim]
  bfn compress notes.txt --checkpoint runs/pyhelp/best.safetensors

  [dim]# images (a .safetensors/.npy of examples, or a PNG for 256-level models)[/dim]
  bfn compress digits.safetensors --checkpoint runs/digits/best.safetensors -o d.bfnz

  [dim]# sizes, bits per dimension, the model's n-step loss beside them[/dim]
  bfn compress notes.txt --checkpoint CK --steps 100 --json -o notes.bfnz

  bfn sample --shape 16,8,8,1 | bfn compress -o samples.bfnz
""",
)
def compress(
    source: Optional[Path] = typer.Argument(None, help="Text, a picture or a .safetensors/.npy file (default: stdin)."),
    checkpoint: Optional[str] = CheckpointOpt,
    runs_dir: Path = RunsDirOpt,
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="The .bfnz file (default: SOURCE.bfnz, or stdout)."),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="n: the n-step code (default: the checkpoint's eval steps, else its sampling steps)."
    ),
    batch_size: int = typer.Option(
        16, "--batch-size", help="Chunks coded together (one network call per step serves them all); more is faster "
        "but borrows more initial bits."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout (needs -o)."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output file."),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Compress data losslessly with a trained BFN (bits-back coding: the file matches the n-step loss)."""
    path = local_checkpoint(checkpoint)
    from bfncli.jobs.compress import run_compress

    run_compress(source, path, runs_dir, output, steps, batch_size, force, as_json)


@app.command(
    epilog="""[bold]Examples[/bold]

  [dim]# writes notes.txt (refuses to overwrite it without --force)[/dim]
  bfn decompress notes.txt.bfnz --checkpoint runs/pyhelp/best.safetensors

  bfn decompress d.bfnz --checkpoint CK -o digits.safetensors

  cat samples.bfnz | bfn decompress --checkpoint CK | bfn render
""",
)
def decompress(
    source: Optional[Path] = typer.Argument(None, help="A .bfnz file (default: stdin)."),
    checkpoint: Optional[str] = CheckpointOpt,
    runs_dir: Path = RunsDirOpt,
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Where to write (default: SOURCE without .bfnz, or stdout)."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output file."),
    quiet: bool = QuietOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Decompress a .bfnz file with the checkpoint that compressed it; checked against the original's checksum."""
    path = local_checkpoint(checkpoint)
    from bfncli.jobs.compress import run_decompress

    run_decompress(source, path, runs_dir, output, force)


# -------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: run the app; turn user errors into one line and an exit code."""
    import signal

    signal.signal(signal.SIGINT, raise_interrupted)  # see Interrupted: typer would swallow KeyboardInterrupt
    try:
        _run(argv)
    except Interrupted as err:  # one that arrived while reporting another outcome
        _fail(f"bfn: interrupted{'; ' + err.note if err.note else ''}", 130)


def _run(argv: Optional[list[str]]) -> None:
    command = typer.main.get_command(app)
    _flags_take_no_value(command)
    set_verbosity(NORMAL)  # until -q or -v says otherwise
    args = sys.argv[1:] if argv is None else argv
    name = next((arg for arg in args if not arg.startswith("-")), None)  # bfn's own options (-q, -v) take no value
    where = "bfn" + (f" {name}" if name in getattr(command, "commands", {}) else "")
    code = 1
    start = time.perf_counter()
    try:
        code = command.main(args=args, prog_name="bfn", standalone_mode=False)
    except typer.TyperException as err:  # typer's public base of the (click) errors it raises
        ctx = getattr(err, "ctx", None)  # usage errors carry the command they concern
        if ctx is not None and not args:
            code = 0  # 'bfn' alone: typer has printed the help already
        elif ctx is not None:
            _fail(f"{ctx.command_path}: {err.format_message()} (see '{ctx.command_path} --help')", err.exit_code)
        else:
            _fail(f"{where}: {err.format_message()}", getattr(err, "exit_code", 1))
    except typer.Abort:
        _fail(f"{where}: aborted", 130)
    except UserError as err:
        if os.environ.get("RANK", "0") != "0":  # under torchrun/accelerate every process would say the same
            sys.exit(err.exit_code)
        _fail(f"{where}: {err}", err.exit_code)
    except (KeyboardInterrupt, Interrupted) as err:
        note = getattr(err, "note", "")
        if os.environ.get("RANK", "0") != "0":
            sys.exit(130)
        _fail(f"{where}: interrupted" + (f"; {note}" if note else ""), 130)
    except BrokenPipeError:
        _quiet_broken_pipe()
    except (MemoryError, RuntimeError) as err:
        message = out_of_memory_message(err)
        if message is None:
            raise
        code = 1
        _fail(f"{where}: {message}", 1, all_processes=True)  # each process says how much it asked for
    finally:
        logger.debug(f"{where}: {time.perf_counter() - start:.2f} s")
        _close_process_group(succeeded=code in (0, None))
    sys.exit(code if isinstance(code, int) else 0)


def _flags_take_no_value(command) -> None:
    """Typer's help shows a type beside every option, flags included (``--force <bool>``), as if they
    took a value: blank it for flags (--help too, created here so that it is the one shown)."""
    for cmd in [command, *getattr(command, "commands", {}).values()]:
        if not hasattr(cmd, "params"):  # not a command of options (a stand-in in a test)
            continue
        context = typer.Context(cmd, help_option_names=HELP_OPTIONS)
        help_option = cmd.get_help_option(context) if hasattr(cmd, "get_help_option") else None
        for param in [*cmd.params, *([help_option] if help_option is not None else [])]:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""


def _close_process_group(succeeded: bool) -> None:
    """Under torchrun/accelerate, wait for the other processes and shut the process group down.

    Leaving it to interpreter exit lets the communication threads be torn down while a peer is
    still talking to them, and the process aborts ("terminate called without an active exception").
    """
    dist_module = sys.modules.get("torch.distributed")  # never import torch just for this
    if dist_module is None or not dist_module.is_available() or not dist_module.is_initialized():
        return
    try:
        if succeeded:
            dist_module.barrier()
        dist_module.destroy_process_group()
    except Exception:  # a peer has already gone: nothing left to shut down cleanly
        pass


def _fail(message: str, code: int, all_processes: bool = False) -> None:
    logger.error(message.replace("\n", " ").strip(), extra={"all_processes": all_processes})
    sys.exit(code)


def _quiet_broken_pipe() -> None:
    """The reader went away (``bfn sample | head``): stop quietly, as Unix tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


if __name__ == "__main__":
    main()
