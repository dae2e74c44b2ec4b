"""Slow: MiniLM fine-tuned briefly on an SST-2 subset, then attacked for real (deepwordbug, pwws)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from attack_support import nltk_data_dir, predict, read_jsonl

from asa_plugin.cli import main


@pytest.mark.slow
def test_fine_tuned_minilm_under_attack(tmp_path):
    data_root = os.environ.get("ADVROBUST_DATA_DIR")
    if not data_root or not (Path(data_root) / "sst2" / "train.tsv").is_file():
        pytest.fail("set ADVROBUST_DATA_DIR to a dir with sst2/{train,dev}.tsv (CI: ../shared/data)")
    config = tmp_path / "config.toml"
    config.write_text(f"""
[model]
backbone = "minilm"
max_length = 64
[data]
dataset = "sst2"
max_train_examples = 512
max_eval_examples = 64
[train]
epochs = 1
batch_size = 32
lr = 1e-4
[attack]
recipes = ["deepwordbug", "pwws"]
num_examples = 4
nltk_data = "{nltk_data_dir()}"
cache_dir = "{tmp_path / 'cache'}"
[output]
run_dir = "{tmp_path / 'run'}"
""")
    assert main(["train", str(config)]) == 0
    assert main(["attack", str(config), "--no-progress"]) == 0
    for recipe in ("deepwordbug", "pwws"):
        recipe_dir = tmp_path / "run" / "attack" / recipe
        summary = json.loads((recipe_dir / "summary.json").read_text())
        rows = read_jsonl(recipe_dir / "results.jsonl")
        assert summary["num_examples"] == len(rows) == 4
        outcomes = [r["outcome"] for r in rows]
        won = [r for r in rows if r["outcome"] == "successful"]
        assert won, f"{recipe} succeeded on none of the 4 examples: the check below would be vacuous"
        flipped = predict(tmp_path / "run" / "model", [r["perturbed_text"] for r in won])
        assert all(p == r["perturbed_prediction"] != r["gold_label"] for p, r in zip(flipped, won))
        # The summary is the rows' counts, and the skipped rows are exactly the model's own mistakes.
        assert summary["accuracy_under_attack"] == pytest.approx(outcomes.count("failed") / len(rows))
        assert summary["clean_accuracy"] == pytest.approx(1 - outcomes.count("skipped") / len(rows))
        originals = predict(tmp_path / "run" / "model", [r["original_text"] for r in rows])
        assert [p != r["gold_label"] for p, r in zip(originals, rows)] == [o == "skipped" for o in outcomes]
