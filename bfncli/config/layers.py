"""Where a config's values come from: its layers, as pydantic-settings sources, later ones winning:

    defaults < preset (``--preset``; or the checkpoint's config) < YAML file (``--config``)
    < ``BFN_*`` environment variables < ``--set key.path=value`` < the commands' own flags

:func:`resolve_config` turns :class:`BFNConfig`'s sources on for one resolution
(``settings_customise_sources``); pydantic-settings reads the environment (the ``BFN_`` prefix, any
case, ``__`` between nested keys: ``BFN_TRAIN__BATCH_SIZE=64``), orders the sources and merges them.
Four things it does not do are kept here, each for a reason:

- every value from the environment and ``--set`` is read as YAML, like the config files, so that
  ``1e-4``, ``[0.9, 0.99]`` and ``true`` mean what they look like (its own decoding is JSON);
- an unknown ``BFN_*`` variable is a warning, said once, not an error: the environment is ambient
  (set for other tools and other runs), while files and ``--set`` stay strict;
- a layer that switches a section's kind (``network.kind``, ``flow.kind``, ``output.kind``) starts
  that section afresh instead of merging the old kind's keys into it;
- each value's layer is remembered, so that an error names where the bad value came from
  ("(from environment variable BFN_TRAIN__BATCH_SIZE)"): pydantic-settings merges its sources before
  validating and keeps no such record.

Everything that goes wrong raises :class:`~bfncli.errors.UserError` in one line.
"""

from __future__ import annotations

import copy
import difflib
import os
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union, get_args

from pydantic import BaseModel, ValidationError
from pydantic_settings import EnvSettingsSource, PydanticBaseSettingsSource

from bfncli.config.models import (ENV_PREFIX, BFNConfig, ContinuousFlow, DiscreteFlow, ImprovedUNet, Transformer,
                                  VDMUNet)
from bfncli.config.presets import DEFAULT_PRESET, load_preset, load_yaml, parse_value
from bfncli.errors import UserError
from bfncli.log import logger

# BFN_* variables that are settings of the tool, not config fields.
RESERVED_ENV = {"BFN_CACHE_DIR", "BFN_RUNS_DIR"}


# ------------------------------------------------------------------------------ one resolution
def resolve_config(
    preset: Optional[str] = None,
    config_file: Optional[Path] = None,
    sets: Union[Sequence[str], Mapping[str, Any], None] = None,
    flags: Optional[dict[str, Any]] = None,
    environ: Optional[Mapping[str, str]] = None,
    base: Optional[dict[str, Any]] = None,
) -> BFNConfig:
    """Build and validate a config from its layers (see the module docstring).

    ``base`` replaces the preset (e.g. the config stored in a checkpoint); ``flags`` are the
    commands' own options as a nested dict, applied last; ``environ`` replaces ``os.environ``.
    """
    if base is not None:
        lowest = ("the checkpoint's config", dict(base))
    else:
        name = preset or DEFAULT_PRESET
        lowest = (f"preset '{name}'", load_preset(name))
    layers = [lowest]
    if config_file is not None:
        layers.append((f"config file '{config_file}'", load_yaml(config_file)))
    layers += [(_ENVIRONMENT, None), ("--set", parse_sets(sets or [])), ("the command line", flags or {})]
    resolution = _Resolution(layers, os.environ if environ is None else environ)
    token = _ACTIVE.set(resolution)
    try:
        return BFNConfig()
    except ValidationError as err:
        raise UserError(describe_validation_error(err, resolution.origin)) from None
    finally:
        _ACTIVE.reset(token)


def validate_config(data: dict[str, Any], origin: Optional[dict[tuple[str, ...], str]] = None) -> BFNConfig:
    """A config given whole (a checkpoint's, a run's config.yaml): validated as it is, no layers."""
    try:
        return BFNConfig(**{str(key): value for key, value in data.items()})
    except ValidationError as err:
        raise UserError(describe_validation_error(err, origin or {})) from None


_ENVIRONMENT = "the environment"
_ACTIVE: ContextVar[Optional["_Resolution"]] = ContextVar("bfn_config_resolution", default=None)


def sources_of_this_resolution(settings_cls, init_settings) -> tuple[PydanticBaseSettingsSource, ...]:
    """BFNConfig's sources, highest priority first: the layers of the resolution under way, or only
    the values passed to the constructor when none is (validate_config, a checkpoint's config)."""
    resolution = _ACTIVE.get()
    if resolution is None:
        return (init_settings,)
    return (init_settings, *resolution.sources(settings_cls))


