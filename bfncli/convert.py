"""Official ``.pt`` checkpoints + official YAML configs  <->  bfn safetensors checkpoints.

The released official checkpoints are plain state dicts of the whole ``BFN`` module, so every key
starts with ``net.``; our networks use the same parameter names below that prefix. Converting is
therefore: read the pickle safely (``weights_only=True``, nothing else is ever unpickled), work out
the config (a preset, the official YAML, or recognition from the tensors' names and shapes), check
that every tensor fits, and write a self-describing safetensors file. The way back writes a
``.pt`` that the official code loads unchanged; a round trip is bit for bit.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from bfncli.atomic_files import WholeWrites, atomic_path, write_errors_as_oserror
from bfncli.checkpoint import (
    check_dtypes,
    check_state_dict,
    describe_mismatch,
    load_tensors,
    read_info,
    save_checkpoint,
)
from bfncli.config import BFNConfig, deep_merge, load_preset, load_yaml, resolve_config
from bfncli.errors import InputError, UserError
from bfncli.log import logger

PREFIX = "net."
PAPER_PRESETS = ("mnist", "cifar10-256d", "cifar10-16d", "cifar10-256c", "cifar10-16c", "text8")

# ------------------------------------------------------------------- official config -> ours
_NETWORKS = {"UNetVDM": "unet_vdm", "UNetModel": "unet_improved", "GPT": "transformer"}
_ADAPTERS = {"FourierImageInputAdapter": "fourier_image", "TextInputAdapter": "text"}
_OUTPUTS = {
    "DiscretizedNormalFactory": "discretized_normal",
    "DeltaFactory": "delta",
    "BernoulliFactory": "bernoulli",
    "CategoricalFactory": "categorical",
}


# The official classes' own defaults, for parameters an official YAML leaves out.
OFFICIAL_DEFAULTS = {
    "UNetVDM": dict(embedding_dim=128, n_blocks=32, n_attention_heads=1, dropout_prob=0.1, norm_groups=32,
                    input_channels=3, use_fourier_features=True, attention_everywhere=False, image_size=32),
    "UNetModel": dict(image_size=32, in_channels=3, model_channels=128, out_channels=128, num_res_blocks=3,
                      attention_resolutions=[8, 16], dropout=0.0, channel_mult=[1, 2, 2, 2], conv_resample=True,
                      dims=2, skip=True, use_checkpoint=False, num_heads=4, num_heads_upsample=-1,
                      use_scale_shift_norm=False, project_input=False),
    "GPT": dict(n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=True, skip=False),
    "FourierImageInputAdapter": dict(input_channels=3, input_shape=[224, 224], n_freq_bands=64, output_height=256,
                                     add_pos_feats=True, add_mask=True),
    "TextInputAdapter": dict(output_size=256, learn_pos_embedding=False),
}
# Official options bfn does not implement, accepted only at their default (inactive) values.
INACTIVE = {"num_classes": None, "is_causal": False, "value_res": -1, "mask_res": -1, "learn_pos_feats": False,
            "pos_embed_size": 32, "init_scale": 0.02}


def _section(model: dict, key: str, table: dict[str, str], what: str) -> tuple[Optional[str], dict]:
    spec = model.get(key)
    if spec is None:
        return None, {}
    if not isinstance(spec, dict) or "class_name" not in spec:
        raise InputError(f"official config: model.{key} needs a class_name")
    name = spec["class_name"]
    if name not in table:
        raise InputError(f"official config: model.{key}.class_name '{name}' is not a supported {what} "
                         f"(supported: {', '.join(table)})")
    params = {**OFFICIAL_DEFAULTS.get(name, {}), **dict(spec.get("parameters") or {})}
    for option, inactive in INACTIVE.items():
        if option in params:
            if params.pop(option) != inactive:
                raise InputError(f"official config: model.{key}.parameters.{option} is not supported by bfn")
    return table[name], params


def official_to_config(official: dict[str, Any], source: str = "official config") -> BFNConfig:
    """Translate an official YAML config (the ``model:`` section, or a whole training config)."""
    model = official.get("model")
    if not isinstance(model, dict):
        raise InputError(f"{source} has no 'model:' section; give the official YAML the checkpoint was trained with")
    net_kind, net_params = _section(model, "net", _NETWORKS, "network")
    adapter_kind, adapter_params = _section(model, "input_adapter", _ADAPTERS, "input adapter")
    out_kind, out_params = _section(model, "distribution_factory", _OUTPUTS, "output distribution")
    if net_kind is None or adapter_kind is None or out_kind is None:
        raise InputError(f"{source}: model.net, model.input_adapter and model.distribution_factory are required")
    network = {"kind": net_kind, **net_params, "input_adapter": {"kind": adapter_kind, **adapter_params}}
    output_adapter = model.get("output_adapter")
    if output_adapter is not None:
        if output_adapter.get("class_name") != "OutputAdapter":
            raise InputError(f"{source}: model.output_adapter.class_name must be OutputAdapter")
        network["output_adapter"] = dict(output_adapter.get("parameters") or {})

    flow_spec = model.get("bayesian_flow") or {}
    flow_params = dict(flow_spec.get("parameters") or {})
    loss_params = dict((model.get("loss") or {}).get("parameters") or {})
    if flow_spec.get("class_name") == "CtsBayesianFlow":
        variance = float(flow_params.get("min_variance", 1e-6))
        flow = {"kind": "continuous", "min_variance": variance}
        output = {"kind": out_kind, "noise_pred": bool(loss_params.get("noise_pred", True))}
        if out_kind == "discretized_normal":
            output.update(num_bins=int(out_params.get("num_bins", 256)), clip=bool(out_params.get("clip", True)))
        else:
            # The official reconstruction loss of a delta output guesses bins and std from sigma_1.
            sixteen = variance == 1e-3
            output.update(num_bins=16 if sixteen else 256, recon_std=(0.7 if sixteen else 1.0) * math.sqrt(variance))
        data = {"dataset": "cifar10", "num_bins": output["num_bins"]}
        base = "cifar10-256d"
    elif flow_spec.get("class_name") == "DiscreteBayesianFlow":
        if flow_params.get("discretize"):
            raise InputError(f"{source}: DiscreteBayesianFlow with discretize=true is not supported")
        k = int(flow_params.get("n_classes", 2))
        flow = {"kind": "discrete", "n_classes": k, "max_sqrt_beta": float(flow_params.get("max_sqrt_beta", 1))}
        output = {"kind": out_kind}
        data = {"dataset": "mnist"} if k == 2 else {"dataset": "text8", "seq_len": adapter_params.get("seq_len", 256)}
        base = "mnist" if k == 2 else "text8"
    else:
        raise InputError(f"{source}: model.bayesian_flow.class_name must be CtsBayesianFlow or DiscreteBayesianFlow")

    tree = deep_merge(load_preset(base), {"description": f"converted from {source}", "network": network,
                                          "flow": flow, "output": output, "data": data})
    tree["network"] = network  # the whole network section comes from the official file
    tree = deep_merge(tree, _training_sections(official))
    return resolve_config(base=tree, environ={})


def _training_sections(official: dict[str, Any]) -> dict[str, Any]:
    """The parts of a whole official training config that have a bfn equivalent."""
    out: dict[str, Any] = {}
    data = official.get("data") or {}
    if data.get("dataset"):
        name = {"bin_mnist": "mnist", "cifar10": "cifar10", "text8": "text8"}.get(data["dataset"])
        if name is None:
            raise InputError(f"official config: data.dataset '{data['dataset']}' is not supported")
        out["data"] = {"dataset": name}
        for key in ("num_bins", "horizontal_flip", "seq_len"):
            if key in data:
                out["data"][key] = data[key]
    optimizer = official.get("optimizer") or {}
    optim = {k: optimizer[k] for k in ("lr", "betas", "weight_decay", "eps") if k in optimizer}
    if optim:
        out["optim"] = optim
    training = official.get("training") or {}
    names = {"n_training_steps": "steps", "ema_decay": "ema_decay", "grad_clip_norm": "grad_clip_norm",
             "checkpoint_interval": "checkpoint_every", "val_interval": "val_every", "val_repeats": "val_repeats",
             "accumulate": "accumulate", "max_val_batches": "max_val_batches"}
    train = {ours: training[theirs] for theirs, ours in names.items() if training.get(theirs) is not None}
    for loader, key in (("train_loader", "batch_size"), ("val_loader", "val_batch_size")):
        if (official.get(loader) or {}).get("batch_size"):
            train[key] = official[loader]["batch_size"]
    if train:
        out["train"] = train
    return out


# ------------------------------------------------------------------------- reading .pt files
def read_official(path: Path) -> dict[str, Tensor]:
    """An official state dict, read without unpickling anything but tensors; ``net.`` stripped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"'{path}' does not exist" if not path.exists() else f"'{path}' is not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise InputError(f"cannot read '{path}': {err.strerror or err}") from None
    if not head:
        raise InputError(f"'{path}' is empty; it is not a PyTorch checkpoint (was the download cut short?)")
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save writes a zip archive, or a pickle before 1.6
        raise InputError(f"'{path}' is not a PyTorch checkpoint (neither a zip archive nor a pickle); "
                         "give the official .pt file")
    try:
        # mmap: tensors are read when copied, under save_checkpoint's progress bar. torch warns about
        # what it refused to unpickle; the error below says it in one line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError:
        raise InputError(f"'{path}' is not a plain state dict of tensors (it needs arbitrary code to load); "
                         "bfn only reads weights_only checkpoints") from None
    except Exception as err:  # a damaged or foreign file can fail the unpickler in any way (KeyError, EOFError...)
        reason = (str(err).strip().splitlines() or [""])[0][:120]
        raise InputError(f"cannot read '{path}' as a PyTorch checkpoint ({type(err).__name__}: {reason}); "
                         "is it truncated or corrupted?") from None
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"'{path}' holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise InputError(f"'{path}' is not a plain state dict: entry {bad[0]!r} is not a tensor")
    if all(k.startswith(PREFIX) for k in obj):
        return OrderedDict((k[len(PREFIX):], v) for k, v in obj.items())
    return OrderedDict(obj)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


