"""The presets that ship with bfn, and reading YAML config files and values, with one-line errors."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from bfncli import yaml_loader
from bfncli.errors import InputError, UserError

DEFAULT_PRESET = "default"


def presets_dir() -> Path:
    """Where the presets are: inside the installed package, or at the top of a source checkout."""
    package = Path(__file__).resolve().parents[1]  # bfncli/
    for candidate in (package / "presets", package.parent / "presets"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise UserError("the bfn presets are missing from this installation; reinstall bfn", exit_code=1)


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out = {}
    for path in sorted(presets_dir().glob("*.yaml")):
        data = yaml_loader.load(path.read_text()) or {}
        out[path.stem] = str(data.get("description", "")) if isinstance(data, dict) else ""
    return out


def load_preset(name: str) -> dict[str, Any]:
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        names = list(list_presets())
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown preset '{name}'{hint}; available presets: {', '.join(names)}")
    return load_yaml(path)



def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for every way that can fail."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"config file '{path}' does not exist; check the path given to --config")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read config file '{path}': {getattr(err, 'strerror', None) or err}")
    try:
        data = yaml_loader.load(text)
    except yaml.YAMLError as err:
        raise InputError(f"config file '{path}' is not valid YAML{yaml_loader.describe_error(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(
            f"config file '{path}' must be a YAML mapping of sections (data:, network:, ...), "
            f"not a {type(data).__name__}"
        )
    return data


def parse_value(text: str) -> Any:
    """A value from the command line or the environment, read as a YAML scalar or list."""
    try:
        return yaml_loader.load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text

