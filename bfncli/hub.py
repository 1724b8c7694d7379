"""Files on the Hugging Face Hub: what a spec names, and downloading it into huggingface_hub's cache.

A spec names a file in one of these ways:

    hf://OWNER/REPO@REVISION/PATH     a file of a Hub repository, in the Hub's own URI form (as
                                      huggingface_hub.utils.parse_hf_uri reads it): @REVISION (a
                                      branch, a tag or a 40-character commit hash) may be left out;
                                      PATH may contain folders; hf://datasets/OWNER/REPO/... and
                                      hf://spaces/... name other kinds of repository
    https://huggingface.co/OWNER/REPO/blob/REVISION/PATH
                                      the same file's address, as copied from its page on the Hub
                                      (or from the server HF_ENDPOINT names)
    official:NAME@REVISION            a released file of the paper (rupspace/pretrained-BFNs); NAME is
                                      the bfn preset of the same experiment (see OFFICIAL_FILES)

Earlier bfn wrote hf://OWNER/REPO/PATH@REVISION. On the Hub that names a file called 'PATH@REVISION',
so it is refused, with the spelling that means what was meant.

Downloads go through ``huggingface_hub`` into its standard cache, so HF_HOME, HF_HUB_CACHE,
HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT mean what
they always mean: nothing here sets them. The cache stays a cache: a revision must be a plain
branch, tag or commit name before anything is asked, what the server answers must not name paths
outside the cache (bfncli/hub_http.py), and the file a download produces must lie inside it.

When is the server asked? A spec without a revision, or with a commit hash, is served from the cache
when the file is there: no request at all. Naming a branch or a tag (``@main``) asks the server which
commit it points to now (one small request) and downloads the file only if it changed: that is how
to refresh a cached copy. With HF_HUB_OFFLINE=1 the server is never asked.

This module knows the Hub only; bfncli/specs.py turns a spec into a checkpoint file (checking the
download, converting an official ``.pt``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional
from urllib.parse import quote

from bfncli.errors import UserError
from bfncli.log import logger, quiet

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
HUB_SPEC_HELP = ("hf://OWNER/REPO@REVISION/FILE (@REVISION optional; a file's https://huggingface.co/... address "
                 "works too), or official:NAME with NAME one of " + ", ".join(OFFICIAL_FILES))
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
REPO_TYPES = ("model", "dataset", "space")  # the kinds of repository hf_hub_download reads files of
EXAMPLE = f"hf://{OFFICIAL_REPO}@main/mnist_ema.pt"

_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")  # the Hub's rule for an owner or a name
_COMMIT = re.compile(r"[0-9a-f]{40}")  # only a full hash names content that can never change
_SPECIAL_REF = re.compile(r"refs/(?:convert/[\w.-]+|pr/\d+)")  # revisions the Hub's URIs keep with their '/'


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repository at a revision (None: the cached copy, else main)."""

    spec: str  # as the user wrote it, for messages
    repo_id: str
    path: str
    revision: Optional[str]
    repo_type: str = "model"

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

        return hf_hub_url(self.repo_id, self.path, revision=self.revision, repo_type=self.repo_type)

    @property
    def uri(self) -> str:
        """The canonical hf:// spelling."""
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"hf://{kind}{self.repo_id}{at_revision(self.revision)}/{self.path}"

    @property
    def removal(self) -> str:
        """The command that removes the file's cached copies (it takes no revision)."""
        return f"hf cache rm hf://{self.repo_type}s/{self.repo_id}/{self.path}"


def at_revision(revision: Optional[str]) -> str:
    """'@REVISION' as the Hub's URIs write it ('/' as %2F except in refs/pr/N), '' for none."""
    if revision is None:
        return ""
    return "@" + (revision if _SPECIAL_REF.fullmatch(revision) else quote(revision, safe=""))


# ---------------------------------------------------------------------------------- specs
def is_hub_spec(spec: str) -> bool:
    return spec.startswith(("hf://", "official:", "https://", "http://"))


