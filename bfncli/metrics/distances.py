"""Distances between a set of samples and a set of data: the Fréchet distance of Gaussian fits in a
feature space, and the kernel maximum mean discrepancy in pixel space.

Both are biased by the sample sizes (the Fréchet distance strongly, upwards; MMD² is unbiased but
its noise shrinks with N), so compare values only at equal N, and read them with their noise.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@contextmanager
def one_thread():
    """Compute on one thread inside the block. For small work (matrices of a few hundred rows, convolutions
    of tiny images) handing out work to more threads costs more than it saves, and on a busy machine
    far more: a 64x64 eigendecomposition took 0.7 ms on one thread and 120 ms on two, with the two
    cores shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_thread(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with one_thread():
            return function(*args, **kwargs)
    return wrapper


# ----------------------------------------------------------------------- Fréchet distance
@_one_thread
def gaussian_fit(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64. Needs N >= 2."""
    x = features.reshape(features.shape[0], -1).double()
    if x.shape[0] < 2:
        raise ValueError("a covariance needs at least 2 feature vectors")
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """The square root of a symmetric positive semi-definite matrix, by eigendecomposition; rounding
    makes tiny negative eigenvalues, which are clamped to 0."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


@_one_thread
def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(mean1, cov1) and N(mean2, cov2):

        |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)

    (Dowson & Landau 1982, "The Fréchet distance between multivariate normal distributions", J.
    Multivariate Anal. 12; FID, Heusel et al. 2017, eq. 6). In float64, with symmetric
    eigendecompositions: S1^1/2 S2 S1^1/2 is symmetric, so the trace of its square root is the sum of
    the square roots of its (clamped) eigenvalues, and the result is symmetric in the two Gaussians.
    """
    mean1, cov1, mean2, cov2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)  # >= 0 in exact arithmetic


def frechet_distance_of(features1: Tensor, features2: Tensor) -> float:
    """The Fréchet distance between Gaussian fits of two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*gaussian_fit(features1), *gaussian_fit(features2))


@dataclass(frozen=True)
class FrechetDistance:
    value: float  # the samples' features against the reference fit
    std: Optional[float]  # over bootstrap resamples of the samples (None if resamples = 0)
    n_samples: int
    resamples: int


def frechet_distance_to(features: Tensor, reference_mean: Tensor, reference_cov: Tensor, resamples: int = 10,
                        seed: int = 0) -> FrechetDistance:
    """The Fréchet distance of features (N, D) to a reference Gaussian, with its noise: the standard
    deviation over ``resamples`` bootstrap resamples of the features (drawn with replacement; the
    reference is held fixed, being fitted on far more data)."""
    value = frechet_distance(*gaussian_fit(features), reference_mean, reference_cov)
    if resamples < 1:
        return FrechetDistance(value, None, features.shape[0], 0)
    generator = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    draws = [frechet_distance(*gaussian_fit(features[torch.randint(0, n, (n,), generator=generator)]),
                              reference_mean, reference_cov) for _ in range(resamples)]
    return FrechetDistance(value, float(torch.tensor(draws, dtype=torch.float64).std()), n, resamples)


# ---------------------------------------------------------------------------------------- MMD
@dataclass(frozen=True)
class KernelDistance:
    mmd2: float  # unbiased MMD^2
    stderr: float  # jackknife standard error
    bandwidth: float  # sigma of the Gaussian kernel exp(-|x - y|^2 / (2 sigma^2))
    n_x: int
    n_y: int


