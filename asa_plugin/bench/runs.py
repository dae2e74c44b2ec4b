"""One training run of the grid: the bench's log line, the seed check and training a run unless it is done.

Below both the grid (:mod:`asa_plugin.bench.grid`, which records and runs the cells) and the cells
(:mod:`asa_plugin.bench.cells`, which execute one), so that neither imports the other back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asa_plugin.attacks import results as res
from asa_plugin.bench.plan import TrainingRun
from asa_plugin.errors import UserError

Log = Callable[[str], None]


def say(line: str) -> None:
    """Print ``[bench] LINE`` (the bench's progress lines) at once."""
    print(f"[bench] {line}", flush=True)


def check_seed(cell: TrainingRun) -> None:
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


def train_cell(cell: TrainingRun, pm, log: Log = say, progress: bool = True) -> dict[str, Any]:
    """Train ``cell`` unless its metrics.json exists; resume from a checkpoint when one exists.
    ``progress``: the training's progress bar on stderr."""
    from asa_plugin.training import checkpoint
    from asa_plugin.training.loop import train

    metrics_path = cell.run_dir / "metrics.json"
    check_seed(cell)
    if metrics_path.is_file():
        log(f"train {cell.name}: done, skipped ({metrics_path})")
        return res.read_json(metrics_path, "metrics.json")
    resuming = checkpoint.find(cell.run_dir) is not None
    log(f"train {cell.name}: {'resuming from checkpoint' if resuming else 'training'} into {cell.run_dir}")
    # a run dir with no checkpoint yet (the cell stopped before its first) starts over without --resume
    metrics = train(cell.cfg, resume=resuming, pm=pm, progress=progress)
    log(f"train {cell.name} (seed {cell.seed}): eval_accuracy {metrics['eval_accuracy']:.4f}, "
        f"{metrics['steps']} steps, {metrics['train_seconds']:.1f} s")
    return metrics
