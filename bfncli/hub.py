"""Checkpoints by name: a local file, a file on the Hugging Face Hub, or the paper's released weights.

Every option that takes a checkpoint takes a *spec*:

    PATH                              a local file, used as it is (no network, huggingface_hub not
                                      even imported)
    hf://OWNER/REPO/PATH[@REVISION]   a file of a Hub model repository; PATH may contain folders,
                                      REVISION is a branch, a tag or a full 40-character commit hash
    official:NAME[@REVISION]          a released file of the paper (rupspace/pretrained-BFNs); NAME is
                                      the bfn preset of the same experiment (see OFFICIAL_FILES)

Downloads go through ``huggingface_hub`` into its standard cache, so HF_HOME, HF_HUB_CACHE,
HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE mean what they always mean: nothing here sets them.

An official ``.pt`` is converted once, by ``bfn convert``'s own code (the preset recognised from the
file name and the tensors, the pickle read with ``weights_only``), and the bfn checkpoint is kept
beside the download, in the snapshot folder of the commit it came from:

    $HF_HOME/hub/models--rupspace--pretrained-BFNs/snapshots/<commit>/mnist_ema.pt   (the download)
    $HF_HOME/hub/models--rupspace--pretrained-BFNs/snapshots/<commit>/mnist_ema.pt.bfn-0.1.0.safetensors

A commit fixes a file's content (its ETag), so the converted file is keyed by commit and path, and by
the bfn version that converted it (a newer bfn converts again, in case its presets changed). It is
written atomically; ``hf cache`` lists it with its revision and deletes it with it.

When is the server asked? A spec without a revision, or with a commit hash, is served from the cache
when the file is there: no request at all. Naming a branch or a tag (``@main``) asks the server which
commit it points to now (one small request) and downloads the file only if it changed: that is how
to refresh a cached copy. With HF_HUB_OFFLINE=1 the server is never asked.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from bfncli.errors import UserError

OFFICIAL_REPO = "rupspace/pretrained-BFNs"
OFFICIAL_FILES = {  # official:NAME -> the released file; NAME is bfn's preset for the same experiment
    "mnist": "mnist_ema.pt",
    "cifar10-256d": "cifar10_256d_ema.pt",
    "cifar10-16d": "cifar10_16d_ema.pt",
    "cifar10-256c": "cifar10_256c_ema.pt",
    "cifar10-16c": "cifar10_16c_ema.pt",
    "text8": "text8_ema.pt",
}
# (no square brackets: the help is rich markup)
HUB_SPEC_HELP = "hf://OWNER/REPO/FILE with an optional @REVISION, or official:NAME with NAME one of " + ", ".join(
    OFFICIAL_FILES)
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a Hub owner or repository name
_COMMIT = re.compile(r"[0-9a-f]{40}")  # only a full hash names content that can never change


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub model repository at a revision (None: the cached copy, else main)."""

    spec: str  # as the user wrote it, for messages
    repo_id: str
    path: str
    revision: Optional[str]

    @property
    def pinned(self) -> bool:
        return self.revision is not None and _COMMIT.fullmatch(self.revision) is not None

    @property
    def moving(self) -> bool:
        """Named by a branch or a tag: which commit that is now only the server can say."""
        return self.revision is not None and not self.pinned

    @property
    def url(self) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, self.path, revision=self.revision)


# ---------------------------------------------------------------------------------- specs
def is_hub_spec(spec: str) -> bool:
    return spec.startswith(("hf://", "official:"))


def parse_spec(spec: str) -> Optional[HubFile]:
    """The Hub file a spec names, None for a local path; a malformed spec is a one-line error."""
    if spec.startswith("official:"):
        name, at, revision = spec[len("official:"):].partition("@")
        if name not in OFFICIAL_FILES:
            raise UserError(f"unknown released checkpoint '{spec}'; the released ones are "
                            + ", ".join(f"official:{n}" for n in OFFICIAL_FILES))
        return _checked(HubFile(spec, OFFICIAL_REPO, OFFICIAL_FILES[name], revision if at else None), at)
    if not spec.startswith("hf://"):
        return None
    owner, _, rest = spec[len("hf://"):].partition("/")
    repo, _, rest = rest.partition("/")
    path, at, revision = rest.partition("@")
    if "@" in repo:
        _bad(spec, "the revision goes at the end, after the file")
    if not _NAME.fullmatch(owner) or not _NAME.fullmatch(repo) or not path:
        _bad(spec, "it needs an owner, a repository and a file")
    return _checked(HubFile(spec, f"{owner}/{repo}", path, revision if at else None), at)


