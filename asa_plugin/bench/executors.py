"""Executors of the grid's cells behind one interface (``bench.executor`` / ``--executor``).

:func:`run_cells` walks the graph: it submits every ready cell (its dependencies done) to an
executor, longest first, as long as the executor has room, prints one line per finished cell
(cells done/total and an estimate of the time left), records a failed cell's one-line error in
the log and in ``OUT/failures.json`` (the report lists it), and skips the cells that depend on a
failed one. The other cells go on, so one bad asset costs its own cells only; a rerun retries
exactly the cells that are not done.

Executors are plugins: each is a subclass of :class:`Executor` registered under a name by the hook
``advrobust_register_executors`` (the built-ins in :mod:`asa_plugin.bench.plugin`, exactly as a
third-party package would), chosen by ``bench.executor`` / ``--executor``. After a cell reports
success, :func:`run_cells` checks on this machine that the cell's output exists (a node that does not
share ``out_dir`` would otherwise leave the model on its own disk and the grid's attacks missing).

Built-in executors:

- :class:`InlinePool` (``local`` with ``max_parallel = 1``): cells one after another in this
  process, as the bench always ran (training and attack progress bars unless ``--no-progress``,
  ``attack.workers`` processes).
- :class:`ProcessPool` (``local``): one fresh process per cell, up to ``max_parallel`` at a time
  (default: one per GPU, else one per CPU core), each cell with one CPU thread and, on GPUs, its own
  device, and no progress bars (the bench's per-cell lines instead: bars of several processes would
  interleave). A process that dies (killed, out of memory) fails only its cell. With
  ``bench.lend_idle_cores`` (CPU only), the cores no cell uses are lent to the running training cells
  as extra torch threads (:func:`lend_idle_cores`) and taken back when a new cell starts.
- :class:`~asa_plugin.bench.ray_executor.RayPool` (``ray``): each cell a Ray task with the cell's
  ``num_cpus``/``num_gpus`` on the cluster at ``bench.ray_address`` (a local one when none is given);
  a task whose worker dies is retried ``bench.retries`` times, and its resume makes the retry continue.
- :class:`~asa_plugin.bench.slurm_executor.SlurmPool` (``slurm``): each cell a SLURM job through
  submitit, with the resources of ``[bench.slurm]``; a job that dies is resubmitted ``bench.retries`` times.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asa_plugin.bench.cells import GridCell, execute, priority
from asa_plugin.fileio import write_json_atomic

FAILURES_FILE = "failures.json"
"""OUT/failures.json: cell key -> its one-line error, for the cells whose last attempt failed."""

Log = Callable[[str], None]
Finished = tuple[GridCell, "str | None", "str | None", float]  # (cell, result line, error line, seconds)


def one_line(exc: BaseException) -> str:
    """A failure as one line: a user error as it is, anything else with its type."""
    from asa_plugin.errors import UserError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}".rstrip(": ")


def timed(cell: GridCell, progress: bool = False, gpu: int | None = None,
          single_worker: bool = False) -> tuple[str, float]:
    """:func:`~asa_plugin.bench.cells.execute` and its wall time."""
    start = time.perf_counter()
    line = execute(cell, progress=progress, gpu=gpu, single_worker=single_worker)
    return line, time.perf_counter() - start


# --- the executor interface --------------------------------------------------------------------------------------
class Executor(ABC):
    """How the cells of a grid run. A plugin registers a subclass under a name
    (``register("name", MyExecutor)`` in ``advrobust_register_executors``); the bench then calls, in order:

    1. ``MyExecutor.from_bench(bench, settings, progress, log)``: build it from ``[bench]`` (``settings``: the
       ``[bench.<name>]`` table as an instance of the class attribute ``settings``, a config dataclass, or
       None when the executor has none). Refuse bad settings here with :class:`~asa_plugin.errors.UserError`.
    2. ``submit(cell)`` for each ready cell while ``running() < capacity``: start the cell with its
       resources (``cell.threads`` CPU threads, ``cell.gpus`` GPUs); the cell's body is
       :func:`run_cell_remote` (call it wherever the cell runs: it returns ``(ok, line or error, seconds)``).
    3. ``wait()`` (poll): block until at least one submitted cell has ended; return a
       ``(cell, result line, error line, seconds)`` for each (exactly one of line and error is None).
       A cell whose process died (killed, out of memory, node lost) is resubmitted up to ``retries``
       times first (a cell resumes, so a retry continues); its error line says how it died.
    4. ``cancel()`` when the bench stops early (Ctrl-C, SIGTERM) and ``close()`` at the end, always.
    """

    settings: type | None = None
    """Config dataclass of the executor's ``[bench.<name>]`` table (None: it takes none)."""
    capacity: int = 1
    """Cells submitted at once (the bench never submits more)."""
    retries: int = 0

    @property
    def parallel(self) -> int:
        """Cells that really run at once (for the time-left estimate)."""
        return self.capacity

    @classmethod
    @abstractmethod
    def from_bench(cls, bench, settings: Any, progress: bool, log: Log) -> Executor:
        """The executor for the ``[bench]`` section ``bench``."""

    @abstractmethod
    def submit(self, cell: GridCell) -> None:
        """Start ``cell`` (its dependencies have finished)."""

    @abstractmethod
    def running(self) -> int:
        """Cells submitted and not yet returned by :meth:`wait`."""

    @abstractmethod
    def wait(self) -> list[Finished]:
        """Block until a submitted cell ends; every cell that ended (see the class docstring)."""

    def cancel(self) -> None:
        """Stop every running cell (the default: :meth:`close`)."""
        self.close()

    def rebalance(self) -> None:  # noqa: B027 - optional: most executors have nothing to lend
        """Every ready cell has been submitted: a chance to lend idle resources (default: nothing)."""

    def describe(self) -> str:
        """The executor in words, for the log."""
        return type(self).__name__

    def close(self) -> None:  # noqa: B027 - optional: an executor may hold nothing
        """Release what the executor holds (processes, a Ray connection); called once at the end."""


