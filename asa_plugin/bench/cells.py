"""The bench grid as a graph of cells: what runs, what each needs first, and how long it should take.

Kinds of cell (each idempotent: a cell whose output file exists is done and skipped; an
unfinished one resumes, so a retried or rerun cell continues where it stopped):

- ``train <run>``: one defence with one seed (``runs/<run>/metrics.json``); a checkpoint resumes.
- ``attack <run>/<recipe>``: the trained model under one recipe (``attack/<recipe>/summary.json``);
  with ``bench.shards = n`` it is ``n`` cells ``attack <run>/<recipe> [i-of-n]`` (the harness's
  ``--shard i/n``, ``attack/<recipe>/shards/i-of-n/``) and a ``merge <run>/<recipe>`` cell that
  combines them (as ``advrobust merge``) once every shard has finished.
- ``evaluate <run>/<name>``: the trained model on one static set (``evaluate/<name>/summary.json``).

Every cell runs a library function (training loop, attack runner, static evaluation), never a CLI
command, so the local executor's processes and Ray workers share one code path. A cell declares
its resources (CPU threads, GPUs) and an estimated cost that orders the ready cells longest first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from asa_plugin.bench.plan import BenchPlan, TrainingRun
from asa_plugin.defences import label_names

KIND_ORDER = {"merge": 0, "train": 1, "evaluate": 2, "attack": 3}
"""Among ready cells: merges first (seconds, and they finish a result), then training (it unblocks
the attacks), then the rest; inside a kind, the longest first."""


def step_cost(label: str, registry=None) -> float:
    """Estimated seconds per training step of defence ``label`` relative to vanilla: each defence class's
    ``step_cost`` (:attr:`asa_plugin.defences.base.Defence.step_cost`), a composition ``a+b`` the sum of its
    parts minus one vanilla step; a name not registered counts as a defence that declares no cost.
    ``registry``: the defences registered (default: the process-wide plugin manager's). It only orders the
    grid's cells and estimates the time left."""
    from asa_plugin.defences.base import Defence, composed_step_cost

    if registry is None:
        from asa_plugin.plugins import get_plugin_manager

        registry = get_plugin_manager().defences
    return composed_step_cost([registry.get(name) if name in registry else Defence for name in label_names(label)])


def __getattr__(name: str):
    if name == "STEP_COST":  # the table the step costs moved out of (issue 33): each class declares its own
        import warnings

        from asa_plugin.plugins import get_plugin_manager

        warnings.warn("asa_plugin.bench.cells.STEP_COST is deprecated: read the defence class's step_cost, or "
                      "step_cost(label)", DeprecationWarning, stacklevel=2)
        return {e.name: e.value.step_cost for e in get_plugin_manager(load_external=False).defences.entries()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class GridCell:
    """One unit of work of the grid: its kind, the training run it belongs to, and what it needs first."""

    kind: str  # "train" | "attack" | "merge" | "evaluate"
    run: TrainingRun  # the training run (defence, seed, run config)
    recipe: str | None = None
    shard: tuple[int, int] | None = None  # (index, count) of a sharded attack
    spec: str | None = None  # static set: FILE[#TASK]
    deps: tuple[str, ...] = ()  # keys of the cells that must finish first
    threads: int = 1  # CPU threads the cell uses (its resource request)
    gpus: float = 0.0  # GPUs the cell uses (its resource request)
    cost: float = 1.0  # estimated relative duration, for ordering and the time-left estimate

    @property
    def key(self) -> str:
        """Unique name, used in the log, in failures.json and in ``deps``."""
        if self.kind == "train":
            return f"train {self.run.name}"
        if self.kind == "evaluate":
            from asa_plugin.bench.static import parse

            return f"evaluate {self.run.name}/{parse(self.spec)[2]}"
        shard = f" [{self.shard[0]}-of-{self.shard[1]}]" if self.shard else ""
        return f"{self.kind} {self.run.name}/{self.recipe}{shard}"

    def output(self) -> Path:
        """The file whose existence means the cell is done."""
        run_dir = self.run.run_dir
        if self.kind == "train":
            return run_dir / "metrics.json"
        if self.kind == "evaluate":
            from asa_plugin.bench.static import parse

            return run_dir / "evaluate" / parse(self.spec)[2] / "summary.json"
        recipe_dir = run_dir / "attack" / self.recipe
        if self.kind == "attack" and self.shard is not None:
            return recipe_dir / "shards" / f"{self.shard[0]}-of-{self.shard[1]}" / "summary.json"
        return recipe_dir / "summary.json"

    def done(self) -> bool:
        """Done: its output exists (a sharded attack also when its recipe has been merged)."""
        if self.output().is_file():
            return True
        return self.kind == "attack" and self.shard is not None and \
            (self.run.run_dir / "attack" / self.recipe / "summary.json").is_file()


def build_cells(plan: BenchPlan, only_defences: list[str] | None = None, only_recipes: list[str] | None = None,
                only_seeds: list[int] | None = None, shards: int = 1, gpus: float = 0.0) -> list[GridCell]:
    """Every cell of the grid (restricted by the ``only_*`` filters), in dependency order.

    ``gpus``: GPUs each training and attack cell requests (0 on a CPU machine); static-set
    evaluations and merges request none.
    """
    runs = [c for c in plan.cells if (only_defences is None or c.label in only_defences)
            and (only_seeds is None or c.seed in only_seeds)]
    examples = plan.cells[0].cfg.attack.examples_for_profile()
    registry = _defences(plan)
    cells: list[GridCell] = []
    for run in runs:
        cost = step_cost(run.cfg.defence.name, registry)  # a variant: its defence's
        train = GridCell("train", run, gpus=gpus, cost=cost)
        cells.append(train)
        for recipe in run.recipes:
            if only_recipes is not None and recipe not in only_recipes:
                continue
            if shards <= 1:
                cells.append(GridCell("attack", run, recipe, deps=(train.key,), gpus=gpus, cost=examples))
                continue
            parts = [GridCell("attack", run, recipe, shard=(i, shards), deps=(train.key,), gpus=gpus,
                              cost=examples / shards) for i in range(shards)]
            cells += parts
            cells.append(GridCell("merge", run, recipe, deps=tuple(p.key for p in parts), cost=0.0))
        for spec in plan.bench.static_sets:
            cells.append(GridCell("evaluate", run, spec=spec, deps=(train.key,), cost=1.0))
    return cells


def _defences(plan: BenchPlan):
    """The defences the plan's runs are built from (its ``[plugins]`` settings decide which plugins count)."""
    from asa_plugin.plugins import get_plugin_manager

    plugins = plan.cells[0].cfg.plugins
    return get_plugin_manager(load_external=plugins.external, block=plugins.block).defences


def priority(cell: GridCell) -> tuple[int, float]:
    """Sort key of a ready cell: by kind (see :data:`KIND_ORDER`), then the longest first."""
    return KIND_ORDER[cell.kind], -cell.cost


def execute(cell: GridCell, progress: bool = False, gpu: int | None = None, single_worker: bool = False) -> str:
    """Run ``cell`` in this process (a local worker process, a Ray worker, or the bench itself) and
    return its one-line result. Raises on failure (the executor records the error).

    ``gpu``: the device this cell may use (sets ``CUDA_VISIBLE_DEVICES`` before torch starts CUDA);
    ``single_worker``: attack in this process with one thread unless ``attack.workers`` /
    ``attack.threads`` say otherwise (so parallel cells do not each spread over every core).
    """
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from asa_plugin.plugins import get_plugin_manager

    cfg = cell.run.cfg
    pm = get_plugin_manager(load_external=cfg.plugins.external, block=cfg.plugins.block)
    if cell.kind == "train":
        from asa_plugin.bench.runs import say, train_cell

        metrics = train_cell(cell.run, pm, log=say, progress=progress)
        return (f"eval_accuracy {metrics['eval_accuracy']:.4f}, {metrics['steps']} steps, "
                f"{metrics['train_seconds']:.1f} s")
    if cell.kind == "evaluate":
        from asa_plugin.bench.static import parse, task_hint
        from asa_plugin.static_sets import evaluate_static_set

        file, task, name = parse(cell.spec)
        summary, _ = evaluate_static_set(str(cell.run.run_dir / "model"), cell.run.run_dir, cell.run.run_dir,
                                         data_file=file, task=task, name=name, task_hint=task_hint(cell.spec))
        return f"accuracy {summary['accuracy']:.4f} on {summary['num_examples']} examples"
    if cell.kind == "merge":
        from asa_plugin.attacks.merge import merge_recipe

        summary = merge_recipe(cell.run.run_dir / "attack" / cell.recipe)
        return _attack_line(summary)
    return _attack_line(_attack(cell, pm, progress, single_worker))


def _attack(cell: GridCell, pm, progress: bool, single_worker: bool) -> dict:
    import copy

    from asa_plugin.attacks.jobs import recipe_jobs
    from asa_plugin.attacks.runner import Shard, run_attack

    cfg = cell.run.cfg
    if single_worker:
        cfg = copy.deepcopy(cfg)
        cfg.attack.workers = cfg.attack.workers or 1
        cfg.attack.threads = cfg.attack.threads or 1
    shard = Shard(*cell.shard) if cell.shard else None
    (job,) = recipe_jobs(cfg, str(cell.run.run_dir / "model"), cell.run.run_dir, [cell.recipe], shard=shard,
                         resume=True, progress=progress)
    return run_attack(job, pm)


def _attack_line(summary: dict) -> str:
    rate = summary["attack_success_rate"]
    return (f"accuracy_under_attack {summary['accuracy_under_attack']:.4f}, attack_success_rate "
            f"{'n/a' if rate is None else f'{rate:.4f}'} on {summary['num_examples']} examples")