def median_bandwidth(x: Tensor, y: Tensor, max_points: int = 1000, seed: int = 0) -> float:
    """The median heuristic (Gretton et al. 2012, "A kernel two-sample test", JMLR 13, sec. 8): the
    median Euclidean distance between distinct points of the pooled sample, estimated on at most
    ``max_points`` of them (a seeded random subset) to bound its cost."""
    pooled = torch.cat([x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)]).double()
    if pooled.shape[0] > max_points:
        pick = torch.randperm(pooled.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        pooled = pooled[pick]
    distances = torch.pdist(pooled)
    median = float(distances.median()) if distances.numel() else 0.0
    return median if median > 0 else 1.0  # all points equal: any bandwidth gives the same (zero) MMD


def mmd2_unbiased(x: Tensor, y: Tensor, bandwidth: Optional[float] = None, chunk: int = 1024) -> KernelDistance:
    """The unbiased estimate of MMD^2 between the distributions of x (N, ...) and y (M, ...) with a
    Gaussian kernel (Gretton et al. 2012, Lemma 6):

        MMD_u^2 = sum_{i != j} k(x_i, x_j) / (N (N-1)) + sum_{i != j} k(y_i, y_j) / (M (M-1))
                  - 2 sum_{i, j} k(x_i, y_j) / (N M)

    and its two-sample jackknife standard error (Arvesen 1969, "Jackknifing U-statistics", Ann. Math.
    Statist. 40), whose leave-one-out values come from the kernel matrix's row sums. The jackknife
    variance errs on the large side (Efron & Stein 1981), so the error is if anything conservative,
    also near MMD^2 = 0 where the estimate's own distribution is not normal.

    The kernel matrix is never held whole: rows and columns are taken ``chunk`` at a time, so memory
    stays O(chunk^2 + (N + M) D) for N, M up to 10^4 and beyond. The squared distances come from a
    float32 matrix product of centred data, the sums are kept in float64. Needs N, M >= 3.
    """
    n, m = x.shape[0], y.shape[0]
    if n < 3 or m < 3:
        raise ValueError("the jackknife of MMD^2 needs at least 3 points on each side")
    sigma = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    pooled = torch.cat([x.reshape(n, -1), y.reshape(m, -1)]).double()
    pooled = (pooled - pooled.mean(0)).float()  # centring keeps |a|^2 + |b|^2 - 2ab from cancelling badly
    norms = pooled.square().sum(1)
    to_x = torch.zeros(n + m, dtype=torch.float64)  # each point's kernel sum over the x points (itself excluded)
    to_y = torch.zeros(n + m, dtype=torch.float64)
    starts = range(0, n + m, chunk)
    for a in starts:
        rows = slice(a, min(a + chunk, n + m))
        for b in starts:
            cols = slice(b, min(b + chunk, n + m))
            squared = (norms[rows, None] + norms[None, cols] - 2 * pooled[rows] @ pooled[cols].T).clamp(min=0)
            kernel = torch.exp(-squared.double() / (2 * sigma**2))
            if a == b:
                kernel.fill_diagonal_(0)  # the U-statistic leaves out i = j
            split = max(0, min(n, cols.stop) - cols.start)  # columns of this block that are x points
            to_x[rows] += kernel[:, :split].sum(1)
            to_y[rows] += kernel[:, split:].sum(1)
    row_xx, row_xy = to_x[:n], to_y[:n]  # for each x_i: sum_{j != i} k(x_i, x_j), sum_j k(x_i, y_j)
    row_yy, row_yx = to_y[n:], to_x[n:]
    s_xx, s_yy, s_xy = row_xx.sum(), row_yy.sum(), row_xy.sum()
    mmd2 = s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2 * s_xy / (n * m)
    # Leave-one-out estimates: without x_i, and without y_j.
    without_x = ((s_xx - 2 * row_xx) / ((n - 1) * (n - 2)) + s_yy / (m * (m - 1))
                 - 2 * (s_xy - row_xy) / ((n - 1) * m))
    without_y = (s_xx / (n * (n - 1)) + (s_yy - 2 * row_yy) / ((m - 1) * (m - 2))
                 - 2 * (s_xy - row_yx) / (n * (m - 1)))
    variance = ((n - 1) / n * (without_x - without_x.mean()).square().sum()
                + (m - 1) / m * (without_y - without_y.mean()).square().sum())
    return KernelDistance(float(mmd2), math.sqrt(float(variance)), sigma, n, m)
