"""Samplers: plain functions with one signature, ``(model, noise, steps, callback) -> samples``.

``model`` offers ``flow``, ``data_shape``, ``predict(params, t)`` and ``prior_prediction(batch)`` (a BFN,
or a ConditionedModel that adds known data, classes and guidance); ``noise`` holds the batch's
per-example random streams; ``callback(i, t, params, dist)`` sees every network evaluation. This
module is the one registry of names: a new sampler is a function in the file of its family and a
line in SAMPLERS. It imports nothing heavy, so that ``bfn sample --help`` can list the names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Optional

# Which sampler `auto` uses, by the kind of data: the best at every budget from 5 to 200 network
# evaluations on both benchmark models (benchmarks/samplers.py; the README's tables).
AUTO = {"continuous": "sde", "discrete": "sde"}


@dataclass(frozen=True)
class Sampler:
    name: str
    target: str  # "module:function" in bfncli.samplers
    summary: str
    options: tuple[tuple[str, Any], ...] = ()
    counts_updates: bool = False  # --steps counts Bayesian updates, and there is one evaluation more
    takes_eta: bool = True

    def evaluations(self, steps: int) -> int:
        """Network evaluations for ``--steps steps``."""
        return steps + 1 if self.counts_updates else steps

    def steps_for(self, evaluations: int) -> int:
        return evaluations - 1 if self.counts_updates else evaluations

    @property
    def min_steps(self) -> int:
        return 1 if self.counts_updates else 2

    def run(self, model, noise, steps: int, callback=None, eta: Optional[float] = None):
        module, function = self.target.split(":")
        fn = getattr(importlib.import_module(f"bfncli.samplers.{module}"), function)
        options = dict(self.options)
        if eta is not None:
            options["eta"] = eta
        return fn(model, noise, steps, callback, **options)


SAMPLERS = {
    s.name: s
    for s in (
        Sampler("paper", "paper:ancestral", "the paper's: n Bayesian updates with samples of the output "
                "distribution, then its mode (--steps counts the n updates: n + 1 evaluations)",
                counts_updates=True, takes_eta=False),
        Sampler("ode", "solvers:ode", "probability-flow ODE, 2nd-order multistep (BFN-Solver++2)", (("order", 2),)),
        Sampler("ode3", "solvers:ode", "probability-flow ODE, 3rd-order multistep", (("order", 3),)),
        Sampler("sde", "solvers:sde", "reverse SDE of the Bayesian updates, 2nd-order multistep", (("order", 2),)),
        Sampler("sde1", "solvers:sde", "reverse SDE, 1st order: the paper's updates with the expected data",
                (("order", 1),)),
    )
}
NAMES = ("auto", *SAMPLERS)


def choose(name: str, steps: int, discrete: bool) -> tuple[Sampler, int]:
    """The sampler called ``name`` and the ``steps`` to run it with. ``auto`` takes ``steps`` as the
    budget of network evaluations and picks the sampler measured best for it."""
    if name != "auto":
        return SAMPLERS[name], steps
    sampler = SAMPLERS[AUTO["discrete" if discrete else "continuous"]]
    return sampler, sampler.steps_for(steps)


def __getattr__(name: str):  # the functions and classes, imported when first asked for
    homes = {"ancestral": "paper", "ode": "solvers", "sde": "solvers", "Condition": "conditioning",
             "ConditionedModel": "conditioning", "SampleNoise": "noise"}
    if name in homes:
        return getattr(importlib.import_module(f"bfncli.samplers.{homes[name]}"), name)
    raise AttributeError(name)


__all__ = ["SAMPLERS", "NAMES", "Sampler", "choose", "ancestral", "ode", "sde", "Condition", "ConditionedModel",
           "SampleNoise"]
