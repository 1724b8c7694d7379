"""Network architectures and their input/output adapters. They know tensors and shapes, not flows.

``build_network(kind, params, input_adapter, output_adapter)`` assembles one: ``kind`` is
``unet_vdm``, ``unet_improved`` or ``transformer``; ``params`` are the architecture's keyword
arguments (named as in the official configs); the adapters are ``(kind, params)`` pairs with kinds
``fourier_image``, ``text`` and ``output``. Every network maps (flow parameters, t) to
output-distribution parameters, with the state-dict layout of the released checkpoints.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from bfncli.networks.adapters import FourierImageInputAdapter, OutputAdapter, TextInputAdapter
from bfncli.networks.transformer import GPT
from bfncli.networks.unet_improved import UNetModel
from bfncli.networks.unet_vdm import UNetVDM

NETWORKS = {"unet_vdm": UNetVDM, "unet_improved": UNetModel, "transformer": GPT}
ADAPTERS = {"fourier_image": FourierImageInputAdapter, "text": TextInputAdapter, "output": OutputAdapter}


def build_network(
    kind: str,
    params: dict,
    input_adapter: tuple[str, dict],
    output_adapter: Optional[tuple[str, dict]] = None,
) -> nn.Module:
    def adapter(spec):
        return None if spec is None else ADAPTERS[spec[0]](**spec[1])

    return NETWORKS[kind](input_adapter=adapter(input_adapter), output_adapter=adapter(output_adapter), **params)


__all__ = ["build_network", "UNetVDM", "UNetModel", "GPT", "FourierImageInputAdapter", "TextInputAdapter",
           "OutputAdapter"]
