"""Worker processes for an attack run: each holds its own model copy and attacks the examples it
takes from a shared queue; the parent writes every row to the run's one results.jsonl.

- **How many.** ``attack.workers``; by default one per visible GPU on GPU, else CPU cores divided
  by the threads per worker (``attack.threads``, :mod:`asa_plugin.threads`; 1 by default), never
  more than the examples left.
- **Same results.** Each example's attack is seeded from (seed, index) and starts from cleared
  caches, so which worker attacks it, and in which order, does not change its row (timing aside).
- **Crash safety.** Rows are appended and fsynced by the parent as they arrive; a parent killed
  with ``kill -9`` loses only the examples in flight (workers notice the parent is gone and stop),
  and ``--resume`` attacks just those.
- Workers are started with the ``spawn`` method: no forked torch/OpenMP state.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback
from dataclasses import dataclass
from typing import Any

from asa_plugin.errors import UserError
from asa_plugin.threads import ThreadChoice, cpu_count, resolve_threads

WORKER_THREADS_DEFAULT = 1
"""Intra-op threads per worker unless configured: 1 process per core beats threads on busy CPUs."""
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Execution:
    """How a run is spread: processes, threads per process, device kind."""

    workers: int
    threads: ThreadChoice
    device: str  # "cpu" | "cuda"

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "threads_per_worker": self.threads.threads,
                "threads_source": self.threads.source, "device": self.device}


def device_kind(name: str) -> str:
    """'cuda' or 'cpu' for ``attack.device`` (checked again, with its error, by the wrapper)."""
    import torch

    if name == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def plan(cfg, todo: int, in_process: bool = False) -> Execution:
    """Workers and threads for ``todo`` examples under ``cfg`` (an AttackConfig)."""
    import torch

    device = device_kind(cfg.device)
    threads = resolve_threads(cfg.threads, WORKER_THREADS_DEFAULT)
    if in_process:
        workers = 1
    elif cfg.workers is not None:
        workers = cfg.workers
    elif device == "cuda":
        workers = torch.cuda.device_count()
    else:
        workers = max(1, cpu_count() // threads.threads)
    return Execution(max(1, min(workers, todo)), threads, device)


def oversubscription(execution: Execution) -> str | None:
    """A one-line note when CPU workers x threads exceed the cores (each worker also holds a model
    copy in memory); None otherwise. The rows do not depend on it, only the time and the memory."""
    cores = cpu_count()
    wanted = execution.workers * execution.threads.threads
    if execution.device != "cpu" or wanted <= cores:
        return None
    return (f"{execution.workers} workers x {execution.threads.threads} threads on {cores} CPU cores: the workers "
            f"share cores (no faster) and each holds a model copy in memory; attack.workers = "
            f"{max(1, cores // execution.threads.threads)} uses every core once")


def run_workers(job, todo: list[int], execution: Execution, sink) -> list[dict]:
    """Attack ``todo`` with ``execution.workers`` processes, handing each row to ``sink.add``;
    return the assets report (the same from every worker)."""
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for index in todo:
        tasks.put(index)
    for _ in range(execution.workers):
        tasks.put(None)
    procs = [ctx.Process(target=worker_main, args=(rank, job, execution, tasks, results, os.getpid()),
                         name=f"advrobust-attack-{rank}", daemon=True) for rank in range(execution.workers)]
    for p in procs:
        p.start()
    assets, finished = None, 0
    try:
        while finished < len(procs):
            try:
                kind, rank, payload = results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"attack worker {dead[0].name} died (exit code {dead[0].exitcode})") from None
                continue
            if kind == "row":
                sink.add(payload)
            elif kind == "ready":
                if assets is None:
                    assets = payload
                    from asa_plugin.attacks.results import write_json

                    write_json(job.out_dir / "assets.json", assets)
            elif kind == "done":
                finished += 1
            elif kind == "user_error":
                raise UserError(payload)
            else:
                raise RuntimeError(f"attack worker {rank} failed:\n{payload}")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
    return assets or []


def worker_main(rank: int, job, execution: Execution, tasks, results, parent: int) -> None:
    """One worker: set threads and device, build the attack, attack indices until the sentinel."""
    try:
        import torch

        torch.set_num_threads(execution.threads.threads)
        if execution.device == "cuda":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        from asa_plugin.attacks.session import AttackSession

        from asa_plugin.plugins import get_plugin_manager

        pm = get_plugin_manager(load_external=job.load_external, block=job.block)
        session = AttackSession(job, pm)
        results.put(("ready", rank, session.assets))
        while os.getppid() == parent:
            try:
                index = tasks.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if index is None:
                break
            results.put(("row", rank, session.attack_one(index)))
        if os.getppid() != parent:  # orphaned (the parent was killed): exit without flushing to nobody
            results.cancel_join_thread()
            return
        results.put(("done", rank, None))
    except UserError as exc:
        results.put(("user_error", rank, str(exc)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("error", rank, traceback.format_exc()))
