"""Checkpoint specs to local files: a path as it is, a Hub file downloaded and checked, an official ``.pt``
converted once.

Every option that takes a checkpoint takes a *spec*: a local path (no network, huggingface_hub not
even imported), or a Hub file (``hf://``, a Hub address, ``official:NAME``; see bfncli/hub.py).
This module sits one floor above bfncli/hub.py (the Hub only) and bfncli/convert.py (conversion
only), and is where they meet:

A Hub file is checked before use: a ``.safetensors`` file must be whole (its header, and as many
bytes as the header describes), a ``.pt`` a whole zip archive or a pickle, and a file whose cache
name is a SHA-256 (the Hub's large files) must have that SHA-256 when it has just been asked for.
A file that fails (cut short, an HTML page saved by a proxy, changed on disk) is downloaded again,
once, at the commit it came from; if that fails too it is removed from the cache and the error says
so. An official ``.pt`` is converted by ``bfn convert``'s own code, once, and the bfn checkpoint is
kept beside the download, in the snapshot folder of the commit it came from:

    $HF_HOME/hub/models--rupspace--pretrained-BFNs/snapshots/<commit>/mnist_ema.pt   (the download)
    $HF_HOME/hub/models--rupspace--pretrained-BFNs/snapshots/<commit>/mnist_ema.pt.bfn-0.1.0.safetensors

A commit fixes a file's content, so the converted file is keyed by commit and path, and by the bfn
version that converted it (a newer bfn converts again, in case its presets changed). It is written
atomically; a damaged one is converted again. ``hf cache`` lists it with its revision and deletes it
with it.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

from bfncli.errors import UserError
from bfncli.hub import HubFile, cached, commit_dir, download, forget, lock_for, parse_spec, say, shown


def local_checkpoint(spec: Optional[str]) -> Optional[Path]:
    """The local bfn ``.safetensors`` file a checkpoint spec names: a path as it is, a Hub file
    downloaded (or found in the cache) and, if it is an official ``.pt``, converted once.
    None stays None (the command's own default)."""
    if spec is None:
        return None
    hub_file = parse_spec(spec)
    if hub_file is None:
        return Path(spec)
    file = checked_download(hub_file)
    if file.suffix == ".safetensors":  # a bfn checkpoint: its loader verifies it
        return file
    return converted(hub_file, file)


def fetch(spec: str) -> Path:
    """The file a spec names, as released (no conversion): what ``bfn convert SPEC`` starts from."""
    hub_file = parse_spec(spec)
    return Path(spec) if hub_file is None else checked_download(hub_file)


# ------------------------------------------------------------------------ checked downloads
def checked_download(hub_file: HubFile) -> Path:
    """The Hub file, from the cache or downloaded, whole; downloaded again once if it is not."""
    from huggingface_hub import constants

    found = cached(hub_file)
    file = found or download(hub_file)
    problem = file_problem(file, against_its_name=found is None)
    if problem is None:
        return file
    again = replace(hub_file, revision=commit_dir(hub_file, file).name)  # the same commit, the same content
    if constants.is_offline_mode():
        raise UserError(f"{shown(hub_file.spec)}: the cached download {file} is damaged ({problem}) and "
                        f"HF_HUB_OFFLINE=1 forbids downloading it again: unset HF_HUB_OFFLINE, or remove it with "
                        f"'{hub_file.removal}'")
    say(f"{shown(hub_file.spec)}: the {'cached ' if found else ''}download {file} is damaged ({problem}); "
        "downloading it again")
    forget(file)
    file = download(again, force=True)
    problem = file_problem(file, against_its_name=True)
    if problem is None:
        return file
    forget(file)
    raise UserError(f"{shown(hub_file.spec)}: the file {constants.ENDPOINT} serves is damaged ({problem}), twice in a "
                    "row; it was removed from the download cache: try again later, or ask the repository's owner")


def file_problem(path: Path, against_its_name: bool) -> Optional[str]:
    """What is wrong with a downloaded checkpoint file, or None if it is whole. ``against_its_name``:
    also compare its SHA-256 with the blob's name when that is one (a full read of the file)."""
    try:
        problem = _safetensors_problem(path) if path.suffix == ".safetensors" else _torch_file_problem(path)
        if problem is None and against_its_name:
            problem = _sha256_problem(path)
    except OSError as err:
        return f"cannot read it: {err.strerror or err}"
    return problem


def _safetensors_problem(path: Path) -> Optional[str]:
    """A safetensors file is 8 bytes (the header's length), a JSON header, and the bytes it describes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8).ljust(8, b"\0"), "little")
        if size < 8 or length > min(size - 8, 100 << 20):
            return f"not a safetensors file: it has {size:,} bytes and does not start with a header"
        try:
            header = json.loads(f.read(length))
            ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
            described = 8 + length + max(ends, default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "not a safetensors file: its header is not a safetensors header"
    if described != size:
        return f"it has {size:,} bytes where its header describes {described:,}; it was cut short or changed"
    return None


def _torch_file_problem(path: Path) -> Optional[str]:
    """torch.save writes a zip archive (whole when its central directory at the end reads), or a pickle before 1.6."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":
        return None
    if head != b"PK\x03\x04":
        return "not a PyTorch checkpoint: neither a zip archive nor a pickle"
    try:
        with zipfile.ZipFile(path):
            return None
    except (zipfile.BadZipFile, ValueError) as err:
        return f"a zip archive that does not read ({err}); it was cut short or changed"


def _sha256_problem(path: Path) -> Optional[str]:
    from huggingface_hub.file_download import REGEX_SHA256

    from bfncli.atomic_files import file_sha256

    name = path.resolve().name  # CACHE/.../blobs/ETAG: the Hub's ETag of a large file is its SHA-256
    if REGEX_SHA256.fullmatch(name) and file_sha256(path) != name:
        return "its SHA-256 is not the one the Hub announced"
    return None


# --------------------------------------------------------------------- converted .pt files
def converted(hub_file: HubFile, download: Path) -> Path:
    """The bfn checkpoint of a downloaded official ``.pt``, converted once and kept beside it."""
    from bfncli import __version__

    target = download.with_name(f"{download.name}.bfn-{__version__}.safetensors")
    if target.exists() and file_problem(target, against_its_name=False) is None:
        return target
    from huggingface_hub.utils import WeakFileLock

    lock = lock_for(hub_file, download, target.name)
    cache_dir = lock.parents[2]
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(lock):  # several processes (accelerate launch) convert it once
            if target.exists():
                _remove_if_damaged(hub_file, target)
            if not target.exists():
                _convert(hub_file, download, target)
        for older in download.parent.glob(f"{download.name}.bfn-*.safetensors"):  # from another bfn version
            if older != target:
                older.unlink(missing_ok=True)
    except OSError as err:  # a read-only or full cache
        raise UserError(f"cannot convert {shown(hub_file.spec)} in the download cache {cache_dir} "
                        f"({err.strerror or err}); convert it elsewhere: bfn convert {shown(hub_file.spec)} -o "
                        "model.safetensors, then give that file", 1) from None
    return target


def _remove_if_damaged(hub_file: HubFile, target: Path) -> None:
    """A converted file that is not whole is removed, with a note, to be converted again."""
    problem = file_problem(target, against_its_name=False)
    if problem is not None:
        say(f"{shown(hub_file.spec)}: the converted checkpoint {target} is damaged ({problem}); converting it again")
        target.unlink()


def _convert(hub_file: HubFile, download: Path, target: Path) -> None:
    from bfncli.atomic_files import remove_stale_partials
    from bfncli.convert import read_official, recognise, to_bfn

    by_hand = f"bfn convert {shown(hub_file.spec)} -o model.safetensors"
    remove_stale_partials(target.parent)  # a conversion killed half-way
    try:
        preset = recognise(read_official(download), download.name)
    except UserError as err:
        raise UserError(f"cannot convert {shown(hub_file.spec)} on the fly: {err} (by hand: {by_hand} with "
                        "--preset NAME or --official-config FILE.yaml, then give that file)", err.exit_code) from None
    say(f"{shown(hub_file.spec)}: converting {download.name} (recognised as preset '{preset}') to a bfn checkpoint, "
        "once: it is kept beside the download")
    try:
        to_bfn(download, target, preset, official_config=None, sets=[], force=True, environ={})
    except UserError as err:  # the cache folder is read-only or full
        raise UserError(f"{err}; or convert it elsewhere: {by_hand}", err.exit_code) from None
