"""Samplers: plain functions with one signature, ``(model, noise, steps, callback, condition)``.

``ancestral`` is the paper's sampler (sec. 3.8 and the pseudocode of secs. 4.9, 5.5, 6.13).
"""

from bfncli.samplers.ancestral import Condition, ancestral
from bfncli.samplers.noise import SampleNoise

__all__ = ["ancestral", "Condition", "SampleNoise"]
