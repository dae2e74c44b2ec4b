"""Thread policy: how many torch intra-op threads a command uses on the CPU, and why.

Order of precedence, highest first:

1. the config (``attack.threads``, ``train.threads``);
2. ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``) in the environment;
3. a count the user already set with ``torch.set_num_threads`` in this process (any count other than
   torch's own default and other than the count this module set itself for an earlier command in the process:
   a second ``train`` in one Python session resolves as the first did, not as if the user had chosen it);
4. the command's default (``1`` per attack worker, :data:`TRAIN_DEFAULT_THREADS` for training).

Every command records its :class:`ThreadChoice` (threads and source) in its summary or metrics.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MAX_THREADS = 1024
"""The most threads a config may ask for: more than any CPU node has cores (``--threads 100000`` made
torch allocate per-thread state until a MemoryError); threads beyond the cores only slow it down."""
THREADS_WHY = "threads beyond the CPU cores only slow torch down"
SEED_MAX = 2**32 - 1
SEED_WHY = "numpy seeds are 0..2**32-1"
TRAIN_DEFAULT_THREADS = 1
"""Measured on the shared 2-core machines (benchmarks/train_threads.py, benchmarks/README.md)."""
_applied: int | None = None
"""The count :func:`apply_threads` or :func:`follow_thread_budget` last set in this process (None: never): torch
running at it is this module's doing, not a count the user chose."""


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count a process runs with and where it came from."""

    threads: int
    source: str  # "config" | "OMP_NUM_THREADS" | "MKL_NUM_THREADS" | "torch.set_num_threads" | "default"

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def env_threads() -> tuple[int, str] | None:
    """(threads, variable) from an explicit ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, else None."""
    for name in THREAD_ENVS:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value), name
    return None


def torch_default_threads() -> set[int]:
    """Counts torch picks by itself when nobody sets one (logical or physical cores)."""
    counts = {cpu_count(), os.cpu_count() or 1}
    try:
        import psutil

        counts.add(psutil.cpu_count(logical=False) or 1)
    except ImportError:
        pass
    return counts


def resolve_threads(configured: int | None, default: int) -> ThreadChoice:
    """The thread count for this process by the precedence above (nothing is set here)."""
    import torch

    if configured is not None:
        return ThreadChoice(int(configured), "config")
    from_env = env_threads()
    if from_env is not None:
        return ThreadChoice(*from_env)
    current = torch.get_num_threads()
    if current not in torch_default_threads() and current != _applied:
        return ThreadChoice(current, "torch.set_num_threads")
    return ThreadChoice(max(1, int(default)), "default")


def apply_threads(configured: int | None, default: int) -> ThreadChoice:
    """Resolve the thread count and set it with ``torch.set_num_threads``; return the choice."""
    import torch

    choice = resolve_threads(configured, default)
    if torch.get_num_threads() != choice.threads:
        _set_threads(choice.threads)
    return choice


def _set_threads(count: int) -> None:
    """``torch.set_num_threads(count)``, remembered as this module's own choice (see :func:`resolve_threads`)."""
    global _applied
    import torch

    torch.set_num_threads(count)
    _applied = count


# --- threads lent by the bench's executor ------------------------------------------------------------------------
_lent_threads = None
"""A shared integer (``multiprocessing`` raw value) the local executor rewrites with the threads this cell
process may use now (see :func:`asa_plugin.bench.executors.lend_idle_cores`); None outside such a process."""


def install_thread_budget(shared) -> None:
    """Let this process follow ``shared.value``, the thread count the executor lends it (``bench.lend_idle_cores``)."""
    global _lent_threads
    _lent_threads = shared


def follow_thread_budget(choice: ThreadChoice) -> int | None:
    """Set torch's intra-op threads to the count the executor lends this process, when it differs from the
    current count; return the new count, else None.

    Only a count chosen by default follows the budget: ``train.threads`` and ``OMP_NUM_THREADS`` win. The
    executor never lends fewer than one thread."""
    if _lent_threads is None or choice.source != "default":
        return None
    import torch

    wanted = max(1, int(_lent_threads.value))
    if wanted == torch.get_num_threads():
        return None
    _set_threads(wanted)
    return wanted
