"""A stand-in for the Hugging Face Hub on 127.0.0.1: the endpoints that ``hf_hub_download`` uses.

What the client (huggingface_hub 2.x) needs, found by reading it and by trying:

    HEAD {hub}/{owner}/{repo}/resolve/{revision}/{path}
        -> 302 to the file's blob on a second origin (the "CDN", as for LFS files on the Hub). The
           client does not follow a redirect to another origin: it takes the metadata from this
           response: X-Repo-Commit (the commit the revision names), X-Linked-Etag (the blob's
           sha256: the cache key) and X-Linked-Size. No X-Xet-Hash header, so the client downloads
           over plain HTTP even with hf_xet installed.
        -> 404 with X-Error-Code RepoNotFound, RevisionNotFound or EntryNotFound (this one with
           X-Repo-Commit: the client caches the absence); 401 RepoNotFound for a private repository
           without its token (what the Hub answers), 403 GatedRepo for a gated one.
    GET  {cdn}/blobs/{sha256}
        -> the bytes, honouring "Range: bytes=N-" (206), which the client sends to resume a transfer
           that broke off. ``cut_at[path] = n`` makes the CDN hold only the first n bytes of a file
           while still announcing all of them (a broken mirror): every transfer stops at byte n.
           ``cut_once`` does the same once, then serves the file whole (a dropped connection).

Misbehaving on purpose (each a field of FakeHub):
    ``silent``          the Hub accepts connections and never answers (until it is closed)
    ``stall``           paths whose bytes the CDN starts to send, then stops sending (until it is closed)
    ``etag``            path -> the X-Linked-Etag to announce instead of the blob's sha256 ("../../x")
    ``commit``          the X-Repo-Commit to announce instead of the real one
    ``instead``         path -> a list of bodies served (and announced, size and sha256) in place of the
                        file, one per request: an HTML page from a proxy, say; the real file once they run out

Repositories of other kinds live under their prefix, as on the Hub: /datasets/OWNER/REPO/resolve/...

Every request is logged in ``requests`` (method, path), so a test can assert that none was made.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import unquote, urlsplit


def commit_hash(name: str) -> str:
    """A made-up, stable 40-character commit hash."""
    return hashlib.sha1(name.encode()).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]]  # commit hash -> {path in the repository: content}
    refs: dict[str, str]  # branch or tag -> commit hash
    token: Optional[str] = None  # private: served only with "Authorization: Bearer <token>"
    gated: bool = False


@dataclass
class FakeHub:
    repos: dict[str, Repo]
    cut_at: dict[str, int] = field(default_factory=dict)
    cut_once: dict[str, int] = field(default_factory=dict)
    silent: bool = False
    stall: set[str] = field(default_factory=set)
    etag: dict[str, str] = field(default_factory=dict)
    commit: Optional[str] = None
    instead: dict[str, list[bytes]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        self.blobs: dict[str, bytes] = {}
        self.blob_paths: dict[str, str] = {}  # sha256 -> path in its repository (for cut_at / cut_once)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._hub = _serve(self._hub_request)
        self._cdn = _serve(self._cdn_request)
        self.url = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def close(self) -> None:
        self._closing.set()
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --------------------------------------------------------------------------- the Hub
    def _hub_request(self, handler: http.server.BaseHTTPRequestHandler, method: str) -> None:
        self._log(method, handler.path)
        if self.silent:
            self._closing.wait()  # the connection is open, the request read, and no answer comes
            return
        where = urlsplit(handler.path).path.lstrip("/")
        for kind in ("datasets/", "spaces/"):
            where = where.removeprefix(kind)
        parts = where.split("/", 4)
        if len(parts) < 5 or parts[2] != "resolve":
            return _reply(handler, 404, {"X-Error-Code": "RepoNotFound"})
        repo_id, revision, path = f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote(parts[4])
        repo = self.repos.get(repo_id)
        if repo is None or (repo.token and handler.headers.get("Authorization") != f"Bearer {repo.token}"):
            status = 401 if repo is not None else 404
            return _reply(handler, status, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        if repo.gated:
            return _reply(handler, 403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is restricted"})
        commit = repo.refs.get(revision, revision if revision in repo.commits else None)
        if commit is None:
            return _reply(handler, 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
        content = repo.commits[commit].get(path)
        if content is None:
            return _reply(handler, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.commit or commit})
        with self._lock:
            if self.instead.get(path):
                content = self.instead[path].pop(0)
            sha = hashlib.sha256(content).hexdigest()
            self.blobs[sha], self.blob_paths[sha] = content, path
        _reply(handler, 302, {"Location": f"{self.cdn_url}/blobs/{sha}?signature=made-up",
                              "X-Repo-Commit": self.commit or commit, "X-Linked-Etag": self.etag.get(path, f'"{sha}"'),
                              "X-Linked-Size": str(len(content)), "ETag": f'W/"{commit[:8]}"'})

    # --------------------------------------------------------------------------- the CDN
    def _cdn_request(self, handler: http.server.BaseHTTPRequestHandler, method: str) -> None:
        self._log(method, handler.path)
        sha = urlsplit(handler.path).path.rsplit("/", 1)[-1]
        content = self.blobs.get(sha)
        if content is None:
            return _reply(handler, 404, {})
        start = 0
        if handler.headers.get("Range", "").startswith("bytes="):
            start = int(handler.headers["Range"][len("bytes="):].split("-")[0])
        path = self.blob_paths[sha]
        with self._lock:
            cut = self.cut_at.get(path, self.cut_once.pop(path, None))
        handler.send_response(206 if start else 200)
        handler.send_header("Content-Length", str(len(content) - start))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        handler.send_header("Accept-Ranges", "bytes")
        handler.end_headers()
        if method == "GET" and path in self.stall:
            handler.wfile.write(content[start:start + 1000])
            handler.wfile.flush()
            self._closing.wait()  # the rest never comes
            return
        if method == "GET":
            body = content[start:] if cut is None else content[start:max(cut, start)]
            handler.wfile.write(body)
        if cut is not None:  # promised more than was sent: the client sees the connection drop
            handler.close_connection = True

    def _log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))


def _reply(handler, status: int, headers: dict[str, str]) -> None:
    handler.send_response(status)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _serve(respond) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client expects

        def do_HEAD(self):
            respond(self, "HEAD")

        def do_GET(self):
            respond(self, "GET")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
