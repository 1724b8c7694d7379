"""One writer per run: the lock file ``runs/<name>/.lock``, held by the ``bfn train`` that writes the run.

The file names its holder (process id, host, since when) and the holder keeps an exclusive
``flock`` on it for its whole life. The kernel drops that lock when the process ends in any way
(SIGKILL and crashes included), so a lock file left behind is told from a live one on the same host
without trusting process ids, which get reused. A lock file written on another host cannot be
checked from here (a shared file system): it is refused, naming the host and the file to delete if
that process is really gone. Where the file system has no ``flock``, a lock is stale when its host is
this one and its process id is not running. Released (deleted) when the run ends.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from bfncli.atomic_files import process_alive
from bfncli.errors import UserError

LOCK_NAME = ".lock"



class RunLock:
    """The lock of one run folder: ``acquire(run_dir)`` (creating the folder if needed), then ``release()``."""

    def __init__(self):
        self.run_dir = self.path = self.fd = None
        self.created: list[Path] = []  # the folders acquire() made (the run's, and --runs-dir if new)

    def acquire(self, run_dir: Path) -> None:
        if self.fd is not None:
            raise RuntimeError("this lock is held already")
        self.run_dir, self.path = Path(run_dir), Path(run_dir) / LOCK_NAME
        self.created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]  # innermost first
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            full = err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO)
            raise UserError(f"cannot create the run directory '{self.run_dir}': {err.strerror or err}; choose another "
                            "--runs-dir, free disk space or fix its permissions", exit_code=1 if full else 2) from None
        for _ in range(10):  # the file may be released (deleted) between opening and locking it: open it again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(f"cannot lock the run folder '{self.run_dir}': {err.strerror or err}; fix its "
                                "permissions", exit_code=2) from None
            if not self._lock(fd):
                continue
            os.ftruncate(fd, 0)
            record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.write(fd, (json.dumps(record) + "\n").encode())
            self.fd = fd
            return
        raise UserError(f"cannot lock the run folder '{self.run_dir}': its lock file keeps changing; is another "
                        "bfn train starting on this run?")

    def _lock(self, fd: int) -> bool:
        """Lock the open file ``fd`` or raise the one-line error naming its holder; False: the file was
        replaced meanwhile (try again)."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            kernel_lock = True
        except BlockingIOError:  # held by a running process
            holder = self._holder(fd)
            os.close(fd)
            raise UserError(self._busy(holder)) from None
        except OSError:  # no flock on this file system: the holder's process id and host decide
            kernel_lock = False
        holder = self._holder(fd)
        try:
            same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            same_file = False
        if not same_file:
            os.close(fd)
            return False
        if holder and holder.get("host") != socket.gethostname():
            os.close(fd)
            raise UserError(f"run '{self.run_dir.name}' is locked by process {holder.get('pid')} on host "
                            f"{holder.get('host')} (since {holder.get('since', '?')}); wait for it to finish, or if "
                            f"it is gone, delete {self.path}")
        if not kernel_lock and holder and holder.get("pid") != os.getpid() and process_alive(int(holder.get("pid", 0))):
            os.close(fd)
            raise UserError(self._busy(holder))
        return True

    def _holder(self, fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            data = json.loads(os.read(fd, 4096).decode() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _busy(self, holder: dict) -> str:
        who = f"process {holder['pid']}" if "pid" in holder else "another process"
        since = f", since {holder['since']}" if "since" in holder else ""
        return (f"run '{self.run_dir.name}' is being written by another bfn train ({who}{since}); one run has one "
                "writer: wait for it to finish, stop it, or choose another --run-name")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()  # before the kernel lock goes, so that no one takes over a file being deleted
            for folder in self.created:  # a new run that wrote nothing leaves nothing
                if any(folder.iterdir()):
                    break
                folder.rmdir()
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None
