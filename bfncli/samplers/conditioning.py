"""Conditioning as a property of the network call: every sampler calls ``model.predict`` and nothing else.

``ConditionedModel`` wraps a BFN with what the user asked for:

- known data (prompts, templates, inpainting): the output distribution is replaced by the known
  value wherever it is known (``KnownValues``). A sampler's data prediction, sample and mode are
  then the known data there, so the input distribution of those dimensions follows exactly the
  Bayesian flow of the known data (what the network saw in training), for the paper's sampler and
  the ODE/SDE solvers alike, and the result holds the known values;
- classes and classifier-free guidance (Ho & Salimans 2022): passed on to ``BFN.predict``, which
  forms the guided output from the conditional and unconditional outputs in one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Condition:
    """Known data, the same for every sample: ``values`` in the model's data layout of one example,
    ``known`` True where a value is given."""

    values: Tensor  # (*data_shape)
    known: Tensor  # bool, (*data_shape)


class KnownValues:
    """An output distribution with the known values put in where they are known (over (B, D))."""

    def __init__(self, dist, known: Tensor, values: Tensor):
        self.dist, self.known, self.values = dist, known, values

    @property
    def noise_kind(self) -> Optional[str]:
        return self.dist.noise_kind

    def sample(self, generator=None, noise=None) -> Tensor:
        drawn = self.dist.sample(generator=generator, noise=noise)
        return torch.where(self.known, self.values.to(drawn.dtype), drawn)

    @property
    def mode(self) -> Tensor:
        mode = self.dist.mode
        return torch.where(self.known, self.values.to(mode.dtype), mode)

    @property
    def mean(self) -> Tensor:
        mean = self.dist.mean
        return torch.where(self.known, self.values.to(mean.dtype), mean)

    @property
    def probs(self) -> Tensor:
        """Class probabilities (discrete data only: ``values`` are then class indices)."""
        probs = self.dist.probs
        exact = F.one_hot(self.values.long(), probs.shape[-1]).to(probs.dtype)
        return torch.where(self.known.unsqueeze(-1), exact, probs)


class ConditionedModel:
    """A BFN whose predictions honour the known data, the requested classes and the guidance weight.

    It offers what samplers use of a model (``flow``, ``data_shape``, ``discrete``, ``predict``,
    ``prior_prediction``), for one batch of ``batch`` examples.
    """

    def __init__(self, model, batch: int, condition: Optional[Condition] = None, classes: Optional[Tensor] = None,
                 guidance: float = 1.0, device: torch.device | str = "cpu"):
        self.model, self.flow, self.data_shape, self.discrete = model, model.flow, model.data_shape, model.discrete
        self.device = device
        self.classes = None if classes is None else classes.to(device)
        self.guidance = guidance
        self.known = self.values = None
        if condition is not None:
            flat = (batch, -1)
            self.known = condition.known.to(device).expand(batch, *self.data_shape).reshape(flat)
            self.values = condition.values.to(device).expand(batch, *self.data_shape).reshape(flat)

    def _pin(self, dist):
        if self.known is None or dist is None:
            return dist
        return KnownValues(dist, self.known, self.values)

    def predict(self, input_params: Tensor, t: Tensor):
        return self._pin(self.model.predict(input_params, t, classes=self.classes, guidance=self.guidance))

    def prior_prediction(self, batch: int, device=None):
        return self._pin(self.model.prior_prediction(batch, device or self.device))
