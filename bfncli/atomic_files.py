"""Writing files so that a crash, a kill or a full disk never leaves a half-written one in place.

Everything bfn writes that a user keeps (checkpoints, samples, pictures, configs, caches) goes to a
temporary name beside its final one, is flushed to the disk, and is renamed into place in one
atomic step; the folder is flushed too, so that the rename itself survives a power cut. A failed
write removes its temporary file and leaves whatever was there before untouched. (And the one
reading helper the writers' checks share: a file's sha256.)
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

PARTIAL = ".partial"  # temporary files are named .NAME.partial-PID


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it); not every file system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def partial_name(path: Path, suffix: str = PARTIAL) -> Path:
    """The temporary name beside ``path`` used while it is written by this process."""
    path = Path(path)
    return path.with_name(f".{path.name}{suffix}-{os.getpid()}")


@contextmanager
def atomic_path(path: Path, suffix: str = PARTIAL) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    tmp = partial_name(path, suffix)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, durably: a crash leaves the old file or the new one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete temporary files left in ``folder`` by writers that were killed (their process is gone)."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = re.fullmatch(r"\..+\.partial-(\d+)(\.[A-Za-z0-9]+)?", entry.name)
        if found is None or not entry.is_file() or process_alive(int(found.group(1))):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but belongs to someone else
        return True
    return True


@contextmanager
def write_errors_as_oserror() -> Iterator[None]:
    """safetensors and ``torch.save`` wrap a failed write (disk full, missing folder) in their own
    exception types; turn those into an OSError with the system's message, which callers report.
    (``torch.save`` into a ``WholeWrites`` file keeps the system's error as the cause's context.)"""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, RuntimeError) as err:
        inner = err.__context__
        while inner is not None and not (isinstance(inner, OSError) and inner.errno):
            inner = inner.__context__
        if inner is not None:
            raise inner from err
        found = re.search(r'message: "([^"]+)"', str(err))
        lines = str(err).strip().splitlines()
        raise OSError(found.group(1) if found else lines[-1] if lines else type(err).__name__) from err


class WholeWrites:
    """A file opened unbuffered (``open(path, "wb", buffering=0)``) whose ``write`` writes all of its
    data or raises the system's error: a full disk or the shell's file size limit (``ulimit -f``) then
    says so, where a writer given the short write would report only its own confusion."""

    def __init__(self, raw):
        self.raw = raw

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            written = self.raw.write(view[done:])  # the system's error once nothing more fits
            if not written:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            done += written
        return done

    def flush(self) -> None:
        self.raw.flush()


def save_tensors(tensors: dict, path: Path, metadata: Optional[dict[str, str]] = None) -> None:
    """``safetensors.torch.save_file`` whose failures are OSErrors."""
    from safetensors.torch import save_file

    with write_errors_as_oserror():
        save_file(tensors, str(path), metadata=metadata)
    # safetensors creates its files private (0600); give them the permissions any new file gets
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
