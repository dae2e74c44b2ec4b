"""A defence is one file plus its register line: its class declares what the rest of the toolkit needs.

Each throwaway plugin below is one module (one class, one ``register`` line), installed the way pip leaves it.
One declares masked-LM support and a step cost: ``advrobust bench`` orders and estimates its training by that
cost and ``advrobust pretrain`` trains it. One declares neither: it counts as the default cost and pre-training
refuses it with one line. A capability declared with a value the toolkit cannot use fails at registration.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import pytest
import tomli_w
from test_bench import bench_config
from test_pretrain import write_corpus

from asa_plugin.cli import main
from asa_plugin.defences.base import DEFAULT_STEP_COST
from asa_plugin.errors import PluginError

PLUGIN = '''
"""A throwaway defence: cross-entropy through ``self.objective`` (so it composes as a procedure)."""
from asa_plugin.defences.base import Defence
from asa_plugin.hookspecs import hookimpl


class {cls}(Defence):
    name = "{name}"
    role = "procedure"
{declares}

@hookimpl
def advrobust_register_defences(register):
    register("{name}", {cls})
'''

# (defence, what its class declares, the step cost the bench must use, whether pre-training takes it)
CASES = [
    ("cheap", "    supports_masked_lm = True\n    step_cost = 0.5\n", 0.5, True),
    ("plain", "", DEFAULT_STEP_COST, False),
]


def plugin_source(name: str, declares: str) -> str:
    return PLUGIN.format(cls=f"{name.title()}Defence", name=name, declares=declares)


@pytest.fixture
def plugins(install_plugin):
    """Every defence of CASES installed, each as its own plugin module."""
    for name, declares, _, _ in CASES:
        install_plugin(f"defence_{name}", plugin_source(name, declares))
    return {name: (cost, masked_lm) for name, _, cost, masked_lm in CASES}


@pytest.mark.parametrize("name,declares,cost,masked_lm", CASES, ids=[c[0] for c in CASES])
def test_the_class_declarations_are_what_the_toolkit_reads(plugins, name, declares, cost, masked_lm):
    from asa_plugin.bench.cells import step_cost
    from asa_plugin.plugins import get_plugin_manager

    defences = get_plugin_manager().defences
    assert defences.get(name).supports_masked_lm is masked_lm
    assert step_cost(name) == cost
    # composed with ASA (the objective): the sum of the parts minus one vanilla step
    assert step_cost(f"asa+{name}") == pytest.approx(defences.get("asa").step_cost + cost - 1)


def test_the_bench_trains_and_estimates_by_each_defences_declared_step_cost(plugins, tmp_path, tiny_bert_dir,
                                                                           toy_data, attack_cache):
    from asa_plugin.bench.cells import build_cells
    from asa_plugin.bench.executors import Progress
    from asa_plugin.bench.plan import load_plan

    out = tmp_path / "out"
    config = bench_config(tmp_path / "bench.toml", out, tiny_bert_dir, toy_data, attack_cache,
                          bench={"defences": ["cheap", "vanilla", "plain"]})
    trains = {c.run.label: c for c in build_cells(load_plan(config)) if c.kind == "train"}
    assert {label: c.cost for label, c in trains.items()} == {"cheap": 0.5, "vanilla": 1.0, "plain": DEFAULT_STEP_COST}
    progress = Progress(list(trains.values()), done=0, parallel=1)
    progress.add(trains["vanilla"], seconds=100.0)  # vanilla took 100 s: cheap should take half as long
    assert progress.left([trains["cheap"]]) == "about 50 s left"
    assert progress.left([trains["plain"]]) == "about 3 min 20 s left"

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert main(["bench", str(config), "--no-progress"]) == 0
    trained = [m.group(1) for m in re.finditer(r"\[bench\] \d+/\d+ train (\S+?):", log.getvalue())]
    assert trained == ["plain", "vanilla", "cheap"], log.getvalue()  # the costliest first, by the declared costs
    report = json.loads((out / "report.json").read_text())
    assert report["missing"] == [] and {c["defence"] for c in report["cells"]} == {"cheap", "vanilla", "plain"}


def pretrain_config(path: Path, model: Path, defence: str) -> Path:
    path.write_text(tomli_w.dumps({
        "model": {"backbone": str(model), "max_length": 16},
        "pretrain": {"corpus": str(write_corpus(path.with_name("corpus.txt"))), "eval_fraction": 0.1},
        "defence": {"name": defence},
        "train": {"max_steps": 3, "batch_size": 8, "lr": 5e-3, "warmup_ratio": 0.0, "seed": 7},
        "output": {"run_dir": str(path.with_name(f"run-{defence}"))},
    }))
    return path


@pytest.mark.parametrize("name,declares,cost,masked_lm", CASES, ids=[c[0] for c in CASES])
def test_pretraining_takes_a_defence_only_if_its_class_supports_masked_lm(plugins, tmp_path, tiny_bert_dir, capsys,
                                                                          name, declares, cost, masked_lm):
    config = pretrain_config(tmp_path / "pretrain.toml", tiny_bert_dir, name)
    run_dir = tmp_path / f"run-{name}"
    if masked_lm:
        assert main(["pretrain", str(config), "--no-progress"]) == 0
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["defence"] == name and metrics["steps"] == 3 and math.isfinite(metrics["eval_mlm_loss"])
        return
    assert main(["pretrain", str(config), "--no-progress"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and f"'{name}' does not support masked-LM pre-training" in errors[0], errors
    usable = errors[0].split("use one of: ")[1].split(", ")
    assert "cheap" in usable and "asa" in usable and name not in usable
    assert not run_dir.exists()  # refused before any data or model loads


BAD_DECLARATIONS = [  # (what the class declares, what the one line says)
    ('    role = "objectve"\n', "declares role = 'objectve', which is none of objective, procedure, standalone"),
    ("    step_cost = 0\n", "declares step_cost = 0, which is not a positive number"),
    ('    step_cost = "fast"\n', "declares step_cost = 'fast', which is not a positive number"),
    ("    step_cost = float('nan')\n", "declares step_cost = nan, which is not a positive number"),
    ('    supports_masked_lm = "yes"\n', "declares supports_masked_lm = 'yes', which is not True or False"),
]


@pytest.mark.parametrize("declares,says", BAD_DECLARATIONS,
                         ids=["role-typo", "cost-zero", "cost-text", "cost-nan", "masked-lm-text"])
def test_a_capability_the_toolkit_cannot_use_fails_at_registration_naming_the_plugin(install_plugin, declares, says):
    from asa_plugin.plugins import PluginManager

    install_plugin("defence_bad", plugin_source("bad", declares))
    with pytest.raises(PluginError) as failed:
        PluginManager()
    assert "plugin 'defence_bad' registered defence 'bad'" in str(failed.value) and says in str(failed.value)
    assert "ADVROBUST_DISABLE_PLUGINS=defence_bad" in str(failed.value)


MEASURED = {"vanilla": "vanilla", "asa": "asa", "fgm": "fgm", "pgd": "pgd-k3", "freelb": "freelb-k3", "scal": "scal",
            "uscal": "uscal"}
"""Built-in defence -> its row of benchmarks/results/defence_cost_cpu.json (pgd and freelb timed with K=3)."""


def test_the_built_in_step_costs_are_the_measured_ones():
    from asa_plugin.plugins import PluginManager

    rows = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "defence_cost_cpu.json").read_text())
    measured = {row["defence"]: row["step_ratio_vs_vanilla"] for row in rows["results"]}
    defences = PluginManager(load_external=False).defences
    assert {name: defences.get(name).step_cost for name in MEASURED} == {n: measured[r] for n, r in MEASURED.items()}
    assert all(entry.value.step_cost > 0 for entry in defences.entries())


def test_the_step_cost_table_still_reads_with_a_deprecation_warning():
    from asa_plugin.bench import cells

    with pytest.warns(DeprecationWarning, match="step_cost"):
        table = cells.STEP_COST
    assert table["asa"] == 2.075 and table["vanilla"] == 1.0