def run_cell_remote(cell: GridCell) -> tuple[bool, str, float]:
    """A cell's body wherever an executor runs it: ``(True, result line, seconds)``, or
    ``(False, one-line error, 0.0)`` when the cell raised (a cell's own error is never retried)."""
    try:
        line, seconds = timed(cell, single_worker=True)
    except Exception as exc:  # noqa: BLE001 - reported to the bench as the cell's error
        return False, one_line(exc), 0.0
    return True, line, seconds


# --- the local executor ----------------------------------------------------------------------------------------
class InlinePool(Executor):
    """One cell at a time, in this process."""

    capacity = 1

    @classmethod
    def from_bench(cls, bench, settings: Any, progress: bool, log: Log) -> Executor:
        return make_local(bench, progress, log)

    def describe(self) -> str:
        return "this process"

    def __init__(self, progress: bool = True):
        self.progress = progress
        self.queue: list[GridCell] = []

    def submit(self, cell: GridCell) -> None:
        self.queue.append(cell)

    def running(self) -> int:
        return len(self.queue)

    def wait(self) -> list[Finished]:
        cell = self.queue.pop(0)
        start = time.perf_counter()
        try:
            line, seconds = timed(cell, progress=self.progress)
        except Exception as exc:  # noqa: BLE001 - the cell fails alone; KeyboardInterrupt still stops the bench
            return [(cell, None, one_line(exc), time.perf_counter() - start)]
        return [(cell, line, None, seconds)]

    def rebalance(self) -> None:
        """Nothing to lend: one cell at a time."""

    def close(self) -> None:
        pass


def lend_idle_cores(cores: int, running: list[GridCell]) -> list[int]:
    """Torch threads for each of the ``running`` cells on ``cores`` CPU cores: one each, and the cores no
    cell uses lent to the training cells, evenly, the first-listed first (attack cells keep one thread,
    so their rows do not depend on when a core fell idle)."""
    threads = [1] * len(running)
    trainers = [i for i, cell in enumerate(running) if cell.kind == "train"]
    for k in range(max(0, cores - len(running)) if trainers else 0):
        threads[trainers[k % len(trainers)]] += 1
    return threads


