"""The bench pre-flight: what must hold before a bench trains anything, each failing with one line.

Same settings as the bench already in ``out_dir``, outputs writable, data files present, finished results
readable, and every recipe buildable with its assets (:func:`asa_plugin.attacks.warmup.build_recipes`), so a
missing attack asset is found before hours of training rather than after.
"""

from __future__ import annotations

from asa_plugin.checks import check_data_files, check_model_dir, check_writable, looks_local
from asa_plugin.errors import UserError
from asa_plugin.training.resume import (
    RESUME_IGNORED,
    changed_settings,
    default_params,
    listed,
    resolved_params,
    value_at,
    with_defaults,
    without_execution_only,
)

BENCH_IGNORED = RESUME_IGNORED | {("train", "seed"), ("train", "threads"), ("attack", "recipes"),
                                  ("attack", "batch_size"), ("attack", "device"), ("attack", "cache_dir"),
                                  ("attack", "download"), ("attack", "workers"), ("attack", "threads")}
"""Shared bench settings a rerun may change: the recipe list (cells are per recipe), how attacks and training
are executed (processes, threads, devices: per-example outcomes are identical), and train.seed (each run's
seed comes from bench.seeds; a run dir trained with another is refused per run)."""


def check_bench_settings(plan) -> None:
    """A bench rerun into an existing out_dir must share its settings, or old cells get new labels."""
    from asa_plugin.bench.plan import BENCH_FILE, read_bench_file

    if not (plan.out_dir / BENCH_FILE).is_file():
        return
    old, new = read_bench_file(plan.out_dir), plan.describe()
    keys = changed_settings(old["settings"], new["settings"], BENCH_IGNORED, {"plugins"})
    changed = [f"{k} ({value_at(old['settings'], k)!r} -> {value_at(new['settings'], k)!r})" for k in keys]
    old_params = {label: resolved_params(p) for label, p in (old.get("defence_params") or {}).items()}
    defaults = {c.label: resolved_params(default_params(c.cfg.defence)) for c in plan.cells}
    for label, params in new["defence_params"].items():
        params = without_execution_only(resolved_params(params))
        if label not in old_params:
            continue
        before = without_execution_only(with_defaults(old_params[label], defaults.get(label, {})))
        changed += [f"defence '{label}' {key} ({before.get(key)!r} -> {params.get(key)!r})"
                    for key in sorted(set(before) | set(params)) if before.get(key) != params.get(key)]
    if changed:
        raise UserError(f"{plan.out_dir / BENCH_FILE}: this bench ran with other settings: {listed(changed)}; "
                        f"its finished cells would be reported under the new ones. Rerun with its settings, or "
                        f"choose a new directory with --set bench.out_dir=...")


def check_bench(plan, pm, runs_now=lambda cell: True) -> None:
    """Before a bench trains anything: same settings as the bench already in out_dir, outputs
    writable, data files present, every recipe buildable with its assets, and the pre-trained backbone of
    every cell that ``runs_now`` (with ``--only-*``, a cell left for later may name one not made yet)."""
    check_bench_settings(plan)
    check_writable(plan.out_dir, "bench.out_dir", "choose another with --set bench.out_dir=...")
    from asa_plugin.attacks.results import read_json, read_rows
    from asa_plugin.attacks.warmup import build_recipes
    from asa_plugin.bench.runs import check_seed
    from asa_plugin.bench.static import parse, task_hint
    from asa_plugin.data.files import read_rows as read_data_rows

    for spec in plan.bench.static_sets:  # a bad static set is found now, not after the training
        file, task, _ = parse(spec)
        read_data_rows(file, task, task_hint(spec))
    for cell in plan.cells:
        check_seed(cell)  # a run trained with another seed (bench.seeds changed): before bench.json is rewritten
        check_data_files(cell.cfg.data, plan.source)
        if "@" in cell.label and looks_local(cell.cfg.model.backbone) and runs_now(cell):  # bench.backbones
            check_model_dir(cell.cfg.model.backbone, f"bench.backbones ('{cell.label}'):")
        if (cell.run_dir / "metrics.json").is_file():  # finished cells are reused: they must be readable
            read_json(cell.run_dir / "metrics.json", "metrics.json")
        for recipe in plan.recipes:
            recipe_dir = cell.run_dir / "attack" / recipe
            if (recipe_dir / "summary.json").is_file():
                read_json(recipe_dir / "summary.json", "summary.json")
            read_rows(recipe_dir / "results.jsonl")
        check_writable(cell.run_dir, f"defence '{cell.label}': run directory", "fix its permissions, or "
                       "choose another bench.out_dir")
    build_recipes(plan.recipes, plan.cells[0].cfg.attack, plan.cells[0].run_dir / "attack", pm)
