"""The training loop's state: what one run carries from step to step and from a checkpoint to its resume.

:class:`TrainState` is written into each checkpoint's ``trainer_state.json`` (:func:`to_dict`) and read back on
``--resume`` (:func:`from_checkpoint`, which also reads checkpoints written before a field existed).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainState:
    """Where a training run is, and what it has measured so far."""

    epoch: int = 0  # epochs finished
    batches_done: int = 0  # micro-batches of the current epoch this process has run (a resume skips them)
    global_step: int = 0  # optimizer steps finished
    history: list[dict[str, Any]] = field(default_factory=list)  # one row of eval metrics per finished epoch
    step_history: list[dict[str, Any]] = field(default_factory=list)  # one row per logged step
    train_seconds: float = 0.0  # wall seconds of the training steps (evaluation and checkpoints not counted)
    train_cpu_seconds: float | None = 0.0  # CPU seconds of this process; None: resumed from a run that did not count
    examples_seen: int = 0  # training examples over every process
    num_processes: int = 1  # processes of the run (a resume must use as many)
    data_sha256: str = ""  # fingerprint of the data (a resume on other data is refused)
    thread_changes: list[dict[str, int]] = field(default_factory=list)  # {"step", "threads"}: cores lent or taken
    defence_state: dict[str, Any] = field(default_factory=dict)  # Defence.state_dict() at the last save

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> TrainState:
        """The state a checkpoint saved; a field it lacks (written before the field existed) gets its default,
        except ``train_cpu_seconds``, which is then unknown (None); keys this version does not know are dropped."""
        known = {name: saved[name] for name in cls.__dataclass_fields__ if name in saved}
        known.setdefault("train_cpu_seconds", None)
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form written into ``trainer_state.json``."""
        return asdict(self)

    def add_time(self, watch: Stopwatch) -> None:
        """Add the wall and CPU seconds since ``watch`` (re)started to the run's training time."""
        wall, cpu = watch.elapsed()
        self.train_seconds += wall
        if self.train_cpu_seconds is not None:
            self.train_cpu_seconds += cpu


class Stopwatch:
    """Wall seconds (``time.perf_counter``) and CPU seconds (``time.process_time``: every thread of this
    process, user and system). CPU seconds do not grow when other processes share the machine, so they
    compare runs of a loaded machine where wall seconds do not."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """Count from now."""
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        """(wall, CPU) seconds since the watch (re)started."""
        return time.perf_counter() - self.wall, time.process_time() - self.cpu
