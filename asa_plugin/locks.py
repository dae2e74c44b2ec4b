"""One user at a time per output directory: ``train``, ``attack`` and ``bench`` lock what they write.

Two commands writing one run directory at once lose data (two ``attack --resume`` append the same
examples twice; two ``train`` interleave train.log and clobber the model). :func:`run_lock` takes an
``fcntl.flock`` on ``DIR/.advrobust.lock`` and writes the holder (pid, host, command, start) into it;
a second user is refused with one line naming that holder. The kernel drops a flock when its
process dies, ``kill -9`` included, so a lock file left by a dead process is simply taken over. The
file is removed on release (normal exit, error or Ctrl-C).

Plain ``fcntl`` rather than the ``filelock`` package: the refusal must name the holder, which needs
the record kept inside the locked file, and the flock itself is three lines.

A bench does not lock its whole ``out_dir``: :func:`run_locks` takes one lock per training run it
runs now (``OUT/.locks/<run>.lock``), so several benches on one ``out_dir`` with disjoint
``--only-defences``/``--only-seeds`` run side by side and an overlapping one is refused naming the
holder; the files they share (``failures.json``, ``bench.json``, the report) are updated under
:func:`shared_lock`, held for the few milliseconds of each update.

A file system without flock support (NFS without lockd, Lustre mounted ``noflock``) is one line
naming the directory; ``ADVROBUST_NO_LOCKS=1`` runs without locks there (then nothing stops two
users of one directory: keep them apart yourself).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from asa_plugin.errors import UserError

LOCK_FILE = ".advrobust.lock"
LOCKS_DIR = ".locks"
"""``OUT/.locks/``: the bench's per-run locks (``<run>.lock``) and the lock of its shared files."""
NO_LOCKS_ENV = "ADVROBUST_NO_LOCKS"
"""Set to ``1`` to run without locks on a file system that has no flock support."""


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
    with _held(directory / LOCK_FILE, command, str(directory)):
        yield


@contextmanager
def run_locks(out_dir: str | Path, runs: Iterable[str], command: str) -> Iterator[None]:
    """Hold the bench lock of every run in ``runs`` (``OUT/.locks/<run>.lock``) for the ``with`` block, or
    raise :class:`UserError` naming the first run that another process holds, and its holder (the locks
    taken so far are released)."""
    folder = Path(out_dir) / LOCKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for run in sorted(set(runs)):
            stack.enter_context(_held(folder / f"{run}.lock", command, f"run '{run}' of bench {out_dir}",
                                      fix="run other defences or seeds (--only-defences, --only-seeds)"))
        yield


@contextmanager
def shared_lock(out_dir: str | Path, name: str = "shared") -> Iterator[None]:
    """Wait for, then hold, the lock of a bench's shared files (``OUT/.locks/<name>.lock``) for an update
    that takes milliseconds (read failures.json, change this bench's cells, write it back)."""
    folder = Path(out_dir) / LOCKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if _disabled():
        yield
        return
    fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _flock(fd, fcntl.LOCK_EX, folder)
        yield
    finally:
        os.close(fd)  # the kernel drops the flock with the descriptor


@contextmanager
def _held(path: Path, command: str, what: str, fix: str = "write elsewhere") -> Iterator[None]:
    """Hold the lock file ``path`` (its holder record inside) for the ``with`` block."""
    if _disabled():
        yield
        return
    fd = _acquire(path, what, fix)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder_record(command)).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before the unlock: whoever opened this inode meanwhile retries
        os.close(fd)


def _disabled() -> bool:
    return os.environ.get(NO_LOCKS_ENV, "") == "1"


NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
"""What flock raises on a file system without lock support (NFS without lockd, Lustre ``noflock``)."""


def _flock(fd: int, how: int, where: Path) -> None:
    """``fcntl.flock``; a file system without flock support is one line naming ``where`` and the fix."""
    try:
        fcntl.flock(fd, how)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno not in NO_FLOCK:
            raise
        raise UserError(f"{where}: this file system does not support file locks ({exc.strerror}); write to a "
                        f"file system that does (a local disk, NFS with lockd), or set {NO_LOCKS_ENV}=1 to run "
                        f"without locks") from None


def _acquire(path: Path, what: str, fix: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, path.parent)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise UserError(f"{what} is in use by {describe(holder)}; wait for it to finish or stop it, "
                            f"or {fix}") from None
        except UserError:
            os.close(fd)
            raise
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
