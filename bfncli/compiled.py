"""Compiled training, evaluation and sampling: when ``torch.compile`` pays, where inductor keeps its
kernels, and which pieces of a BFN are compiled.

What is compiled is the part of a step that is a function of tensors alone: the loss given its random
draws (:meth:`bfncli.model.BFN.loss_of_draws`, network and flow together, one graph) for training and
evaluation, and the network for sampling. The draws themselves (t, the flow's noise, the Monte Carlo
noise) are made eagerly from the step's generators in the eager order, so a compiled run draws the
very numbers an eager one does. Dropout inside a compiled network draws from inductor's own random
stream (seeded from the global generator, which the trainer seeds per step, so runs and resumes stay
reproducible); it matches eager dropout only with ``torch._inductor.config.fallback_random``.

On CUDA, where shapes are static, mode ``reduce-overhead`` replays the graph as a CUDA graph (small
U-Net batches are launch-bound); elsewhere the default mode. The compiled pieces are kept in the
module's ``__dict__``, not as submodules, so that state dicts keep their keys; compile a model only
after any deep copy of it (the EMA).
"""

from __future__ import annotations

import math
import os
import time
from typing import Literal, Optional

import torch

from bfncli.cache_dirs import bfn_cache_dir
from bfncli.log import logger

Setting = Literal["auto", "on", "off"]

# When "auto" compiles. On a GPU: jobs of at least this many network calls, where the one-off compile
# (about a minute for the paper's networks) is repaid within a few hundred steps.
AUTO_MIN_CALLS_CUDA = 500
# On the CPU (benchmarks/cpu_auto_compile.py, README's Speed section, 2 cores): compiled evaluation and
# sampling of the small networks (default, mnist-tiny, text8-tiny) ran 1.18-1.45x faster per call after
# 5-72 s of compiling, repaid after 30-343 s of eager work; the paper's networks (mnist, cifar10, text8)
# ran 0.99-1.08x, which 17-99 s of compiling repays after 5 minutes to never; compiled training ran
# slower than eager (14.1 against 15.4 steps/s, default preset). So "auto" compiles a CPU evaluation or
# sampling of a network of at most CPU_MAX_FLOPS_PER_EXAMPLE whose eager run is estimated at
# AUTO_MIN_CPU_SECONDS or more (None: never): a margin of five over the slowest break-even, wide enough
# for the estimate's error (it ran 0.4-2.6x the measured time on the small presets).
AUTO_MIN_CPU_SECONDS = {"eval": 1800, "sample": 1800, "train": None}
# The small networks' bound (below) is 0.01-1.05 GFLOP per example; the paper's, 39-87.
CPU_MAX_FLOPS_PER_EXAMPLE = 4e9
# The estimate: model FLOPs bounded above by 2 x parameters x positions per example and call (the
# presets' real counts are 0.24-1.0 of it), done at this rate per CPU thread (the rate the presets
# ran at on the measuring machine: 20-80 GFLOP/s per thread of that bound).
CPU_FLOPS_PER_THREAD = 50e9


def flops_bound(model) -> float:
    """An upper bound on the network's forward FLOPs per example: every weight used in one multiply-add
    at every position of the example (pixels for a U-Net, characters for a transformer), which lower
    resolutions and shared biases only reduce. Needs no forward pass and no FLOP counter."""
    shape = model.data_shape
    positions = math.prod(shape[:-1]) if len(shape) > 1 else shape[0]
    return 2.0 * sum(p.numel() for p in model.net.parameters()) * positions


def eager_seconds(model, calls: int, examples: int, backward: bool = False) -> float:
    """The estimated eager CPU time of ``calls`` network calls on ``examples`` examples each (three times
    the forward's work with the backward pass)."""
    work = flops_bound(model) * calls * examples * (3 if backward else 1)
    return work / (CPU_FLOPS_PER_THREAD * max(torch.get_num_threads(), 1))


def wanted(setting: Setting, device: torch.device, calls: Optional[int] = None, job: str = "train",
           model=None, examples: Optional[int] = None) -> bool:
    """Whether to compile ``job`` ("train", "eval" or "sample"): ``on``/``off`` as said; ``auto`` where it
    measured faster for a job of ``calls`` network calls on ``examples`` examples each (None: a job never
    long enough). The CPU's rule needs ``model`` and ``examples`` (only small networks, only long jobs);
    it is deterministic (no timing), so which path a job takes does not depend on how busy the machine
    was when it started."""
    if setting != "auto":
        return setting == "on"
    if calls is None:
        return False
    kind = torch.device(device).type
    if kind == "cuda":
        return calls >= AUTO_MIN_CALLS_CUDA
    least = AUTO_MIN_CPU_SECONDS.get(job) if kind == "cpu" else None
    if least is None or model is None or not examples or flops_bound(model) > CPU_MAX_FLOPS_PER_EXAMPLE:
        return False
    return eager_seconds(model, calls, examples, backward=job == "train") >= least


