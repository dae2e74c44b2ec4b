"""Resolve a config's data section into examples: one text or a text pair, and a label id.

Lookup order for a named dataset's split: ``$ADVROBUST_DATA_DIR/<name>/<split>.<ext>``, then
the registered loader (the real hub download, or an offline package). Local files named in the
config always win.

Columns: ``data.text_column`` (default: the first of ``text``, ``sentence``, ``review``,
``content``) and, for sentence-pair tasks, ``data.text_pair_column``. Without either setting a
file whose columns are a known pair (``premise``/``hypothesis``, ``sentence1``/``sentence2``,
``question1``/``question2``, ``question``/``sentence``, ``text``/``text_pair``) is read as pairs.
Labels: see :mod:`asa_plugin.data.labels`.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

from asa_plugin.data.files import find_in_data_root, read_rows
from asa_plugin.data.labels import LabelMap, check_training_classes
from asa_plugin.errors import DataError

DATA_DIR_ENV = "ADVROBUST_DATA_DIR"
TEXT_COLUMNS = ("text", "sentence", "review", "content")
PAIR_COLUMNS = (("premise", "hypothesis"), ("sentence1", "sentence2"), ("question1", "question2"),
                ("question", "sentence"), ("text", "text_pair"))
"""Column pairs read as (first text, second text) when the config names no text column."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    text_pair: str | None = None
    """The second text of a sentence-pair task (hypothesis, question 2...); None for single texts."""


@dataclass
class Split:
    """A split's raw rows, where they came from, and its loader's label names (built-ins)."""

    rows: list[dict]
    where: str
    label_names: tuple[str, ...] | None = None


def read_split(data_cfg, split: str, registry=None) -> Split:
    """The raw rows of ``split`` ('train', 'dev', 'test', or a dataset's own split name)."""
    if registry is None:
        from asa_plugin.plugins import get_plugin_manager

        registry = get_plugin_manager().datasets
    explicit = {"train": data_cfg.train_file, "dev": data_cfg.dev_file, "test": data_cfg.test_file}.get(split)
    if explicit:
        return Split(read_rows(explicit), explicit)
    if data_cfg.train_file and not data_cfg.dataset:
        raise DataError(f"no file for split '{split}': set data.{split}_file")
    name = data_cfg.dataset
    loader = registry.get(name)
    names = getattr(loader, "label_names", None)
    root = os.environ.get(DATA_DIR_ENV)
    if root and not os.path.isdir(root):
        raise DataError(f"{DATA_DIR_ENV}={root}: " + ("is a file, not a directory" if os.path.exists(root) else
                        "no such directory") + f"; point it at the folder holding {name}/{split}.tsv, or unset it")
    if root:
        found = find_in_data_root(root, name, split)
        if found is not None:
            return Split(read_rows(found), str(found), names)
    return Split(loader(split), f"dataset '{name}'", names)


def text_columns(row: dict, where: str, text_column: str | None,
                 pair_column: str | None, key: str = "data.text_column") -> tuple[str, str | None]:
    """(text column, pair column or None) of rows shaped like ``row``; one line if absent, whose fix
    names ``key`` (the setting that picks the column in the command at hand)."""
    columns = ", ".join(map(str, row))
    if text_column is None and pair_column is None:
        for first, second in PAIR_COLUMNS:
            if first in row and second in row:
                return first, second
    text_col = text_column or next((c for c in TEXT_COLUMNS if c in row), None)
    if text_col is None or text_col not in row:
        raise DataError(f"{where}: no text column '{text_column or '/'.join(TEXT_COLUMNS)}'; columns are "
                        f"{columns}; set {key}{_delimiter_hint(where)}")
    if pair_column is not None and pair_column not in row:
        raise DataError(f"{where}: no text pair column '{pair_column}'; columns are {columns}; "
                        f"set data.text_pair_column")
    return text_col, pair_column


def _delimiter_hint(where: str) -> str:
    from asa_plugin.data.files import delimiter_hint

    return delimiter_hint(Path(where))


