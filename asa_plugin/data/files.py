"""Read local TSV/CSV/JSONL/parquet files into rows."""

from __future__ import annotations

import csv
from pathlib import Path

from asa_plugin.errors import DataError

EXTENSIONS = (".tsv", ".csv", ".jsonl", ".parquet", ".json")


TASK_HINT = "give a file of one task (its list of records on its own)"
"""What to do about a per-task JSON file given as training or attack data; ``advrobust evaluate`` (its
--task) and a bench's static sets (FILE#TASK) say it their own way."""


def read_json_file(p: Path):
    """The parsed content of a ``.json`` file; undecodable bytes or bad JSON is one line naming it."""
    import json

    _check_utf8(p)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: cannot parse: {exc}") from None


def read_json_rows(p: Path, task: str | None = None, task_hint: str = TASK_HINT) -> list[dict]:
    """Rows of a ``.json`` file: a list of records, or AdvGLUE's layout (``{"task": [records]}``)
    from which ``task`` picks one list (needed when there are several); ``task_hint`` says how."""
    data = read_json_file(p)
    if isinstance(data, list):
        return data
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(f"{p}: expected a list of records or a mapping of task names to lists of records")
    if task is None and len(data) == 1:
        task = next(iter(data))
    if task not in data:
        raise DataError(f"{p}: " + (f"no task '{task}'" if task else "holds several tasks") +
                        f"; tasks: {', '.join(data)}; {task_hint}")
    return data[task]


def read_rows(path: str | Path, task: str | None = None, task_hint: str = TASK_HINT) -> list[dict]:
    """Rows of a local file; TSVs are read with quoting off (SST-2 sentences contain quotes).

    ``task``: the key of an AdvGLUE-layout ``.json`` file (``{"qqp": [...], "mnli": [...]}``).
    """
    import pandas as pd

    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: is a directory; give a data file ({', '.join(EXTENSIONS)})")
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    if p.suffix in {".tsv", ".csv", ".jsonl", ".json"}:
        _check_utf8(p)
    if p.suffix == ".jsonl":
        return _read_jsonl(p)
    if p.suffix == ".json":
        return read_json_rows(p, task, task_hint)
    try:
        if p.suffix == ".tsv":
            frame = pd.read_csv(p, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, encoding="utf-8")
        elif p.suffix == ".csv":
            frame = pd.read_csv(p, keep_default_na=False, encoding="utf-8")
        elif p.suffix == ".parquet":
            frame = pd.read_parquet(p)
        else:
            raise DataError(f"{p}: unsupported data format '{p.suffix}'; use one of {', '.join(EXTENSIONS)}")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: undecodable bytes at position {exc.start}; save the file as UTF-8") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{p}: cannot parse: {str(exc).splitlines()[0]}{delimiter_hint(p)}") from None
    if p.suffix in (".tsv", ".csv"):
        _check_header(p)
    return frame.to_dict("records")


def _header(p: Path) -> list[str]:
    """The column names of a TSV/CSV file's first line, as written (pandas renames repeats to ``x.1``)."""
    with p.open(encoding="utf-8", newline="") as f:
        first = f.readline().rstrip("\r\n")
    if p.suffix == ".tsv":
        return first.split("\t")
    return next(csv.reader([first]), [])


def _check_header(p: Path) -> None:
    """A column named twice would be read as ``text`` and ``text.1``: one of them trained on unseen."""
    names = _header(p)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{p}: line 1: the header names column '{repeated[0]}' {names.count(repeated[0])} times; "
                        f"give each column its own name")


def delimiter_hint(p: Path) -> str:
    """A hint when a .tsv file's first line has commas and no tab (or a .csv's tabs and no comma)."""
    if p.suffix not in (".tsv", ".csv") or not p.is_file():
        return ""
    try:
        first = p.open(encoding="utf-8").readline()
    except (OSError, UnicodeDecodeError):
        return ""
    wrong, right = ("," , "\t") if p.suffix == ".tsv" else ("\t", ",")
    if wrong in first and right not in first:
        named = {",": "commas", "\t": "tabs"}
        other = ".csv" if p.suffix == ".tsv" else ".tsv"
        return (f" (its header line is split by {named[wrong]}, not {named[right]}: a {other} file named "
                f"{p.suffix}? rename it {p.with_suffix(other).name})")
    return ""


def _check_utf8(p: Path) -> None:
    """One line naming the row (line) of the first byte that is not UTF-8."""
    data = p.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{p}: line {line}: bytes that are not UTF-8 (byte {exc.start}); save the file as "
                        f"UTF-8") from None


class _RepeatedKey(ValueError):
    """A JSON object with a key twice (``json`` would keep the last silently)."""


def _unique_keys(pairs: list[tuple]) -> dict:
    keys = [k for k, _ in pairs]
    repeated = next((k for k in keys if keys.count(k) > 1), None)
    if repeated is not None:
        raise _RepeatedKey(repeated)
    return dict(pairs)


def _read_jsonl(p: Path) -> list[dict]:
    """Rows of a JSONL file; a bad line is named by its number."""
    import json

    rows = []
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except _RepeatedKey as exc:
            raise DataError(f"{p}: line {number}: key '{exc.args[0]}' appears twice in the object; keep one "
                            f"(JSON keeps only the last)") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: line {number}: not valid JSON ({exc.msg}); one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{p}: line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def find_in_data_root(root: str | Path, name: str, split: str) -> Path | None:
    """``<root>/<name>/<split>.<ext>`` for the first extension that exists."""
    for ext in EXTENSIONS:
        candidate = Path(root) / name / f"{split}{ext}"
        if candidate.is_file():
            return candidate
    return None