# ----------------------------------------------------------------------- recognising presets
def expected_shapes(cfg: BFNConfig) -> dict[str, Tensor]:
    """The state dict a config's network has (on the meta device: no memory, no time)."""
    from bfncli.model import make_network

    try:
        with torch.device("meta"):
            return make_network(cfg).state_dict()
    except Exception:  # an architecture that cannot be built on meta: build it for real
        return make_network(cfg).state_dict()


def recognise(tensors: dict[str, Tensor], filename: str) -> str:
    """The paper preset whose network has exactly these tensors, or an error saying why none fits."""
    fits, reasons = [], []
    for name in PAPER_PRESETS:
        problem = describe_mismatch(expected_shapes(resolve_config(name, environ={})), tensors)
        if problem is None:
            fits.append(name)
        else:
            reasons.append(f"{name}: {problem.split(';')[0]}")
    if len(fits) > 1:
        # 256- and 16-bin networks are identical; the released file names say which is which.
        bins = re.findall(r"(?<!\d)(256|16)(?!\d)", filename)
        named = [p for p in fits if bins and f"-{bins[0]}" in p]
        if len(named) == 1:
            return named[0]
        raise UserError(f"the weights fit several presets ({', '.join(fits)}); choose one with --preset")
    if not fits:
        raise UserError("the weights fit none of the paper presets; pass --official-config with the YAML they "
                        "were trained with. Tried " + " | ".join(reasons))
    return fits[0]