def use_bfn_cache() -> None:
    """Keep inductor's (and Triton's) compiled kernels under bfn's cache directory, so that a second
    run of the same network starts without compiling; variables the user set win."""
    base = bfn_cache_dir() / "compiled"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(base / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(base / "triton"))


def _options(device: torch.device, cuda_graphs: bool) -> dict:
    graphs = cuda_graphs and torch.device(device).type == "cuda"
    return {"mode": "reduce-overhead" if graphs else None, "dynamic": False}


def compile_loss(model, device: torch.device, cuda_graphs: bool = True, setting: Optional[str] = None) -> None:
    """Compile ``model``'s loss and reconstruction loss given their draws (training and evaluation).
    ``cuda_graphs``: replay them as CUDA graphs on a GPU (off for several processes, whose gradient
    all-reduce runs in hooks after the backward). ``setting``: the config key that asked for it (e.g.
    ``train.compile``): a failure to compile is then a one-line error naming it, or under ``auto`` a
    warning and the eager loss (see :func:`_guarded`)."""
    use_bfn_cache()
    graphs = cuda_graphs and torch.device(device).type == "cuda"
    for name in ("loss_of_draws", "reconstruction_of_draws"):
        eager = getattr(type(model), name).__get__(model)
        fast = _marked(torch.compile(eager, **_options(device, cuda_graphs)), graphs)
        model.__dict__[name] = _guarded(fast, eager, setting) if setting else fast


def _marked(compiled, graphs: bool):
    """``compiled``, telling CUDA graph trees that each call starts a new step (the previous step's
    outputs are done with: a loss already backpropagated, or a value already added up)."""
    if not graphs:
        return compiled

    def call(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args, **kwargs)

    return call


def compile_network(model, device: torch.device, cuda_graphs: bool = True, setting: Optional[str] = None) -> None:
    """Compile the network call that every sampler makes (:meth:`bfncli.model.BFN.predict`);
    ``setting`` as for :func:`compile_loss`."""
    use_bfn_cache()
    graphs = cuda_graphs and torch.device(device).type == "cuda"
    compiled = _marked(torch.compile(model.net, **_options(device, cuda_graphs)), graphs)

    def network(*args):  # a CUDA graph's outputs are overwritten by its next replay, and samplers keep them
        return compiled(*args).clone() if graphs else compiled(*args)

    model.__dict__["network_call"] = _guarded(network, model.net, setting) if setting else network


def _guarded(fast, eager, setting: str):
    """``fast`` (compiled), whose first call may fail to compile (no C++ compiler for inductor on the
    CPU, an unsupported GPU, a torch bug): then, if ``setting`` (say ``sample.compile``) was ``auto``,
    a warning and ``eager`` from then on; if it was ``on``, a one-line error that says to turn it off.
    Errors that are not the compiler's (running out of memory, bad input) come back from the eager call."""
    from bfncli.errors import BFNError, Interrupted

    key, _, value = setting.partition("=")
    state = {"compiled": None}  # None: not tried yet; True: compiled; False: compiling failed

    def call(*args, **kwargs):
        if state["compiled"]:
            return fast(*args, **kwargs)
        if state["compiled"] is False:
            return eager(*args, **kwargs)
        try:
            out = fast(*args, **kwargs)
        except (BFNError, Interrupted, torch.OutOfMemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - whatever the compiler stack raised
            text = str(err).strip().splitlines()
            why = f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__
            if value != "auto":
                raise BFNError(f"torch.compile failed on this machine ({why}); run with --set {key}=off",
                               exit_code=1) from None
            logger.warning(f"torch.compile failed ({why}); running eagerly ({key}=off skips trying)")
            state["compiled"] = False
            return eager(*args, **kwargs)
        state["compiled"] = True
        return out

    return call


def uncompile(model) -> None:
    """Back to the eager methods (e.g. before a deep copy)."""
    for name in ("loss_of_draws", "reconstruction_of_draws", "network_call"):
        model.__dict__.pop(name, None)


class FirstCallClock:
    """Reports how long the first compiled call took (compiling included) on stderr, once."""

    def __init__(self, what: str, enabled: bool = True):
        self.what, self.enabled, self.start, self.seconds = what, enabled, None, None

    def __enter__(self):
        if self.enabled and self.seconds is None:
            self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.enabled and self.seconds is None and self.start is not None and exc[0] is None:
            self.seconds = time.perf_counter() - self.start
            cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
            logger.info(f"compiled: {self.what} took {self.seconds:.1f} s, compiling included (kernels cached in {cache})")
        return False