def _child(cell: GridCell, gpu: int | None, conn, lent_threads=None, thread_env: dict | None = None) -> None:
    """Body of a local cell process: run the cell and send (ok, line or error, seconds) back.
    ``lent_threads``: the shared thread count the pool lends this cell (``bench.lend_idle_cores``);
    ``thread_env``: the bench's OMP/MKL_NUM_THREADS and ``ADVROBUST_*`` variables now (the forkserver holds
    those of its own start)."""
    if thread_env is not None:
        for name in [n for n in os.environ if n.startswith("ADVROBUST_") and n not in thread_env]:
            del os.environ[name]
    for name, value in (thread_env or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if lent_threads is not None:
        from asa_plugin.threads import install_thread_budget

        install_thread_budget(lent_threads)
    from asa_plugin.interrupts import sigterm_as_interrupt

    sigterm_as_interrupt()  # the bench stopping (SIGTERM): unwind, so this process's semaphores are released
    try:
        line, seconds = timed(cell, gpu=gpu, single_worker=True)
        conn.send((True, line, seconds))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as the cell's error
        try:
            conn.send((False, one_line(exc), 0.0))
        except OSError:  # the bench has gone (stopped): nobody to tell
            pass
        raise SystemExit(1) from None
    finally:
        conn.close()


class ProcessPool(Executor):
    """Up to ``capacity`` cells at once, each in a fresh process (forkserver: torch is imported once).

    ``lend_idle_cores``: lend the cores no cell uses to the running training cells (CPU only)."""

    def __init__(self, capacity: int, gpus: int = 0, lend_idle_cores: bool = False):
        import multiprocessing as mp

        self.capacity = capacity
        self.gpus = gpus
        self.lending = lend_idle_cores and not gpus
        self.cores = cpu_slots()
        if "forkserver" in mp.get_all_start_methods():
            self.ctx = mp.get_context("forkserver")
            self.ctx.set_forkserver_preload(["torch", "asa_plugin.bench.cells"])
        else:
            self.ctx = mp.get_context("spawn")
        self.procs: dict[Any, tuple[GridCell, Any, Any, int, float]] = {}  # sentinel -> (cell, proc, conn, slot, t0)
        self.lent: dict[Any, Any] = {}  # sentinel -> the cell's shared thread count (lending only)

    @classmethod
    def from_bench(cls, bench, settings: Any, progress: bool, log: Log) -> Executor:
        return make_local(bench, progress, log)

    def describe(self) -> str:
        return f"{self.capacity} local processes" + (f" over {self.gpus} GPUs" if self.gpus else "") + \
            (", idle cores lent to training" if self.lending else "")

    def running(self) -> int:
        return len(self.procs)

    def submit(self, cell: GridCell) -> None:
        used = {slot for *_, slot, _ in self.procs.values()}
        slot = next(i for i in range(self.capacity) if i not in used)
        receive, send = self.ctx.Pipe(duplex=False)
        gpu = slot % self.gpus if self.gpus else None
        lent = self.ctx.RawValue("i", 1) if self.lending else None
        from asa_plugin.threads import THREAD_ENVS

        thread_env = {name: os.environ.get(name) for name in THREAD_ENVS}
        thread_env.update({name: value for name, value in os.environ.items() if name.startswith("ADVROBUST_")})
        proc = self.ctx.Process(target=_child, args=(cell, gpu, send, lent, thread_env), name=f"advrobust-{cell.key}")
        proc.start()
        send.close()
        self.procs[proc.sentinel] = (cell, proc, receive, slot, time.perf_counter())
        if lent is not None:
            self.lent[proc.sentinel] = lent

    def rebalance(self) -> None:
        """Lend the idle cores to the running training cells (see :func:`lend_idle_cores`)."""
        if not self.lending:
            return
        sentinels = list(self.procs)
        cells = [self.procs[sentinel][0] for sentinel in sentinels]
        for sentinel, threads in zip(sentinels, lend_idle_cores(self.cores, cells)):
            self.lent[sentinel].value = threads

    def wait(self) -> list[Finished]:
        from multiprocessing.connection import wait

        finished = []
        for sentinel in wait(list(self.procs)):
            cell, proc, conn, _, start = self.procs.pop(sentinel)
            self.lent.pop(sentinel, None)
            try:  # a process killed (kill -9, out of memory) leaves an empty pipe: EOF
                message = conn.recv() if conn.poll() else None
            except (EOFError, OSError):
                message = None
            proc.join()
            conn.close()
            if message is None:
                code = proc.exitcode
                why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                finished.append((cell, None, f"its process died ({why}; killed, or out of memory?)",
                                 time.perf_counter() - start))
            else:
                ok, text, seconds = message
                finished.append((cell, text, None, seconds) if ok else
                                (cell, None, text, time.perf_counter() - start))
        return finished

    def close(self, grace: float = 30.0) -> None:
        """Stop the running cells: SIGTERM (each unwinds as after Ctrl-C, releasing its semaphores, so no
        "leaked semaphore" warning follows), SIGKILL for one still alive after ``grace`` seconds."""
        for _, proc, _, _, _ in self.procs.values():
            proc.terminate()
        deadline = time.monotonic() + grace
        for _, proc, conn, _, _ in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self.procs.clear()
        self.lent.clear()


def make_local(bench, progress: bool = True, log: Log | None = None) -> Executor:
    """``local``: this process when ``max_parallel = 1``, else that many processes (default: one per GPU,
    else one per CPU core; more than the machine's cores is said in one line and clamped)."""
    gpus = gpu_count()
    cores = cpu_slots()
    parallel = bench.max_parallel or gpus or cores
    limit = max(cores, gpus)
    if parallel > limit:
        if log is not None:
            log(f"bench.max_parallel = {parallel} is more than this machine's {cores} CPU cores"
                + (f" and {gpus} GPUs" if gpus else "") + f": {limit} cells at a time")
        parallel = limit
    return InlinePool(progress) if parallel == 1 else ProcessPool(parallel, gpus, bench.lend_idle_cores)


def make_executor(bench, pm, progress: bool = True, log: Log | None = None) -> Executor:
    """The executor registered as ``bench.executor``, built from ``[bench]`` and its ``[bench.<name>]`` table."""
    cls = pm.executors.get(bench.executor)
    settings = bench.executor_settings.get(bench.executor)
    return cls.from_bench(bench, settings, progress, log or (lambda line: None))


def lending_note(pool, requested: bool) -> str | None:
    """Why ``bench.lend_idle_cores`` does nothing on ``pool``, when it was asked for; else None."""
    if not requested or getattr(pool, "lending", False):
        return None
    if isinstance(pool, ProcessPool):  # GPUs
        return "bench.lend_idle_cores has no effect on GPUs (each cell has its own device)"
    return ("bench.lend_idle_cores has no effect with max_parallel = 1 (cells run one at a time in this process, "
            "each with its own thread count)")


def describe(pool) -> str:
    """The executor in words, for the log."""
    return pool.describe()


def gpu_count() -> int:
    """Visible CUDA devices (no CUDA context is created)."""
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def cpu_slots() -> int:
    from asa_plugin.threads import cpu_count

    return cpu_count()


# --- failures ------------------------------------------------------------------------------------------------
def read_failures(out_dir: Path) -> dict[str, str]:
    """Cell key -> one-line error of the cells whose last attempt failed ({} when none)."""
    path = Path(out_dir) / FAILURES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record_outcome(out_dir: Path, key: str, error: str | None) -> None:
    """Set (``error``) or clear (None) cell ``key``'s line in OUT/failures.json, keeping every other cell's:
    several benches on one out_dir (disjoint cells) update it in turn, under the bench's shared lock."""
    from asa_plugin.locks import shared_lock

    with shared_lock(out_dir):
        failures = read_failures(out_dir)
        if error is None and key not in failures:
            return
        if error is None:
            failures.pop(key)
        else:
            failures[key] = error
        _write_failures(out_dir, failures)


def _write_failures(out_dir: Path, failures: dict[str, str]) -> None:
    path = Path(out_dir) / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)
        return
    write_json_atomic(path, failures, sort_keys=True)


