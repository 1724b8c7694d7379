"""The HTTP client bfn lends huggingface_hub while it downloads: bounded waits, and no path outside the cache.

Paths. The client builds its cache paths from what the server answers: the commit a revision names
(``X-Repo-Commit``: ``snapshots/COMMIT/...``, ``.no_exist/COMMIT/...``) and the file's ETag
(``X-Linked-Etag`` or ``ETag``: ``blobs/ETAG``, ``.locks/.../ETAG.lock``). A server answering
``../../..`` there would have the client write outside the cache, so every answer is checked before
the client reads it: a commit is 40 hexadecimal digits, an ETag one plain file name. Anything else
stops the download (:class:`UnsafeAnswer`) before a byte is written.

Waits. The client waits ``HF_HUB_ETAG_TIMEOUT`` seconds (10) for a file's metadata, but when the
file is not cached it asks again with 60-second waits and up to five retries, so a server that
accepts connections and never answers holds a command for minutes. Here no connect or read waits
longer than the larger of ``HF_HUB_ETAG_TIMEOUT`` and ``HF_HUB_DOWNLOAD_TIMEOUT`` (both 10 s unless
set), and a host that has left ``SILENT_TRIES`` requests in a row unanswered is not asked again in
this process (:class:`ServerSilent`). An answer resets the count, so a long transfer that stalls
now and then still resumes as the client intends.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from typing import Iterator

import httpx2

SILENT_TRIES = 3  # unanswered requests in a row after which a host is given up on
COMMIT = re.compile(r"[0-9a-f]{40}")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")  # one file name, never '.', '..' or a folder


class UnsafeAnswer(Exception):
    """The server named a commit or an ETag that is no plain file name."""

    def __init__(self, url: str, what: str, value: str):
        super().__init__(f"{url} answered {what} {value!r}")
        self.url, self.what, self.value = url, what, value


class ServerSilent(Exception):
    """A host left SILENT_TRIES requests in a row unanswered within the wait."""

    def __init__(self, host: str, wait: float, tries: int):
        super().__init__(f"{host} did not answer {tries} requests in a row within {wait:g} s each")
        self.host, self.wait, self.tries = host, wait, tries


def longest_wait() -> float:
    """Seconds any connect or read may take: what HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT allow."""
    from huggingface_hub import constants

    return float(max(constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT))


def check_answer(url: str, status: int, headers) -> None:
    """Refuse a Hub answer whose commit or ETag the client would turn into a path outside the cache."""
    commit = headers.get("X-Repo-Commit")
    if commit is None:
        return  # not a Hub metadata answer (a CDN's bytes): nothing of it becomes a path
    if not COMMIT.fullmatch(commit):
        raise UnsafeAnswer(url, "the commit", commit)
    etag = headers.get("X-Linked-Etag") or headers.get("ETag")
    if status < 400 and etag is not None:
        name = etag.lstrip("W/").strip('"')  # as huggingface_hub.file_download._normalize_etag reads it
        if not SAFE_NAME.fullmatch(name):
            raise UnsafeAnswer(url, "the ETag", etag)


class _Silence:
    """Unanswered requests in a row, per host, in this process."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def note(self, host: str, answered: bool) -> None:
        with self.lock:
            self.counts[host] = 0 if answered else self.counts.get(host, 0) + 1

    def check(self, host: str) -> None:
        if self.counts.get(host, 0) >= SILENT_TRIES:
            raise ServerSilent(host, longest_wait(), SILENT_TRIES)


_SILENCE = _Silence()


class _CountedStream(httpx2.SyncByteStream):
    """A response body whose stalls count as silence too."""

    def __init__(self, inner, host: str):
        self.inner, self.host = inner, host

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.inner:
                if chunk:
                    _SILENCE.note(self.host, answered=True)
                yield chunk
        except httpx2.TimeoutException:
            _SILENCE.note(self.host, answered=False)
            raise

    def close(self) -> None:
        self.inner.close()


class _Guard(httpx2.BaseTransport):
    """Wraps the client's own transport (its proxies and certificates stay as they are)."""

    def __init__(self, inner: httpx2.BaseTransport):
        self.inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        host = f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"
        _SILENCE.check(host)
        wait = longest_wait()
        timeouts = request.extensions.get("timeout") or {}
        request.extensions = {**request.extensions, "timeout": {
            kind: wait if timeouts.get(kind) is None else min(timeouts[kind], wait)
            for kind in ("connect", "read", "write", "pool")}}
        try:
            response = self.inner.handle_request(request)
        except httpx2.TimeoutException:
            _SILENCE.note(host, answered=False)
            raise
        _SILENCE.note(host, answered=True)
        try:
            check_answer(str(request.url), response.status_code, response.headers)
        except UnsafeAnswer:
            response.close()
            raise
        response.stream = _CountedStream(response.stream, host)
        return response

    def close(self) -> None:
        self.inner.close()


def _guarded_client() -> httpx2.Client:
    from huggingface_hub.utils._http import default_client_factory

    client = default_client_factory()
    # The client's transports (the direct one, and one per proxy taken from the environment) are
    # chosen when it is built; each is wrapped, so every request passes the guard.
    client._transport = _Guard(client._transport)
    client._mounts = {pattern: None if transport is None else _Guard(transport)
                      for pattern, transport in client._mounts.items()}
    return client


@contextmanager
def guarded_downloads() -> Iterator[None]:
    """huggingface_hub's requests inside the block go through the guard."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    set_client_factory(_guarded_client)
    try:
        yield
    finally:
        set_client_factory(default_client_factory)
