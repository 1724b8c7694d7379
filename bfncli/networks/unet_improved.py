"""The U-Net of "Improved Denoising Diffusion Probabilistic Models" (Nichol & Dhariwal 2021), as
the BFN paper (Graves et al. 2023) uses it for binarized MNIST.

The input adapter's per-pixel features are (optionally) projected linearly to ``model_channels``;
then come down-sampling levels of residual blocks (attention at the chosen down-sampling factors),
a ResNet-attention-ResNet middle, and up-sampling levels whose blocks also take the matching
activation of the way down. Time conditions every residual block through a sinusoidal embedding
of 4000 t, and with ``num_classes`` > 0 so does a class (or "no class"). With ``skip`` the
(projected) input is concatenated to the final features before the output adapter. 2-D images
only. Parameter names follow the released checkpoints.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from bfncli.networks.class_embedding import ClassEmbedding, refuse_classes
from bfncli.networks.layout import NCHWDropout


def _zeroed(module: nn.Module) -> nn.Module:
    """Start a residual branch at zero, so that every block begins as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """Normalisation over 32 groups, computed in float32 whatever the activations' precision."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(steps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B,) -> (B, dim): cos then sin of steps at frequencies from 1 down to 1/max_period."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=steps.device) / half)
    angles = steps.float()[:, None] * freqs[None]
    emb = torch.cat([angles.cos(), angles.sin()], -1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], -1) if dim % 2 else emb


class ResBlock(nn.Module):
    """shortcut(x) + [GroupNorm-SiLU-conv, + time embedding, GroupNorm-SiLU-dropout-conv](x).

    With ``use_scale_shift_norm`` the time embedding scales and shifts the second normalisation's
    output instead of being added before it. The shortcut is a 1x1 convolution when the channel
    count changes.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: Optional[int] = None,
                 use_scale_shift_norm: bool = False, use_checkpoint: bool = False):
        super().__init__()
        out = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if use_scale_shift_norm else out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out), nn.SiLU(), NCHWDropout(p=dropout), _zeroed(nn.Conv2d(out, out, 3, padding=1))
        )
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            # Recomputed in the backward pass, with the same dropout masks (the RNG state is kept).
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, 1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """x + proj_out(attention(qkv(GroupNorm(x)))) over all pixels, with 1-D 1x1 convolutions.

    The qkv channels are laid out per head, (head, [q | k | v], ch): the released weights were
    trained with this layout, which differs from the VDM U-Net's.
    """

    def __init__(self, channels: int, num_heads: int = 1, use_checkpoint: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat)).reshape(b, self.num_heads, 3 * c // self.num_heads, -1)
        q, k, v = (part.transpose(-1, -2) for part in qkv.chunk(3, 2))  # (B, heads, T, ch)
        h = F.scaled_dot_product_attention(q, k, v)  # scaled by 1/sqrt(ch), like the original
        h = h.transpose(-1, -2).reshape(b, c, -1)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution (nearest neighbour), then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers in which the residual blocks also receive the time embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNetModel(nn.Module):
    """Images (B, H, W, C), t broadcast to them and optional classes (B,) -> the output
    adapter's (B, H*W, ...).

    ``attention_resolutions`` are down-sampling factors (1 = full resolution), not image sizes.
    ``dims`` (only 2) and ``conv_resample`` (only True) are accepted for configuration
    compatibility. ``num_classes`` None (the original's spelling of unconditional) means 0.
    """

    def __init__(
        self,
        input_adapter: nn.Module,
        output_adapter: nn.Module,
        image_size: int = 32,
        in_channels: int = 3,
        model_channels: int = 128,
        out_channels: int = 128,
        num_res_blocks: int = 3,
        attention_resolutions: Sequence[int] = (8, 16),
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        conv_resample: bool = True,
        dims: int = 2,
        skip: bool = True,
        num_classes: Optional[int] = 0,
        use_checkpoint: bool = False,
        num_heads: int = 4,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        project_input: bool = False,
    ):
        super().__init__()
        if dims != 2:
            raise ValueError(f"only 2-D images are supported (dims=2), not dims={dims}")
        if not conv_resample:
            # The original cannot build this variant either (its pooling layer lacks a kernel size).
            raise ValueError("only conv_resample=True (learned down- and up-sampling) is supported")
        if model_channels % 32:
            raise ValueError("model_channels must be a multiple of 32 (group normalisation over 32 groups)")
        if channel_mult[0] != 1:
            # The last convolution reads model_channels channels, i.e. the first level's width.
            raise ValueError("channel_mult must start with 1")
        self.input_adapter = input_adapter
        self.output_adapter = output_adapter
        self.image_size, self.in_channels, self.model_channels = image_size, in_channels, model_channels
        self.skip = skip
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.input_projection = nn.Linear(in_channels, model_channels) if project_input else None
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Unconditional networks have no such entry in their state dict (the released layout).
        self.class_embedding = ClassEmbedding(num_classes, emb_dim) if num_classes else None

        def res(ch_in: int, ch_out: Optional[int] = None) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, use_checkpoint)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, use_checkpoint)

        first_ch = model_channels if project_input else in_channels
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(first_ch, model_channels, 3, padding=1))])
        skip_chs = [model_channels]  # channels of each input block's output, for the way up
        ch, factor = model_channels, 1  # factor: down-sampling so far
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if factor in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chs.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_chs.append(ch)
                factor *= 2

        self.middle_block = TimestepEmbedSequential(res(ch), attn(ch, num_heads), res(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chs.pop(), mult * model_channels)]
                ch = mult * model_channels
                if factor in attention_resolutions:
                    layers.append(attn(ch, heads_up))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    factor //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _zeroed(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(self, data: Tensor, t: Tensor, classes: Optional[Tensor] = None) -> Tensor:
        b, s = data.shape[0], self.image_size
        x = self.input_adapter(data, t).reshape(b, s, s, self.in_channels)
        if self.input_projection is not None:
            x = self.input_projection(x)
        # One time per example: every dimension of an example shares it.
        emb = self.time_embed(timestep_embedding(t.reshape(b, -1)[:, 0] * 4000, self.model_channels))
        if self.class_embedding is None:
            refuse_classes(classes)
        else:
            # Every residual block reads the sum through its own SiLU and linear map.
            emb = emb + self.class_embedding(classes, b).to(emb.dtype)

        # Contiguous NCHW: the convolutions then work in the layout of their weights (channels-last
        # where bfncli.networks.layout stores them so); dropout masks are drawn in NCHW order either way.
        h = x.permute(0, 3, 1, 2).contiguous()
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], 1), emb)

        features = self.out(h).permute(0, 2, 3, 1).reshape(b, s * s, -1)
        if self.skip:
            features = torch.cat([x.reshape(b, s * s, -1), features], -1)
        return self.output_adapter(features)