def parse_spec(spec: str) -> Optional[HubFile]:
    """The Hub file a spec names, None for a local path; a malformed spec is a one-line error."""
    if spec.startswith("official:"):
        name, at, revision = spec[len("official:"):].partition("@")
        if name not in OFFICIAL_FILES:
            raise UserError(f"unknown released checkpoint '{shown(spec)}'; the released ones are "
                            + ", ".join(f"official:{n}" for n in OFFICIAL_FILES))
        if at:
            _check_revision(spec, revision)
        check_endpoint()
        return _checked(HubFile(spec, OFFICIAL_REPO, OFFICIAL_FILES[name], revision if at else None))
    if not is_hub_spec(spec):
        return None
    endpoint = check_endpoint()
    from huggingface_hub.errors import HfUriError
    from huggingface_hub.utils import parse_hf_uri

    if not spec.isprintable():  # control characters: say so before any part is shown
        _bad(spec, "it contains a control character")
    try:
        uri = parse_hf_uri(spec, endpoint=endpoint)
    except HfUriError as err:
        if not spec.startswith("hf://") and "Unrecognized host" in err.msg:
            raise UserError(f"'{shown(spec)}' is not the address of a file on the Hub (neither huggingface.co nor "
                            f"HF_ENDPOINT={endpoint}): download it yourself and give its path") from None
        _bad(spec, _which_part(spec, err.msg))
    if uri.type not in REPO_TYPES:
        _bad(spec, f"it names a {uri.type}, not a file of a {', '.join(REPO_TYPES[:-1])} or {REPO_TYPES[-1]} "
                   "repository")
    path, revision = uri.path_in_repo, uri.revision
    if revision is not None:
        _check_revision(spec, revision)
    old = _old_spelling(path)
    if old is not None:
        name, old_revision = old
        _check_revision(spec, old_revision)
        if revision is not None:
            _bad(spec, f"it names two revisions ('{shown(revision)}' and '{shown(old_revision)}')")
        canonical = HubFile(spec, uri.id, name, old_revision, uri.type).uri
        raise UserError(f"'{shown(spec)}' names a file called '{shown(path)}'; the revision goes right after the "
                        f"repository: write {shown(canonical)}")
    if not path:
        _bad(spec, f"it names the repository {uri.id} but no file in it")
    return _checked(HubFile(spec, uri.id, path, revision, uri.type))


def _old_spelling(path: str) -> Optional[tuple[str, str]]:
    """(FILE, REVISION) of bfn's earlier FILE@REVISION, when that is the only way to read a path."""
    if "@" not in path or path.endswith(CHECKPOINT_SUFFIXES):
        return None  # a file whose name holds an '@' (hf://o/r/w@2.pt) is that file
    name, _, revision = path.partition("@")
    return (name, revision) if name.endswith(CHECKPOINT_SUFFIXES) else None


def _check_revision(spec: str, revision: str) -> None:
    """A branch, a tag or a commit hash, by git's rules for names (git check-ref-format) and one more:
    no '@', which a spec uses to mark the revision. The client writes refs/REVISION into the cache,
    so this runs before anything is requested."""
    why = None
    if not revision:
        why = "it is empty: give a branch, a tag or a commit hash"
    elif not revision.isprintable():
        why = "it contains a control character"
    elif "@" in revision:
        why = "it contains '@': a spec names one revision, after the repository"
    elif ".." in revision:
        why = "it contains '..'"
    elif any(c in revision for c in " ~^:?*[\\"):
        why = f"it contains '{next(c for c in revision if c in ' ~^:?*[' + chr(92))}'"
    elif revision.startswith("/") or revision.endswith("/") or "//" in revision:
        why = "'/' may separate its parts, never begin, end or double them"
    elif any(part.startswith(".") or part.endswith(".lock") for part in revision.split("/")) or revision.endswith("."):
        why = "no part of it may begin with '.' or end with '.lock', nor may it end with '.'"
    if why:
        _bad(spec, f"the revision '{shown(revision)}' is not a branch, a tag or a commit hash ({why})")


