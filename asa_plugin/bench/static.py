"""Static adversarial sets in a bench: each trained model evaluated on fixed files (AdvGLUE...).

``[bench] static_sets = ["advglue/dev.json#qqp", "paws.tsv"]``: cell ``label`` writes
``runs/<label>/evaluate/<name>/summary.json`` (as ``advrobust evaluate`` does), where ``name`` is
the file's stem plus ``-<task>``. The report shows their accuracies as columns.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def parse(spec: str) -> tuple[str, str | None, str]:
    """``FILE[#TASK]`` -> (file, task or None, output name)."""
    file, _, task = spec.partition("#")
    task = task or None
    return file, task, Path(file).stem + (f"-{task}" if task else "")


def task_hint(spec: str) -> str:
    """How a bench picks a task of a per-task JSON file (``advrobust evaluate`` says --task)."""
    return f"name it in bench.static_sets as FILE#TASK, e.g. '{parse(spec)[0]}#<task>'"


def evaluate_cell(run_dir: Path, specs: list[str], log: Callable[[str], None], label: str) -> None:
    """Evaluate ``run_dir/model`` on every static set whose summary.json does not exist yet."""
    from asa_plugin.commands.evaluate import evaluate_static_set

    for spec in specs:
        file, task, name = parse(spec)
        done = run_dir / "evaluate" / name / "summary.json"
        if done.is_file():
            log(f"evaluate {label}/{name}: done, skipped ({done})")
            continue
        summary, _ = evaluate_static_set(str(run_dir / "model"), run_dir, run_dir, data_file=file, task=task,
                                         name=name, task_hint=task_hint(spec))
        log(f"evaluate {label}/{name}: accuracy {summary['accuracy']:.4f} on {summary['num_examples']} examples")
