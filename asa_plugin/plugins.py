"""The plugin manager: registries of defences, adapters, recipes, datasets and bench executors.

Built in one fixed order: add the hook specs, load third-party entry points of group
``advrobust``, register the built-ins through the very same hooks, ``check_pending()``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

import pluggy

from asa_plugin import PROJECT_NAME, hookspecs
from asa_plugin.errors import PluginError, UserError

DISTRIBUTION = "asa-plugin"
DISABLE_ENV = "ADVROBUST_DISABLE_PLUGINS"
"""Set to ``1``/``all`` to block every external plugin, or to a comma list of entry-point names."""

BUILTIN_PLUGINS = {
    "builtin_defences": "asa_plugin.defences.plugin",
    "builtin_adapters": "asa_plugin.adapters.plugin",
    "builtin_datasets": "asa_plugin.data.plugin",
    "builtin_recipes": "asa_plugin.attacks.plugin",
    "builtin_executors": "asa_plugin.bench.plugin",
}

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object and the plugin that registered it."""

    name: str
    value: T
    plugin: str


class Registry(Generic[T]):
    """Name -> object mapping that rejects duplicates and lists valid names on a miss.

    ``check(value)`` returns what is wrong with a registered object (None when it is fine), so a
    plugin registering the wrong kind of object fails at registration, not at use.
    """

    def __init__(self, kind: str, check: Callable[[Any], str | None] | None = None):
        self.kind = kind
        self.check = check
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, value: T, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{plugin}' registered a {self.kind} with an invalid name {name!r}")
        if name in self._entries:
            first = self._entries[name].plugin
            raise PluginError(
                f"duplicate {self.kind} '{name}': registered by plugin '{first}' and by plugin '{plugin}'; "
                f"uninstall one of them or block it with {DISABLE_ENV}"
            )
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise PluginError(f"plugin '{plugin}' registered {self.kind} '{name}' as {value!r}, which {problem}; "
                              f"fix the plugin, or block it with {DISABLE_ENV}={plugin}")
        self._entries[name] = Entry(name, value, plugin)

    def get(self, name: str) -> T:
        return self.entry(name).value

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entries(self) -> Iterable[Entry[T]]:
        return (self._entries[n] for n in self.names())


def _blocked_names(block: Iterable[str] | None) -> tuple[bool, set[str]]:
    """(block_all, names) from the environment variable and the config option."""
    raw = os.environ.get(DISABLE_ENV, "").strip()
    names = {n.strip() for n in raw.split(",") if n.strip()}
    block_all = raw.lower() in {"1", "true", "yes", "all"}
    names |= set(block or ())
    if "*" in names or "all" in names:
        block_all = True
    return block_all, names


