"""Read a pre-training corpus into a list of texts.

Sources: a ``.txt`` file (one document or sentence per line), a ``.tsv``/``.csv``/``.jsonl`` file
with a text column, a registered dataset name (its texts; labels are ignored) or a Hugging Face
``datasets`` name. Empty (or whitespace-only) texts are skipped and counted; a line that is not
UTF-8 stops the run before any model loads with one line naming the file and the line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from asa_plugin.errors import DataError

TABLE_EXTENSIONS = (".tsv", ".csv", ".jsonl")


@dataclass
class Corpus:
    """The texts of a corpus split into training and held-out texts."""

    train: list[str]
    eval: list[str]
    where: str
    skipped_empty: int

    def describe(self) -> dict[str, int | str]:
        """What metrics.json records about the corpus."""
        return {"corpus": self.where, "train_texts": len(self.train), "eval_texts": len(self.eval),
                "skipped_empty_texts": self.skipped_empty}


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (line endings removed); one line for the first undecodable one."""
    lines = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: line {number} is not UTF-8 (byte {exc.start + 1} of the line); "
                                f"save the corpus as UTF-8 or remove the line") from None
    return lines


def _table_texts(rows: list[dict], where: str, text_column: str | None) -> list[str]:
    """The text of every row; a row that is no record, lacks the column or holds a list is named by its
    number (1-based). A null text counts as empty (skipped)."""
    from asa_plugin.data.loading import cell_text, text_columns

    if not rows:
        raise DataError(f"{where}: the corpus is empty")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{where}: row {number}: expected a record (an object of columns), got "
                            f"{type(row).__name__}; fix that row")
    column, _ = text_columns(rows[0], where, text_column, None, key="pretrain.text_column")
    texts = []
    for number, row in enumerate(rows, start=1):
        if column not in row:
            raise DataError(f"{where}: row {number}: no '{column}' (its columns are "
                            f"{', '.join(map(str, row)) or 'none'}); every row needs {column}")
        texts.append(cell_text(row[column], where, number, column) or "")
    return texts


def read_texts(cfg, datasets) -> tuple[list[str], str]:
    """(raw texts, where they came from) of the ``[pretrain]`` section ``cfg``."""
    from asa_plugin.data.files import read_rows

    path = Path(cfg.corpus)
    if path.suffix == ".txt":
        if not path.is_file():
            raise DataError(f"pretrain.corpus: file not found: {path}")
        return read_text_lines(path), str(path)
    if path.suffix in TABLE_EXTENSIONS:
        return _table_texts(read_rows(path), str(path), cfg.text_column), str(path)
    if cfg.corpus in datasets:
        from asa_plugin.data.loading import read_split

        data_cfg = SimpleNamespace(dataset=cfg.corpus, train_file=None, dev_file=None, test_file=None)
        split = read_split(data_cfg, cfg.split, datasets)
        return _table_texts(split.rows, split.where, cfg.text_column), split.where
    if path.suffix or path.exists():
        raise DataError(f"pretrain.corpus {path}: unknown corpus format; give a .txt (one text per line) or a "
                        f"{'/'.join(TABLE_EXTENSIONS)} file, a dataset name ({', '.join(datasets.names())}) or "
                        f"a Hugging Face datasets name")
    return _hub_texts(cfg), f"datasets '{cfg.corpus}'"


def _hub_texts(cfg) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"pretrain.corpus '{cfg.corpus}' is not a file or a registered dataset, and the "
                        f"`datasets` package is not installed") from None
    try:
        rows = datasets.load_dataset(cfg.corpus, split=cfg.split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; the user gets one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"pretrain.corpus '{cfg.corpus}': cannot load it with datasets: {first}") from None
    return _table_texts(list(rows), f"datasets '{cfg.corpus}'", cfg.text_column)


def load_corpus(cfg, datasets) -> Corpus:
    """The corpus of ``cfg`` ([pretrain]) without empty texts; a fixed random ``eval_fraction`` of them
    (the same whatever ``train.seed``) held out."""
    texts, where = read_texts(cfg, datasets)
    if cfg.max_lines is not None:
        texts = texts[:cfg.max_lines]
    kept = [t for t in texts if t.strip()]
    if len(kept) < 2:
        raise DataError(f"{where}: the corpus has {len(kept)} non-empty text(s) "
                        f"({len(texts) - len(kept)} empty skipped); pre-training needs at least 2 "
                        f"(one to train on, one held out)")
    count = max(1, round(cfg.eval_fraction * len(kept)))
    if count >= len(kept):
        raise DataError(f"{where}: pretrain.eval_fraction = {cfg.eval_fraction} of {len(kept)} texts holds out "
                        f"{count} and leaves none to train on; lower pretrain.eval_fraction or give a larger corpus")
    held = set(random.Random(0).sample(range(len(kept)), count))
    return Corpus(train=[t for i, t in enumerate(kept) if i not in held],
                  eval=[t for i, t in enumerate(kept) if i in held], where=where,
                  skipped_empty=len(texts) - len(kept))
