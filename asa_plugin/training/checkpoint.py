"""Atomic checkpoints: a kill -9 at any moment leaves the last good one intact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"


def save(accelerator, run_dir: Path, state: dict[str, Any]) -> None:
    """Write model/optimizer/scheduler/RNG state plus ``state`` and swap it in atomically."""
    final = run_dir / CHECKPOINT
    tmp = run_dir / f"{CHECKPOINT}.tmp"
    old = run_dir / f"{CHECKPOINT}.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def find(run_dir: Path) -> Path | None:
    """The last complete checkpoint (also one left as ``.old`` by a kill during the swap)."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        candidate = run_dir / name
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def read_state(path: Path) -> dict[str, Any]:
    """The loop's state saved in checkpoint ``path`` (without loading weights)."""
    return json.loads((path / STATE_FILE).read_text())


def load(accelerator, path: Path) -> dict[str, Any]:
    """Restore model/optimizer/scheduler/RNG state from ``path``; return the loop's state."""
    accelerator.load_state(str(path))
    return read_state(path)
