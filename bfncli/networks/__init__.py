"""Network architectures and their input/output adapters (the BFN paper's, Graves et al. 2023).

Networks know tensors and shapes, not flows: each maps (input-distribution parameters, t) to
output-distribution parameters, with the state-dict layout of the released checkpoints. Built
with ``num_classes`` > 0 (a parameter of every architecture) a network also takes class indices,
``forward(data, t, classes)``, with ``num_classes`` meaning "no class" (see class_embedding.py).

``build_network(kind, params, input_adapter, output_adapter)`` assembles one from the official
configuration's pieces: ``kind`` is ``unet_vdm``, ``unet_improved`` or ``transformer``; ``params``
are the architecture's keyword arguments, named as in the official YAML ``parameters:``
sections; each adapter is a ``(kind, params)`` pair with kinds ``fourier_image``, ``text`` and
``output``, or None.
"""

from __future__ import annotations

import inspect
from typing import Optional

from torch import nn

from bfncli.networks.adapters import FourierImageInputAdapter, OutputAdapter, TextInputAdapter
from bfncli.networks.transformer import GPT
from bfncli.networks.unet_improved import UNetModel
from bfncli.networks.unet_vdm import UNetVDM

NETWORKS = {"unet_vdm": UNetVDM, "unet_improved": UNetModel, "transformer": GPT}
ADAPTERS = {"fourier_image": FourierImageInputAdapter, "text": TextInputAdapter, "output": OutputAdapter}
# The U-Nets hand their final features to an output adapter; the transformer's logits may be final.
NEEDS_OUTPUT_ADAPTER = {"unet_vdm", "unet_improved"}


def _construct(cls: type, what: str, params: dict, **extra) -> nn.Module:
    """cls(**params, **extra), with unknown or missing arguments reported as a ValueError."""
    signature = inspect.signature(cls)
    unknown = sorted(set(params) - set(signature.parameters) - set(extra))
    if unknown:
        raise ValueError(f"unknown {what} parameter(s): {', '.join(unknown)}")
    try:
        signature.bind(**params, **extra)
    except TypeError as e:
        raise ValueError(f"bad {what} parameters: {e}") from None
    return cls(**params, **extra)


def _adapter(spec: Optional[tuple[str, dict]], role: str) -> Optional[nn.Module]:
    if spec is None:
        return None
    kind, params = spec
    if kind not in ADAPTERS:
        raise ValueError(f"unknown {role} adapter kind {kind!r} (known: {', '.join(ADAPTERS)})")
    return _construct(ADAPTERS[kind], f"{kind} adapter", dict(params))


def build_network(
    kind: str,
    params: dict,
    input_adapter: Optional[tuple[str, dict]],
    output_adapter: Optional[tuple[str, dict]] = None,
) -> nn.Module:
    """The network ``kind`` with ``params`` and the given adapters; ``forward(net_inputs, t, classes=None)``."""
    if kind not in NETWORKS:
        raise ValueError(f"unknown network kind {kind!r} (known: {', '.join(NETWORKS)})")
    if input_adapter is None:
        raise ValueError(f"a {kind} network needs an input adapter")
    if output_adapter is None and kind in NEEDS_OUTPUT_ADAPTER:
        raise ValueError(f"a {kind} network needs an output adapter")
    return _construct(
        NETWORKS[kind], f"{kind} network", dict(params),
        input_adapter=_adapter(input_adapter, "input"), output_adapter=_adapter(output_adapter, "output"),
    )


__all__ = [
    "build_network", "NETWORKS", "ADAPTERS",
    "UNetVDM", "UNetModel", "GPT", "FourierImageInputAdapter", "TextInputAdapter", "OutputAdapter",
]