def cell_text(value, where: str, row: int, column: str) -> str | None:
    """The text in a cell: a string as it is, a number as written, None for a missing value (null, NaN);
    a list or an object is no text (one line naming the row)."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple, dict, set)) or hasattr(value, "tolist"):
        kind = "an object" if isinstance(value, dict) else "a list"
        raise DataError(f"{where}: row {row}: {column} is {kind}, not a text; every text must be a string")
    return str(value)


def split_columns(split: Split, data_cfg) -> tuple[str, str | None, str]:
    """(text, pair or None, label) columns of ``split``, each checked on every row: a row that is no
    record or lacks one of them is one line naming the file and the row (1-based)."""
    rows, where = split.rows, split.where
    if not rows:
        raise DataError(f"{where}: the split is empty")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{where}: row {number}: expected a record (an object of columns), got "
                            f"{type(row).__name__}; fix that row")
    text_col, pair_col = text_columns(rows[0], where, data_cfg.text_column,
                                      getattr(data_cfg, "text_pair_column", None))
    label_col = data_cfg.label_column
    if label_col not in rows[0]:
        raise DataError(f"{where}: no label column '{label_col}'; columns are "
                        f"{', '.join(map(str, rows[0]))}; set data.label_column{_delimiter_hint(where)}")
    for key, column in (("text_column", text_col), ("text_pair_column", pair_col)):
        if column == label_col:
            raise DataError(f"{where}: data.{key} '{column}' is also data.label_column: the model would read "
                            f"its answer; set data.{key} to a column of texts (columns are "
                            f"{', '.join(c for c in map(str, rows[0]) if c != label_col)})")
    needed = [c for c in (text_col, pair_col, label_col) if c is not None]
    for number, row in enumerate(rows, start=1):
        missing = [c for c in needed if c not in row]
        if missing:
            raise DataError(f"{where}: row {number}: no '{missing[0]}' (its columns are "
                            f"{', '.join(map(str, row)) or 'none'}); every row needs {', '.join(needed)}")
    return text_col, pair_col, label_col


def _row_text(row: dict, column: str, where: str, number: int, training: bool) -> str:
    """The text of ``column`` in row ``number``: a null is refused, and so is an empty text to train on."""
    text = cell_text(row[column], where, number, column)
    if text is None:
        raise DataError(f"{where}: row {number}: {column} is null (no text); give it a text or remove the row")
    if training and not text.strip():
        raise DataError(f"{where}: row {number}: {column} is empty; a training example needs a text: give it "
                        f"one or remove the row")
    return text


def to_examples(split: Split, data_cfg, labels: LabelMap, training: bool = False) -> list[Example]:
    """Validated examples of ``split``: every problem is one line naming the file and the row.
    ``training``: the split is trained on, so an empty text is refused too (an attack counts it apart)."""
    text_col, pair_col, label_col = split_columns(split, data_cfg)
    return [Example(_row_text(row, text_col, split.where, i + 1, training),
                    labels.encode(row[label_col], split.where, i + 1),
                    None if pair_col is None else _row_text(row, pair_col, split.where, i + 1, training))
            for i, row in enumerate(split.rows)]


def label_map(data_cfg, train: Split, num_labels: int | None = None) -> LabelMap:
    """The label map implied by the training split (and ``data.label_names``, ``model.num_labels``)."""
    _, _, label_col = split_columns(train, data_cfg)
    raw = [row[label_col] for row in train.rows]
    return LabelMap.from_training_labels(raw, train.where, getattr(data_cfg, "label_names", None), num_labels,
                                         train.label_names)


def subset(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A seeded random subset of ``limit`` examples (all of them when ``limit`` is None or larger)."""
    if limit is not None and limit < len(examples):
        return random.Random(seed).sample(examples, limit)
    return examples


