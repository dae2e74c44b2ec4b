"""Run the grid: record it in bench.json, build its graph of cells, run what is not done.

A training cell is done when ``runs/<run>/metrics.json`` exists; one with a checkpoint and no
metrics resumes. An attack cell is done when its ``summary.json`` exists; otherwise it runs with
the harness's own resume (rows already in results.jsonl are kept). So an interrupted bench
continues where it stopped when it is run again. The cells and their order are in
:mod:`asa_plugin.bench.cells`, the executors (local processes, Ray) in :mod:`asa_plugin.bench.executors`.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from asa_plugin.attacks import results as res
from asa_plugin.bench.plan import BENCH_FILE, BenchPlan
from asa_plugin.bench.runs import Log, check_seed, say, train_cell  # noqa: F401 - train_cell: its old import path


def machine() -> dict[str, Any]:
    """Where the numbers come from: platform, CPU, GPU, library versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu,
            "python": sys.version.split()[0], "torch": torch.__version__}


def write_bench_file(plan: BenchPlan) -> dict[str, Any]:
    """Record the grid in OUT/bench.json (keeping the machines of earlier runs of the same bench)."""
    path = plan.out_dir / BENCH_FILE
    old = res.read_json(path, BENCH_FILE) if path.is_file() else {}
    machines = old.get("machines", [])
    here = machine()
    if here not in machines:
        machines.append(here)
    info = {**plan.describe(), "machines": machines}
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    res.write_json(path, info)
    return info


def run_grid(plan: BenchPlan, pm=None, progress: bool = True, log: Log = say,
             only_defences: list[str] | None = None, only_recipes: list[str] | None = None,
             only_seeds: list[int] | None = None) -> dict[str, list[str]]:
    """Run the grid's cells that are not done (see :mod:`asa_plugin.bench.cells`) on the executor of
    ``bench.executor`` (see :mod:`asa_plugin.bench.executors`); return the keys that ran, failed and
    were not run because a cell they need failed.

    ``only_defences``/``only_recipes``/``only_seeds`` restrict what runs now (a budget-limited
    session); the whole grid is still recorded in bench.json, so the report lists the rest as missing.
    ``pm`` gives the registered executors (default: the run config's); each cell builds its own plugin
    manager from its run config (in its own process).
    """
    from asa_plugin.bench.cells import build_cells
    from asa_plugin.bench.executors import lending_note, make_executor, run_cells
    from asa_plugin.locks import shared_lock
    from asa_plugin.plugins import get_plugin_manager

    with shared_lock(plan.out_dir):  # other benches on this out_dir (disjoint cells) write it too
        write_bench_file(plan)
    bench = plan.bench
    cells = build_cells(plan, only_defences, only_recipes, only_seeds, shards=bench.shards,
                        gpus=bench.gpus_per_cell)
    for run in {c.run.name: c.run for c in cells}.values():
        check_seed(run)  # one line before any work, not a failed cell
    recipes = [r for r in plan.recipes if only_recipes is None or r in only_recipes]
    log(f"{len({c.run.name for c in cells})} training runs, recipes {', '.join(recipes)} into {plan.out_dir}")
    plugins = plan.cells[0].cfg.plugins
    pm = pm or get_plugin_manager(load_external=plugins.external, block=plugins.block)
    pool = make_executor(bench, pm, progress=progress, log=log)
    note = lending_note(pool, bench.lend_idle_cores)
    if note:
        log(note)
    return run_cells(cells, pool, plan.out_dir, log)