class _Resolution:
    """The layers of one resolve_config call, lowest first: (where from, values); the environment's
    values come from pydantic-settings' env source."""

    def __init__(self, layers: list[tuple[str, Optional[dict]]], environ: Mapping[str, str]):
        self.layers, self.environ = layers, environ
        self.origin: dict[tuple[str, ...], str] = {}
        self._values: Optional[list[dict]] = None

    def sources(self, settings_cls) -> list[PydanticBaseSettingsSource]:
        self.env = _Environment(settings_cls, self.environ)
        return [_Layer(settings_cls, self, i) for i in reversed(range(len(self.layers)))]

    def values(self) -> list[dict]:
        if self._values is None:
            raw = [self.env() if values is None else values for _, values in self.layers]
            self._values = _start_switched_sections_afresh(raw)
            for (source, _), values in zip(self.layers, self._values):
                if source == _ENVIRONMENT:
                    self.origin.update((path, f"environment variable {name}") for path, name in self.env.names.items())
                else:
                    self.origin.update((path, source) for path in _paths(values))
        return self._values


class _Layer(PydanticBaseSettingsSource):
    """One layer of a resolution as a pydantic-settings source."""

    def __init__(self, settings_cls, resolution: _Resolution, index: int):
        super().__init__(settings_cls)
        self.resolution, self.index = resolution, index

    def get_field_value(self, field, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ gives the whole layer at once

    def __call__(self) -> dict[str, Any]:
        return self.resolution.values()[self.index]


class _Environment(EnvSettingsSource):
    """pydantic-settings' env source over the known BFN_* variables of ``environ``, values read as YAML."""

    def __init__(self, settings_cls, environ: Mapping[str, str]):
        super().__init__(settings_cls)  # prefix, case and nesting from BFNConfig.model_config
        self.names: dict[tuple[str, ...], str] = {}  # key path -> the variable that set it
        known = {}
        for name, value in sorted(environ.items()):
            if not name.upper().startswith(ENV_PREFIX) or len(name) <= len(ENV_PREFIX) or name.upper() in RESERVED_ENV:
                continue
            path = tuple(name[len(ENV_PREFIX):].lower().split("__"))
            if path not in known_paths():
                _warn_unknown_env(name)
                continue
            known[name.lower()] = value
            self.names[path] = name
        self.env_vars = known  # what the source reads from, instead of os.environ

    def decode_complex_value(self, field_name: str, field, value: Any) -> Any:
        return parse_value(value)  # a list or a section: YAML, which JSON is a subset of

    def __call__(self) -> dict[str, Any]:
        return _read_scalars(super().__call__())


def _read_scalars(tree: dict[str, Any]) -> dict[str, Any]:
    """The source leaves a scalar as the variable's text for pydantic to convert: read it as YAML instead
    (so that true/false is not a number, and 010 is ten, as in a config file)."""
    return {key: _read_scalars(value) if isinstance(value, dict) else parse_value(value) if isinstance(value, str)
            else value for key, value in tree.items()}


def _start_switched_sections_afresh(layers: list[dict]) -> list[dict]:
    """A layer that gives a section another ``kind`` than the layers below it starts that section
    from the new kind's defaults: the lower layers' keys for it are dropped (they belong to the old kind)."""
    out = [copy.deepcopy(layer) for layer in layers]
    merged: dict[str, Any] = {}
    for i, layer in enumerate(out):
        for path in _switched(merged, layer):
            for lower in out[:i]:
                _drop(lower, path)
        merged = deep_merge(merged, layer)
    return out


def _switched(below: dict, over: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(below.get(key), dict):
            if "kind" in value and value["kind"] != below[key].get("kind"):
                yield prefix + (key,)
            else:
                yield from _switched(below[key], value, prefix + (key,))


def _drop(tree: dict, path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        tree = tree.get(key)
        if not isinstance(tree, dict):
            return
    tree.pop(path[-1], None)


# ------------------------------------------------------------------------------ --set and the environment
def _set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value


def parse_sets(items: Union[Sequence[str], Mapping[str, Any]]) -> dict[str, Any]:
    """``["train.lr=1e-4", ...]`` (values read as on the command line) or, from Python,
    ``{"train.lr": 1e-4}`` (values taken as they are) -> nested dict."""
    out: dict[str, Any] = {}
    if isinstance(items, Mapping):
        for key, value in items.items():
            path = tuple(part.strip() for part in str(key).strip().split("."))
            if not all(path):
                raise UserError(f"--set expects key.path=value (e.g. --set train.batch_size=64), got '{key}'")
            _set_path(out, path, value)
        return out
    if isinstance(items, str):  # one "key=value", not a sequence of characters
        items = [items]
    for item in items:
        key, sep, value = item.partition("=")
        path = tuple(part.strip() for part in key.strip().split("."))
        if not sep or not all(path):
            raise UserError(f"--set expects key.path=value (e.g. --set train.batch_size=64), got '{item}'")
        _set_path(out, path, parse_value(value))
    return out



_WARNED: set[str] = set()


def _warn_unknown_env(name: str) -> None:
    """Environment variables are ambient (set for other tools, other runs): an unknown BFN_* one is
    a warning, said once, never an error. Configs and --set stay strict."""
    if name in _WARNED or os.environ.get("RANK", "0") != "0":
        return
    _WARNED.add(name)
    known = sorted(ENV_PREFIX + "__".join(p).upper() for p in known_paths()) + sorted(RESERVED_ENV)
    close = difflib.get_close_matches(name.upper(), known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    logger.warning(f"bfn: ignoring environment variable {name}: no such config key{hint}")


@lru_cache(maxsize=1)
def known_paths() -> frozenset[tuple[str, ...]]:
    """Every config key path (sections and fields, every network and flow kind's fields)."""
    out: set[tuple[str, ...]] = set()

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, field in model.model_fields.items():
            path = prefix + (name,)
            out.add(path)
            for sub in _models_in(field.annotation):
                walk(sub, path)

    walk(BFNConfig, ())
    return frozenset(out)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]



def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            # Switching a discriminated section's kind starts that section afresh.
            if "kind" in value and value["kind"] != out[key].get("kind"):
                out[key] = value
            else:
                out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _paths(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in tree.items():
        path = prefix + (str(key),)
        out.append(path)
        if isinstance(value, dict):
            out.extend(_paths(value, path))
    return out



# ------------------------------------------------------------------------------ errors
def _known_keys(loc: tuple) -> list[str]:
    """Field names allowed beside the last part of ``loc`` (for 'did you mean' hints)."""
    model: Any = BFNConfig
    for part in loc[:-1]:
        if model is None and part in _VARIANTS:  # pydantic puts a union's tag in the location
            model = _VARIANTS[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def describe_validation_error(err: ValidationError, origin: dict[tuple[str, ...], str]) -> str:
    """One line naming each offending key path, what is allowed, and where the value came from."""
    messages = []
    for item in err.errors(include_url=False):
        loc = tuple(str(part) for part in item["loc"])
        if item["type"] in ("number_not_bool", "int64"):  # raised for a section: add the field to the path
            loc += (str(item["ctx"]["field"]),)
            item = {**item, "msg": str(item["msg"]).split(": ", 1)[1], "input": None}
        # Drop the union tag pydantic inserts (network.unet_vdm.n_blocks -> network.n_blocks).
        shown = tuple(p for i, p in enumerate(loc) if not (i == 1 and p in _VARIANTS))
        key = ".".join(shown)
        source = next((origin[shown[:n]] for n in range(len(shown), 0, -1) if shown[:n] in origin), None)
        from_ = f" (from {source})" if source else ""
        kind = item["type"]
        if kind == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], _known_keys(loc), n=1)
            hint = f"; did you mean '{'.'.join(shown[:-1] + (close[0],))}'?" if close else ""
            messages.append(f"unknown config key '{key}'{from_}{hint}")
        elif kind == "value_error" and not key:
            messages.append(str(item["msg"]).removeprefix("Value error, ") + from_)
        else:
            got = item.get("input")
            msg = str(item["msg"]).removeprefix("Value error, ")
            said = isinstance(got, (dict, list)) or got is None or repr(got) in msg  # the message quotes it
            got_text = "" if said else f", got {got!r}"
            if not key or msg.startswith(key + "."):  # the message names its fields itself
                messages.append(f"{msg}{from_}")
            else:
                messages.append(f"{key}: {msg}{got_text}{from_}")
    return "config error: " + "; ".join(messages)


_VARIANTS = {
    cls.model_fields["kind"].default: cls for cls in (VDMUNet, ImprovedUNet, Transformer, ContinuousFlow, DiscreteFlow)
}