def _subclass_check(module: str, name: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        base = getattr(importlib.import_module(module), name)
        if isinstance(value, type) and issubclass(value, base):
            return None
        return f"is not a subclass of {module}.{name}"

    return check


def _instance_check(module: str, name: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        cls = getattr(importlib.import_module(module), name)
        return None if isinstance(value, cls) else f"is not an {module}.{name}"

    return check


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "defence": lambda value: importlib.import_module("asa_plugin.defences.base").defence_class_problem(value),
    "adapter": _subclass_check("asa_plugin.adapters.base", "BackboneAdapter"),
    "recipe": _instance_check("asa_plugin.attacks.recipes", "Recipe"),
    "dataset": lambda value: None if callable(value) else "is not callable (split -> rows)",
    "executor": _subclass_check("asa_plugin.bench.executors", "Executor"),
}
"""What each kind of registered object must be, its class named by module path: the registry sits below the layers
whose objects it holds (docs/architecture.md), so it looks a class up when a plugin registers one."""


class PluginManager:
    """Typed facade over the pluggy manager, holding the four registries."""

    def __init__(self, *, load_external: bool = True, block: Iterable[str] | None = None,
                 extra_plugins: Iterable[Any] = ()):
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.warnings: list[str] = []
        if load_external:
            self._load_external_entry_points(block)
        for plugin in extra_plugins:
            self.pm.register(plugin)
        for name, module in BUILTIN_PLUGINS.items():
            if self.pm.get_plugin(name) is None:
                self.pm.register(importlib.import_module(module), name=name)
        self.pm.check_pending()
        self.defences: Registry[Any] = self._collect("defence", "advrobust_register_defences")
        self.recipes: Registry[Any] = self._collect("recipe", "advrobust_register_recipes")
        self.datasets: Registry[Any] = self._collect("dataset", "advrobust_register_datasets")
        self.executors: Registry[Any] = self._collect("executor", "advrobust_register_executors")

    @cached_property
    def adapters(self) -> Registry[Any]:
        """Collected on first use: adapters import transformers (seconds), which a config check never needs."""
        return self._collect("adapter", "advrobust_register_adapters")

    def _load_external_entry_points(self, block: Iterable[str] | None) -> None:
        block_all, blocked = _blocked_names(block)
        external = [ep for ep in entry_points(group=PROJECT_NAME)
                    if (getattr(ep.dist, "name", None) or "").replace("_", "-").lower() != DISTRIBUTION]
        unknown = sorted(blocked - {ep.name for ep in external} - {"*", "all"})
        if unknown:
            self._warn(f"{DISABLE_ENV} / [plugins] block names '{unknown[0]}', which is no installed plugin "
                       f"(installed: {', '.join(sorted(ep.name for ep in external)) or 'none'}); "
                       f"use entry-point names from `advrobust plugins`, or {DISABLE_ENV}=1 to block all")
        for ep in external:
            dist = getattr(ep.dist, "name", None) or ""
            if dist.replace("_", "-").lower() == DISTRIBUTION:
                continue  # our built-ins, registered below from BUILTIN_PLUGINS
            if block_all or ep.name in blocked or self.pm.is_blocked(ep.name):
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure of a third-party plugin
                line = (f"plugin '{ep.name}' ({dist or ep.value}) failed to import and was skipped: "
                        f"{type(exc).__name__}: {exc}; fix or uninstall it, or set {DISABLE_ENV}={ep.name}")
                self._warn(line)
                continue
            self.pm.register(plugin, name=ep.name)

    def _warn(self, line: str) -> None:
        self.warnings.append(line)
        print(f"warning: {line}", file=sys.stderr)

    def _collect(self, kind: str, hook_name: str) -> Registry[Any]:
        registry: Registry[Any] = Registry(kind, CHECKS[kind])
        hook = getattr(self.pm.hook, hook_name)
        # Call each implementation on its own so every registration knows its plugin's name.
        for impl in reversed(hook.get_hookimpls()):
            def register(name: str, value: Any, _plugin: str = impl.plugin_name) -> None:
                registry.add(name, value, _plugin)

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure inside a third-party hook
                raise PluginError(f"plugin '{impl.plugin_name}' failed in {hook_name}: {type(exc).__name__}: {exc}; "
                                  f"fix or uninstall it, or set {DISABLE_ENV}={impl.plugin_name}") from None
        return registry

    # Typed wrappers of the observer hooks.
    def on_epoch_end(self, run_dir, epoch: int, metrics: dict) -> None:
        self.pm.hook.advrobust_on_epoch_end(run_dir=run_dir, epoch=epoch, metrics=metrics)

    def on_attack_result(self, run_dir, recipe: str, result: dict) -> None:
        self.pm.hook.advrobust_on_attack_result(run_dir=run_dir, recipe=recipe, result=result)

    def on_report(self, report_dir, report: dict) -> None:
        self.pm.hook.advrobust_on_report(report_dir=report_dir, report=report)

    def listing(self) -> dict[str, dict[str, dict[str, str]]]:
        """``{"defences": {NAME: {"plugin": ...}}, "adapters": ..., "recipes": ..., "datasets": ...,
        "executors": ...}``."""
        return {
            key: {e.name: {"plugin": e.plugin} for e in registry.entries()}
            for key, registry in (("defences", self.defences), ("adapters", self.adapters),
                                  ("recipes", self.recipes), ("datasets", self.datasets),
                                  ("executors", self.executors))
        }


def get_plugin_manager(*, load_external: bool = True, block: Iterable[str] = ()) -> PluginManager:
    """The process-wide plugin manager for these options (built once, then cached)."""
    key_env = os.environ.get(DISABLE_ENV, "")
    return _cached_manager_env(load_external, tuple(sorted(block)), key_env)


@lru_cache(maxsize=8)
def _cached_manager_env(load_external: bool, block: tuple[str, ...], _env: str) -> PluginManager:
    return PluginManager(load_external=load_external, block=block)
