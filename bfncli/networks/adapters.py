"""Adapters between the Bayesian flow's parameters and a network's feature vectors.

Input adapters turn the flow's per-dimension parameters (plus the time t) into one feature vector
per position; the output adapter turns features into output-distribution parameters. Parameter
names follow the released checkpoints so that their weights load as they are.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoid_table(length: int, dim: int, base: float = 1000.0) -> Tensor:
    """Fixed position codes: sin on even features, cos on odd ones, wavelengths up to ``base``.

    The released text8 model used base 1000 and the odd features' own exponents; we keep both so
    that models trained here and there see the same codes.
    """
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    even = torch.arange(0, dim, 2, dtype=torch.float32)
    odd = torch.arange(1, dim, 2, dtype=torch.float32)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos / base ** (even / dim))
    table[:, 1::2] = torch.cos(pos / base ** (odd / dim))
    return table


def fourier_position_features(height: int, width: int, n_bands: int) -> Tensor:
    """(H*W, 4 n_bands + 2): sin and cos of each pixel's coordinates in [-1, 1] at n_bands
    frequencies from 1 up to half the image size, then the coordinates themselves."""
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    coords = torch.stack([rows, cols], -1).reshape(-1, 2)
    bands = torch.stack([torch.linspace(1.0, height / 2, n_bands), torch.linspace(1.0, width / 2, n_bands)])
    angles = math.pi * (coords.unsqueeze(-1) * bands).reshape(coords.shape[0], -1)
    return torch.cat([angles.sin(), angles.cos(), coords], -1)


class FourierImageInputAdapter(nn.Module):
    """Pixels (B, H, W, C) -> features (B, H*W, F): the channels, optionally 2t-1 as an extra
    channel (``add_mask``) and Fourier position features, linearly projected to ``output_height``
    when their count differs from it."""

    def __init__(
        self,
        input_channels: int = 3,
        input_shape: tuple[int, int] = (224, 224),
        n_freq_bands: int = 64,
        output_height: int = 256,
        add_pos_feats: bool = True,
        add_mask: bool = True,
    ):
        super().__init__()
        self.add_pos_feats = add_pos_feats
        self.add_mask = add_mask
        # Kept as a buffer (and in checkpoints) even when unused, like the released models.
        self.register_buffer("pos_feats", fourier_position_features(*input_shape, n_freq_bands))
        width = input_channels + int(add_mask) + (self.pos_feats.shape[-1] if add_pos_feats else 0)
        self.output_projection = nn.Linear(width, output_height) if width != output_height else None

    def forward(self, image: Tensor, t: Tensor) -> Tensor:
        b = image.shape[0]
        parts = [image.reshape(b, -1, image.shape[-1])]
        if self.add_mask:
            parts.append(t.reshape(b, -1, t.shape[-1])[..., :1].float() * 2 - 1)
        if self.add_pos_feats:
            parts.append(self.pos_feats.expand(b, -1, -1))
        features = torch.cat(parts, -1)
        return features if self.output_projection is None else self.output_projection(features)


class TextInputAdapter(nn.Module):
    """Class probabilities (B, L, K) -> token features (B, L, E): a linear map of 2 theta - 1,
    plus position codes (fixed or learned) and a linear embedding of 2t - 1."""

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
        times = self.t_embedding((2 * t - 1).unsqueeze(-1))
        return tokens + positions[: probs.shape[1]].unsqueeze(0) + times


class OutputAdapter(nn.Module):
    """Features (B, N, F) -> (B, N, channels, parameters per dimension)."""

    def __init__(self, input_height: int, output_channels: int, output_height: int):
        super().__init__()
        self.output_channels = output_channels
        self.output_height = output_height
        self.output_projection = nn.Linear(input_height, output_channels * output_height)

    def forward(self, features: Tensor) -> Tensor:
        out = self.output_projection(features)
        return out.reshape(out.shape[0], -1, self.output_channels, self.output_height)
