"""The Python API: what the ``bfn`` command does, from a notebook or your own training loop.

    import bfncli as bfn

    model = bfn.load("official:mnist")                # any --checkpoint SPEC: file, run folder, hf://, official:NAME
    x = model.sample(16, steps=20)                    # a tensor in the data's layout
    report = model.evaluate(steps=784, repeats=10)    # the dict of `bfn eval --json`
    loss = model.loss(batch)                          # differentiable, for your own loop
    bfn.render(x, "grid.png")                         # the picture of `bfn render`
    run = bfn.train(preset="default", max_steps=500, sets={"optim.lr": 2e-4})
    cfg = bfn.config("cifar10-256d", {"train.batch_size": 64})

Every function calls the very functions the commands call (:mod:`bfncli.jobs`); the arguments are
the commands' flags with the same names and defaults (None: what the command does without the
flag), so a call gives what the command gives. Anything a user can get wrong raises
:class:`bfncli.BFNError` with the command's one-line message; nothing is written to standard output;
``progress=False`` turns the progress bars off. Torch is imported when a function first needs it.
Like the commands, sampling, evaluating and training set torch's float32 matmul precision ("high",
or "highest" with ``deterministic=True``, which also turns on torch's deterministic algorithms).
"""

from __future__ import annotations

import functools
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from bfncli.errors import BFNError, out_of_memory_message
from bfncli.jobs.training_result import TrainingResult

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from bfncli.checkpoint import CheckpointInfo
    from bfncli.config import BFNConfig
    from bfncli.model import BFN

__all__ = ["BFNError", "Model", "TrainingResult", "config", "load", "render", "train"]

PathLike = Union[str, Path]
Sets = Union[Sequence[str], Mapping[str, Any], None]
Classes = Union[str, int, Sequence[Union[int, str]], "Tensor", None]


