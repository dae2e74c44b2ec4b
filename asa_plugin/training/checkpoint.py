"""Atomic checkpoints: a kill -9 at any moment leaves the last good one intact.

Every process writes its own files into ``checkpoint.tmp`` (Accelerate's ``save_state``: the main
process the weights, optimizer and scheduler, each process its ``random_states_<rank>.pkl``), and
Accelerate 1.15's ``save_state`` ends without a barrier. So :func:`save` waits for every process
to finish writing before the main process renames the folder, then every process waits for the
rename: a checkpoint never lacks a rank's RNG state, and no rank writes into a renamed folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from asa_plugin.errors import UserError, writing
from asa_plugin.weights import check_safetensors

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"
FILES_KEY = "checkpoint_files"
"""Key of the trainer state listing every file the checkpoint holds (checked before a resume)."""
DELAY_ENV = "ADVROBUST_TEST_SAVE_DELAY"
"""Test hook, ``RANK:SECONDS``: process RANK sleeps SECONDS before writing its part of a checkpoint
(a slow rank, as a loaded machine makes one; tests/test_distributed.py)."""


class _TiedWeightsNote(logging.Filter):
    """Drop Accelerate's "Removed shared tensor {...} while saving" warning (three per pre-training run):
    the shared tensors are weights the model ties (a masked-LM decoder and the word embeddings), which
    ``load_state`` restores into the same tied model, so there is nothing to check."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in str(record.msg)


_TIED = _TiedWeightsNote()


def save(accelerator, run_dir: Path, state: dict[str, Any]) -> None:
    """Write model/optimizer/scheduler/RNG state plus ``state`` and swap it in atomically."""
    final = run_dir / CHECKPOINT
    tmp = run_dir / f"{CHECKPOINT}.tmp"
    old = run_dir / f"{CHECKPOINT}.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    _test_delay(accelerator.process_index)
    noisy = logging.getLogger("accelerate.utils.other")
    noisy.addFilter(_TIED)
    try:
        with writing(tmp):
            accelerator.save_state(str(tmp), safe_serialization=True)
    finally:
        noisy.removeFilter(_TIED)
    accelerator.wait_for_everyone()  # every process has written its files into tmp
    if accelerator.is_main_process:
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / STATE_FILE).write_text(json.dumps({**state, FILES_KEY: files}, indent=2))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()  # nobody goes on (or saves again) before the swap


def _test_delay(rank: int) -> None:
    hook = os.environ.get(DELAY_ENV, "")
    if hook:
        slow_rank, seconds = hook.split(":")
        if int(slow_rank) == rank:
            time.sleep(float(seconds))


def find(run_dir: Path) -> Path | None:
    """The last complete checkpoint (also one left as ``.old`` by a kill during the swap)."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        candidate = run_dir / name
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def read_state(path: Path) -> dict[str, Any]:
    """The loop's state saved in checkpoint ``path`` (without loading weights)."""
    state = json.loads((path / STATE_FILE).read_text())
    state.pop(FILES_KEY, None)
    return state


def check_complete(path: Path) -> None:
    """Refuse a checkpoint that lacks a file it was saved with, or a process's RNG state: resuming
    it would silently diverge from the uninterrupted run (Accelerate only logs a missing RNG file)."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise UserError(f"{path / STATE_FILE} is damaged; this checkpoint cannot be resumed (train into "
                        f"another directory with --set output.run_dir=...)") from None
    processes = state.get("num_processes", 1)
    expected = set(state.get(FILES_KEY, [])) | {f"random_states_{rank}.pkl" for rank in range(processes)}
    missing = sorted(name for name in expected if not (path / name).exists())
    if missing:
        raise UserError(f"{path} is incomplete (missing {', '.join(missing)}); resuming it would not continue "
                        f"the interrupted run: restore the files, or train into another directory with "
                        f"--set output.run_dir=...")
    for weights in sorted(path.glob("*.safetensors")):
        try:
            check_safetensors(weights, "checkpoint file")
        except UserError as exc:
            raise UserError(str(exc).split("; copy or save")[0] + "; this checkpoint cannot be resumed: restore "
                            "it, or train into another directory with --set output.run_dir=...") from None


def load(accelerator, path: Path) -> dict[str, Any]:
    """Restore model/optimizer/scheduler/RNG state from ``path``; return the loop's state."""
    accelerator.load_state(str(path))
    return read_state(path)
