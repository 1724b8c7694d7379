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

import os
import time
from typing import Literal, Optional

import torch

from bfncli.cache_dirs import bfn_cache_dir
from bfncli.log import logger

Setting = Literal["auto", "on", "off"]

# "auto" compiles training runs of at least this many steps: on CUDA the one-off compile (about a minute
# for the paper's networks) is repaid within a few hundred steps; on the CPU, see the README's Speed
# section (None: auto never compiles there).
AUTO_MIN_STEPS = {"cuda": 500, "cpu": None}


def wanted(setting: Setting, device: torch.device, steps: Optional[int] = None) -> bool:
    """Whether to compile: ``on``/``off`` as said; ``auto`` where it measured faster for a job of
    ``steps`` network calls (None: a job that is never long enough, like one sampling call on the CPU)."""
    if setting != "auto":
        return setting == "on"
    least = AUTO_MIN_STEPS.get(torch.device(device).type)
    return least is not None and steps is not None and steps >= least


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