def _memory_errors(fn):
    """An allocation that failed becomes a BFNError with the command's one line (exit code 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MemoryError, RuntimeError) as err:
            message = out_of_memory_message(err)
            if message is None:
                raise
            raise BFNError(message, exit_code=1) from None

    return wrapper


# ---------------------------------------------------------------------------------- config
def config(preset: Optional[str] = None, sets: Sets = None, *, file: Optional[PathLike] = None) -> "BFNConfig":
    """A validated config, as ``bfn train --preset PRESET --config FILE --set KEY=VALUE ... --dry-run``
    resolves it: the preset (default ``"default"``) < the YAML ``file`` < ``BFN_*`` environment
    variables < ``sets``.

    Args:
        preset: a preset's name (``bfn train --list-presets``), e.g. ``"cifar10-256d"``.
        sets: overrides by dotted path, ``{"train.batch_size": 64}`` (values as they are) or
            ``["train.batch_size=64"]`` (values read as on the command line).
        file: a YAML config file layered over the preset (``--config``).

    Returns:
        A :class:`bfncli.config.BFNConfig` (``.to_yaml()``, ``.to_dict()``, ``.train.batch_size`` ...),
        which :func:`train` takes as ``config=``.

    Raises:
        BFNError: an unknown preset, key, type or value, with the one line ``bfn train`` prints.
    """
    from bfncli.options import train_config

    return train_config(preset=preset, config_file=None if file is None else Path(file), sets=sets)


# ----------------------------------------------------------------------------------- train
@_memory_errors
def train(
    preset: Optional[str] = None,
    *,
    config: Union["BFNConfig", PathLike, None] = None,
    sets: Sets = None,
    data: Optional[PathLike] = None,
    data_dir: Optional[PathLike] = None,
    run_name: Optional[str] = None,
    runs_dir: PathLike = "runs",
    max_steps: Optional[int] = None,
    checkpoint_every: Optional[int] = None,
    seed: Optional[int] = None,
    resume: Optional[PathLike] = None,
    init: Optional[PathLike] = None,
    deterministic: bool = False,
    progress: bool = True,
) -> TrainingResult:
    """Train a BFN, as ``bfn train`` does with the same flags: the same run folder, checkpoints,
    metrics and weights.

    Args:
        preset: a preset experiment (default ``"default"``: 8x8 digits, no download).
        config: a YAML config file layered over the preset (``--config``), or a config object from
            :func:`config` (then it replaces the preset).
        sets: overrides, ``{"optim.lr": 2e-4}`` or ``["optim.lr=2e-4"]`` (``--set``).
        data: your own data: an image folder, a text file or a .safetensors/.npy tensor (``--data``).
        data_dir: where the paper's datasets are kept (``--data-dir``, default ``./data``).
        run_name: the run folder's name under ``runs_dir`` (default: preset-date-time).
        runs_dir: where runs live (``--runs-dir``).
        max_steps: total optimizer steps (``train.steps``).
        checkpoint_every: steps between checkpoints.
        seed: the random seed (``train.seed``).
        resume: ``"auto"`` (the newest intact checkpoint of ``run_name``, or of the newest run) or a
            checkpoint folder.
        init: start a new run from these weights: any checkpoint spec :func:`load` takes.
        deterministic: strict reproducibility (highest-precision matmuls, deterministic algorithms).
        progress: False: no progress bar.

    Returns:
        A :class:`TrainingResult`: ``run_dir``, ``checkpoint`` (the EMA weights of the last
        checkpoint: ``bfn.load(run.checkpoint)``), ``step`` and ``metrics`` (the last logged loss,
        gradient norm, learning rate, speed, and the last validation's ``val_loss`` ...).

    Raises:
        BFNError: what ``bfn train`` refuses, with its message.
        KeyboardInterrupt: Ctrl-C stopped the run after the step it was in; its checkpoint is
            written, and ``resume="auto"`` continues it.
    """
    from bfncli.config import BFNConfig
    from bfncli.jobs.train import run_training
    from bfncli.options import train_config

    base = config_file = None
    if isinstance(config, BFNConfig):
        if preset is not None:
            raise BFNError("give either preset= or a config object (which already holds its preset), not both")
        base = config.to_dict()
    elif config is not None:
        config_file = Path(config)
    cfg = train_config(preset=preset, config_file=config_file, sets=sets, data=_path(data),
                       data_dir=_path(data_dir), max_steps=max_steps, checkpoint_every=checkpoint_every, seed=seed,
                       base=base)
    handlers = _signal_handlers()
    try:
        return run_training(cfg, preset=preset, run_name=run_name, runs_dir=Path(runs_dir),
                            resume=None if resume is None else str(resume), deterministic=deterministic,
                            init=None if init is None else str(init), progress=progress)
    except SystemExit as stop:  # a signal stopped the run, after writing a checkpoint
        message = (f"training stopped by a signal (exit code {stop.code}) after writing a checkpoint; continue it "
                   "with resume='auto' and the same run_name")
        if stop.code == 130:
            raise KeyboardInterrupt(message) from None
        raise BFNError(message, exit_code=stop.code if isinstance(stop.code, int) else 1) from None
    finally:  # the command leaves its stop handlers in place while it exits; the caller goes on
        for sig, handler in handlers.items():
            if handler is not None:  # None: set outside Python, cannot be set back
                signal.signal(sig, handler)


def _signal_handlers() -> dict:
    """The SIGINT/SIGTERM handlers now (none outside the main thread, where they cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


# ------------------------------------------------------------------------------------ load
@_memory_errors
def load(checkpoint: Optional[PathLike] = None, *, runs_dir: PathLike = "runs",
         device: Union[str, "torch.device", None] = None, progress: bool = True) -> "Model":
    """Load a checkpoint: what ``bfn sample`` and ``bfn eval`` take as ``--checkpoint SPEC``.

    Args:
        checkpoint: a bfn ``.safetensors`` file; a run folder (its newest intact checkpoint);
            ``hf://OWNER/REPO[@REVISION]/FILE`` (or the file's https://huggingface.co/... address);
            or ``official:NAME`` with NAME one of mnist,
            cifar10-256d, cifar10-16d, cifar10-256c, cifar10-16c, text8 (downloaded once, converted
            from the official ``.pt``). None: the newest checkpoint under ``runs_dir``.
        runs_dir: where runs live (``--runs-dir``).
        device: where the model runs (default: the GPU if there is one, else the CPU).
        progress: False: no progress bar while reading a big checkpoint.

    Returns:
        A :class:`Model` (in eval mode).

    Raises:
        BFNError: a missing, damaged or foreign file, a bad spec, a failed download.
    """
    from bfncli.checkpoint import load_model
    from bfncli.specs import local_checkpoint
    from bfncli.jobs.runtime import default_device, resolve_checkpoint

    spec = None if checkpoint is None else str(checkpoint)
    path = resolve_checkpoint(local_checkpoint(spec), Path(runs_dir), announce=False)
    module, info = load_model(path, "cpu", quiet=not progress)
    return Model(module, info).to(device if device is not None else default_device())


class Model:
    """A loaded BFN: sample, evaluate, compute losses, save. Made by :func:`load`.

    ``model.module`` is the ``torch.nn.Module`` itself (flow + network; ``module.net`` holds every
    weight), for what this class does not cover.
    """

    def __init__(self, module: "BFN", info: "CheckpointInfo"):
        self.module = module
        self.info = info

    # ---------------------------------------------------------------------------- what it is
    @property
    def config(self) -> "BFNConfig":
        """The checkpoint's config (architecture, flow, data, and the sample/eval defaults)."""
        return self.module.cfg

    @property
    def path(self) -> Path:
        """The checkpoint file it was loaded from."""
        return self.info.path

    @property
    def device(self) -> "torch.device":
        return next(self.module.parameters()).device

    @property
    def data_shape(self) -> tuple[int, ...]:
        """One example's shape: (H, W, C) for images, (L,) for text."""
        return tuple(self.module.data_shape)

    @property
    def kind(self) -> str:
        """What its samples are: binary_image, discretized_image, continuous_image or text."""
        from bfncli.samples_file import samples_kind

        return samples_kind(self.module)

    @property
    def class_names(self) -> list[str]:
        """A class-conditional model's classes (index i is class_names[i]); [] for other models."""
        k = self.config.network.num_classes
        return list(self.config.data.class_names) or [str(i) for i in range(k)]

    def __repr__(self) -> str:
        shape = ",".join(map(str, self.data_shape))
        return (f"Model('{self.path}', {self.kind.replace('_', ' ')}s of shape ({shape}), {self.info.weights} weights "
                f"at step {self.info.step}, on {self.device})")

    # ------------------------------------------------------------------------------- torch
    def to(self, device: Union[str, "torch.device"]) -> "Model":
        """Move the model to ``device`` ("cpu", "cuda", "cuda:1" ...); returns the model."""
        import torch

        try:
            self.module.to(torch.device(device))
        except (RuntimeError, AssertionError) as err:
            raise BFNError(f"cannot move the model to {device!r}: {str(err).splitlines()[0]}") from None
        return self

    def train(self, mode: bool = True) -> "Model":
        """Training mode (dropout on), for :meth:`loss` in your own training loop."""
        self.module.train(mode)
        return self

    def eval(self) -> "Model":
        """Evaluation mode (dropout off): what :func:`load` gives."""
        self.module.eval()
        return self

    def parameters(self):
        """The network's parameters, for your optimizer."""
        return self.module.parameters()

    # ------------------------------------------------------------------------------ sample
    @_memory_errors
    def sample(
        self,
        n: Optional[int] = None,
        *,
        steps: Optional[int] = None,
        sampler: Optional[str] = None,
        seed: Optional[int] = None,
        classes: Classes = None,
        guidance: Optional[float] = None,
        eta: Optional[float] = None,
        batch_size: Optional[int] = None,
        prompt: Optional[str] = None,
        template: Optional[str] = None,
        image: Optional[PathLike] = None,
        mask: Optional[str] = None,
        output: Optional[PathLike] = None,
        force: bool = False,
        trajectory: bool = False,
        frames: Optional[int] = None,
        sets: Sets = None,
        deterministic: bool = False,
        progress: bool = True,
    ) -> "Tensor":
        """Draw samples, as ``bfn sample`` does: the same samples for the same seed.

        Args:
            n: how many (``--shape N,...``; default: 16 pictures, 4 texts, or one per class listed).
            steps: network evaluations (default: the checkpoint's ``sample.steps``); for the
                ``"paper"`` sampler, its n updates.
            sampler: ``"auto"`` (the best measured at each budget), ``"paper"``, ``"ode"``, ``"sde"``
                (default: the checkpoint's ``sample.sampler``, normally ``"auto"``).
            seed: the random seed; sample j depends on (seed, j) only, never on ``batch_size``.
            classes: class-conditional models: a class (name or index) for every sample, one per
                sample (a list or tensor), or ``"none"`` (unconditional); default: the classes in turn.
            guidance: classifier-free guidance weight (1: the conditional model; > 1 sharper).
            eta: ode/sde: the time the solver starts at, in (0, 1).
            batch_size: samples per network batch.
            prompt: text models: a known prefix to continue.
            template: text models: known characters with ``?`` where unknown.
            image: inpainting: an image file or a samples file (with ``mask``).
            mask: inpainting: a mask image (white = unknown) or a box ``"top,left,height,width"``.
            output: also write a samples file (``-o``): ``bfn render``, ``bfn eval --samples`` read it.
            force: overwrite an existing ``output``.
            trajectory: record the flow into ``output`` (``frames`` steps of it, default 20), for an animation.
            sets: overrides of the checkpoint's ``sample.*`` config.
            deterministic: strict reproducibility.
            progress: False: no progress bar.

        Returns:
            The samples on the CPU, (n, *data_shape), in the data's layout: images in [-1, 1]
            (float), binary images as 0/1 and text as character indices 0..26 (integers).
        """
        from bfncli.jobs.runtime import setup
        from bfncli.jobs.sample import check_output, check_output_name, make_samples, write_samples

        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise BFNError(f"n is the number of samples to draw, at least 1; got {n!r}")
        if output is not None:
            output = Path(output)
            check_output_name(output)
            check_output(output, self.path, force)
        elif trajectory:
            raise BFNError("trajectory=True records the flow into a samples file: give output='flow.safetensors'")
        listed = _class_text(classes)
        if n is None and classes is not None and not isinstance(classes, (str, int)):
            n = len(listed.split(","))  # one sample per class listed
        setup(deterministic)  # the precision settings bfn sample runs with
        tensors, meta = make_samples(
            self.module, str(self.path), self.device, count=n, steps=steps, seed=seed, batch_size=batch_size,
            sampler=sampler, eta=eta, classes=listed, guidance=guidance, prompt=prompt, template=template,
            image=_path(image), mask=mask, trajectory=trajectory, frames=frames, sets=sets, progress=progress)
        if output is not None:
            write_samples(tensors, meta, output)
        return tensors["samples"]

    # ---------------------------------------------------------------------------- evaluate
    @_memory_errors
    def evaluate(
        self,
        *,
        steps: Optional[int] = None,
        repeats: Optional[int] = None,
        batch_size: Optional[int] = None,
        seed: Optional[int] = None,
        data: Optional[PathLike] = None,
        data_dir: Optional[PathLike] = None,
        classes: Optional[str] = None,
        samples: Union["Tensor", PathLike, None] = None,
        sets: Sets = None,
        deterministic: bool = False,
        progress: bool = True,
    ) -> dict[str, Any]:
        """The paper's loss with standard errors, as ``bfn eval --json`` reports it (the same
        estimator and seeds: the same numbers); or with ``samples``, their quality, as ``bfn eval
        --samples FILE --json`` reports it.

        Args:
            steps: n >= 1: the n-step discrete-time loss; 0: continuous time (default: the
                checkpoint's ``eval.steps``).
            repeats: passes over the data (default: ``eval.repeats``).
            batch_size: examples per batch.
            seed: the random seed.
            data: your own data instead of the dataset's test split (``--data``).
            data_dir: where the paper's datasets are kept.
            classes: class-conditional models: ``"none"`` for the unconditional likelihood
                (default: conditional on each example's class).
            samples: samples of this model (a tensor from :meth:`sample`, or a samples file) to
                measure instead of the likelihood: images by the Fréchet distance in a classifier's
                features and MMD² against the training split, text by spelling accuracy.
            sets: other overrides (``eval.*``, ``data.*``).
            deterministic: strict reproducibility.
            progress: False: no progress bar.

        Returns:
            ``loss_mean``, ``loss_stderr``, ``recon_mean``, ``recon_stderr``, ``total_mean``,
            ``total_stderr`` (nats per dimension), ``bits_per_dim``, ``nats_per_example``,
            ``bits_per_example``, ``n_steps``, ``repeats``, ``n_examples``, ``dims_per_example``,
            ``batch_size``, ``seed``, ``checkpoint``, ``weights``, ``step``, ``classes``; with
            ``samples``: ``fd``, ``fd_std``, ``mmd2``, ``mmd2_stderr`` ... or ``spelling_accuracy`` ...
        """
        import dataclasses

        from bfncli.checkpoint import tensors_checksum
        from bfncli.jobs.evaluate import evaluate_model
        from bfncli.jobs.runtime import setup
        from bfncli.options import eval_flags, eval_unconditional, refuse_likelihood_flags

        if samples is not None:
            refuse_likelihood_flags(steps, repeats, batch_size, classes)
            return self._quality(samples, eval_flags(seed=seed, data=_path(data), data_dir=_path(data_dir)), sets,
                                 deterministic, progress)
        flags = eval_flags(steps, repeats, batch_size, seed, _path(data), _path(data_dir))
        unconditional = eval_unconditional(classes)
        runtime = dataclasses.replace(setup(deterministic), device=self.device)
        # finished repeats are kept (and resumed) under these weights, which may have changed since loading
        weights = tensors_checksum(self.module.net.state_dict())
        result, _ = evaluate_model(self.module, self.info, runtime, flags, sets or [], unconditional,
                                   progress=progress, weights=weights)
        return result

    def _quality(self, samples, flags: dict[str, Any], sets: Sets, deterministic: bool, progress: bool) -> dict:
        import torch

        from bfncli.jobs.quality import measure_quality
        from bfncli.samples_file import check_samples, read_samples

        if isinstance(samples, (str, Path)):
            x, meta = read_samples(Path(samples))
            name: Optional[str] = str(samples)
        elif isinstance(samples, torch.Tensor):
            flow = self.module.flow  # the model's own bins, as bfn sample records them
            bins = str(flow.n_classes) if self.module.discrete else str(flow.num_bins or "")
            x, meta, name = samples.detach().cpu(), {"kind": self.kind, "num_bins": bins}, None
            check_samples({"samples": x}, meta, "the samples")
        else:
            raise BFNError(f"samples= takes a tensor of samples or a samples file, not a {type(samples).__name__}")
        return measure_quality(x, meta, name, self.info, flags, sets or [], deterministic, progress, self.device)

    # -------------------------------------------------------------------------------- loss
    def loss(self, batch: "Tensor", steps: int = 0, classes: Optional["Tensor"] = None,
             generator: Optional["torch.Generator"] = None) -> "Tensor":
        """The loss of a batch, in nats per data dimension, differentiable: the continuous-time loss
        (``steps=0``, what ``bfn train`` minimises) or the n-step discrete-time loss.

        Args:
            batch: (B, *data_shape) in the data's layout (see :meth:`sample`); moved to the model's
                device.
            steps: 0 (continuous time) or n >= 1.
            classes: class-conditional models: (B,) class indices (``len(class_names)``: no class);
                default: no class.
            generator: a ``torch.Generator`` on the model's device, for reproducible losses.

        Returns:
            A scalar tensor; ``loss.backward()`` gives the gradients of :meth:`parameters`.
        """
        import torch

        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise BFNError(f"--steps must be >= 0, got {steps}")
        x = torch.as_tensor(batch)
        shape = self.data_shape
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise BFNError(f"the batch has shape {tuple(x.shape)}, but this model takes (B, "
                           f"{', '.join(map(str, shape))})")
        if self.module.discrete:
            k = self.module.flow.n_classes
            if x.is_floating_point() or (x.numel() and not bool(((x >= 0) & (x < k)).all())):
                raise BFNError(f"this model's data are class indices, integers 0..{k - 1}; the batch holds "
                               f"{'floats' if x.is_floating_point() else 'other values'}")
            x = x.long()
        else:
            x = x.float()
        x = x.to(self.device)
        c = None
        k = self.config.network.num_classes
        if classes is not None:
            if not k:
                raise BFNError("classes= needs a class-conditional model; this model was trained without classes")
            c = torch.as_tensor(classes).to(self.device)
            if c.is_floating_point() or c.shape != (x.shape[0],) or not bool(((c >= 0) & (c <= k)).all()):
                raise BFNError(f"classes must be ({x.shape[0]},) integers in 0..{k} ({k} = no class)")
            c = c.long()
        elif k:
            c = torch.full((x.shape[0],), k, device=self.device)
        return self.module.loss(x, steps, generator, c)

    # -------------------------------------------------------------------------------- save
    def save(self, path: PathLike, force: bool = False) -> Path:
        """Write the model as a bfn checkpoint (weights and config, atomically), for ``bfn sample
        --checkpoint``, ``bfn eval`` or :func:`load`; ``force`` overwrites an existing file."""
        from bfncli.checkpoint import save_checkpoint

        path = Path(path)
        if path.suffix != ".safetensors":
            raise BFNError(f"checkpoints are .safetensors files; name it e.g. '{path.with_suffix('.safetensors')}'")
        if path.is_dir():
            raise BFNError(f"'{path}' is a folder; give a file name such as '{path / 'model.safetensors'}'")
        if path.exists() and not force:
            raise BFNError(f"'{path}' already exists; pass force=True to overwrite it or choose another path")
        return save_checkpoint(path, self.module.net.state_dict(), self.config, self.info.weights, self.info.step)


# ---------------------------------------------------------------------------------- render
def render(samples: Union["Tensor", PathLike], output: Optional[PathLike] = None, *, cols: Optional[int] = None,
           classes: Optional[Union["Tensor", Sequence[int]]] = None,
           class_names: Optional[Sequence[str]] = None) -> Union[Path, str]:
    """The picture ``bfn render`` makes: a PNG grid of images, text, a trajectory's animation, or a
    run's loss curves.

    Args:
        samples: what :meth:`Model.sample` returned (images (N, H, W, C) or texts (N, L)); a
            samples file (``bfn sample -o``, ``Model.sample(output=...)``); or a run folder.
        output: the file to write (default ``samples.png``; ``flow.gif`` for a trajectory; the run's
            ``loss.png``); text is returned, or written to ``output`` where given.
        cols: images per row.
        classes: with a tensor of images: their classes (N,), to show one class per row as ``bfn
            render`` does for class-conditional samples.
        class_names: the names of those classes (``model.class_names``).

    Returns:
        The file written, or for text without ``output``, the text.
    """
    from bfncli.jobs.render import render_run, render_samples
    from bfncli.samples_file import read_samples_file

    out = _path(output)
    if isinstance(samples, (str, Path)):
        source = Path(samples)
        if source.is_dir():
            return render_run(source, out)
        tensors, meta = read_samples_file(source)
        return render_samples(tensors, meta, out, cols)
    tensors, meta = _samples_of(samples, classes, class_names)
    return render_samples(tensors, meta, out, cols)


def _samples_of(samples, classes, class_names) -> tuple[dict, dict[str, str]]:
    """A samples file's tensors and metadata for a tensor of samples in the data's layout."""
    import json

    import torch

    from bfncli.samples_file import SAMPLES_FORMAT

    if not isinstance(samples, torch.Tensor):
        raise BFNError(f"render takes samples (a tensor), a samples file or a run folder, not a "
                       f"{type(samples).__name__}")
    x = samples.detach().cpu()
    if x.is_floating_point():
        kind = "discretized_image"
    elif x.dim() == 2:
        kind = "text"
    else:
        kind = "binary_image"
    if x.dim() != (2 if kind == "text" else 4) or not x.numel():
        raise BFNError(f"samples must be images (N, H, W, C) or texts (N, L); these are {tuple(x.shape)}")
    tensors = {"samples": x}
    meta = {"format": SAMPLES_FORMAT, "kind": kind}
    if classes is not None:
        tensors["classes"] = torch.as_tensor(classes).cpu()
        meta["class_names"] = json.dumps(list(class_names or []))
    return tensors, meta


# --------------------------------------------------------------------------------- helpers
def _path(value: Optional[PathLike]) -> Optional[Path]:
    return None if value is None else Path(value)


def _class_text(classes: Classes) -> Optional[str]:
    """``classes=`` as ``--class`` writes it: "7", "3,3,7", "none"."""
    if classes is None or isinstance(classes, str):
        return classes
    if isinstance(classes, int) and not isinstance(classes, bool):
        return str(classes)
    items = classes.tolist() if hasattr(classes, "tolist") else list(classes)
    if not items:
        raise BFNError("classes= is empty; give a class, one per sample, or 'none'")
    return ",".join(str(item) for item in items)