def _checked(hub_file: HubFile, at: str) -> HubFile:
    parts = PurePosixPath(hub_file.path).parts
    if hub_file.path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        _bad(hub_file.spec, f"'{hub_file.path}' is not a file path inside the repository")
    if at and not hub_file.revision:
        _bad(hub_file.spec, "nothing follows '@': give a branch, a tag or a commit hash")
    if not hub_file.path.endswith(CHECKPOINT_SUFFIXES):
        _bad(hub_file.spec, f"'{hub_file.path}' is not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    return hub_file


def _bad(spec: str, why: str) -> None:
    raise UserError(f"'{spec}' is not a Hub checkpoint: {why}; write hf://OWNER/REPO/FILE[@REVISION], "
                    f"e.g. hf://{OFFICIAL_REPO}/mnist_ema.pt@main")


# ---------------------------------------------------------------------------- resolving
def local_checkpoint(spec: Optional[str]) -> Optional[Path]:
    """The local bfn ``.safetensors`` file a checkpoint spec names: a path as it is, a Hub file
    downloaded (or found in the cache) and, if it is an official ``.pt``, converted once.
    None stays None (the command's own default)."""
    if spec is None:
        return None
    hub_file = parse_spec(spec)
    if hub_file is None:
        return Path(spec)
    download = _from_cache(hub_file) or _download(hub_file)
    if download.suffix == ".safetensors":  # a bfn checkpoint: its loader verifies it
        return download
    return converted(hub_file, download)


def fetch(spec: str) -> Path:
    """The file a spec names, as released (no conversion): what ``bfn convert SPEC`` starts from."""
    hub_file = parse_spec(spec)
    if hub_file is None:
        return Path(spec)
    return _from_cache(hub_file) or _download(hub_file)


def _from_cache(hub_file: HubFile) -> Optional[Path]:
    """The cached copy, found without any request; None if there is none, or if the spec names a
    branch or a tag (then the server says which commit that is now)."""
    if hub_file.moving:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_file.repo_id, hub_file.path, revision=hub_file.revision)
    if not isinstance(found, str):  # not cached, or cached as missing: ask the server again
        return None
    _say(f"{hub_file.spec}: using the cached copy (commit {_commit_dir(hub_file, Path(found)).name[:12]})")
    return Path(found)


def _download(hub_file: HubFile) -> Path:
    import httpx2
    from huggingface_hub import hf_hub_download

    from bfncli import __version__

    _check_the_server_has_an_address(hub_file)
    try:
        with _quiet_retries():
            return Path(hf_hub_download(hub_file.repo_id, hub_file.path, revision=hub_file.revision,
                                        library_name="bfn", library_version=__version__))
    except (OSError, ValueError, httpx2.HTTPError) as err:  # everything the client raises, see _explain
        raise _explain(err, hub_file) from None


def _check_the_server_has_an_address(hub_file: HubFile) -> None:
    """A host name that does not resolve (no network, a mistyped HF_ENDPOINT) fails now, in one line,
    instead of after the client's five retries (about 25 seconds)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants, try_to_load_from_cache

    if constants.is_offline_mode():
        return  # the client answers from the cache or says it may not ask
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                             "all_proxy")):
        return  # a proxy resolves names this machine may not
    # A branch or tag with a cached copy: unreachable, the client falls back to that copy. (For the
    # other specs _from_cache has looked in the cache already.)
    if hub_file.moving and isinstance(try_to_load_from_cache(hub_file.repo_id, hub_file.path,
                                                             revision=hub_file.revision), str):
        return
    host = urlsplit(constants.ENDPOINT).hostname
    if not host:
        return
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as err:
        raise UserError(f"cannot download {hub_file.spec}: the name {host} does not resolve ({err.strerror or err}; "
                        f"no network, or a wrong HF_ENDPOINT) and the file is not in the download cache "
                        f"({constants.HF_HUB_CACHE}): check the connection and try again, or {_by_hand(hub_file)}",
                        1) from None


class _quiet_retries:
    """The client notes every retry on stderr ("Retrying in 2s [Retry 2/5]"); bfn says what happened
    in one line when it gives up, so those notes are silenced while it downloads."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("huggingface_hub")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        return False


# ---------------------------------------------------------------------- converting .pt files
def converted(hub_file: HubFile, download: Path) -> Path:
    """The bfn checkpoint of a downloaded official ``.pt``, converted once and kept beside it."""
    from bfncli import __version__

    target = download.with_name(f"{download.name}.bfn-{__version__}.safetensors")
    if target.exists():
        return target
    from huggingface_hub.utils import WeakFileLock

    commit_dir = _commit_dir(hub_file, download)
    repo_dir, cache_dir = commit_dir.parents[1], commit_dir.parents[2]
    lock = cache_dir / ".locks" / repo_dir.name / f"{commit_dir.name}-{target.name}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(lock):  # several processes (accelerate launch) convert it once
            if not target.exists():
                _convert(hub_file, download, target)
        for older in download.parent.glob(f"{download.name}.bfn-*.safetensors"):  # from another bfn version
            if older != target:
                older.unlink(missing_ok=True)
    except OSError as err:  # a read-only or full cache
        raise UserError(f"cannot convert {hub_file.spec} in the download cache {cache_dir} ({err.strerror or err}); "
                        f"convert it elsewhere: bfn convert {hub_file.spec} -o model.safetensors, then give that "
                        "file", 1) from None
    return target


