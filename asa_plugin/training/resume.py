"""Resume comparison: a run (or a bench) continues only with the settings it was started with.

:func:`changed_settings` compares two resolved configs key by key, leaving out what does not change the result
(logging, checkpoint frequency, and each defence's ``EXECUTION_ONLY`` options); :func:`check_resume` refuses an
``--resume`` with other settings. The bench's comparison (:mod:`asa_plugin.bench.checks`) uses the same functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asa_plugin.errors import UserError
from asa_plugin.fileio import tomllib

RESUME_IGNORED = {("train", "checkpoint_every_steps"), ("train", "log_every_steps"), ("train", "eval_batch_size")}
"""Settings a resumed run may change: they do not change what is trained."""
RESUME_IGNORED_SECTIONS = {"attack", "output", "plugins"}


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
    """Each changed key with its old and new value."""
    return listed([f"{k} ({value_at(old, k)!r} -> {value_at(new, k)!r})" for k in changed])


def listed(items: list[str]) -> str:
    """The first four items, comma-separated, and how many more there are."""
    return ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")


def check_resume(cfg, run_dir: Path) -> None:
    """Refuse to resume ``run_dir`` with settings other than those it was started with."""
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


def without_execution_only(defence: dict[str, Any]) -> dict[str, Any]:
    """A ``[defence]`` table (as ``DefenceConfig.to_dict`` writes it) without the options its defences
    declare ``EXECUTION_ONLY``: how a step is computed, not what (e.g. ASA's ``recompute_clean``)."""
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


def default_params(defence) -> dict[str, Any]:
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


def with_defaults(recorded: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A recorded parameter dict completed with the defaults of the keys it lacks (nested per component)."""
    out = dict(recorded)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_defaults(out[key], value)
    return out


def resolved_params(params: dict[str, Any]) -> dict[str, Any]:
    """Defence parameters with named values resolved (a PromptBERT template by name or spelt out)."""
    from asa_plugin.defences.contrastive import TEMPLATES

    def resolve(d: dict) -> dict:
        return {k: (TEMPLATES.get(v, v) if k == "template" and isinstance(v, str) else
                    resolve(v) if isinstance(v, dict) else v) for k, v in d.items()}

    return resolve(params)


def value_at(d: dict, dotted: str) -> Any:
    """The value at ``section.key`` (or ``section.name.key``) of a resolved config; None if absent."""
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d
