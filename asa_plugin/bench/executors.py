"""Executors of the grid's cells behind one interface (``bench.executor`` / ``--executor``).

:func:`run_cells` walks the graph: it submits every ready cell (its dependencies done) to an
executor, longest first, as long as the executor has room, prints one line per finished cell
(cells done/total and an estimate of the time left), records a failed cell's one-line error in
the log and in ``OUT/failures.json`` (the report lists it), and skips the cells that depend on a
failed one. The other cells go on, so one bad asset costs its own cells only; a rerun retries
exactly the cells that are not done.

Executors (each a pool with ``capacity``, ``submit(cell)`` and ``wait()``):

- :class:`InlinePool` (``local`` with ``max_parallel = 1``): cells one after another in this
  process, as the bench always ran (training and attack progress bars unless ``--no-progress``,
  ``attack.workers`` processes).
- :class:`ProcessPool` (``local``): one fresh process per cell, up to ``max_parallel`` at a time
  (default: one per GPU, else one per CPU core), each cell with one CPU thread and, on GPUs, its own
  device, and no progress bars (the bench's per-cell lines instead: bars of several processes would
  interleave). A process that dies (killed, out of memory) fails only its cell. With
  ``bench.lend_idle_cores`` (CPU only), the cores no cell uses are lent to the running training cells
  as extra torch threads (:func:`lend_idle_cores`) and taken back when a new cell starts.
- :class:`RayPool` (``ray``): each cell a Ray task with the cell's ``num_cpus``/``num_gpus`` on the
  cluster at ``bench.ray_address`` (a local one when none is given); a task whose worker dies is
  retried ``bench.retries`` times, and its resume makes the retry continue, not restart.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asa_plugin.bench.cells import GridCell, execute, priority

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


# --- executors ---------------------------------------------------------------------------------------------
class InlinePool:
    """One cell at a time, in this process."""

    capacity = 1

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
    ``thread_env``: the bench's OMP/MKL_NUM_THREADS now (the forkserver holds those of its own start)."""
    for name, value in (thread_env or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if lent_threads is not None:
        from asa_plugin.threads import install_thread_budget

        install_thread_budget(lent_threads)
    try:
        line, seconds = timed(cell, gpu=gpu, single_worker=True)
        conn.send((True, line, seconds))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as the cell's error
        conn.send((False, one_line(exc), 0.0))
        raise SystemExit(1) from None
    finally:
        conn.close()


class ProcessPool:
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
            message = conn.recv() if conn.poll() else None
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

    def close(self) -> None:
        for _, proc, conn, _, _ in self.procs.values():
            proc.terminate()
            proc.join()
            conn.close()
        self.procs.clear()
        self.lent.clear()


def _ray_cell(cell: GridCell) -> tuple[str, float]:
    """Body of a Ray task."""
    return timed(cell, single_worker=True)


class RayPool:
    """Every ready cell as a Ray task; Ray places them by their CPU/GPU requests."""

    capacity = 1 << 30  # Ray queues what does not fit

    def __init__(self, address: str | None = None, retries: int = 2, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            from asa_plugin.errors import UserError

            raise UserError("bench.executor = 'ray' needs Ray: pip install 'asa-plugin[ray]' (or pip install "
                            "'ray[default]'), or use --executor local") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                     log_to_driver=True)
        self.retries = retries
        self.parallel = max(1, int(ray.cluster_resources().get("CPU", 1)))  # for the time-left estimate
        self.task = ray.remote(_ray_cell)
        self.refs: dict[Any, tuple[GridCell, float]] = {}

    def running(self) -> int:
        return len(self.refs)

    def submit(self, cell: GridCell) -> None:
        env = {k: v for k, v in os.environ.items() if k.startswith("ADVROBUST_")}
        options = {"num_cpus": cell.threads, "num_gpus": cell.gpus, "max_retries": self.retries,
                   "retry_exceptions": False, "name": cell.key}
        if env:
            options["runtime_env"] = {"env_vars": env}
        ref = self.task.options(**options).remote(cell)
        self.refs[ref] = (cell, time.perf_counter())

    def wait(self) -> list[Finished]:
        from ray.exceptions import RayError, RayTaskError

        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        finished = []
        for ref in ready:
            cell, start = self.refs.pop(ref)
            try:
                line, seconds = self.ray.get(ref)
            except RayTaskError as exc:  # the cell raised: its own error, not retried
                cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                finished.append((cell, None, one_line(cause), time.perf_counter() - start))
            except RayError as exc:  # its worker died every time (killed, out of memory), or the node went away
                finished.append((cell, None, f"Ray gave up after {self.retries} retries: {one_line(exc)}",
                                 time.perf_counter() - start))
            else:
                finished.append((cell, line, None, seconds))
        return finished

    def rebalance(self) -> None:
        """Nothing to lend: Ray places each task by its own CPU request."""

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.started:
            self.ray.shutdown()


def make_pool(executor: str, max_parallel: int | None, progress: bool = True, ray_address: str | None = None,
              retries: int = 2, lend_idle_cores: bool = False):
    """The executor named ``executor`` ("local" or "ray")."""
    if executor == "ray":
        return RayPool(ray_address, retries, num_cpus=max_parallel)
    gpus = gpu_count()
    parallel = max_parallel or gpus or cpu_slots()
    return InlinePool(progress) if parallel == 1 else ProcessPool(parallel, gpus, lend_idle_cores)


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
    if isinstance(pool, RayPool):
        return "Ray (" + ", ".join(f"{v:g} {k}" for k, v in sorted(pool.ray.cluster_resources().items())
                                   if k in ("CPU", "GPU")) + ")"
    if isinstance(pool, ProcessPool):
        return f"{pool.capacity} local processes" + (f" over {pool.gpus} GPUs" if pool.gpus else "") + \
            (", idle cores lent to training" if pool.lending else "")
    return "this process"


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


def _write_failures(out_dir: Path, failures: dict[str, str]) -> None:
    path = Path(out_dir) / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(failures, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


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
    failures = read_failures(out_dir)
    progress = Progress(cells, len(done), getattr(pool, "parallel", pool.capacity))
    outcome: dict[str, list[str]] = {"ran": [], "failed": [], "blocked": []}
    for cell in cells:
        if cell.key in done:
            log(f"{cell.key}: done, skipped ({cell.output()})")
    log(f"{len(cells)} cells: {len(done)} done, {len(todo)} to run on {describe(pool)}")
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
                if error is None:
                    done.add(cell.key)
                    failures.pop(cell.key, None)
                    outcome["ran"].append(cell.key)
                    progress.add(cell, seconds)
                    ended = done | set(outcome["failed"]) | set(outcome["blocked"])
                    log(f"{progress.done}/{progress.total} {cell.key}: {line} ({seconds:.1f} s); "
                        f"{progress.left([c for c in cells if c.key not in ended])}")
                else:
                    failures[cell.key] = error
                    outcome["failed"].append(cell.key)
                    log(f"FAILED {cell.key}: {error}")
                _write_failures(out_dir, failures)
    finally:
        pool.close()
    return outcome
