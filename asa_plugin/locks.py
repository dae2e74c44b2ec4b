"""One user at a time per output directory: ``train``, ``attack`` and ``bench`` lock what they write.

Two commands writing one run directory at once lose data (two ``attack --resume`` append the same
examples twice; two ``train`` interleave train.log and clobber the model). :func:`run_lock` takes an
``fcntl.flock`` on ``DIR/.advrobust.lock`` and writes the holder (pid, host, command, start) into it;
a second user is refused with one line naming that holder. The kernel drops a flock when its
process dies, ``kill -9`` included, so a lock file left by a dead process is simply taken over. The
file is removed on release (normal exit, error or Ctrl-C).

Plain ``fcntl`` rather than the ``filelock`` package: the refusal must name the holder, which needs
the record kept inside the locked file, and the flock itself is three lines.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from asa_plugin.errors import UserError

LOCK_FILE = ".advrobust.lock"


def holder_record(command: str) -> dict:
    """What a lock says about the process holding it."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


@contextmanager
def run_lock(directory: str | Path, command: str, enabled: bool = True) -> Iterator[None]:
    """Hold ``directory``'s lock for the ``with`` block, or raise :class:`UserError` naming its holder.

    ``command`` describes this process in the lock (e.g. ``"advrobust train run.toml"``);
    ``enabled=False`` does nothing (the processes of a multi-process run other than the main one).
    """
    if not enabled:
        yield
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = _acquire(path, directory)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder_record(command)).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before the unlock: whoever opened this inode meanwhile retries
        os.close(fd)


def _acquire(path: Path, directory: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise UserError(f"{directory} is in use by {describe(holder)}; wait for it to finish or stop it, "
                            f"or write elsewhere") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # released and removed between our open and our flock
            same = False
        if same:
            return fd
        os.close(fd)


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def describe(holder: dict) -> str:
    """``pid 123 on host (advrobust train run.toml, since ...)``, or as much of it as is known."""
    if not holder.get("pid"):
        return "another advrobust process (it is starting)"
    return (f"pid {holder['pid']} on {holder.get('host', '?')} ({holder.get('command', '?')}, "
            f"since {holder.get('since', '?')})")