# --- the walk over the graph ------------------------------------------------------------------------------------
class Progress:
    """Cells done/total and the time left, from the measured seconds per unit of estimated cost of each kind."""

    def __init__(self, cells: list[GridCell], done: int, parallel: int):
        self.total, self.done, self.parallel = len(cells), done, max(1, parallel)
        self.seconds: dict[str, float] = {}
        self.costs: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, cell: GridCell, seconds: float) -> None:
        self.done += 1
        self.seconds[cell.kind] = self.seconds.get(cell.kind, 0.0) + seconds
        self.costs[cell.kind] = self.costs.get(cell.kind, 0.0) + cell.cost
        self.counts[cell.kind] = self.counts.get(cell.kind, 0) + 1

    def left(self, remaining: list[GridCell]) -> str:
        """``about 1 h 05 min left``, from the cells of each kind that finished; the cells of a kind none of
        which has finished yet are counted, not guessed (a training's seconds say nothing of an attack's)."""
        if not remaining:
            return "nothing left"
        work, timed, untimed = 0.0, 0, Counter()
        for cell in remaining:
            if self.costs.get(cell.kind):
                work += cell.cost * self.seconds[cell.kind] / self.costs[cell.kind]
            elif self.counts.get(cell.kind):
                work += self.seconds[cell.kind] / self.counts[cell.kind]
            else:
                untimed[cell.kind] += 1
                continue
            timed += 1
        not_timed = ", ".join(f"{n} {kind} cell{'s' if n > 1 else ''}" for kind, n in untimed.items())
        if not timed:
            return f"time left unknown ({not_timed} not timed yet)"
        text = f"about {_duration(work / min(self.parallel, timed))} left"
        return f"{text} + {not_timed} not timed yet" if untimed else text


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_cells(cells: list[GridCell], pool, out_dir: Path, log: Log) -> dict[str, list[str]]:
    """Run every cell that is not done, each after its dependencies; return the keys that ran,
    failed, and were skipped because a dependency failed."""
    done = {c.key for c in cells if c.done()}
    todo = sorted((c for c in cells if c.key not in done), key=priority)
    progress = Progress(cells, len(done), pool.parallel)
    outcome: dict[str, list[str]] = {"ran": [], "failed": [], "blocked": []}
    for cell in cells:
        if cell.key in done:
            log(f"{cell.key}: done, skipped ({cell.output()})")
    log(f"{len(cells)} cells: {len(done)} done, {len(todo)} to run on {pool.describe()}")
    try:
        while todo or pool.running():
            blocked = [c for c in todo if any(d in outcome["failed"] or d in outcome["blocked"] for d in c.deps)]
            for cell in blocked:
                todo.remove(cell)
                outcome["blocked"].append(cell.key)
                log(f"{cell.key}: not run, it needs a cell that failed")
            ready = [c for c in todo if all(d in done for d in c.deps)]
            for cell in ready[:max(0, pool.capacity - pool.running())]:
                todo.remove(cell)
                pool.submit(cell)
            if not pool.running():
                break
            pool.rebalance()  # every ready cell has started: what cores are left idle may be lent
            for cell, line, error, seconds in pool.wait():
                if error is None and not cell.done():
                    error = missing_output(cell)
                if error is None:
                    done.add(cell.key)
                    outcome["ran"].append(cell.key)
                    progress.add(cell, seconds)
                    ended = done | set(outcome["failed"]) | set(outcome["blocked"])
                    log(f"{progress.done}/{progress.total} {cell.key}: {line} ({seconds:.1f} s); "
                        f"{progress.left([c for c in cells if c.key not in ended])}")
                else:
                    outcome["failed"].append(cell.key)
                    log(f"FAILED {cell.key}: {error}")
                record_outcome(out_dir, cell.key, error)
    except BaseException:
        pool.cancel()
        raise
    finally:
        pool.close()
    return outcome


def missing_output(cell: GridCell) -> str:
    """The error of a cell that reported success but whose output this machine cannot see."""
    return (f"it finished, but its output {cell.output()} does not exist on this machine: the node that ran it "
            f"does not share the bench's out_dir; put bench.out_dir on storage every node mounts at the same path")