# ------------------------------------------------------------------------------ the command
def run_convert(
    source: Path,
    output: Optional[Path] = None,
    preset: Optional[str] = None,
    official_config: Optional[Path] = None,
    sets: Optional[list[str]] = None,
    force: bool = False,
    downloaded: bool = False,
) -> Path:
    """Convert a local file either way. ``downloaded``: it came from the Hub (bfncli/specs.py fetched
    it), so the default output goes into the current folder rather than into the download cache."""
    source = Path(source)
    if source.suffix == ".safetensors":
        if preset or official_config:
            raise UserError("--preset/--official-config describe official .pt files; a bfn checkpoint carries its config")
        return to_official(source, output or _beside(source, ".pt", downloaded), force)
    if preset and official_config:
        raise UserError("give either --preset or --official-config, not both")
    return to_bfn(source, output or _beside(source, ".safetensors", downloaded), preset, official_config, sets or [],
                  force)


def _beside(source: Path, suffix: str, downloaded: bool) -> Path:
    """The default output: beside a local input; in the current folder for a downloaded one."""
    return Path(source.name).with_suffix(suffix) if downloaded else source.with_suffix(suffix)


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise UserError(f"'{output}' already exists; pass --force to overwrite it or choose another -o")
    if not output.parent.exists():
        raise UserError(f"the output directory '{output.parent}' does not exist")


