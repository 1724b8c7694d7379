"""Entropy-coding primitives on constriction's ANS stack: quantised Gaussians, categoricals, and
mixtures of quantised Gaussians coded with bits back on the component.

Everything here works on flat float64/int64 numpy arrays, one entry per coded symbol. Symbols
are integers on a lattice; each Gaussian is coded in a window of 2M + 1 symbols around an integer
centre (constriction gives every symbol of a window at least one unit of its 24-bit precision:
see schedule.py for how the windows are sized). Probabilities are turned into integer counts, and
Gaussian means and standard deviations snapped to a fixed grid, before they reach the coder, so
that encoder and decoder hand it bit-identical models.

A mixture sum_c w_c N(m_c, s^2) is coded with bits back on its component (BB-ANS, Townsend et
al. 2019): the encoder pops c from the posterior w_c N(j | m_c) / p(j), pushes j with component
c, pushes c with the weights; the decoder does the inverse in the reverse order. The net cost is
-log p(j) exactly, whatever the component.
"""

from __future__ import annotations

import numpy as np

PROB_SCALE = 2.0**30  # probabilities become integer counts of 2^-30 before they reach the coder
MEAN_GRID = 2.0**-16  # Gaussian means (in lattice units) are snapped to this grid, stds likewise


def _models():
    import constriction

    return constriction.stream.model


def counts(probs: np.ndarray) -> np.ndarray:
    """Probabilities (..., C) as positive integer counts (as float64), rows normalised first."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(-1, keepdims=True)
    return np.maximum(np.round(p * PROB_SCALE), 1.0)


def snap(x: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(x, dtype=np.float64) / MEAN_GRID) * MEAN_GRID


class Stack:
    """An ANS stack with a low-water mark: how many of its first words were never read."""

    def __init__(self, words: np.ndarray):
        import constriction

        self.ans = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
        self.low = self.ans.num_words()
        self._categorical = _models().Categorical(perfect=False)
        self._gaussians: dict[int, object] = {}

    def words(self) -> np.ndarray:
        return self.ans.get_compressed()

    def _gaussian(self, window: int):
        model = self._gaussians.get(window)
        if model is None:
            model = self._gaussians[window] = _models().QuantizedGaussian(-window, window)
        return model

    def _popped(self) -> None:
        self.low = min(self.low, self.ans.num_words())

    # ---------------------------------------------------------------------------- Gaussians
    def push_gauss(self, symbols, centre, mean, std, window: int) -> None:
        if not len(symbols):
            return
        rel = np.asarray(symbols, dtype=np.int64) - centre
        if np.abs(rel).max() > window:
            raise ValueError("a symbol fell outside its coding window")
        std = np.broadcast_to(snap(std), rel.shape).astype(np.float64)
        self.ans.encode_reverse(rel.astype(np.int32), self._gaussian(window), snap(mean - centre), std)

    def pop_gauss(self, centre, mean, std, window: int) -> np.ndarray:
        if not len(centre):
            return np.zeros(0, dtype=np.int64)
        std = np.broadcast_to(snap(std), centre.shape).astype(np.float64)
        rel = self.ans.decode(self._gaussian(window), snap(mean - centre), std)
        self._popped()
        return rel.astype(np.int64) + centre

    # ------------------------------------------------------------------------- categoricals
    def push_cat(self, symbols, probs) -> None:
        if len(symbols):
            self.ans.encode_reverse(np.asarray(symbols, dtype=np.int32), self._categorical, counts(probs))

    def pop_cat(self, probs) -> np.ndarray:
        if not len(probs):
            return np.zeros(0, dtype=np.int64)
        out = self.ans.decode(self._categorical, counts(probs))
        self._popped()
        return out.astype(np.int64)

    # ----------------------------------------------------------------------------- mixtures
    def push_mixture(self, symbols, centre, means, std, weights, window: int) -> None:
        """Push lattice symbols (N,) with the mixture sum_c weights[:, c] N(means[:, c], std^2)."""
        if means.shape[-1] == 1:
            return self.push_gauss(symbols, centre, means[:, 0], std, window)
        component = self.pop_cat(posterior(symbols, centre, means, std, weights))
        pick = np.take_along_axis(means, component[:, None], 1)[:, 0]
        self.push_gauss(symbols, centre, pick, std, window)
        self.push_cat(component, weights)

    def pop_mixture(self, centre, means, std, weights, window: int) -> np.ndarray:
        if means.shape[-1] == 1:
            return self.pop_gauss(centre, means[:, 0], std, window)
        component = self.pop_cat(weights)
        pick = np.take_along_axis(means, component[:, None], 1)[:, 0]
        symbols = self.pop_gauss(centre, pick, std, window)
        self.push_cat(component, posterior(symbols, centre, means, std, weights))
        return symbols


def posterior(symbols, centre, means, std, weights) -> np.ndarray:
    """q(c | j) proportional to w_c N(j | m_c, s^2), (N, C).

    The density stands in for the bin's mass: on a lattice of at least 16 points per standard
    deviation the two differ by a factor that is almost the same for every component, and an
    approximate posterior only costs its KL to the exact one (second order), never correctness:
    both sides compute the same numbers."""
    rel = (np.asarray(symbols, dtype=np.float64) - centre)[:, None] - snap(means - centre[:, None])
    s = np.broadcast_to(snap(std), (len(rel),)).astype(np.float64)[:, None]
    logits = np.log(counts(weights)) - 0.5 * np.square(rel / s)
    logits -= logits.max(-1, keepdims=True)
    return np.exp(logits)
