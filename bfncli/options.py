"""The commands' own options as config layers: what ``--max-steps``, ``--data``, ``--steps`` ... set.

Shared by the command line (:mod:`bfncli.cli`) and the Python API (:mod:`bfncli.api`), so that the
same option gives the same config and the same one-line error from both. Nothing heavy is imported
here: the CLI calls these before torch is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from bfncli.errors import InputError, UserError

if TYPE_CHECKING:
    from bfncli.config import BFNConfig

Sets = Union[Sequence[str], Mapping[str, Any], None]  # ["train.batch_size=64"] or {"train.batch_size": 64}


def flag_layer(**paths: Any) -> dict[str, Any]:
    """{"train.steps": 5, "data.path": None} -> {"train": {"steps": 5}} (None = not given)."""
    out: dict[str, Any] = {}
    for dotted, value in paths.items():
        if value is None:
            continue
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = str(value) if isinstance(value, Path) else value
    return out


def dataset_for(path: Optional[Path]) -> Optional[str]:
    """The dataset kind a --data path implies: a folder of images, a tensor file, or text."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise InputError(f"--data '{path}' does not exist; give an image folder, a text file or a "
                         ".safetensors/.npy tensor file")
    if path.is_dir():
        return "images"
    if path.suffix.lower() in (".safetensors", ".npy"):
        return "tensor"
    return "text"


def data_flags(data: Optional[Path], data_dir: Optional[Path]) -> dict[str, Any]:
    """--data and --data-dir."""
    return {"data.path": data, "data.dataset": dataset_for(data), "data.data_dir": data_dir}


def train_config(preset: Optional[str] = None, config_file: Optional[Path] = None, sets: Sets = None,
                 data: Optional[Path] = None, data_dir: Optional[Path] = None, max_steps: Optional[int] = None,
                 checkpoint_every: Optional[int] = None, seed: Optional[int] = None,
                 base: Optional[dict[str, Any]] = None) -> "BFNConfig":
    """The config of ``bfn train``: preset (or ``base``) < --config < BFN_* < --set < its own flags."""
    from bfncli.config import resolve_config

    return resolve_config(preset=preset, config_file=config_file, sets=sets, base=base, flags=flag_layer(**{
        **data_flags(data, data_dir), "train.steps": max_steps, "train.checkpoint_every": checkpoint_every,
        "train.seed": seed,
    }))


def eval_flags(steps: Optional[int] = None, repeats: Optional[int] = None, batch_size: Optional[int] = None,
               seed: Optional[int] = None, data: Optional[Path] = None,
               data_dir: Optional[Path] = None) -> dict[str, Any]:
    """The config layer of ``bfn eval``'s own flags, checked as the command checks them."""
    for name, value in (("--steps", steps), ("--repeats", repeats), ("--batch-size", batch_size)):
        low = 0 if name == "--steps" else 1
        if value is not None and value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    return flag_layer(**{"eval.steps": steps, "eval.repeats": repeats, "eval.batch_size": batch_size,
                         "eval.seed": seed, **data_flags(data, data_dir)})


def eval_unconditional(class_: Optional[str]) -> bool:
    """``bfn eval --class none``: the unconditional likelihood of a class-conditional model."""
    if class_ is not None and class_.strip().lower() != "none":
        raise UserError(f"--class takes only 'none' (the unconditional likelihood), not {class_!r}: the "
                        "conditional likelihood uses each example's own class")
    return class_ is not None


def refuse_likelihood_flags(steps: Optional[int], repeats: Optional[int], batch_size: Optional[int],
                            class_: Optional[str]) -> None:
    """``bfn eval --samples`` measures sample quality: the likelihood's own flags make no sense with it."""
    likelihood = [name for name, value in (("--steps", steps), ("--repeats", repeats), ("--batch-size", batch_size),
                                           ("--class", class_)) if value is not None]
    if likelihood:
        raise UserError(f"{'/'.join(likelihood)} set the likelihood estimate, which --samples replaces by sample "
                        f"quality; drop {' '.join(likelihood)}")
