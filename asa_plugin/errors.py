"""Errors that reach the user as one line, never as a traceback."""

import errno
import os


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


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
"""A write that failed for want of room or permission to write there: the disk, not the program."""
RUST_NO_SPACE = ("os error 28", "StorageFull")
"""How safetensors (Rust) words ENOSPC in the errors it raises while saving weights."""
TORCH_WRITE_FAILED = ("basic_ios::clear", "PytorchStreamWriter failed", "file write failed",
                      "inline_container.cc")
"""How ``torch.save`` (its C++ zip writer) reports a write that failed, without an errno: found by saving a
checkpoint onto a nearly full tmpfs ("basic_ios::clear: iostream error", "[enforce fail at
inline_container.cc:672] . unexpected pos ...")."""
RERUN = {"train": "rerun the same command with --resume (the last checkpoint is kept)",
         "attack": "rerun the same command with --resume (finished examples are kept)",
         "bench": "rerun the same command (finished cells are kept)"}


def write_failure(exc: BaseException, command: str) -> str | None:
    """The one line for an exception that is a failed write (disk full, quota, read-only file system,
    file too large) under ``advrobust COMMAND``; None for any other exception."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        where, reason = (f" {exc.filename}" if exc.filename else ""), exc.strerror or os.strerror(exc.errno)
    elif any(marker in str(exc) for marker in RUST_NO_SPACE):
        where, reason = "", os.strerror(errno.ENOSPC)
    elif isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in TORCH_WRITE_FAILED):
        first = str(exc).strip().splitlines()[0][:120]
        where, reason = "", f"torch's file writer failed ({first}), as it does on a full disk"
    else:
        return None
    return (f"cannot write{where}: {reason}; free space (or choose another output directory), then "
            f"{RERUN.get(command, 'rerun the same command')}")


def is_main_rank() -> bool:
    """False in the processes other than rank 0 of a distributed launch (``accelerate launch``,
    ``torchrun``): they hit the same bad input, and one copy of its line is enough."""
    return os.environ.get("RANK", "0") in ("", "0")