def _commit_dir(hub_file: HubFile, download: Path) -> Path:
    """CACHE/models--OWNER--REPO/snapshots/COMMIT of a downloaded CACHE/.../COMMIT/PATH."""
    return download.parents[len(PurePosixPath(hub_file.path).parts) - 1]


def _convert(hub_file: HubFile, download: Path, target: Path) -> None:
    from bfncli.atomic_files import remove_stale_partials
    from bfncli.convert import read_official, recognise, to_bfn

    by_hand = f"bfn convert {hub_file.spec} -o model.safetensors"
    remove_stale_partials(target.parent)  # a conversion killed half-way
    try:
        preset = recognise(read_official(download), download.name)
    except UserError as err:
        raise UserError(f"cannot convert {hub_file.spec} on the fly: {err} (by hand: {by_hand} with "
                        "--preset NAME or --official-config FILE.yaml, then give that file)", err.exit_code) from None
    _say(f"{hub_file.spec}: converting {download.name} (recognised as preset '{preset}') to a bfn checkpoint, "
         "once: it is kept beside the download")
    try:
        to_bfn(download, target, preset, official_config=None, sets=[], force=True, environ={})
    except UserError as err:  # the cache folder is read-only or full
        raise UserError(f"{err}; or convert it elsewhere: {by_hand}", err.exit_code) from None


# ------------------------------------------------------------------------------- failures
def _explain(err: Exception, hub_file: HubFile) -> UserError:
    """One line for each way a download fails: what happened, and what to do."""
    import httpx2
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    spec, repo, url, endpoint = hub_file.spec, hub_file.repo_id, hub_file.url, constants.ENDPOINT
    reason = _first_line(err.__cause__ or err)
    by_hand = _by_hand(hub_file)
    has_token = get_token() is not None  # from HF_TOKEN, or stored by 'hf auth login'
    token = ("the token sent (HF_TOKEN or 'hf auth login') may not read it" if has_token
             else "set HF_TOKEN to a token that may read it")
    if isinstance(err, GatedRepoError):
        account = "make sure HF_TOKEN holds" if has_token else "set HF_TOKEN to"
        return UserError(f"{spec}: the repository {repo} is gated: accept its conditions at {endpoint}/{repo} and "
                         f"{account} a token of that account", 1)
    if isinstance(err, RepositoryNotFoundError):
        return UserError(f"{spec}: there is no repository {repo} on {endpoint}, or it is private and {token}", 1)
    if isinstance(err, RevisionNotFoundError):
        return UserError(f"{spec}: the repository {repo} has no revision '{hub_file.revision}'; give a branch, a "
                         "tag or a full commit hash", 1)
    if isinstance(err, LocalEntryNotFoundError):  # not cached, and the server was not (or could not be) asked
        cache = constants.HF_HUB_CACHE
        if constants.is_offline_mode():
            return UserError(f"{spec} is not in the download cache ({cache}) and HF_HUB_OFFLINE=1 forbids "
                             f"downloading it: unset HF_HUB_OFFLINE, or {by_hand}", 1)
        return UserError(f"cannot download {spec} from {endpoint} ({reason}) and it is not in the download cache "
                         f"({cache}): check the connection (and HF_ENDPOINT) and try again, or {by_hand}", 1)
    if isinstance(err, EntryNotFoundError):
        return UserError(f"{spec}: the repository {repo} has no file '{hub_file.path}' at revision "
                         f"{hub_file.revision or 'main'} (see {endpoint}/{repo}/tree/{hub_file.revision or 'main'})", 1)
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            return UserError(f"{spec}: {endpoint} refused access to {url} (HTTP {status}): {token}", 1)
        return UserError(f"{spec}: {endpoint} answered HTTP {status} for {url}; try again later, or {by_hand}", 1)
    if isinstance(err, httpx2.HTTPError) or "Consistency check failed" in str(err):
        return UserError(f"the download of {url} broke off ({reason}); nothing was kept: run the command again, "
                         f"or {by_hand}", 1)
    if isinstance(err, OSError):
        return UserError(f"cannot store {spec} in the download cache {constants.HF_HUB_CACHE} "
                         f"({err.strerror or reason}); free some space or set HF_HOME to a writable folder", 1)
    return UserError(f"{spec}: {reason}", 2)


def _by_hand(hub_file: HubFile) -> str:
    name = PurePosixPath(hub_file.path).name
    if name.endswith(".safetensors"):
        return f"download {hub_file.url} yourself and give that file instead of '{hub_file.spec}'"
    stem = name.rsplit(".", 1)[0]
    return (f"download {hub_file.url} yourself, run 'bfn convert {name} -o {stem}.safetensors' and give "
            f"{stem}.safetensors instead of '{hub_file.spec}'")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return line[:200]


def _say(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under accelerate/torchrun, once
        sys.stderr.write(message + "\n")
