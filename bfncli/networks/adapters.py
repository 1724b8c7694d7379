"""Adapters between a Bayesian flow's parameters and a network's feature vectors.

An input adapter turns the flow's per-dimension input parameters and the time t into one feature
vector per position (pixel or character); the output adapter turns the network's per-position
features into the output distribution's parameters, (B, positions, channels, parameters).
They behave like the adapters of the BFN paper's code (Graves et al. 2023) and use the parameter
and buffer names of its released checkpoints, so that those weights load as they are.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoid_table(length: int, dim: int, base: float = 1000.0) -> Tensor:
    """(length, dim) fixed position codes: sin on even features, cos on odd ones.

    Unlike the usual transformer table, the base is 1000 rather than 10000 and each odd feature
    uses its own index in the exponent (not that of its even neighbour). The released text8 model
    was trained with exactly these codes, so we keep them. As in :func:`fourier_position_features`,
    the float32 angles' sines and cosines are float64 C library values rounded once (the same bits in
    every process), and the table is made on the CPU even where the network is built on the meta device
    (where torch's arange would load its symbolic shapes machinery: half a second of start-up).
    """
    cpu = {"dtype": torch.float32, "device": "cpu"}
    pos = torch.arange(length, **cpu).unsqueeze(1)
    even = (pos / base ** (torch.arange(0, dim, 2, **cpu) / dim)).tolist()
    odd = (pos / base ** (torch.arange(1, dim, 2, **cpu) / dim)).tolist()
    table = torch.zeros(length, dim, **cpu)
    table[:, 0::2] = torch.tensor([[math.sin(a) for a in row] for row in even], dtype=torch.float64, device="cpu")
    table[:, 1::2] = torch.tensor([[math.cos(a) for a in row] for row in odd], dtype=torch.float64, device="cpu")
    return table


def float_sinusoid_code(x: Tensor, max_freq: float, dim: int) -> Tensor:
    """x (any shape, values in [-1, 1]) -> (*x.shape, dim): a sinusoid code of ((x + 1) / 2) max_freq,
    laid out like ``sinusoid_table`` but with base 10000."""
    pos = ((x + 1) / 2 * max_freq).unsqueeze(-1)
    even = torch.arange(0, dim, 2, dtype=torch.float32, device=x.device)
    odd = torch.arange(1, dim, 2, dtype=torch.float32, device=x.device)
    code = torch.zeros(*x.shape, dim, device=x.device)
    code[..., 0::2] = torch.sin(pos / 10000.0 ** (even / dim))
    code[..., 1::2] = torch.cos(pos / 10000.0 ** (odd / dim))
    return code


def fourier_position_features(height: int, width: int, n_bands: int) -> Tensor:
    """(H*W, 4 n_bands + 2): sin and cos of pi * coordinate * band for each pixel's row and column
    coordinates in [-1, 1] and n_bands frequencies from 1 to half the image size, then the two
    coordinates themselves.

    The sines and cosines of the float32 angles are taken in float64 by the C library and rounded once, so that every
    process builds the same bits: torch's float32 ``sin`` of this table once came out differently in
    one process of a run (the second half of the rows, by up to 1.5e-4), and a run resumed in another
    process then held a different buffer than the uninterrupted one (exact resume, issue 16 item 0)."""
    cpu = {"device": "cpu"}  # also where the network is built on the meta device
    rows, cols = torch.meshgrid(torch.linspace(-1.0, 1.0, height, **cpu), torch.linspace(-1.0, 1.0, width, **cpu),
                                indexing="ij")
    coords = torch.stack([rows, cols], -1).reshape(-1, 2)
    bands = torch.stack([torch.linspace(1.0, height / 2, n_bands, **cpu), torch.linspace(1.0, width / 2, n_bands, **cpu)])
    # Feature order: (row, band 0..n-1), then (column, band 0..n-1), for sin and then for cos. The
    # angles are the official code's float32 numbers; their sines and cosines are taken in float64.
    angles = (math.pi * (coords.unsqueeze(-1) * bands).reshape(coords.shape[0], -1)).tolist()
    sines = torch.tensor([[math.sin(a) for a in row] for row in angles], dtype=torch.float64, **cpu)
    cosines = torch.tensor([[math.cos(a) for a in row] for row in angles], dtype=torch.float64, **cpu)
    return torch.cat([sines.float(), cosines.float(), coords], -1)


class FourierImageInputAdapter(nn.Module):
    """Images (B, H, W, C) and t (broadcast to the same shape) -> features (B, H*W, output_height).

    Each pixel's features are its C channel values, then (``add_mask``) 2t - 1, optionally followed
    by a sinusoid code of it (``mask_res`` > 0), then (``add_pos_feats``) position features: fixed
    Fourier features of the pixel's coordinates, or learned ones (``learn_pos_feats``). When their
    number differs from ``output_height`` they are projected linearly to it; the paper's models
    pick ``output_height`` equal to it, which makes the adapter parameter-free.
    ``value_res`` is accepted for configuration compatibility and, as in the original, unused.
    """

    def __init__(
        self,
        input_channels: int = 3,
        input_shape: tuple[int, int] = (224, 224),
        n_freq_bands: int = 64,
        output_height: int = 256,
        value_res: int = -1,
        mask_res: int = -1,
        add_pos_feats: bool = True,
        add_mask: bool = True,
        learn_pos_feats: bool = False,
        pos_embed_size: int = 32,
        init_scale: float = 0.02,
    ):
        super().__init__()
        height, width = input_shape
        self.n_freq_bands = n_freq_bands
        self.mask_res = mask_res
        self.add_pos_feats = add_pos_feats
        self.add_mask = add_mask
        if learn_pos_feats:
            self.pos_feats = nn.Parameter(init_scale * torch.randn(1, height * width, pos_embed_size))
        else:
            # A persistent buffer even when add_pos_feats is off: the released checkpoints hold it.
            self.register_buffer("pos_feats", fourier_position_features(height, width, n_freq_bands))
        n_features = input_channels
        if add_mask:
            n_features += 1 + (2 * n_freq_bands if mask_res > 0 else 0)
        if add_pos_feats:
            n_features += self.pos_feats.shape[-1]
        self.output_projection = nn.Linear(n_features, output_height) if n_features != output_height else None

    def forward(self, image: Tensor, t: Tensor) -> Tensor:
        b = image.shape[0]
        parts = [image.reshape(b, -1, image.shape[-1])]
        if self.add_mask:
            # t is the same for every channel of a pixel: keep the first one.
            t_feats = t.reshape(b, -1, t.shape[-1])[..., :1].float() * 2 - 1
            if self.mask_res > 0:
                code = float_sinusoid_code(t_feats, self.mask_res, 2 * self.n_freq_bands).flatten(2)
                t_feats = torch.cat([t_feats, code], -1)
            parts.append(t_feats)
        if self.add_pos_feats:
            parts.append(self.pos_feats.expand(b, -1, -1))
        features = torch.cat(parts, -1)
        return features if self.output_projection is None else self.output_projection(features)


class TextInputAdapter(nn.Module):
    """Class probabilities (B, L, K) and t (B, L) -> token features (B, L, output_size).

    The sum of a linear map of 2 theta - 1 (probabilities rescaled to [-1, 1]), a position code
    (fixed sinusoids, or learned with ``learn_pos_embedding``) and a linear map of 2t - 1.
    """

    def __init__(self, vocab_size: int, seq_len: int, output_size: int = 256, learn_pos_embedding: bool = False):
        super().__init__()
        self.learn_pos_embedding = learn_pos_embedding
        if learn_pos_embedding:
            self.pos_embedding = nn.Embedding(seq_len, output_size)
        else:
            self.register_buffer("pos_embedding", sinusoid_table(seq_len, output_size))
        self.inp_embedding = nn.Linear(vocab_size, output_size)
        self.t_embedding = nn.Linear(1, output_size)

    def forward(self, probs: Tensor, t: Tensor) -> Tensor:
        tokens = self.inp_embedding(2 * probs - 1)
        positions = self.pos_embedding.weight if self.learn_pos_embedding else self.pos_embedding
        # Sequences shorter than seq_len use the first positions' codes.
        positions = positions[: probs.shape[1]].unsqueeze(0)
        times = self.t_embedding((2 * t - 1).unsqueeze(-1))
        return tokens + positions + times


class OutputAdapter(nn.Module):
    """Features (B, N, input_height) -> (B, N, output_channels, output_height): one linear map,
    whose outputs are grouped per channel (e.g. r, g, b) into that channel's parameters."""

    def __init__(self, input_height: int, output_channels: int, output_height: int):
        super().__init__()
        self.output_channels = output_channels
        self.output_height = output_height
        self.output_projection = nn.Linear(input_height, output_channels * output_height)

    def forward(self, features: Tensor) -> Tensor:
        out = self.output_projection(features)
        return out.reshape(out.shape[0], -1, self.output_channels, self.output_height)
