"""Checks that run before any heavy work, each failing with one :class:`UserError` line.

Cheap on purpose: nothing here imports torch or transformers, so a wrong path, an unwritable
output or a damaged model directory is reported in well under a second, before a model loads.
The bench pre-flight (:func:`check_bench`) also builds every recipe once, so a missing attack
asset is found before hours of training rather than after.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from asa_plugin.errors import UserError
from asa_plugin.weights import check_safetensors  # noqa: F401 - re-exported: callers import it from here

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


RESUME_IGNORED = {("train", "checkpoint_every_steps"), ("train", "log_every_steps"), ("train", "eval_batch_size")}
"""Settings a resumed run may change: they do not change what is trained."""
RESUME_IGNORED_SECTIONS = {"attack", "output", "plugins"}
BENCH_IGNORED = RESUME_IGNORED | {("train", "seed"), ("train", "threads"), ("attack", "recipes"),
                                  ("attack", "batch_size"), ("attack", "device"), ("attack", "cache_dir"),
                                  ("attack", "download"), ("attack", "workers"), ("attack", "threads")}
"""Shared bench settings a rerun may change: the recipe list (cells are per recipe), how attacks and training
are executed (processes, threads, devices: per-example outcomes are identical), and train.seed (each run's
seed comes from bench.seeds; a run dir trained with another is refused per run)."""


def changed_settings(old: dict[str, Any], new: dict[str, Any], ignored: set = RESUME_IGNORED,
                     ignored_sections: set = RESUME_IGNORED_SECTIONS) -> list[str]:
    """Dotted keys whose result-relevant values differ between two resolved configs.

    A key the old record lacks was added to the schema after it was written; it counts as changed only
    when the new value differs from that option's default (the behaviour the old run had)."""
    changed = []
    for section in sorted(set(old) | set(new)):
        if section in ignored_sections:
            continue
        a, b = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a) | set(b), key=lambda k: (k != "name", k)):  # a changed defence name first
            if (section, key) in ignored:
                continue
            before = a[key] if key in a else _schema_default(section, key, b.get(key))
            after = b.get(key)
            if isinstance(before, dict) and isinstance(after, dict):  # a composed defence's [defence.NAME]
                changed += [f"{section}.{key}.{sub}" for sub in sorted(set(before) | set(after))
                            if before.get(sub) != after.get(sub)]
            elif before != after:
                changed.append(f"{section}.{key}")
    return changed


def _schema_default(section: str, key: str, fallback: Any) -> Any:
    """The default of option ``section.key`` in the run-config schema (``fallback`` if it has none)."""
    from asa_plugin.config import RunConfig, toml_values

    defaults = getattr(RunConfig(), section, None)
    try:
        values = toml_values(defaults)
    except TypeError:  # not a dataclass section
        return fallback
    return values.get(key, fallback)


def _shown(changed: list[str], old: dict, new: dict) -> str:
    return _listed([f"{k} ({_get(old, k)!r} -> {_get(new, k)!r})" for k in changed])


def _listed(items: list[str]) -> str:
    return ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")


