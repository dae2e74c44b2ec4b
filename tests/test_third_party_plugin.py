"""A third-party package registers a defence through the `advrobust` entry-point group and trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

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


def install_fake_distribution(site: Path, dist: str, module: str, source: str) -> None:
    """What `pip install` leaves behind: the module plus a dist-info with entry_points.txt."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[advrobust]\n{module} = {module}\n")


def run_cli(args, site: Path, **env):
    environ = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-m", "asa_plugin.cli", *args], capture_output=True, text=True,
                          env=environ)


def test_third_party_defence_trains_from_a_config(tmp_path, run_config):
    site = tmp_path / "site"
    install_fake_distribution(site, "advrobust-smooth", "advrobust_smooth", PLUGIN_SOURCE)
    listing = json.loads(run_cli(["plugins", "--json"], site).stdout)
    assert listing["defences"]["smooth"] == {"plugin": "advrobust_smooth"}

    config = run_config(defence='name = "smooth"\nsmoothing = 0.2', train="epochs = 1")
    proc = run_cli(["train", str(config)], site)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["defence"] == "smooth" and metrics["steps"] > 0


def test_bad_parameter_of_a_third_party_defence_is_validated(tmp_path, run_config):
    site = tmp_path / "site"
    install_fake_distribution(site, "advrobust-smooth", "advrobust_smooth", PLUGIN_SOURCE)
    proc = run_cli(["train", str(run_config(defence='name = "smooth"\nsmoothing = 1.5'))], site)
    assert proc.returncode == 2 and "defence.smoothing must be < 1.0" in proc.stderr


def test_plugin_that_fails_to_import_gives_one_line_naming_it(tmp_path):
    site = tmp_path / "site"
    install_fake_distribution(site, "advrobust-broken", "advrobust_broken", "import does_not_exist_xyz\n")
    proc = run_cli(["plugins", "--json"], site)
    assert proc.returncode == 0
    warnings = [line for line in proc.stderr.splitlines() if "advrobust_broken" in line]
    assert len(warnings) == 1 and "failed to import" in warnings[0]
    assert "Traceback" not in proc.stderr


def test_environment_variable_blocks_external_plugins(tmp_path):
    site = tmp_path / "site"
    install_fake_distribution(site, "advrobust-smooth", "advrobust_smooth", PLUGIN_SOURCE)
    for value in ("1", "advrobust_smooth"):
        listing = json.loads(run_cli(["plugins", "--json"], site, ADVROBUST_DISABLE_PLUGINS=value).stdout)
        assert "smooth" not in listing["defences"] and "vanilla" in listing["defences"]


def test_config_option_blocks_external_plugins(tmp_path, run_config):
    site = tmp_path / "site"
    install_fake_distribution(site, "advrobust-smooth", "advrobust_smooth", PLUGIN_SOURCE)
    config = run_config(defence='name = "smooth"')
    config.write_text(config.read_text() + textwrap.dedent("""
        [plugins]
        block = ["advrobust_smooth"]
    """))
    proc = run_cli(["train", str(config)], site)
    assert proc.returncode == 2 and "unknown defence 'smooth'" in proc.stderr
