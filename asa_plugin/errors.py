"""Errors that reach the user as one line, never as a traceback."""

import errno
import os
import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do.

    The CLI prints it as a single line and exits with ``exit_code``.
    """

    exit_code = 2


class ConfigError(UserError):
    """A config file (or ``--set`` override) is invalid."""


class DataError(UserError):
    """A dataset is missing, empty or malformed."""


class PluginError(UserError):
    """A plugin could not be loaded or registered."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


NO_ROOM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
"""A write that failed for want of room: free space, or write elsewhere."""
NO_PERMISSION_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
"""A write that is not allowed there (read-only file system, permissions): freeing space would not help."""
WRONG_KIND_ERRNOS = {errno.EISDIR, errno.ENOTDIR}
"""A file where a folder belongs, or the reverse (``results.jsonl`` that is a directory)."""
WRITE_ERRNOS = NO_ROOM_ERRNOS | NO_PERMISSION_ERRNOS
RUST_NO_SPACE = ("os error 28", "StorageFull")
"""How safetensors (Rust) words ENOSPC in the errors it raises while saving weights."""
TORCH_WRITE_FAILED = ("basic_ios::clear", "PytorchStreamWriter failed", "file write failed",
                      "inline_container.cc")
"""How ``torch.save`` (its C++ zip writer) reports a write that failed, without an errno: found by saving a
checkpoint onto a nearly full tmpfs ("basic_ios::clear: iostream error", "[enforce fail at
inline_container.cc:672] . unexpected pos ...")."""
RESUMABLE = {"train": "rerun the same command with --resume (the last checkpoint is kept)",
             "pretrain": "rerun the same command with --resume (the last checkpoint is kept)",
             "attack": "rerun the same command with --resume (finished examples are kept)",
             "bench": "rerun the same command (finished cells are kept)"}
PATH_ATTR = "advrobust_path"
"""Attribute :func:`writing` sets on a failed write that names no file, so its line can name it."""


@contextmanager
def writing(path):
    """Name ``path`` in a failed write inside this block that names no file of its own (a full disk
    while ``write()`` runs, safetensors' or torch's writers)."""
    try:
        yield
    except Exception as exc:
        if not getattr(exc, "filename", None) and not getattr(exc, PATH_ATTR, None):
            try:
                setattr(exc, PATH_ATTR, str(path))
            except AttributeError:  # an exception type without a __dict__
                pass
        raise


def _rerun(command: str) -> str:
    """How to continue: a train/pretrain run offers --resume only once a checkpoint was written."""
    from asa_plugin import interrupts

    if command in ("train", "pretrain") and not interrupts.state.saved:
        return "rerun the same command (no checkpoint had been written, so it starts over)"
    return RESUMABLE.get(command, "rerun the same command")


def write_failure(exc: BaseException, command: str) -> str | None:
    """The one line for an exception that is a failed write (disk full, quota, read-only file system,
    no permission, file too large, a directory where a file belongs) under ``advrobust COMMAND``;
    None for any other exception."""
    name = getattr(exc, "filename", None) or getattr(exc, PATH_ATTR, None)
    where = f" {name}" if name else ""
    code = exc.errno if isinstance(exc, OSError) else None
    if code in WRONG_KIND_ERRNOS:
        kind = "a directory" if code == errno.EISDIR else "a file"
        return (f"cannot write{where}: it (or a folder on its path) is {kind}, which this command writes as "
                f"{'a file' if code == errno.EISDIR else 'a directory'}; move it away, then {_rerun(command)}")
    if code in NO_PERMISSION_ERRNOS:
        return (f"cannot write{where}: {exc.strerror or os.strerror(code)}; choose an output directory you can "
                f"write (or make this one writable), then {_rerun(command)}")
    if code in NO_ROOM_ERRNOS:
        reason = exc.strerror or os.strerror(code)
    elif any(marker in str(exc) for marker in RUST_NO_SPACE):
        reason = os.strerror(errno.ENOSPC)
    elif isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in TORCH_WRITE_FAILED):
        first = str(exc).strip().splitlines()[0][:120]
        reason = f"torch's file writer failed ({first}), as it does on a full disk"
    else:
        return None
    return f"cannot write{where}: {reason}; free space (or choose another output directory), then {_rerun(command)}"


_COMMAND: list[str] = []
"""The ``advrobust`` command running in this process (set by the CLI), so a shared message suggests only
flags that command has."""


def set_command(name: str | None) -> None:
    _COMMAND[:] = [name] if name else []


def current_command() -> str | None:
    return _COMMAND[0] if _COMMAND else None


def start_over_hint(path, attack_words: str = "rerun with --overwrite") -> str:
    """How to discard earlier results at ``path``: ``attack_words`` (``--overwrite``) under ``advrobust
    attack`` (the only command with that flag), else moving them away."""
    return attack_words if current_command() in (None, "attack") else f"move {path} away to start it again"


def stderr_note(message: str, command: str = "attack") -> None:
    """``advrobust COMMAND: note: MESSAGE`` on stderr: a fact the user should know, not an error."""
    print(f"advrobust {command}: note: {message}", file=sys.stderr, flush=True)


def is_main_rank() -> bool:
    """False in the processes other than rank 0 of a distributed launch (``accelerate launch``,
    ``torchrun``): they hit the same bad input, and one copy of its line is enough."""
    return os.environ.get("RANK", "0") in ("", "0")
