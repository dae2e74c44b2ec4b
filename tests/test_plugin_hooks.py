"""Third-party plugins in this process: observer hooks, an adapter from an entry point, blocking.

Each test "pip-installs" throwaway plugins into a folder on ``sys.path`` (a module plus a
dist-info with ``entry_points.txt``), so they load through the real entry-point path; the
process-wide plugin manager is rebuilt around every test.
"""

from __future__ import annotations

import importlib
import json

import pytest
from attack_support import attack_args, read_jsonl

from asa_plugin import plugins
from asa_plugin.cli import main
from asa_plugin.config import load_config
from asa_plugin.errors import UserError

RECORDER = '''
"""Records every observer hook call in CALLS."""
from asa_plugin.hookspecs import hookimpl

CALLS = []


@hookimpl
def advrobust_on_epoch_end(run_dir, epoch, metrics):
    CALLS.append(("epoch_end", run_dir, epoch, metrics))


@hookimpl
def advrobust_on_attack_result(run_dir, recipe, result):
    CALLS.append(("attack_result", run_dir, recipe, result))


@hookimpl
def advrobust_on_report(report_dir, report):
    CALLS.append(("report", report_dir, report))
'''

CAMEMBERT = '''
"""Adds CamemBERT, a RoBERTa with its own model_type, by reusing the RoBERTa table row."""
from asa_plugin.hookspecs import hookimpl


@hookimpl
def advrobust_register_adapters(register):
    from asa_plugin.adapters.encoder import adapter_for
    from asa_plugin.adapters.table import ARCHITECTURES

    register("camembert", adapter_for(ARCHITECTURES["roberta"]))
'''


@pytest.fixture
def installed(install_plugin):
    """The recorder and the CamemBERT adapter plugins installed; yields the recorder module."""
    install_plugin("advrobust_recorder", RECORDER)
    install_plugin("advrobust_camembert", CAMEMBERT)
    return importlib.import_module("advrobust_recorder")


def test_epoch_end_fires_once_per_epoch_with_that_epochs_metrics(installed, run_config, tmp_path):
    assert main(["train", str(run_config())]) == 0
    run = tmp_path / "run"
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert installed.CALLS == [("epoch_end", run, 1, history[0]), ("epoch_end", run, 2, history[1])]


def test_attack_hooks_fire_per_row_and_once_with_the_summary(installed, tmp_path, trained_tiny, attack_data,
                                                              attack_cache):
    out = tmp_path / "attacked"
    assert main(attack_args(trained_tiny, attack_data["dev"], out, attack_cache, "deepwordbug", num_examples=3)) == 0
    recipe_dir = out / "attack" / "deepwordbug"
    rows = read_jsonl(recipe_dir / "results.jsonl")
    summary = json.loads((recipe_dir / "summary.json").read_text())
    # Worker processes finish examples in any order: the hook fires as each row arrives (completion
    # order), results.jsonl ends sorted by index; the summary's report hook comes last, once.
    *per_row, last = installed.CALLS
    assert sorted(per_row, key=lambda call: call[3]["index"]) == [("attack_result", out, "deepwordbug", row)
                                                                  for row in rows]
    assert last == ("report", recipe_dir, summary)


def test_an_adapter_registered_through_an_entry_point_trains_its_architecture(installed, tmp_path, run_config):
    from tiny import tiny_model_dir

    listing = plugins.get_plugin_manager().listing()
    assert listing["adapters"]["camembert"] == {"plugin": "advrobust_camembert"}
    backbone = tiny_model_dir(tmp_path / "camembert", "camembert")
    config = run_config(defence='name = "asa"', train="max_steps = 2", backbone=backbone)
    assert main(["train", str(config)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and all(0 < r < 1 for r in metrics["asa_mask_ratio_per_layer"])


BLOCKS = [  # (plugins table of the config, ADVROBUST_DISABLE_PLUGINS, camembert adapter still loaded)
    ({}, "", True),
    ({"external": False}, "", False),
    ({"block": ["advrobust_camembert"]}, "", False),
    ({}, "advrobust_other, advrobust_camembert", False),  # a comma list with spaces
    ({}, "advrobust_other,advrobust_recorder", True),  # blocks only the plugins it names
    ({}, "all", False),
]


@pytest.mark.parametrize("table,env,loaded", BLOCKS)
def test_external_plugins_are_blocked_by_config_or_environment(installed, monkeypatch, tmp_path, table, env, loaded):
    monkeypatch.setenv(plugins.DISABLE_ENV, env)
    cfg = load_config(data={"plugins": table, "model": {"backbone": str(tmp_path)}})
    pm = plugins.get_plugin_manager(load_external=cfg.plugins.external, block=cfg.plugins.block)
    assert ("camembert" in pm.adapters) is loaded
    assert "bert" in pm.adapters  # built-ins are never blocked


def test_a_blocked_adapter_plugin_leaves_its_architecture_unsupported(installed, tmp_path, run_config, capsys):
    from tiny import tiny_model_dir

    backbone = tiny_model_dir(tmp_path / "camembert", "camembert")
    config = run_config(train="max_steps = 1", backbone=backbone, extra={"plugins": {"external": False}})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unsupported backbone type 'camembert'" in err
    with pytest.raises(UserError, match="advrobust_register_adapters"):
        from asa_plugin.adapters.loading import adapter_class_for

        adapter_class_for("camembert", plugins.get_plugin_manager(load_external=False).adapters)
