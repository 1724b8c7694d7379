"""Every knob of a bfn run, validated: ``from bfncli.config import BFNConfig, resolve_config``.

- :mod:`~bfncli.config.models`: the sections (data, network, flow, output, optim, train, eval,
  sample) and the whole config, :class:`BFNConfig`;
- :mod:`~bfncli.config.presets`: the presets that ship with bfn and reading YAML files and values;
- :mod:`~bfncli.config.layers`: a config from its layers (defaults < preset < YAML file < ``BFN_*``
  environment < ``--set`` < the commands' flags) through pydantic-settings' sources, and one-line
  errors that name the key and where its value came from.

The package is callable, so that ``import bfncli as bfn; bfn.config("cifar10-256d",
{"train.batch_size": 64})`` gives a validated config: calling it is :func:`bfncli.api.config`.
"""

import sys
import types
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from bfncli.config.layers import (RESERVED_ENV, _WARNED, deep_merge, describe_validation_error, known_paths,
                                  parse_sets, resolve_config, validate_config)
from bfncli.config.models import (ENV_PREFIX, INT64_MAX, BFNConfig, ContinuousFlow, DataConfig, DiscreteFlow,
                                  EvalConfig, FourierImageAdapter, ImprovedUNet, OptimConfig, OutputAdapter,
                                  OutputConfig, SampleConfig, Section, TextAdapter, TrainConfig, Transformer, VDMUNet)
from bfncli.config.presets import DEFAULT_PRESET, list_presets, load_preset, load_yaml, parse_value, presets_dir

__all__ = [
    "BFNConfig", "ContinuousFlow", "DataConfig", "DiscreteFlow", "EvalConfig", "FourierImageAdapter", "ImprovedUNet",
    "OptimConfig", "OutputAdapter", "OutputConfig", "SampleConfig", "Section", "TextAdapter", "TrainConfig",
    "Transformer", "VDMUNet", "DEFAULT_PRESET", "ENV_PREFIX", "INT64_MAX", "RESERVED_ENV", "deep_merge",
    "describe_validation_error", "known_paths", "list_presets", "load_preset", "load_yaml", "parse_sets",
    "parse_value", "presets_dir", "resolve_config", "validate_config",
    "_WARNED",  # the unknown variables already warned about: a test's fresh `bfn` call clears it
]


class _CallablePackage(types.ModuleType):
    """This package, callable: ``bfncli.config(preset, sets, file=...)`` is :func:`bfncli.api.config`
    (``bfncli.config`` is this package, so the function cannot have the name itself)."""

    def __call__(self, preset: Optional[str] = None, sets: Union[Sequence[str], Mapping[str, Any], None] = None, *,
                 file: Optional[Path] = None) -> BFNConfig:
        from bfncli.api import config

        return config(preset, sets, file=file)


sys.modules[__name__].__class__ = _CallablePackage
