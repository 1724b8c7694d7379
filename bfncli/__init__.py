"""bfn: train, evaluate and sample Bayesian Flow Networks (Graves et al., 2023, arXiv 2308.07037).

The Python API (see :mod:`bfncli.api`)::

    import bfncli as bfn

    model = bfn.load("official:mnist")
    x = model.sample(16, steps=20)
    report = model.evaluate(steps=784, repeats=10)
    bfn.render(x, "grid.png")
    run = bfn.train(preset="default", max_steps=500, sets={"optim.lr": 2e-4})
    cfg = bfn.config("cifar10-256d", {"train.batch_size": 64})

Its names are loaded when first used, so that ``import bfncli`` (and ``bfn --help``) does not
import torch. Errors a user can cause are :class:`BFNError`.
"""

from bfncli.errors import BFNError

__version__ = "0.1.0"
__all__ = ["BFNError", "Model", "TrainingResult", "config", "load", "render", "train"]

_API = {"Model", "TrainingResult", "load", "render", "train"}


def __getattr__(name: str):
    if name in _API:
        from bfncli import api

        return getattr(api, name)
    if name == "config":  # the module bfncli.config, which is callable: bfncli.config(preset, sets) = api.config
        import importlib

        return importlib.import_module("bfncli.config")
    raise AttributeError(f"module 'bfncli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
