"""Read local TSV/CSV/JSONL/parquet files into rows."""

from __future__ import annotations

import csv
from pathlib import Path

from asa_plugin.errors import DataError

EXTENSIONS = (".tsv", ".csv", ".jsonl", ".parquet")


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local file; TSVs are read with quoting off (SST-2 sentences contain quotes)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    try:
        if p.suffix == ".tsv":
            frame = pd.read_csv(p, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, encoding="utf-8")
        elif p.suffix == ".csv":
            frame = pd.read_csv(p, keep_default_na=False, encoding="utf-8")
        elif p.suffix == ".jsonl":
            frame = pd.read_json(p, lines=True, encoding="utf-8")
        elif p.suffix == ".parquet":
            frame = pd.read_parquet(p)
        else:
            raise DataError(f"{p}: unsupported data format '{p.suffix}'; use one of {', '.join(EXTENSIONS)}")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: undecodable bytes at position {exc.start}; save the file as UTF-8") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{p}: cannot parse: {str(exc).splitlines()[0]}") from None
    return frame.to_dict("records")


def find_in_data_root(root: str | Path, name: str, split: str) -> Path | None:
    """``<root>/<name>/<split>.<ext>`` for the first extension that exists."""
    for ext in EXTENSIONS:
        candidate = Path(root) / name / f"{split}{ext}"
        if candidate.is_file():
            return candidate
    return None
