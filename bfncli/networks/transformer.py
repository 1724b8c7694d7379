"""A GPT-2 style transformer (nanoGPT layout) without the causal mask, as the BFN paper
(Graves et al. 2023) uses it for text8.

Every position attends to the whole sequence of input distributions, so one forward pass gives
every character's output distribution. Pre-norm blocks of multi-head self-attention and a GELU
MLP; with ``skip`` the final features are concatenated with the input adapter's features before
the output layer. With ``num_classes`` > 0 a class (or "no class") vector is added to every
position's input features. Parameter names follow the released checkpoints.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bfncli.networks.class_embedding import ClassEmbedding, refuse_classes


class LayerNorm(nn.Module):
    """Layer normalisation with an optional bias."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the whole sequence (causal only with ``is_causal``).
    Dropout acts on the attention weights and on the output, in training mode only."""

    def __init__(self, n_head: int, n_embd: int, dropout: float, bias: bool, is_causal: bool):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.dropout, self.is_causal = n_head, dropout, is_causal

    def forward(self, x: Tensor) -> Tensor:
        b, length, width = x.shape
        # (B, L, 3 E) -> q, k, v, each (B, heads, L, E / heads).
        q, k, v = (part.view(b, length, self.n_head, width // self.n_head).transpose(1, 2)
                   for part in self.c_attn(x).split(width, 2))
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=self.is_causal)
        y = y.transpose(1, 2).reshape(b, length, width)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Linear to 4 n_embd, GELU (tanh approximation), linear back, dropout."""

    def __init__(self, n_embd: int, dropout: float, bias: bool):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-norm residual block: attention, then MLP."""

    def __init__(self, n_head: int, n_embd: int, dropout: float, bias: bool, is_causal: bool):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias)
        self.attn = SelfAttention(n_head, n_embd, dropout, bias, is_causal)
        self.ln_2 = LayerNorm(n_embd, bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token features from the input adapter (B, L, n_embd), plus a class vector when the
    network is class-conditional -> logits (B, L, vocab_size), passed through the output adapter
    when there is one (the text8 model has none)."""

    def __init__(
        self,
        input_adapter: nn.Module,
        output_adapter: nn.Module | None,
        vocab_size: int,
        n_layer: int = 12,
        n_head: int = 12,
        n_embd: int = 768,
        dropout: float = 0.0,
        bias: bool = True,
        skip: bool = False,
        is_causal: bool = False,
        num_classes: int = 0,
    ):
        super().__init__()
        if n_embd % n_head:
            raise ValueError("n_embd must be a multiple of n_head")
        if skip and is_causal:
            # The input features include the current token's own distribution: a causal model
            # must not see them at the output.
            raise ValueError("skip is not available with is_causal")
        self.input_adapter = input_adapter
        self.output_adapter = output_adapter
        self.skip = skip
        self.transformer = nn.ModuleDict(dict(
            drop=nn.Dropout(dropout),
            h=nn.ModuleList(Block(n_head, n_embd, dropout, bias, is_causal) for _ in range(n_layer)),
            ln_f=LayerNorm(n_embd, bias),
        ))
        self.lm_head = nn.Linear((2 if skip else 1) * n_embd, vocab_size, bias=bias)
        # GPT-2 initialisation, with the projections into the residual stream scaled down by depth. A
        # network built on the meta device (to load a checkpoint into) has nothing to draw, and there
        # torch's normal_ would import its compiler stack: a second of start-up.
        self._gpt2_init(n_layer)
        # After the GPT-2 initialisation, which would draw it at random: it starts at zero (see
        # ClassEmbedding). Unconditional networks have none (the released layout).
        self.class_embedding = ClassEmbedding(num_classes, n_embd) if num_classes else None

    def _gpt2_init(self, n_layer: int) -> None:
        if self.lm_head.weight.is_meta:
            return
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, data: Tensor, t: Tensor, classes: Optional[Tensor] = None) -> Tensor:
        x_in = self.input_adapter(data, t)
        if self.class_embedding is None:
            refuse_classes(classes)
        else:
            # Every position gets its example's class; with skip the output layer sees it too.
            x_in = x_in + self.class_embedding(classes, x_in.shape[0]).to(x_in.dtype)[:, None, :]
        x = self.transformer.drop(x_in)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if self.skip:
            x = torch.cat([x, x_in], -1)
        logits = self.lm_head(x)
        return logits if self.output_adapter is None else self.output_adapter(logits)

    def get_optim_groups(self, weight_decay: float) -> list[dict]:
        """Two AdamW parameter groups: the weights of linear layers decay; biases, normalisation
        weights and embeddings do not. Each group is sorted by parameter name."""
        decay, no_decay = {}, {}
        for module_name, module in self.named_modules():
            for name, p in module.named_parameters(recurse=False):
                full_name = f"{module_name}.{name}" if module_name else name
                if name.endswith("bias"):
                    no_decay[full_name] = p
                elif name.endswith("weight") and isinstance(module, nn.Linear):
                    decay[full_name] = p
                elif name.endswith("weight") and isinstance(module, (nn.LayerNorm, LayerNorm, nn.Embedding)):
                    no_decay[full_name] = p
                else:
                    raise ValueError(f"no weight-decay rule for parameter {full_name}")
        return [
            {"params": [decay[n] for n in sorted(decay)], "weight_decay": weight_decay},
            {"params": [no_decay[n] for n in sorted(no_decay)], "weight_decay": 0.0},
        ]
