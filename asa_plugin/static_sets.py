"""Accuracy and per-example predictions of a trained model on a fixed (static) set.

Library code below both ``advrobust evaluate`` and the bench's static-set cells: AdvGLUE's
``dev.json`` (one list of records per task) or any local file; writes
``<out>/evaluate/<name>/predictions.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASK_HINT = "choose one with --task"
"""How ``advrobust evaluate`` picks a task of a per-task JSON file; a bench says it its own way."""

ADVGLUE_TASKS = {"sst2": "sst2", "qqp": "qqp", "mnli": "mnli", "qnli": "qnli", "rte": "rte"}
"""A run's dataset -> its AdvGLUE key, used when --task is not given (mnli-mm needs --task)."""


def _run_settings(run_dir: Path | None) -> dict[str, Any]:
    """The run's [data] and [model] settings (columns, max_length), when it has a resolved config."""
    from asa_plugin.config import read_file

    path = run_dir / "config.resolved.toml" if run_dir is not None else None
    return read_file(path) if path is not None and path.is_file() else {}


def static_set(data_file: str | None, task: str | None, dataset: str | None, split: str,
               settings: dict[str, Any], labels, task_hint: str = TASK_HINT) -> tuple[list, str, str]:
    """(examples, where they come from, default output name) of the set to evaluate; ``task_hint`` says
    how to pick a task of a per-task JSON file (``--task``; a bench's ``FILE#TASK``)."""
    from asa_plugin.config import DataConfig
    from asa_plugin.data.files import read_json_file, read_rows
    from asa_plugin.data.loading import Split, read_split, to_examples
    from asa_plugin.errors import UserError

    data = settings.get("data", {})
    columns = {k: data[k] for k in ("text_column", "text_pair_column", "label_column") if data.get(k)}
    if data_file and task is not None and Path(data_file).suffix != ".json":
        raise UserError(f"{data_file}: a task ('{task}') picks one list of a per-task .json file (AdvGLUE's "
                        f"layout), but this is a {Path(data_file).suffix or 'suffix-less'} file of one set; "
                        + ("drop --task" if task_hint == TASK_HINT else "drop '#TASK' from its bench.static_sets "
                                                                        "entry"))
    if data_file:
        if task is None and Path(data_file).suffix == ".json" and Path(data_file).is_file():
            task = ADVGLUE_TASKS.get(str(data.get("dataset")))
            content = read_json_file(Path(data_file))
            if task is not None and not (isinstance(content, dict) and task in content):
                task = None
        rows = read_rows(data_file, task, task_hint)
        if rows and any(columns.get(k) not in rows[0] for k in ("text_column", "text_pair_column") if k in columns):
            columns = {k: v for k, v in columns.items() if k == "label_column"}  # a file with its own columns
        cfg = DataConfig(dataset=None, train_file=data_file, **columns)
        where = f"{data_file}" + (f" [{task}]" if task else "")
        examples = to_examples(Split(rows, where), cfg, labels)
        return examples, where, Path(data_file).stem + (f"-{task}" if task else "")
    if not dataset:
        raise UserError("give --data-file FILE or --dataset NAME")
    cfg = DataConfig(dataset=dataset, **columns)
    found = read_split(cfg, split)
    return to_examples(found, cfg, labels), f"{found.where}:{split}", f"{dataset}-{split}"


