"""Getting dataset files: verified, resumable, never half-written, offline when they are already there.

Each file has a list of URLs (user mirrors first, then the canonical source and known mirrors) and a
checksum or size, which every download must match. A download goes to ``NAME.part`` (resumed with an HTTP Range request when a
previous attempt broke off), is verified, and only then renamed to ``NAME``. A file that fails
verification is deleted, so nothing half-written is ever trusted. Connection attempts time out in
seconds, so a machine without network fails fast with a message saying what to put where.

One process downloads a file at a time: the processes of one run (``accelerate launch`` on a fresh
machine), or two commands sharing a data folder, take turns on a lock beside the file
(``.NAME.lock``, released by the system when its holder exits). The first downloads; the others
wait, then verify what it left and use it (or, if it failed, try themselves, resuming its ``.part``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from bfncli.errors import InputError, UserError
from bfncli.log import bar_disabled, logger

CONNECT_TIMEOUT = 10.0  # seconds per connection attempt (and per stalled read)
ATTEMPTS_PER_URL = 3
CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    name: str
    urls: tuple[str, ...]
    md5: Optional[str] = None
    size: Optional[int] = None
    note: str = ""  # how it is verified, for messages

    def with_mirrors(self, mirrors: list[str]) -> "RemoteFile":
        extra = tuple(m.rstrip("/") + "/" + self.name for m in mirrors)
        return RemoteFile(self.name, extra + self.urls, self.md5, self.size, self.note)


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, remote: RemoteFile) -> Optional[str]:
    """None if the file is what it should be, else what is wrong."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"has {size:,} bytes instead of {remote.size:,}"
    if remote.md5 is not None and md5sum(path) != remote.md5:
        return "does not match its MD5 checksum"
    return None


def ensure(remote: RemoteFile, directory: Path, download: bool, mirrors: list[str]) -> Path:
    """The local, verified copy of ``remote`` in ``directory``, downloading it if needed."""
    target = Path(directory) / remote.name
    if target.exists():
        # Files the user put there are taken as they are (a re-compressed copy from another mirror
        # has another checksum); the readers check their structure. Downloads are verified below.
        return target
    remote = remote.with_mirrors(mirrors)
    if not download:
        raise InputError(f"'{target}' is missing and downloads are off (data.download=false); download it from "
                         f"{remote.urls[0]} and put it in {directory}")
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the data directory '{directory}': {err.strerror or err}") from None
    with _one_at_a_time(target):
        if target.exists():  # another process downloaded it while this one waited
            problem = verify(target, remote)
            if problem is not None:
                raise UserError(f"'{target}' appeared while this process waited for another one to download it, "
                                f"but it {problem}; delete it and run again")
            return target
        return _download(remote, target, directory)


@contextmanager
def _one_at_a_time(target: Path) -> Iterator[None]:
    """Hold the lock beside ``target``; say so once if another process holds it now."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(target.with_name(f".{target.name}.lock")), mode=0o666)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info(f"waiting for another process that is downloading {target.name} into {target.parent}",
                    extra={"all_processes": True})  # whichever process waits says so
        lock.acquire()
    except OSError as err:
        raise UserError(f"cannot create a lock file in the data directory '{target.parent}': "
                        f"{err.strerror or err}") from None
    try:
        yield
    finally:
        lock.release()


def _download(remote: RemoteFile, target: Path, directory: Path) -> Path:
    failures = []
    for url in remote.urls:
        problem = _fetch(url, target, remote)
        if problem is None:
            return target
        failures.append(f"{url}: {problem}")
        if problem.startswith("offline"):
            break  # no point trying every mirror without a network
    raise UserError(
        f"could not download {remote.name} ({'; '.join(failures)}); download it yourself from "
        f"{' or '.join(remote.urls)} and put it in {Path(directory).resolve()}"
    )


def _fetch(url: str, target: Path, remote: RemoteFile) -> Optional[str]:
    """Download one URL into ``target`` (via ``target.part``); None on success, else why not."""
    from tqdm import tqdm

    part = target.with_name(target.name + ".part")
    last = "failed"
    for _ in range(ATTEMPTS_PER_URL):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "bfn"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT) as response:
                resumed = response.status == 206
                if not resumed:
                    have = 0
                length = response.headers.get("Content-Length")
                total = (int(length) + have) if length else remote.size
                with open(part, "ab" if resumed else "wb") as out, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=remote.name, file=sys.stderr,
                    leave=False, disable=bar_disabled(),
                ) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
                    out.flush()
                    os.fsync(out.fileno())
                if length and part.stat().st_size != total:
                    last = f"the transfer stopped after {part.stat().st_size:,} of {total:,} bytes"
                    continue
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # our partial file is no use to this server: start over
                part.unlink(missing_ok=True)
                last = "could not resume"
                continue
            return f"HTTP {err.code}"
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, socket.gaierror) or "Name or service not known" in str(reason):
                return "offline (cannot resolve the host)"
            last = f"{reason}"
            if isinstance(reason, ConnectionRefusedError):
                return "connection refused"
            continue
        except (OSError, http.client.HTTPException) as err:  # timeouts, cut connections: try again (resuming)
            last = str(err) or type(err).__name__
            continue
        problem = verify(part, remote)
        if problem is None:
            os.replace(part, target)
            return None
        part.unlink(missing_ok=True)  # never keep, and never resume, a file that failed verification
        return f"the download {problem}"
    return last