def to_bfn(source: Path, output: Path, preset: Optional[str], official_config: Optional[Path],
           sets: list[str], force: bool, environ: Optional[dict] = None) -> Path:
    """An official .pt as a bfn checkpoint. ``environ``: where BFN_* settings come from (None: the
    process's environment, as for every command; {}: none, for conversions cached for any later use)."""
    output = Path(output)
    if output.suffix != ".safetensors":
        raise UserError(f"bfn checkpoints are .safetensors files; name the output e.g. '{output.with_suffix('.safetensors')}'")
    _check_output(output, force)
    tensors = read_official(source)
    if official_config is not None:
        cfg = official_to_config(load_yaml(official_config), f"'{official_config}'")
        if sets:
            cfg = resolve_config(base=cfg.to_dict(), sets=sets, environ=environ)
    else:
        name = preset or recognise(tensors, source.name)
        if not preset:
            logger.info(f"recognised the weights as preset '{name}'")
        cfg = resolve_config(name, sets=sets, environ=environ)
    expected = expected_shapes(cfg)
    check_state_dict(expected, tensors, f"'{source}'")
    check_dtypes(expected, tensors, f"'{source}'")
    ordered = OrderedDict((k, tensors[k]) for k in expected)
    save_checkpoint(output, ordered, cfg, weights="ema", step=0,
                    extra={"converted_from": source.name})
    logger.info(f"wrote {output} ({sum(t.numel() for t in ordered.values()):,} parameters, config: {cfg.description or '-'})")
    return output


def to_official(source: Path, output: Path, force: bool) -> Path:
    output = Path(output)
    if output.suffix not in (".pt", ".pth"):
        raise UserError(f"official checkpoints are .pt files; name the output e.g. '{output.with_suffix('.pt')}'")
    _check_output(output, force)
    info = read_info(source)
    if getattr(info.config.network, "num_classes", 0):
        raise UserError(f"'{source}' is a class-conditional model; the official code has no class embedding, so it "
                        "cannot be converted to the official layout")
    tensors = load_tensors(source)
    expected = expected_shapes(info.config)
    check_state_dict(expected, tensors, f"checkpoint '{source}'")
    check_dtypes(expected, tensors, f"checkpoint '{source}'")
    state = OrderedDict((PREFIX + k, tensors[k]) for k in expected)
    try:
        with atomic_path(output) as tmp, write_errors_as_oserror(), open(tmp, "wb", buffering=0) as raw:
            torch.save(state, WholeWrites(raw))
    except OSError as err:
        raise UserError(f"cannot write '{output}': {err.strerror or err}", exit_code=1) from None
    logger.info(f"wrote {output} (official layout, {len(state)} tensors)")
    return output


def conversion_record(source: str, output: Path) -> dict[str, Any]:
    """What ``bfn convert --json`` prints: the file written, its layout and size, and for a bfn
    checkpoint the experiment it holds."""
    output = Path(output)
    record: dict[str, Any] = {"source": str(source), "output": str(output), "bytes": output.stat().st_size}
    if output.suffix == ".safetensors":
        info = read_info(output)
        record.update(layout="bfn", weights=info.weights, description=info.config.description,
                      converted_from=info.metadata.get("converted_from"))
    else:
        record["layout"] = "official"
    return record
