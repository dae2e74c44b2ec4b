"""Static adversarial sets in a bench: each trained model evaluated on fixed files (AdvGLUE...).

``[bench] static_sets = ["advglue/dev.json#qqp", "paws.tsv"]``: cell ``label`` writes
``runs/<label>/evaluate/<name>/summary.json`` (as ``advrobust evaluate`` does), where ``name`` is
the file's stem plus ``-<task>``. The report shows their accuracies as columns.
"""

from __future__ import annotations

from pathlib import Path


def parse(spec: str) -> tuple[str, str | None, str]:
    """``FILE[#TASK]`` -> (file, task or None, output name)."""
    file, _, task = spec.partition("#")
    task = task or None
    return file, task, Path(file).stem + (f"-{task}" if task else "")


def task_hint(spec: str) -> str:
    """How a bench picks a task of a per-task JSON file (``advrobust evaluate`` says --task)."""
    return f"name it in bench.static_sets as FILE#TASK, e.g. '{parse(spec)[0]}#<task>'"
