"""Output distributions p_O (paper sec. 3.2, 4.1, 5.1, 6.2): sample, mode, mean, log-probability.

Each distribution is a thin, immutable view over tensors shaped like the data (Bernoulli,
discretized normal, delta) or like the data plus a class dimension (categorical). Nothing here
materialises a (..., K) tensor for a whole batch unless asked to: the 256-bin quantities are
computed in chunks (see :func:`chunked`) so that evaluation memory stays bounded at any batch size.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Numerical guards of the official implementation (see MATH.md).
LOG_MIN = 1e-10  # probabilities are floored here before taking logs
EXP_RANGE = 10.0  # log-std outputs are clamped to [-10, 10] before exp
MIN_STD, MAX_STD = 1e-3, 10.0  # discretized normal std clamp
MIN_PROB = 1e-5  # below this a bin's log-probability falls back to the density at its centre

# torch.distributions clamps mixture weights given as probabilities to [eps, 1 - eps] (and
# renormalises); the official discrete-time losses inherit that floor, so ours apply it too.
MIX_EPS = torch.finfo(torch.float32).eps


def mixture_weights(probs: Tensor) -> Tensor:
    """Mixture weights floored at MIX_EPS and renormalised, over the last dimension."""
    clamped = probs.clamp(min=MIX_EPS, max=1 - MIX_EPS)
    return clamped / clamped.sum(-1, keepdim=True)


def log_mean_exp_shift(log_w: Tensor, d: Tensor) -> Tensor:
    """log sum_k w_k e^(d_k) over the last dimension, for weights w = exp(log_w) summing to one.

    The discrete-time losses are n times such a log, for log-density ratios d that shrink like
    1/sqrt(n): computed as a plain logsumexp, float32 rounding (about 1e-7 of the terms) would be
    multiplied by n, and the n-step loss of ``bfn eval --steps 100000`` came out negative. Written
    as log1p(sum_k w_k expm1(d_k)) the small value is computed directly; where that sum is not small,
    logsumexp is exact enough and used instead.
    """
    terms = log_w.exp() * torch.expm1(d)
    total = terms.sum(-1)
    small = total.abs() < 0.5
    return torch.where(small, torch.log1p(torch.where(small, total, torch.zeros_like(total))),
                       torch.logsumexp(log_w + d, -1))


# Element budget for one chunk of a (..., K) computation: 2**24 float32 = 64 MiB.
CHUNK_ELEMENTS = 2**24

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def safe_log(x: Tensor) -> Tensor:
    return x.clamp(min=LOG_MIN).log()


def safe_exp(x: Tensor) -> Tensor:
    return x.clamp(min=-EXP_RANGE, max=EXP_RANGE).exp()


def normal_log_density(y: Tensor, mean: Tensor | float, std: Tensor | float) -> Tensor:
    """log N(y | mean, std^2)."""
    std_t = torch.as_tensor(std, dtype=y.dtype, device=y.device)
    return -0.5 * ((y - mean) / std_t).square() - std_t.log() - _LOG_SQRT_2PI


def normal_cdf(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf((x - mean) / (std * math.sqrt(2))))


def chunked(fn: Callable[..., Tensor], *tensors: Tensor, width: int) -> Tensor:
    """Apply ``fn`` elementwise-batched over the broadcast of ``tensors``, a chunk at a time.

    ``fn`` maps flat tensors of n elements to a flat result of n elements, using an intermediate
    of about n * ``width`` elements; the chunks keep that intermediate under CHUNK_ELEMENTS.
    """
    shape = broadcast_shape(*(t.shape for t in tensors))
    flat = [t.expand(shape).reshape(-1) for t in tensors]
    n = flat[0].numel()
    step = max(1, CHUNK_ELEMENTS // max(1, width))
    if n <= step:
        return fn(*flat).reshape(shape)
    return torch.cat([fn(*(f[i : i + step] for f in flat)) for i in range(0, n, step)]).reshape(shape)


def broadcast_shape(*shapes) -> torch.Size:
    """The shape ``shapes`` broadcast to, as torch.broadcast_shapes gives it (which imports the symbolic
    shapes machinery and sympy on its first call: half a second of every command's start-up)."""
    out = [1] * max([0, *(len(s) for s in shapes)])  # not max(..., default=0): torch.compile breaks its graph there
    for s in shapes:
        for i, size in enumerate(s, len(out) - len(s)):
            if size != 1:
                if out[i] not in (1, size):
                    raise RuntimeError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
                out[i] = size
    return torch.Size(out)


def _uniform(shape, like: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    return torch.rand(shape, generator=generator, device=like.device)


# ----------------------------------------------------------------------- bins of [-1, 1]
def bin_centres(num_bins: int, device=None, dtype=torch.float32) -> Tensor:
    """k_c = (2k - 1)/K - 1 for k = 1..K (paper sec. 5)."""
    return (torch.arange(num_bins, device=device, dtype=dtype) * 2 + 1) / num_bins - 1


def bin_index(x: Tensor, num_bins: int) -> Tensor:
    """The bin (0..K-1) a value in [-1, 1] falls in; values outside go to the end bins."""
    return torch.clamp(torch.floor((x / 2 + 0.5) * num_bins), min=0, max=num_bins - 1).long()


def quantize(x: Tensor, num_bins: int) -> Tensor:
    """Snap values to their bin centres."""
    return (bin_index(x, num_bins).to(x.dtype) * 2 + 1) / num_bins - 1


# --------------------------------------------------------------------------- discrete data
class Categorical:
    """K-class categorical over the last dimension of ``logits`` (text8, sec. 6.2)."""

    def __init__(self, logits: Tensor):
        self.logits = logits

    @property
    def log_probs(self) -> Tensor:
        return F.log_softmax(self.logits, -1)

    @property
    def probs(self) -> Tensor:
        return F.softmax(self.logits, -1)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.log_probs.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)

    @property
    def mode(self) -> Tensor:
        return self.logits.argmax(-1)

    noise_kind = "uniform"  # what sample() takes as ``noise``, one value per data dimension

    def sample(self, generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> Tensor:
        """Inverse-CDF sampling from uniform ``noise`` (shape of the data), drawn here if not given."""
        u = _uniform(self.logits.shape[:-1], self.logits, generator) if noise is None else noise
        cdf = self.probs.cumsum(-1)
        return torch.searchsorted(cdf, u.unsqueeze(-1).to(cdf.dtype) * cdf[..., -1:]).squeeze(-1).clamp(
            max=self.logits.shape[-1] - 1)


class Bernoulli:
    """Binary data with one logit per dimension (binarized MNIST, sec. 6.2 with K=2).

    ``probs`` and ``log_probs`` follow the K=2 class convention: [p(class 0), p(class 1)].
    """

    def __init__(self, logits: Tensor):
        self.logits = logits

    @property
    def log_probs(self) -> Tensor:
        return torch.stack([F.logsigmoid(-self.logits), F.logsigmoid(self.logits)], -1)

    @property
    def probs(self) -> Tensor:
        p = torch.sigmoid(self.logits)
        return torch.stack([1 - p, p], -1)

    def log_prob(self, x: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(self.logits, x.to(self.logits.dtype), reduction="none")

    @property
    def mode(self) -> Tensor:
        return (self.logits > 0).long()

    noise_kind = "uniform"

    def sample(self, generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> Tensor:
        u = _uniform(self.logits.shape, self.logits, generator) if noise is None else noise
        return (u < torch.sigmoid(self.logits)).long()


# ---------------------------------------------------------------- continuous / discretized
class Delta:
    """A point mass at the (clipped) data prediction: the continuous output of the ``*c`` presets."""

    def __init__(self, mean: Tensor, clip_range: float = 1.0):
        self.mean = mean.clamp(-clip_range, clip_range) if clip_range > 0 else mean

    @property
    def mode(self) -> Tensor:
        return self.mean

    noise_kind = None  # nothing random about a point mass

    def sample(self, generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> Tensor:
        return self.mean


class DiscretizedNormal:
    """A normal N(mean, std^2) discretized into K equal bins of [-1, 1] (paper sec. 5.1).

    With ``clip`` the first and last bins take the tails (-inf and +inf edges); without it the
    mass inside [-1, 1] is renormalised, as in the official code.
    """

    def __init__(self, mean: Tensor, std: Tensor, num_bins: int, clip: bool = True):
        self.loc = mean
        self.scale = std.clamp(min=MIN_STD, max=MAX_STD)
        self.num_bins = num_bins
        self.clip = clip
        self.bin_width = 2.0 / num_bins

    # ---- per-bin quantities, computed a chunk at a time
    def _probs_flat(self, loc: Tensor, scale: Tensor) -> Tensor:
        k = self.num_bins
        edges = bin_centres(k, loc.device, loc.dtype)[:-1] + self.bin_width / 2  # the K-1 inner edges
        cdf = normal_cdf(edges, loc.unsqueeze(-1), scale.unsqueeze(-1))
        if self.clip:
            lo, hi = torch.zeros_like(cdf[:, :1]), torch.ones_like(cdf[:, :1])
            return torch.diff(torch.cat([lo, cdf, hi], -1), dim=-1)
        lo = normal_cdf(-torch.ones_like(loc), loc, scale).unsqueeze(-1)
        hi = normal_cdf(torch.ones_like(loc), loc, scale).unsqueeze(-1)
        mass = hi - lo
        degenerate = mass < MIN_PROB
        probs = torch.diff(torch.cat([lo, cdf, hi], -1), dim=-1) / torch.where(degenerate, 1.0, mass)
        return torch.where(degenerate, 1.0 / k, probs)

    @property
    def probs(self) -> Tensor:
        """Bin probabilities, shape (..., K). Materialises the whole tensor: prefer the methods below."""
        flat = self._probs_flat(self.loc.reshape(-1), self.scale.expand_as(self.loc).reshape(-1))
        return flat.reshape(*self.loc.shape, self.num_bins)

    @property
    def mean(self) -> Tensor:
        """E[bin centre] = sum_k p(k) k_c."""
        centres = bin_centres(self.num_bins, self.loc.device, self.loc.dtype)
        return chunked(lambda m, s: self._probs_flat(m, s) @ centres, self.loc, self.scale, width=self.num_bins)

    @property
    def mode(self) -> Tensor:
        centres = bin_centres(self.num_bins, self.loc.device, self.loc.dtype)
        return chunked(lambda m, s: centres[self._probs_flat(m, s).argmax(-1)], self.loc, self.scale,
                       width=self.num_bins)

    def prob(self, x: Tensor) -> Tensor:
        """p(bin of x), without touching the other bins."""
        k = self.num_bins
        idx = bin_index(x, k)
        centre = quantize(x, k)
        half = self.bin_width / 2
        cdf_lo = normal_cdf(centre - half, self.loc, self.scale)
        cdf_hi = normal_cdf(centre + half, self.loc, self.scale)
        if self.clip:
            cdf_lo = torch.where(idx <= 0, torch.zeros_like(cdf_lo), cdf_lo)
            cdf_hi = torch.where(idx >= k - 1, torch.ones_like(cdf_hi), cdf_hi)
            return cdf_hi - cdf_lo
        lo = normal_cdf(-torch.ones_like(self.loc), self.loc, self.scale)
        hi = normal_cdf(torch.ones_like(self.loc), self.loc, self.scale)
        mass = hi - lo
        degenerate = mass < MIN_PROB
        prob = (cdf_hi - cdf_lo) / torch.where(degenerate, 1.0, mass)
        return torch.where(degenerate, 1.0 / k, prob)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(bin of x); where the bin's mass underflows, the density at its centre times its width."""
        prob = self.prob(x)
        fallback = normal_log_density(quantize(x, self.num_bins), self.loc, self.scale) + math.log(self.bin_width)
        return torch.where(prob < MIN_PROB, fallback, safe_log(prob))

    def sample(self, generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> Tensor:
        """A bin centre. ``noise``: standard normal (clip) or uniform (no clip), shaped like the data."""
        if self.clip:
            if noise is None:
                noise = torch.randn(self.loc.shape, generator=generator, device=self.loc.device)
            return quantize(self.loc + self.scale * noise, self.num_bins)
        # Inverse-CDF sampling restricted to [-1, 1].
        lo = normal_cdf(-torch.ones_like(self.loc), self.loc, self.scale)
        hi = normal_cdf(torch.ones_like(self.loc), self.loc, self.scale)
        u = _uniform(self.loc.shape, self.loc, generator) if noise is None else noise
        value = self.loc + self.scale * math.sqrt(2) * torch.erfinv(2 * (lo + (hi - lo) * u) - 1)
        return quantize(value, self.num_bins)

    @property
    def noise_kind(self) -> str:
        return "normal" if self.clip else "uniform"
