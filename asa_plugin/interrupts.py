"""What an interrupted command (Ctrl-C or SIGTERM) can truthfully tell the user.

Long-running code records, as it goes, whether something resumable has been saved; the CLI
prints that, instead of promising a ``--resume`` that has nothing to continue from.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass
class Progress:
    saved: bool | None = None  # None: nothing recorded (the command keeps nothing to resume)
    detail: str = ""           # e.g. "the last checkpoint (step 400) is in runs/x"
    rerun: str = ""            # how to continue, e.g. "rerun with --resume to continue"


state = Progress()


def record(saved: bool, detail: str) -> None:
    """Note whether a resumable state exists now, and where."""
    state.saved, state.detail = saved, detail


def record_checkpoint(run_dir, found) -> None:
    """What a training run stopped before its loop started keeps: ``found``, the checkpoint it resumes
    (``training.checkpoint.find``), or nothing (None)."""
    record(found is not None, f"the last checkpoint is in {run_dir}" if found is not None else
           f"no checkpoint written yet in {run_dir}")


def set_rerun(advice: str) -> None:
    """How this command continues after an interruption (set once by the command)."""
    state.rerun = advice


def reset() -> None:
    state.saved, state.detail, state.rerun = None, "", ""


def message() -> str:
    """The one line printed after an interruption."""
    if state.saved is None:
        return "interrupted" + (f"; {state.rerun}" if state.rerun else "")
    if state.saved:
        return f"interrupted; {state.detail}; {state.rerun or 'rerun with --resume to continue'}"
    return f"interrupted; {state.detail}; nothing to resume yet, a rerun starts this part over"


def sigterm_as_interrupt():
    """Handle SIGTERM (``kill``, a scheduler's timeout) exactly like Ctrl-C; return the handler it replaced
    (None where none could be installed), for :func:`restore_sigterm`."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
        return None


def restore_sigterm(previous) -> None:
    """Put back the SIGTERM handler :func:`sigterm_as_interrupt` replaced (a command run inside a Python
    session, such as a test's ``main([...])``, leaves that session's own SIGTERM behaviour as it found it)."""
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