def _checked(hub_file: HubFile) -> HubFile:
    path = hub_file.path
    if not path.isprintable():
        _bad(hub_file.spec, "the file path contains a control character")
    if "\\" in path:
        _bad(hub_file.spec, f"the file path '{path}' contains '\\': folders are separated by '/'")
    if path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")):
        _bad(hub_file.spec, f"'{path}' is not a file path inside the repository")
    if not path.endswith(CHECKPOINT_SUFFIXES):
        _bad(hub_file.spec, f"'{path}' is not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    return hub_file


def _which_part(spec: str, reason: str) -> str:
    """Which of owner and repository is invalid (parse_hf_uri says it of 'OWNER/REPO' as a whole)."""
    body = spec.split("://", 1)[1] if spec.startswith("hf://") else ""
    parts = body.split("/")
    if parts and parts[0] in ("models", "datasets", "spaces", "kernels", "buckets"):
        parts = parts[1:]
    if len(parts) < 2 or not parts[1]:
        return "it needs an owner, a repository and a file"
    if body:
        for what, name in (("owner", parts[0]), ("repository name", parts[1].split("@")[0])):
            if not name:
                return f"the {what} is missing; it needs an owner, a repository and a file"
            if not _NAME.fullmatch(name) or "--" in name or ".." in name:
                return (f"the {what} '{shown(name)}' is not a valid Hub name (ASCII letters, digits, '-', '_' and "
                        "'.', not starting or ending with '-' or '.', no '--' or '..', at most 96 characters)")
    return reason.rstrip(". ")


def _bad(spec: str, why: str) -> None:
    form = ("official:NAME@REVISION (@REVISION optional), e.g. official:mnist@main" if spec.startswith("official:")
            else f"hf://OWNER/REPO@REVISION/FILE (@REVISION optional), e.g. {EXAMPLE}")
    raise UserError(f"'{shown(spec)}' is not a Hub checkpoint: {why}; write {form}")


def shown(text: str) -> str:
    """Text for a one-line message: control characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


# ------------------------------------------------------------------------------- endpoint
def check_endpoint() -> str:
    """The Hub's address (HF_ENDPOINT, or huggingface.co), or a one-line error naming the variable. It
    reads the variable as huggingface_hub does, before that is imported: an address that does not
    parse (http://[::1) makes importing huggingface_hub itself fail."""
    from urllib.parse import urlsplit

    from bfncli.cache_dirs import ignore_empty_variables

    ignore_empty_variables()  # an empty HF_HOME or HF_HUB_CACHE is unset, not the current folder
    endpoint, why = os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co", None
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
        if parts.scheme not in ("http", "https"):
            why = "it does not start with https:// or http://"
        elif not parts.hostname:
            why = "it names no host"
    except ValueError as err:
        why = str(err)
    if why:
        raise UserError(f"HF_ENDPOINT={shown(os.environ['HF_ENDPOINT'])!r} is not the address of a Hub ({why}); set "
                        "it to one like https://huggingface.co, or unset it")
    return endpoint


# ------------------------------------------------------------------------------ the cache
def cached(hub_file: HubFile) -> Optional[Path]:
    """The cached copy, found without any request; None if there is none, or if the spec names a
    branch or a tag (then the server says which commit that is now)."""
    if hub_file.moving:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_file.repo_id, hub_file.path, revision=hub_file.revision,
                                   repo_type=hub_file.repo_type)
    if not isinstance(found, str):  # not cached, or cached as missing: ask the server again
        return None
    path = _inside_the_cache(hub_file, Path(found))
    say(f"{shown(hub_file.spec)}: using the cached copy (commit {commit_dir(hub_file, path).name[:12]})")
    return path


def commit_dir(hub_file: HubFile, download: Path) -> Path:
    """CACHE/models--OWNER--REPO/snapshots/COMMIT of a downloaded CACHE/.../COMMIT/PATH."""
    return download.parents[len(PurePosixPath(hub_file.path).parts) - 1]


def lock_for(hub_file: HubFile, download: Path, name: str) -> Path:
    """A lock file for work on a cached download (CACHE/.locks/REPO_FOLDER/COMMIT-NAME.lock)."""
    folder = commit_dir(hub_file, download)
    return folder.parents[2] / ".locks" / folder.parents[1].name / f"{folder.name}-{name}.lock"


def forget(download: Path) -> None:
    """Remove a cached download (its blob and the snapshot's link to it), e.g. one that is damaged."""
    blob = download.resolve()
    for path in (download, blob):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _inside_the_cache(hub_file: HubFile, path: Path) -> Path:
    """The path, if it and the blob it links to lie in the cache; a one-line refusal otherwise."""
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE).resolve()
    for candidate in (Path(os.path.abspath(path)), path.resolve()):
        if cache not in candidate.parents:
            raise UserError(f"{shown(hub_file.spec)}: the download produced '{shown(str(candidate))}', which is "
                            f"outside the download cache {cache}; refused (check HF_ENDPOINT and HF_HUB_CACHE)", 1)
    return path


