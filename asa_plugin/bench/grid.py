"""Run the grid defence by defence: train one defence (every seed), attack its models, then the next.

So each defence that finishes is complete (trained and attacked) before the next one starts. A
training cell is done when ``runs/<run>/metrics.json`` exists; one with a checkpoint and no
metrics resumes. An attack cell is done when its ``summary.json`` exists; otherwise it runs with
the harness's own resume (rows already in results.jsonl are kept). So an interrupted bench
continues where it stopped when it is run again.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asa_plugin.attacks import results as res
from asa_plugin.bench.plan import BENCH_FILE, BenchPlan, Cell
from asa_plugin.errors import UserError

Log = Callable[[str], None]


def say(line: str) -> None:
    print(f"[bench] {line}", flush=True)


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


def check_seed(cell: Cell) -> None:
    """Refuse a run directory trained with another seed than the grid gives it (e.g. after
    ``bench.seeds`` changed): its results would be reported under the wrong seed."""
    from asa_plugin.config import read_file

    resolved = cell.run_dir / "config.resolved.toml"
    if not resolved.is_file():
        return
    seed = read_file(resolved).get("train", {}).get("seed")
    if seed is not None and seed != cell.seed:
        raise UserError(f"{cell.run_dir} was trained with train.seed = {seed}, but the grid gives run "
                        f"'{cell.name}' seed {cell.seed}: move that directory away, or make bench.seeds[0] = {seed}")


def train_cell(cell: Cell, pm, log: Log = say) -> dict[str, Any]:
    """Train ``cell`` unless its metrics.json exists; resume from a checkpoint when one exists."""
    from asa_plugin.training import checkpoint
    from asa_plugin.training.loop import train

    metrics_path = cell.run_dir / "metrics.json"
    check_seed(cell)
    if metrics_path.is_file():
        log(f"train {cell.name}: done, skipped ({metrics_path})")
        return res.read_json(metrics_path, "metrics.json")
    resuming = checkpoint.find(cell.run_dir) is not None
    log(f"train {cell.name}: {'resuming from checkpoint' if resuming else 'training'} into {cell.run_dir}")
    metrics = train(cell.cfg, resume=True, pm=pm)  # resume=True: also continues a run dir with no checkpoint
    log(f"train {cell.name} (seed {cell.seed}): eval_accuracy {metrics['eval_accuracy']:.4f}, "
        f"{metrics['steps']} steps, {metrics['train_seconds']:.1f} s")
    return metrics


def attack_cells(cell: Cell, recipes: list[str], pm, progress: bool = True, log: Log = say) -> None:
    """Attack ``cell``'s trained model with every recipe whose summary.json does not exist yet."""
    from asa_plugin.attacks.runner import run_attack
    from asa_plugin.commands.attack import recipe_jobs

    todo = []
    for recipe in recipes:
        summary = cell.run_dir / "attack" / recipe / "summary.json"
        if summary.is_file():
            log(f"attack {cell.name}/{recipe}: done, skipped ({summary})")
        else:
            todo.append(recipe)
    if not todo:
        return
    jobs = recipe_jobs(cell.cfg, str(cell.run_dir / "model"), cell.run_dir, todo, resume=True, progress=progress,
                       note=lambda message: log(f"attack {cell.name}: {message}"))
    for job in jobs:
        done = len(res.read_rows(job.out_dir / "results.jsonl"))
        log(f"attack {cell.name}/{job.recipe}: " + (f"resuming after {done} of {len(job.texts)} examples"
                                                      if done else f"attacking {len(job.texts)} examples"))
        start = time.perf_counter()
        summary = run_attack(job, pm)  # attack.workers processes, as `advrobust attack`
        log(f"attack {cell.name}/{job.recipe}: accuracy_under_attack {summary['accuracy_under_attack']:.4f}, "
            f"attack_success_rate {_fmt(summary['attack_success_rate'])}, {time.perf_counter() - start:.1f} s")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run_grid(plan: BenchPlan, pm, progress: bool = True, log: Log = say,
             only_defences: list[str] | None = None, only_recipes: list[str] | None = None,
             only_seeds: list[int] | None = None) -> None:
    """Defence by defence: train every seed of one defence (same budget for all), attack each of
    its models with its recipes, then go on to the next defence.

    ``only_defences``/``only_recipes``/``only_seeds`` restrict what runs now (a budget-limited
    session); the whole grid is still recorded in bench.json, so the report lists the rest as missing.
    """
    write_bench_file(plan)
    labels = [label for label in plan.labels if only_defences is None or label in only_defences]
    runs = [c for c in plan.cells if c.label in labels and (only_seeds is None or c.seed in only_seeds)]
    recipes = [r for r in plan.recipes if only_recipes is None or r in only_recipes]
    log(f"{len(labels)} defences, {len(runs)} training runs, recipes {', '.join(recipes)} into {plan.out_dir}")
    for label in labels:
        mine = [c for c in runs if c.label == label]
        for cell in mine:
            train_cell(cell, pm, log)
        for cell in mine:
            attack_cells(cell, [r for r in recipes if r in cell.recipes], pm, progress, log)
        if plan.bench.static_sets:
            from asa_plugin.bench.static import evaluate_cell

            for cell in mine:
                evaluate_cell(cell.run_dir, plan.bench.static_sets, log, cell.name or cell.label)