def load_split(data_cfg, split: str, labels: LabelMap | int | None = None, registry=None,
               limit: int | None = None, seed: int = 0) -> list[Example]:
    """Examples of ``split``; a random subset of ``limit`` if given.

    ``labels``: the label map (from training, or a checkpoint); an int means integer labels
    ``0..labels-1`` (named by ``data.label_names`` when set); None infers it from this split.
    """
    found = read_split(data_cfg, split, registry)
    if labels is None:
        labels = label_map(data_cfg, found)
    elif isinstance(labels, int):
        names = getattr(data_cfg, "label_names", None)
        labels = LabelMap(len(names), tuple(names)) if names else LabelMap(labels)
    return subset(to_examples(found, data_cfg, labels), limit, seed)


@dataclass
class TrainingData:
    labels: LabelMap
    train: list[Example]
    eval: list[Example]


def load_training_data(data_cfg, num_labels: int | None, registry=None) -> TrainingData:
    """The label map and the train/eval examples of a run, validated before any model loads."""
    train = read_split(data_cfg, data_cfg.train_split, registry)
    labels = label_map(data_cfg, train, num_labels)
    train_examples = to_examples(train, data_cfg, labels, training=True)
    check_training_classes([e.label for e in train_examples], labels, train.where,
                           getattr(data_cfg, "label_names", None), num_labels)
    train_examples = subset(train_examples, data_cfg.max_train_examples, data_cfg.subset_seed)
    evaluated = read_split(data_cfg, data_cfg.eval_split, registry)
    eval_examples = subset(to_examples(evaluated, data_cfg, labels), data_cfg.max_eval_examples,
                           data_cfg.subset_seed)
    if (train_examples[0].text_pair is None) != (eval_examples[0].text_pair is None):
        kinds = ["text pairs" if e[0].text_pair is not None else "single texts"
                 for e in (train_examples, eval_examples)]
        raise DataError(f"{evaluated.where}: holds {kinds[1]} but {train.where} holds {kinds[0]}; set "
                        f"data.text_column and data.text_pair_column so both splits have the same columns")
    return TrainingData(labels, train_examples, eval_examples)


def trained_on_pairs(run_dir: Path | None) -> tuple[bool, str] | None:
    """(whether the run's model was trained on text pairs, its training data) from the run's
    ``config.resolved.toml``; None when that cannot be told cheaply (no run dir, a plugin dataset,
    a training file since moved)."""
    from asa_plugin.config import DataConfig, read_file
    from asa_plugin.errors import UserError
    from asa_plugin.schema import build

    resolved = Path(run_dir) / "config.resolved.toml" if run_dir is not None else None
    if resolved is None or not resolved.is_file():
        return None
    try:
        data = build(DataConfig, read_file(resolved).get("data", {}), section="data", source=str(resolved))
        if data.text_pair_column:
            return True, f"data.text_pair_column = {data.text_pair_column!r}"
        if data.train_file:
            rows = read_rows(data.train_file)
            if not rows or not isinstance(rows[0], dict):
                return None
            return text_columns(rows[0], data.train_file, data.text_column, None)[1] is not None, data.train_file
    except (UserError, OSError):
        return None
    from asa_plugin.data.builtin import HUB

    if data.dataset in HUB:
        return isinstance(HUB[data.dataset][2], tuple), f"dataset '{data.dataset}'"
    return None


def check_same_inputs(examples: list[Example], where: str, run_dir: Path | None, command: str) -> None:
    """Refuse single texts for a model trained on text pairs, and the reverse (when the run tells)."""
    trained = trained_on_pairs(run_dir)
    if trained is None or not examples or trained[0] == (examples[0].text_pair is not None):
        return
    kinds = ("text pairs", "single texts") if trained[0] else ("single texts", "text pairs")
    fix = ("give data with both texts (data.text_pair_column names the second)" if trained[0] else
           "give data with one text column (set data.text_column), or a model trained on pairs")
    raise DataError(f"{where} holds {kinds[1]}, but the model of {run_dir} was trained on {kinds[0]} "
                    f"({trained[1]}): its predictions would mean nothing; {fix}, or {command} another model")
