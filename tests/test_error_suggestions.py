"""Every fix an error message suggests names a real flag or key of the command that prints it (issue 32).

The messages are collected from the source: each string inside ``raise SomeError(...)`` under
``asa_plugin/``. Each ``--flag`` must be an option of some ``advrobust`` command, and of the command
itself where the module belongs to one command; each ``section.key`` must be a key of the config schema,
and of the command's own config where the module belongs to one (``evaluate`` takes no config,
``pretrain`` has no ``[data]``).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "asa_plugin"
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_-]*)")
KEY = re.compile(r"(?<![\w.$/])(model|data|train|attack|defence|output|plugins|bench|pretrain)\."
                 r"(?!(?:safetensors|bin|json|toml|md)\b)([a-z_]+)\b")
LAUNCHER_FLAGS = {"multi_gpu", "num_processes", "quiet", "head"}
"""Other programs' options that messages name: ``accelerate launch``'s (distributed launches) and
``ray start --head`` (the bench's Ray executor)."""
OWN_COMMAND = {"pretraining": "pretrain", "bench": "bench"}
"""Modules only one command reaches (besides asa_plugin/commands/<command>.py)."""
REACHED_BY = {"attacks/results.py": ("attack", "merge", "bench", "compare", "report"),
              "attacks/merge.py": ("merge", "bench"),
              "data/files.py": ("train", "attack", "bench", "evaluate", "pretrain")}
"""Shared modules whose fixes must hold for every command reaching them. (``data/loading.py`` names
``data.*`` keys: ``evaluate`` rewrites them into column names (``evaluation.DATA_KEY_FIXES``) and the
pre-training corpus passes its own key, so only the commands with ``[data]`` see them.)"""
CONFIG_SECTIONS = {"evaluate": set(), "pretrain": {"model", "defence", "train", "output", "plugins", "pretrain"},
                   "compare": {"bench"}, "merge": set(), "report": set(), "asa-maps": set()}
"""Config sections a command reads; absent: every section."""


def _messages(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string inside a ``raise X(...)`` call of ``path``, and of every module-level
    constant (messages share their fixes through them, e.g. a ``_DAMAGED`` suffix)."""
    out = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [n.exc for n in ast.walk(tree) if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call)]
    nodes += [n.value for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None
              and all(isinstance(t, ast.Name) and t.id.lstrip("_").isupper() for t in
                      (n.targets if isinstance(n, ast.Assign) else [n.target]))]
    for node in nodes:
        texts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        out.append((node.lineno, " ".join(texts)))
    return out


def _command_of(path: Path) -> str | None:
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "commands" and rel.stem != "__init__":
        return rel.stem.replace("_", "-")
    return OWN_COMMAND.get(rel.parts[0])


def _flags() -> dict[str, set[str]]:
    from asa_plugin.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {name: {o[2:] for a in p._actions for o in a.option_strings if o.startswith("--")}
            for name, p in sub.choices.items()}


def _keys() -> dict[str, set[str]]:
    from asa_plugin.bench.plan import BenchSection
    from asa_plugin.config import SECTIONS
    from asa_plugin.plugins import get_plugin_manager
    from asa_plugin.pretraining.config import PretrainConfig

    classes = {**SECTIONS, "bench": BenchSection, "pretrain": PretrainConfig}
    keys = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in classes.items()}
    defences = get_plugin_manager().defences
    params = {f.name for n in defences.names() for f in dataclasses.fields(defences.get(n).Params)}
    keys["defence"] = {"name", *defences.names(), *params}
    keys["bench"] |= set(get_plugin_manager().executors.names())  # [bench.<executor>] tables, e.g. bench.slurm
    return keys


def _suggestions():
    for path in sorted(ROOT.rglob("*.py")):
        for line, text in _messages(path):
            for flag in FLAG.findall(text):
                yield path, line, "flag", flag, text
            for section, key in KEY.findall(text):
                yield path, line, "key", (section, key), text


def test_every_suggested_flag_and_key_exists_for_its_command():
    flags, keys = _flags(), _keys()
    every_flag = set().union(*flags.values())
    wrong = []
    for path, line, kind, item, _text in _suggestions():
        for command in REACHED_BY.get(path.relative_to(ROOT).as_posix(), (_command_of(path),)):
            wrong += _check(path, line, kind, item, command, flags, keys, every_flag)
    assert not wrong, "\n".join(wrong)


def _check(path, line, kind, item, command, flags, keys, every_flag) -> list[str]:
    wrong = []
    where = f"{path.relative_to(ROOT.parent)}:{line}"
    if kind == "flag":
        allowed = (flags[command] if command else every_flag) | LAUNCHER_FLAGS
        if item not in allowed:
            wrong.append(f"{where}: --{item} is no option of {command or 'any command'}")
    else:
        section, key = item
        sections = CONFIG_SECTIONS.get(command, set(keys)) if command else set(keys)
        if section not in sections or key not in keys[section]:
            wrong.append(f"{where}: {section}.{key} is no config key of {command or 'any command'}")
    return wrong


@pytest.mark.parametrize("text,found", [
    ("set data.text_column", [("key", ("data", "text_column"))]),
    ("rerun with --overwrite", [("flag", "overwrite")]),
    ("see $TA_CACHE_DIR/x.y or model.safetensors", []),
])
def test_the_collector_finds_flags_and_keys(text, found):
    got = [("flag", f) for f in FLAG.findall(text)] + [("key", k) for k in KEY.findall(text)]
    assert got == found
