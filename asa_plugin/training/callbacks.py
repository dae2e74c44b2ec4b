"""Step callbacks: code that runs after each optimizer step of the training loop, outside the loop itself.

The loop calls every installed callback on every process after each optimizer step, once that step's
logging and checkpoint are done. Tests use it to stop a run at a known step (``tests/kill_at_step.py``
SIGKILLs the process there, as a kill -9 would); a tool can use it to follow a run step by step. The
per-epoch observer of plugins is the ``advrobust_on_epoch_end`` hook.

    from asa_plugin.training.callbacks import step_callback

    with step_callback(lambda end: print(end.step)):
        train(cfg)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StepEnd:
    """What a step callback is told: which optimizer step of which run has just finished, on which process."""

    run_dir: Path
    step: int  # optimizer steps finished (1 after the first)
    epoch: int  # the epoch this step belongs to, from 0
    process_index: int  # this process's rank (0 in a single-process run)


StepCallback = Callable[[StepEnd], None]
_installed: list[StepCallback] = []


def add_step_callback(callback: StepCallback) -> Callable[[], None]:
    """Install ``callback`` for every later step of every run in this process; return a function that removes it."""
    _installed.append(callback)

    def remove() -> None:
        if callback in _installed:
            _installed.remove(callback)

    return remove


@contextmanager
def step_callback(callback: StepCallback) -> Iterator[None]:
    """``callback`` installed inside the block only."""
    remove = add_step_callback(callback)
    try:
        yield
    finally:
        remove()


def step_ended(end: StepEnd) -> None:
    """Called by the loop after each optimizer step: run every installed callback, in the order installed."""
    for callback in list(_installed):
        callback(end)
