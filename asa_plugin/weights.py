"""Checks of weight files that need neither torch nor transformers (a utility below asa_plugin.checks and training)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from asa_plugin.errors import UserError


def check_safetensors(path: Path, flag: str = "weights") -> None:
    """The header of a safetensors file parses and its tensors end exactly at the end of the file."""
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            problem = f"{size} bytes, shorter than a header"
        else:
            (length,) = struct.unpack("<Q", head)
            if 8 + length > size:
                problem = f"header of {length} bytes in a {size}-byte file"
            else:
                try:
                    header = json.loads(f.read(length))
                    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
                except (ValueError, KeyError, TypeError, IndexError):
                    problem = "unreadable header"
                else:
                    if 8 + length + end != size:
                        problem = f"{size} bytes where the header describes {8 + length + end}"
    if problem:
        raise UserError(f"{flag} {path} is truncated or damaged ({problem}); copy or save the model again")
