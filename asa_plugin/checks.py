"""Checks that run before any heavy work, each failing with one :class:`UserError` line.

Cheap on purpose: nothing here imports torch or transformers (``backbone_config`` only for a hub name already
cached), so a wrong path, an unwritable output or a damaged model directory is reported in well under a second,
before a model loads. A utility: every layer may use it (docs/architecture.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from asa_plugin.errors import UserError
from asa_plugin.weights import check_safetensors

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_data_files(data, where: str) -> None:
    """Every local file named in ``[data]`` exists and is a file."""
    for key in ("train_file", "dev_file", "test_file"):
        value = getattr(data, key)
        if value is None:
            continue
        p = Path(value)
        if p.is_dir():
            raise UserError(f"{where}: data.{key} {value} is a directory; give a .tsv, .csv, .jsonl or .parquet file")
        if not p.is_file():
            raise UserError(f"{where}: data.{key}: file not found: {value}")


def check_writable(directory: str | Path, what: str, fix: str) -> None:
    """``directory`` can be created (or exists) and written: a file is written and removed in it, or in
    its deepest existing parent (nothing is left behind, no directory is created)."""
    d = Path(directory)
    existing = next((p for p in (d, *d.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UserError(f"{what} {d}: {existing} is a file, not a directory; {fix}")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".advrobust-write-check-"):
            pass
    except OSError as exc:
        raise UserError(f"{what} {d} is not writable ({exc.strerror or exc}); {fix}") from None


def check_cache_dir(cache_dir: Path) -> None:
    """The attack cache (attack.cache_dir, else $TA_CACHE_DIR, else RUN/attack/.cache) can be written."""
    check_writable(cache_dir, "attack cache", "choose another with --set attack.cache_dir=DIR (or TA_CACHE_DIR)")


def looks_local(name: str) -> bool:
    """True for something meant as a local path rather than a hub name such as ``roberta-base``."""
    return (Path(name).exists() or name.startswith((".", "/", "~")) or os.sep in name.rstrip(os.sep)
            and name.count("/") != 1)


def check_model_dir(path: str | Path, flag: str) -> None:
    """A local model directory holds a loadable checkpoint: config.json with model_type, whole weights.

    ``flag`` names where the path came from (``--model``, ``model.backbone``) in the message.
    """
    p = Path(path)
    if p.is_file():
        hint = "the directory holding it and its config.json" if p.suffix in {".safetensors", ".bin"} else \
            "a model directory (with config.json) or a run directory"
        raise UserError(f"{flag} {p} is a file; give {hint}")
    if not p.is_dir():
        raise UserError(f"{flag} {path}: directory not found")
    config = p / "config.json"
    if not config.is_file():
        if (p / "config.resolved.toml").is_file():
            raise UserError(f"{flag} {p} is a run directory with no trained model (no model/): its training has "
                            f"not finished; finish it with `advrobust train CONFIG --resume`")
        raise UserError(f"{flag} {p} has no config.json: not a model directory (give a run directory of "
                        f"`advrobust train` or a folder written by save_pretrained)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise UserError(f"{flag} {config} is damaged (not a JSON object); save the model again") from None
    if not model_type:
        raise UserError(f"{flag} {config} has no model_type, so the architecture is unknown; add it "
                        f"(e.g. \"model_type\": \"bert\") or save the model again with save_pretrained")
    if not any((p / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"{flag} {p} has config.json but no weights ({' or '.join(WEIGHT_FILES[::2])}); copy "
                        f"them too, or save the model again")
    if (p / "model.safetensors").is_file():
        check_safetensors(p / "model.safetensors", flag)


PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "xlm-roberta-xl",
                            "data2vec-text", "longformer", "mpnet")
"""Model types whose position ids start after the padding index (``padding_idx + 1``, transformers'
``create_position_ids_from_input_ids``): ``max_position_embeddings`` 514 holds 512 tokens."""


def position_limit(config: dict[str, Any]) -> tuple[int, str] | None:
    """(the most tokens the backbone's absolute position table holds, how that follows from ``config``),
    or None when it has no such table (DeBERTa-v2 without ``position_biased_input``) or does not say."""
    table = config.get("max_position_embeddings")
    if not isinstance(table, int) or table <= 0:
        return None
    if config.get("model_type") in ("deberta", "deberta-v2") and config.get("position_biased_input") is False:
        return None  # relative positions only: no table to run past
    if config.get("model_type") in PADDING_OFFSET_POSITIONS:
        pad = config.get("pad_token_id")
        offset = (1 if pad is None else int(pad)) + 1
        return table - offset, f"max_position_embeddings {table} less the padding offset {offset}"
    return table, f"max_position_embeddings {table}"


def backbone_config(backbone: str) -> dict[str, Any] | None:
    """The config of a local model directory or of a hub name already cached; None when unreadable (the
    model load reports that)."""
    local = Path(backbone) / "config.json"
    if local.is_file():
        try:
            found = json.loads(local.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(backbone).to_dict()
    except Exception:  # noqa: BLE001 - not found, offline, gated: the model load says so in its own words
        return None


def check_max_length(backbone: str, max_length: int, where: str, fix: str) -> None:
    """``max_length`` tokens fit the backbone's position table (else an index error on CPU and a device-side
    assert on CUDA once a long text comes); ``where`` names the setting, ``fix`` the flag or key that lowers it."""
    config = backbone_config(backbone)
    found = position_limit(config) if config is not None else None
    if found is not None and max_length > found[0]:
        limit, why = found
        raise UserError(f"{where} = {max_length} is longer than {backbone} can read: its position table holds "
                        f"{limit} tokens ({why}); {fix.format(limit=limit)}")