def check_resume(cfg, run_dir: Path) -> None:
    """Refuse to resume ``run_dir`` with settings other than those it was started with."""
    from asa_plugin.config import tomllib

    resolved = run_dir / "config.resolved.toml"
    if not resolved.is_file():  # without it a changed setting would pass unseen
        raise UserError(f"--resume: {resolved} is missing, so the settings {run_dir} was started with are "
                        f"unknown; restore it, or train into another directory with --set output.run_dir=...")
    try:
        old = tomllib.loads(resolved.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        raise UserError(f"{resolved} is damaged; restore it, or start a new run with "
                        f"--set output.run_dir=...") from None
    new = cfg.to_dict()
    old["defence"], new["defence"] = (without_execution_only(old.get("defence") or {}),
                                      without_execution_only(new.get("defence") or {}))
    changed = changed_settings(old, new)
    if changed:
        state = "finished" if (run_dir / "metrics.json").is_file() else "started"
        raise UserError(f"--resume: {run_dir} was {state} with other settings: {_shown(changed, old, new)}; use "
                        f"its settings ({resolved}), or train into another directory with --set output.run_dir=...")


def check_bench_settings(plan) -> None:
    """A bench rerun into an existing out_dir must share its settings, or old cells get new labels."""
    from asa_plugin.bench.plan import BENCH_FILE, read_bench_file

    if not (plan.out_dir / BENCH_FILE).is_file():
        return
    old, new = read_bench_file(plan.out_dir), plan.describe()
    keys = changed_settings(old["settings"], new["settings"], BENCH_IGNORED, {"plugins"})
    changed = [f"{k} ({_get(old['settings'], k)!r} -> {_get(new['settings'], k)!r})" for k in keys]
    old_params = {label: _resolved_params(p) for label, p in (old.get("defence_params") or {}).items()}
    defaults = {c.label: _resolved_params(_default_params(c.cfg.defence)) for c in plan.cells}
    for label, params in new["defence_params"].items():
        params = without_execution_only(_resolved_params(params))
        if label not in old_params:
            continue
        before = without_execution_only(_with_defaults(old_params[label], defaults.get(label, {})))
        changed += [f"defence '{label}' {key} ({before.get(key)!r} -> {params.get(key)!r})"
                    for key in sorted(set(before) | set(params)) if before.get(key) != params.get(key)]
    if changed:
        raise UserError(f"{plan.out_dir / BENCH_FILE}: this bench ran with other settings: {_listed(changed)}; "
                        f"its finished cells would be reported under the new ones. Rerun with its settings, or "
                        f"choose a new directory with --set bench.out_dir=...")


def without_execution_only(defence: dict[str, Any]) -> dict[str, Any]:
    """A ``[defence]`` table (as ``DefenceConfig.to_dict`` writes it) without the options its defences
    declare ``EXECUTION_ONLY``: how a step is computed, not what (e.g. ASA's ``recompute_clean``)."""
    from asa_plugin.errors import UserError
    from asa_plugin.plugins import get_plugin_manager

    def execution_only(name: str) -> frozenset[str]:
        try:
            return getattr(get_plugin_manager().defences.get(name).Params, "EXECUTION_ONLY", frozenset())
        except UserError:  # an unknown defence: compared in full
            return frozenset()

    names = defence.get("name")
    names = [names] if isinstance(names, str) else list(names or [])
    out = dict(defence)
    if len(names) == 1:
        for key in execution_only(names[0]):
            out.pop(key, None)
    for name in names if len(names) > 1 else []:
        if isinstance(out.get(name), dict):
            out[name] = {k: v for k, v in out[name].items() if k not in execution_only(name)}
    return out


def _default_params(defence) -> dict[str, Any]:
    """``defence.to_dict()`` with every parameter at its default: what a bench record written before an
    option existed ran with (a parameter added later counts as changed only when it leaves its default)."""
    from asa_plugin.config import DefenceConfig

    params = {}
    for name, p in defence.params.items():
        try:
            params[name] = type(p)()
        except TypeError:  # a plugin's parameters without defaults: nothing to complete from
            continue
    return DefenceConfig(names=list(defence.names), params=params).to_dict()


def _with_defaults(recorded: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A recorded parameter dict completed with the defaults of the keys it lacks (nested per component)."""
    out = dict(recorded)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out


def _resolved_params(params: dict[str, Any]) -> dict[str, Any]:
    """Defence parameters with named values resolved (a PromptBERT template by name or spelt out)."""
    from asa_plugin.defences.contrastive import TEMPLATES

    def resolve(d: dict) -> dict:
        return {k: (TEMPLATES.get(v, v) if k == "template" and isinstance(v, str) else
                    resolve(v) if isinstance(v, dict) else v) for k, v in d.items()}

    return resolve(params)


def _get(d: dict, dotted: str) -> Any:
    """The value at ``section.key`` (or ``section.name.key``) of a resolved config; None if absent."""
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def describe_job(num_train: int, steps_per_epoch: int, total_steps: int, epochs: int, tc) -> str:
    """One line saying what a training run will do, printed before its first step."""
    every = tc.checkpoint_every_steps
    ckpt = f"a checkpoint every {every} steps and each epoch" if every else "a checkpoint each epoch"
    if total_steps < epochs * steps_per_epoch:  # train.max_steps ends it inside an epoch
        span = f"train.max_steps; an epoch is {steps_per_epoch} steps"
    else:
        span = f"{epochs} epoch{'s' if epochs != 1 else ''} of {steps_per_epoch} steps"
    return f"training {total_steps} steps ({span}; {num_train} examples, batch {tc.batch_size}); {ckpt}"


def check_bench(plan, pm, runs_now=lambda cell: True) -> None:
    """Before a bench trains anything: same settings as the bench already in out_dir, outputs
    writable, data files present, every recipe buildable with its assets, and the pre-trained backbone of
    every cell that ``runs_now`` (with ``--only-*``, a cell left for later may name one not made yet)."""
    check_bench_settings(plan)
    check_writable(plan.out_dir, "bench.out_dir", "choose another with --set bench.out_dir=...")
    from asa_plugin.attacks.results import read_json, read_rows
    from asa_plugin.bench.grid import check_seed
    from asa_plugin.bench.static import parse, task_hint
    from asa_plugin.data.files import read_rows as read_data_rows

    for spec in plan.bench.static_sets:  # a bad static set is found now, not after the training
        file, task, _ = parse(spec)
        read_data_rows(file, task, task_hint(spec))
    for cell in plan.cells:
        check_seed(cell)  # a run trained with another seed (bench.seeds changed): before bench.json is rewritten
        check_data_files(cell.cfg.data, plan.source)
        if "@" in cell.label and looks_local(cell.cfg.model.backbone) and runs_now(cell):  # bench.backbones
            check_model_dir(cell.cfg.model.backbone, f"bench.backbones ('{cell.label}'):")
        if (cell.run_dir / "metrics.json").is_file():  # finished cells are reused: they must be readable
            read_json(cell.run_dir / "metrics.json", "metrics.json")
        for recipe in plan.recipes:
            recipe_dir = cell.run_dir / "attack" / recipe
            if (recipe_dir / "summary.json").is_file():
                read_json(recipe_dir / "summary.json", "summary.json")
            read_rows(recipe_dir / "results.jsonl")
        check_writable(cell.run_dir, f"defence '{cell.label}': run directory", "fix its permissions, or "
                       "choose another bench.out_dir")
    build_recipes(plan.recipes, plan.cells[0].cfg.attack, plan.cells[0].run_dir / "attack", pm)


def build_recipes(recipes: list[str], attack_cfg, attack_dir: Path, pm) -> None:
    """Build each recipe once against a stand-in model, so its assets are resolved (and cached) now."""
    from asa_plugin.attacks.recipes import build_attack
    from asa_plugin.attacks.runner import AttackJob, resolve_cache_dir
    from asa_plugin.attacks.textattack_env import import_textattack

    job = AttackJob(recipe=recipes[0], cfg=attack_cfg, model_path="", texts=[], labels=[],
                    recipe_dir=attack_dir / recipes[0], data="")
    cache_dir = resolve_cache_dir(job)
    check_cache_dir(cache_dir)
    textattack = import_textattack(cache_dir, allow_download=attack_cfg.download)
    quiet = textattack.shared.logger  # its model/goal-function compatibility warning is about the stand-in
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for name in recipes:
            try:
                build_attack(pm.recipes.get(name), _StandIn(), attack_cfg, cache_dir)
            except UserError as exc:
                raise UserError(f"recipe '{name}' cannot run: {exc}") from None
    finally:
        quiet.setLevel(level)


class _StandIn:
    """The least a TextAttack model wrapper must offer while an attack is built (never queried)."""

    def __init__(self):
        import torch

        self.model = torch.nn.Linear(1, 2)
        self.tokenizer = None

    def __call__(self, texts):  # pragma: no cover - a built attack is never run here
        raise RuntimeError("the stand-in model is only used to build attacks")


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
