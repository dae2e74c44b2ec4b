"""The plugin contract: registries, duplicates, third-party plugins, blocking."""

from __future__ import annotations

import json
import types

import pytest

from asa_plugin.errors import PluginError
from asa_plugin.hookspecs import hookimpl
from asa_plugin.plugins import PluginManager


def _plugin(name: str, **hooks):
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def test_builtins_register_through_the_hooks():
    pm = PluginManager(load_external=False)
    assert "vanilla" in pm.defences and pm.defences.entry("vanilla").plugin == "builtin_defences"
    assert "bert" in pm.adapters
    assert {"sst2", "rotten_tomatoes", "imdb", "ag_news"} <= set(pm.datasets.names())


def test_duplicate_name_fails_naming_both_plugins():
    clash = _plugin("clash_plugin", advrobust_register_defences=lambda register: register("vanilla", object))
    with pytest.raises(PluginError) as info:
        PluginManager(load_external=False, extra_plugins=[clash])
    assert "builtin_defences" in str(info.value) and "clash_plugin" in str(info.value)


def test_unknown_name_lists_the_registered_ones():
    pm = PluginManager(load_external=False)
    with pytest.raises(Exception, match="unknown defence 'nope'; available: .*vanilla"):
        pm.defences.get("nope")


def test_plugins_json_lists_every_kind(capsys):
    from asa_plugin.cli import main

    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(listing) == {"defences", "adapters", "recipes", "datasets", "executors"}
    assert listing["executors"]["slurm"] == {"plugin": "builtin_executors"}
    assert listing["defences"]["vanilla"] == {"plugin": "builtin_defences"}
