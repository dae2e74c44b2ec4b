"""Every hook of the ``advrobust`` plugin contract.

Registration hooks receive a ``register`` callback; the host owns the registries, rejects
duplicate names (naming both plugins) and lists the valid names on a lookup miss.
Observer hooks let a reporting plugin follow training and attacks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy

from asa_plugin import PROJECT_NAME

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[str, Any], None]


@hookspec
def advrobust_register_defences(register: Register) -> None:
    """Called once while the plugin manager is built.

    Call ``register(name, defence_class)`` for each defence; ``defence_class`` subclasses
    :class:`asa_plugin.defences.base.Defence`. Returns nothing.
    """


@hookspec
def advrobust_register_adapters(register: Register) -> None:
    """Called once while the plugin manager is built.

    Call ``register(model_type, adapter_class)`` for each Hugging Face ``config.model_type``
    the plugin supports; ``adapter_class`` subclasses
    :class:`asa_plugin.adapters.base.BackboneAdapter`. Returns nothing.
    """


@hookspec
def advrobust_register_recipes(register: Register) -> None:
    """Called once while the plugin manager is built.

    Call ``register(name, recipe)`` for each attack recipe. Returns nothing.
    """


@hookspec
def advrobust_register_datasets(register: Register) -> None:
    """Called once while the plugin manager is built.

    Call ``register(name, loader)`` where ``loader(split: str) -> list[dict]`` returns rows with
    the dataset's own text and label columns. Returns nothing.
    """


@hookspec
def advrobust_register_executors(register: Register) -> None:
    """Called once while the plugin manager is built.

    Call ``register(name, executor_class)`` for each way of running the cells of ``advrobust bench``
    (``bench.executor = name`` / ``--executor name``); ``executor_class`` subclasses
    :class:`asa_plugin.bench.executors.Executor`, whose docstring is the interface (build from
    ``[bench]``, submit a cell with its resources, poll, cancel, retry). Returns nothing.
    """


@hookspec
def advrobust_on_epoch_end(run_dir: Path, epoch: int, metrics: dict[str, Any]) -> None:
    """Called by ``advrobust train`` after each epoch's evaluation with that epoch's metrics; in a
    multi-process run, on the main process only (the one that writes the run directory)."""


@hookspec
def advrobust_on_attack_result(run_dir: Path, recipe: str, result: dict[str, Any]) -> None:
    """Called by ``advrobust attack`` as each example's attack finishes (one results.jsonl row); with
    several worker processes, in the order the examples finish (``result["index"]`` is the example)."""


@hookspec
def advrobust_on_report(report_dir: Path, report: dict[str, Any]) -> None:
    """Called once a final report (attack summary or bench report) has been written."""
