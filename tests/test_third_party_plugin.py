"""A third-party package registers a defence through the `advrobust` entry-point group and trains.

The plugin is installed into a folder on ``sys.path`` (plugin_support.install_plugin); one test
checks a fresh interpreter finds it, the others run the commands in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asa_plugin.cli import main

PLUGIN_SOURCE = '''
"""A throwaway defence: cross-entropy with label smoothing."""
from dataclasses import dataclass

import torch.nn.functional as F

from asa_plugin.defences.base import Defence, StepResult
from asa_plugin.hookspecs import hookimpl
from asa_plugin.schema import option


@dataclass
class SmoothParams:
    smoothing: float = option(0.1, ge=0.0, lt=1.0, help="label smoothing")


class SmoothDefence(Defence):
    name = "smooth"
    Params = SmoothParams

    def training_step(self, batch, backward):
        logits = self.adapter.forward(batch).logits
        loss = F.cross_entropy(logits, batch["labels"], label_smoothing=self.params.smoothing)
        backward(loss)
        return StepResult(loss=loss.item())


@hookimpl
def advrobust_register_defences(register):
    register("smooth", SmoothDefence)
'''


def run_cli(args, site: Path, **env):
    """The real command in a fresh interpreter that finds the plugin on PYTHONPATH."""
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-m", "asa_plugin.cli", *args], capture_output=True, text=True,
                          env=environ)


def test_a_pip_installed_plugin_is_listed_by_a_fresh_interpreter(install_plugin):
    site = install_plugin("advrobust_smooth", PLUGIN_SOURCE)
    listing = json.loads(run_cli(["plugins", "--json"], site).stdout)
    assert listing["defences"]["smooth"] == {"plugin": "advrobust_smooth"}


def test_third_party_defence_trains_from_a_config(install_plugin, tmp_path, run_config):
    install_plugin("advrobust_smooth", PLUGIN_SOURCE)
    config = run_config(defence='name = "smooth"\nsmoothing = 0.2', train="epochs = 1")
    assert main(["train", str(config)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["defence"] == "smooth" and metrics["steps"] == 6  # 96 examples in batches of 16


def test_bad_parameter_of_a_third_party_defence_is_validated(install_plugin, run_config, capsys):
    install_plugin("advrobust_smooth", PLUGIN_SOURCE)
    assert main(["train", str(run_config(defence='name = "smooth"\nsmoothing = 1.5'))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "defence.smoothing must be < 1.0" in err


def test_plugin_that_fails_to_import_gives_one_line_naming_it(install_plugin, capsys):
    install_plugin("advrobust_broken", "import does_not_exist_xyz\n")
    assert main(["plugins", "--json"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "advrobust_broken" in line]
    assert len(warnings) == 1 and "failed to import" in warnings[0]
    assert "ModuleNotFoundError" in warnings[0] and "Traceback" not in err


@pytest.mark.parametrize("value", ["1", "advrobust_smooth", "advrobust_other,advrobust_smooth"])
def test_environment_variable_blocks_external_plugins(install_plugin, monkeypatch, capsys, value):
    install_plugin("advrobust_smooth", PLUGIN_SOURCE)
    monkeypatch.setenv("ADVROBUST_DISABLE_PLUGINS", value)
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "smooth" not in listing["defences"] and "vanilla" in listing["defences"]


def test_config_option_blocks_external_plugins(install_plugin, run_config, capsys):
    install_plugin("advrobust_smooth", PLUGIN_SOURCE)
    config = run_config(defence='name = "smooth"')
    config.write_text(config.read_text() + textwrap.dedent("""
        [plugins]
        block = ["advrobust_smooth"]
    """))
    assert main(["train", str(config)]) == 2
    assert "unknown defence 'smooth'" in capsys.readouterr().err
