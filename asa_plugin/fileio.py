"""Atomic file writers (every file that marks work done is written through here), the one TOML reader shim and
the JSON reader that names a damaged file.

A writer puts the new content into a temporary file beside the target and renames it over the target, so a
reader (or a resumed run) sees either the old file or the complete new one, never a torn one. A failed write
(disk full, a directory in the way) raises ``OSError`` naming the target and leaves the old file untouched.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from asa_plugin.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["read_json", "tomllib", "write_json_atomic", "write_jsonl_atomic", "write_text_atomic"]


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    tmp.replace(path)


def write_json_atomic(path: str | Path, data: Any, *, sort_keys: bool = False) -> None:
    """Write ``data`` as indented JSON (non-ASCII kept) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=sort_keys) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> None:
    """Write ``rows`` as JSON lines to ``path`` atomically."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_json(path: Path, what: str = "file") -> Any:
    """``json.load`` of ``path``; a damaged file is one :class:`UserError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"line {exc.lineno}: " if isinstance(exc, json.JSONDecodeError) else ""
        raise UserError(f"{path}: {where}damaged {what} (not valid JSON); it was left untouched: restore it, "
                        f"or delete it to redo that step") from None
