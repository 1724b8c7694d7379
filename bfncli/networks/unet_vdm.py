"""The U-Net of Variational Diffusion Models (Kingma et al. 2021), as the BFN paper (Graves et al.
2023) uses it for CIFAR-10.

Every block works at full resolution (no down-sampling): a stack of ``n_blocks`` residual blocks,
a ResNet-attention-ResNet middle, and ``n_blocks + 1`` residual blocks that each also see the
matching activation of the way down. The image is augmented with Fourier features of its values
before the first convolution, and the network's input is concatenated to its final features
before the output adapter. Time conditions every residual block through a sinusoidal embedding
of 1000 (t + 0.001), and with ``num_classes`` > 0 so does a class (or "no class"). Parameter
names follow the released checkpoints.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bfncli.networks.class_embedding import ClassEmbedding, refuse_classes
from bfncli.networks.layout import NCHWDropout


def _zeroed(module: nn.Module) -> nn.Module:
    """Start a residual branch at zero, so that every block begins as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """(B,) -> (B, dim): sin then cos of 1000 (t + 0.001) at timescales from 1 to 10^4.
    The 0.001 keeps t = 0 away from an all-zero sin half."""
    steps = (t.float() + 0.001) * 1000.0
    inv_timescales = torch.logspace(0.0, -4.0, dim // 2, device=t.device)
    angles = steps[:, None] * inv_timescales[None, :]
    return torch.cat([angles.sin(), angles.cos()], 1)


class FourierFeatures(nn.Module):
    """(B, C, H, W) -> (B, 4C, H, W): sin and cos of 2 pi 2^n x for n in {5, 6}, i.e. detail far
    finer than one 8-bit intensity step, which the first convolution could not compute itself."""

    exponents = (5.0, 6.0)

    @property
    def num_features(self) -> int:
        return 2 * len(self.exponents)

    def forward(self, x: Tensor) -> Tensor:
        freqs = torch.tensor([2.0**n * 2 * math.pi for n in self.exponents], dtype=x.dtype, device=x.device)
        # (B, F, C, H, W) flattened frequency-major: all channels at the first frequency first.
        angles = (freqs.view(1, -1, 1, 1, 1) * x.unsqueeze(1)).flatten(1, 2)
        return torch.cat([angles.sin(), angles.cos()], 1)


class ResnetBlock(nn.Module):
    """x + [GroupNorm-SiLU-conv, + projected conditioning, GroupNorm-SiLU-dropout-conv](x),
    with a 1x1 convolution on the shortcut when the channel count changes."""

    def __init__(self, ch_in: int, ch_out: int, condition_dim: int, dropout_prob: float, norm_groups: int):
        super().__init__()
        self.net1 = nn.Sequential(nn.GroupNorm(norm_groups, ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.cond_proj = _zeroed(nn.Linear(condition_dim, ch_out, bias=False))
        self.net2 = nn.Sequential(
            nn.GroupNorm(norm_groups, ch_out),
            nn.SiLU(),
            NCHWDropout(dropout_prob),
            _zeroed(nn.Conv2d(ch_out, ch_out, 3, padding=1)),
        )
        self.skip_conv = nn.Conv2d(ch_in, ch_out, 1) if ch_in != ch_out else None

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        h = self.net1(x) + self.cond_proj(condition)[:, :, None, None]
        h = self.net2(h)
        return (x if self.skip_conv is None else self.skip_conv(x)) + h


class Attention(nn.Module):
    """Multi-head self-attention over pixels, from q, k and v stacked along the channels.

    The channel layout is (q | k | v), each split into heads: (3, heads, ch), not the per-head
    interleaving of the improved-diffusion U-Net.
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: Tensor) -> Tensor:
        b, width, h, w = qkv.shape
        ch = width // (3 * self.n_heads)
        q, k, v = (part.reshape(b, self.n_heads, ch, h * w).transpose(-1, -2) for part in qkv.chunk(3, 1))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, ch), scaled by 1/sqrt(ch)
        return out.transpose(-1, -2).reshape(b, self.n_heads * ch, h, w)


class AttentionBlock(nn.Module):
    """x + [GroupNorm, 1x1 conv to q k v, attention, 1x1 conv](x)."""

    def __init__(self, n_heads: int, n_channels: int, norm_groups: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.GroupNorm(norm_groups, n_channels),
            nn.Conv2d(n_channels, 3 * n_channels, 1),
            Attention(n_heads),
            _zeroed(nn.Conv2d(n_channels, n_channels, 1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class UpDownBlock(nn.Module):
    """A residual block, then (with ``attention_everywhere``) an attention block."""

    def __init__(self, resnet_block: ResnetBlock, attention_block: AttentionBlock | None):
        super().__init__()
        self.resnet_block = resnet_block
        self.attention_block = attention_block

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        x = self.resnet_block(x, condition)
        return x if self.attention_block is None else self.attention_block(x)


class UNetVDM(nn.Module):
    """Images (B, H, W, C), t broadcast to them and optional classes (B,) -> the output
    adapter's (B, H*W, ...)."""

    def __init__(
        self,
        input_adapter: nn.Module,
        output_adapter: nn.Module,
        embedding_dim: int = 128,
        n_blocks: int = 32,
        n_attention_heads: int = 1,
        dropout_prob: float = 0.1,
        norm_groups: int = 32,
        input_channels: int = 3,
        use_fourier_features: bool = True,
        attention_everywhere: bool = False,
        image_size: int = 32,
        num_classes: int = 0,
    ):
        super().__init__()
        if embedding_dim % norm_groups or embedding_dim % n_attention_heads:
            raise ValueError("embedding_dim must be a multiple of norm_groups and of n_attention_heads")
        self.input_adapter = input_adapter
        self.output_adapter = output_adapter
        self.image_size, self.input_channels, self.embedding_dim = image_size, input_channels, embedding_dim
        self.fourier_features = FourierFeatures() if use_fourier_features else None
        cond_dim = 4 * embedding_dim
        self.embed_conditioning = nn.Sequential(
            nn.Linear(embedding_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim), nn.SiLU()
        )
        # Unconditional networks have no such entry in their state dict (the released layout).
        self.class_embedding = ClassEmbedding(num_classes, cond_dim) if num_classes else None
        n_fourier = self.fourier_features.num_features if use_fourier_features else 0
        self.conv_in = nn.Conv2d(input_channels * (1 + n_fourier), embedding_dim, 3, padding=1)

        def block(ch_in: int) -> UpDownBlock:
            attention = AttentionBlock(n_attention_heads, embedding_dim, norm_groups) if attention_everywhere else None
            return UpDownBlock(ResnetBlock(ch_in, embedding_dim, cond_dim, dropout_prob, norm_groups), attention)

        self.down_blocks = nn.ModuleList(block(embedding_dim) for _ in range(n_blocks))
        self.mid_resnet_block_1 = ResnetBlock(embedding_dim, embedding_dim, cond_dim, dropout_prob, norm_groups)
        self.mid_attn_block = AttentionBlock(n_attention_heads, embedding_dim, norm_groups)
        self.mid_resnet_block_2 = ResnetBlock(embedding_dim, embedding_dim, cond_dim, dropout_prob, norm_groups)
        # Up blocks also take the matching down activation (skip connection): twice the channels.
        self.up_blocks = nn.ModuleList(block(2 * embedding_dim) for _ in range(n_blocks + 1))
        self.conv_out = nn.Sequential(
            nn.GroupNorm(norm_groups, embedding_dim),
            nn.SiLU(),
            _zeroed(nn.Conv2d(embedding_dim, embedding_dim, 3, padding=1)),
        )

    def forward(self, data: Tensor, t: Tensor, classes: Optional[Tensor] = None) -> Tensor:
        b, s = data.shape[0], self.image_size
        x = self.input_adapter(data, t).reshape(b, s, s, self.input_channels)
        # One time per example: every dimension of an example shares it.
        times = time_embedding(t.reshape(b, -1)[:, 0], self.embedding_dim)
        if self.class_embedding is None:
            refuse_classes(classes)
            condition = self.embed_conditioning(times)
        else:
            # The class joins the time before the last SiLU, as in the improved-diffusion U-Net:
            # added after it, it would reach every block only as a time-independent linear bias.
            mixed = self.embed_conditioning[:-1](times)
            condition = self.embed_conditioning[-1](mixed + self.class_embedding(classes, b).to(mixed.dtype))

        # Contiguous NCHW: the convolutions then work in the layout of their weights (channels-last
        # where bfncli.networks.layout stores them so); dropout masks are drawn in NCHW order either way.
        h = x.permute(0, 3, 1, 2).contiguous()
        if self.fourier_features is not None:
            h = torch.cat([h, self.fourier_features(h)], 1)
        h = self.conv_in(h)
        skips = []
        for down in self.down_blocks:
            skips.append(h)
            h = down(h, condition)
        skips.append(h)
        h = self.mid_resnet_block_1(h, condition)
        h = self.mid_attn_block(h)
        h = self.mid_resnet_block_2(h, condition)
        for up in self.up_blocks:
            h = up(torch.cat([h, skips.pop()], 1), condition)

        features = self.conv_out(h).permute(0, 2, 3, 1).reshape(b, s * s, -1)
        return self.output_adapter(torch.cat([x.reshape(b, s * s, -1), features], -1))