# ------------------------------------------------------------------------------ downloads
def download(hub_file: HubFile, force: bool = False) -> Path:
    """The file, downloaded into the cache (or found there, for a branch or a tag that did not move);
    ``force``: download it again even if it is cached."""
    import httpx2
    from huggingface_hub import constants, hf_hub_download

    from bfncli import __version__
    from bfncli.hub_http import ServerSilent, UnsafeAnswer, guarded_downloads

    if not constants.is_offline_mode():
        _check_the_server_has_an_address(hub_file)
    try:
        with _quiet_retries(), guarded_downloads():
            found = hf_hub_download(hub_file.repo_id, hub_file.path, revision=hub_file.revision,
                                    repo_type=hub_file.repo_type, force_download=force, library_name="bfn",
                                    library_version=__version__)
    except UnsafeAnswer as err:
        raise UserError(f"{shown(hub_file.spec)}: {constants.ENDPOINT} answered {err.what} {shown(err.value)!r}, "
                        f"which would put the download outside the download cache ({constants.HF_HUB_CACHE}); "
                        "refused before anything was written: is HF_ENDPOINT a Hub you trust?", 1) from None
    except ServerSilent as err:
        raise UserError(f"cannot download {shown(hub_file.spec)}: {err.host} did not answer ({err.tries} tries, "
                        f"{err.wait:g} s each): the server is down or busy, or HF_ENDPOINT does not point to a Hub; "
                        "try again later (HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT set the wait), or "
                        f"{_by_hand(hub_file)}", 1) from None
    except (OSError, ValueError, httpx2.HTTPError) as err:  # everything the client raises, see _explain
        raise _explain(err, hub_file) from None
    return _inside_the_cache(hub_file, Path(found))


def _check_the_server_has_an_address(hub_file: HubFile) -> None:
    """A host name that does not resolve (no network, a mistyped HF_ENDPOINT) fails now, in one line,
    instead of after the client's five retries (about 25 seconds)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants, try_to_load_from_cache

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                             "all_proxy")):
        return  # a proxy resolves names this machine may not
    # A branch or tag with a cached copy: unreachable, the client falls back to that copy. (For the
    # other specs the caller has looked in the cache already.)
    if hub_file.moving and isinstance(try_to_load_from_cache(hub_file.repo_id, hub_file.path,
                                                             revision=hub_file.revision,
                                                             repo_type=hub_file.repo_type), str):
        return
    host = urlsplit(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as err:
        raise UserError(f"cannot download {shown(hub_file.spec)}: the name {host} does not resolve "
                        f"({getattr(err, 'strerror', None) or err}; no network, or a wrong HF_ENDPOINT) and the file "
                        f"is not in the download cache ({constants.HF_HUB_CACHE}): check the connection and try "
                        f"again, or {_by_hand(hub_file)}", 1) from None


class _quiet_retries:
    """The client notes every retry on stderr ("Retrying in 2s [Retry 2/5]"); bfn says what happened
    in one line when it gives up, so those notes are silenced while it downloads. Under bfn -q its
    download bars are off too."""

    def __enter__(self):
        import logging

        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

        self.logger = logging.getLogger("huggingface_hub")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        self.bars_off = quiet() and not are_progress_bars_disabled()
        if self.bars_off:
            disable_progress_bars()

    def __exit__(self, *exc):
        from huggingface_hub.utils import enable_progress_bars

        self.logger.setLevel(self.level)
        if self.bars_off:
            enable_progress_bars()
        return False


# ------------------------------------------------------------------------------- failures
def _explain(err: Exception, hub_file: HubFile) -> UserError:
    """One line for each way a download fails: what happened, and what to do."""
    import httpx2
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    spec, repo, url, endpoint = shown(hub_file.spec), hub_file.repo_id, hub_file.url, constants.ENDPOINT
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
        return f"download {hub_file.url} yourself and give that file instead of '{shown(hub_file.spec)}'"
    stem = name.rsplit(".", 1)[0]
    return (f"download {hub_file.url} yourself, run 'bfn convert {name} -o {stem}.safetensors' and give "
            f"{stem}.safetensors instead of '{shown(hub_file.spec)}'")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return line[:200]


def say(message: str) -> None:
    logger.info(message)  # under accelerate/torchrun, by the main process only (bfncli.log)
