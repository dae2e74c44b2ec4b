"""Resolve a config's data section into lists of (text, label) examples.

Lookup order for a named dataset's split: ``$ADVROBUST_DATA_DIR/<name>/<split>.<ext>``, then
the registered loader (the real hub download, or an offline package). Local files named in the
config always win.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass

from asa_plugin.data.files import find_in_data_root, read_rows
from asa_plugin.errors import DataError

DATA_DIR_ENV = "ADVROBUST_DATA_DIR"
TEXT_COLUMNS = ("text", "sentence", "review", "content")


@dataclass(frozen=True)
class Example:
    text: str
    label: int


def _rows_for(data_cfg, split: str, registry) -> tuple[list[dict], str]:
    explicit = {"train": data_cfg.train_file, "dev": data_cfg.dev_file, "test": data_cfg.test_file}.get(split)
    if explicit:
        return read_rows(explicit), explicit
    if data_cfg.train_file and not data_cfg.dataset:
        raise DataError(f"no file for split '{split}': set data.{split}_file")
    name = data_cfg.dataset
    root = os.environ.get(DATA_DIR_ENV)
    if root:
        found = find_in_data_root(root, name, split)
        if found is not None:
            return read_rows(found), str(found)
    return registry.get(name)(split), f"dataset '{name}'"


def _to_examples(rows: list[dict], where: str, text_column: str | None, label_column: str,
                 num_labels: int) -> list[Example]:
    if not rows:
        raise DataError(f"{where}: the split is empty")
    columns = list(rows[0])
    text_col = text_column or next((c for c in TEXT_COLUMNS if c in rows[0]), None)
    if text_col is None or text_col not in rows[0]:
        raise DataError(f"{where}: no text column '{text_column or '/'.join(TEXT_COLUMNS)}'; columns are "
                        f"{', '.join(map(str, columns))}; set data.text_column")
    if label_column not in rows[0]:
        raise DataError(f"{where}: no label column '{label_column}'; columns are "
                        f"{', '.join(map(str, columns))}; set data.label_column")
    examples = []
    for i, row in enumerate(rows):
        raw = row[label_column]
        try:
            label = int(raw)
            if isinstance(raw, float) and (math.isnan(raw) or raw != label):
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f"{where}: row {i + 1}: label {raw!r} is not an integer") from None
        if not 0 <= label < num_labels:
            raise DataError(f"{where}: row {i + 1}: label {label} outside 0..{num_labels - 1}; "
                            f"check model.num_labels")
        text = row[text_col]
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        examples.append(Example(text, label))
    return examples


def load_split(data_cfg, split: str, num_labels: int, registry=None, limit: int | None = None,
               seed: int = 0) -> list[Example]:
    """Examples of ``split`` ('train', 'dev' or 'test'); a random subset of ``limit`` if given."""
    if registry is None:
        from asa_plugin.plugins import get_plugin_manager

        registry = get_plugin_manager().datasets
    rows, where = _rows_for(data_cfg, split, registry)
    examples = _to_examples(rows, where, data_cfg.text_column, data_cfg.label_column, num_labels)
    if limit is not None and limit < len(examples):
        examples = random.Random(seed).sample(examples, limit)
    return examples