def evaluate(model_path: str, examples: list, max_length: int, batch_size: int = 64) -> tuple[dict, list[dict]]:
    """(summary, per-example rows) of ``model_path`` on ``examples``."""
    import torch

    from asa_plugin.adapters.loading import load_adapter
    from asa_plugin.training.predict import predict

    adapter = load_adapter(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probabilities = predict(adapter.model, adapter.tokenizer, examples, max_length, batch_size, device)  # (N, C)
    names = adapter.model.config.id2label
    rows = []
    for i, (example, probs) in enumerate(zip(examples, probabilities.tolist())):
        prediction = max(range(len(probs)), key=probs.__getitem__)
        row = {"index": i, "text": example.text}
        if example.text_pair is not None:
            row["text_pair"] = example.text_pair
        rows.append({**row, "gold_label": example.label, "gold_name": names[example.label],
                     "prediction": prediction, "prediction_name": names[prediction],
                     "correct": prediction == example.label, "probabilities": [round(p, 6) for p in probs]})
    correct = sum(r["correct"] for r in rows)
    return {"accuracy": correct / len(rows), "correct": correct, "num_examples": len(rows)}, rows


DATA_KEY_FIXES = {
    "set data.text_column": "name the file's text column text, sentence, review or content",
    "set data.label_column": "name the file's label column 'label'",
    "set data.text_pair_column": "name the file's columns as a known pair (premise/hypothesis, "
                                 "sentence1/sentence2, question1/question2)",
}
"""``evaluate`` reads columns by these names (or the run's): the fixes its messages give instead of a key."""


def _without_data_keys(message: str) -> str:
    for key, fix in DATA_KEY_FIXES.items():
        message = message.replace(key, fix)
    return message


def _max_length(checkpoint: str, run_dir: Path | None, settings: dict[str, Any], given: int | None) -> int:
    """The tokens per input evaluate reads, refused in one line when the backbone's position table is shorter."""
    from asa_plugin.checks import backbone_config, check_max_length, position_limit

    if given is not None:
        check_max_length(checkpoint, given, "--max-length", "pass --max-length {limit} or less")
        return given
    configured = settings.get("model", {}).get("max_length")
    if configured is None:
        config = backbone_config(checkpoint)
        limit = position_limit(config) if config is not None else None
        return min(512, limit[0]) if limit is not None else 512
    check_max_length(checkpoint, configured, f"{run_dir / 'config.resolved.toml'}: model.max_length",
                     "pass --max-length {limit} (or less) to read fewer tokens")
    return configured


def evaluate_static_set(checkpoint: str, run_dir: Path | None, out_root: Path, data_file: str | None = None,
                        task: str | None = None, dataset: str | None = None, split: str = "dev",
                        name: str | None = None, batch_size: int = 64,
                        task_hint: str = TASK_HINT, max_length: int | None = None) -> tuple[dict, Path]:
    """Evaluate ``checkpoint`` on one static set; write ``out_root/evaluate/<name>/``; (summary, that dir).

    ``max_length``: tokens per input; default the run's ``model.max_length``, else 512 (or fewer, if the
    backbone's position table holds fewer)."""
    from asa_plugin.data.labels import checkpoint_labels, class_mismatch
    from asa_plugin.data.loading import check_same_inputs
    from asa_plugin.errors import UserError
    from asa_plugin.fileio import write_json_atomic, write_jsonl_atomic
    from asa_plugin.outputs import path_name_problem

    problem = path_name_problem(name) if name is not None else None
    if problem:
        raise UserError(f"--name {name!r} cannot name a folder under {out_root / 'evaluate'} ({problem}); give a "
                        f"plain name such as 'advglue-sst2' (--out DIR chooses where)")
    settings = _run_settings(run_dir)
    max_length = _max_length(checkpoint, run_dir, settings, max_length)  # before any data is read
    labels = checkpoint_labels(checkpoint)
    try:
        examples, where, default_name = static_set(data_file, task, dataset, split, settings, labels, task_hint)
    except UserError as exc:  # evaluate takes no config: a [data] key is no fix here
        raise type(exc)(_without_data_keys(str(exc))) from None
    problem = path_name_problem(default_name) if name is None else None
    if problem:
        raise UserError(f"the output name {default_name!r} (from the file, task or dataset) cannot name a folder "
                        f"under {out_root / 'evaluate'} ({problem}); give one with --name NAME")
    check_same_inputs(examples, where, run_dir, "evaluate")
    mismatch = class_mismatch(labels, [e.label for e in examples], where)
    if mismatch:
        import sys

        print(f"advrobust evaluate: {mismatch}", file=sys.stderr, flush=True)
    summary, rows = evaluate(checkpoint, examples, max_length, batch_size)
    out = out_root / "evaluate" / (name or default_name)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**summary, "name": name or default_name, "data": where, "model": checkpoint}
    write_jsonl_atomic(out / "predictions.jsonl", rows)
    write_json_atomic(out / "summary.json", summary)
    return summary, out
