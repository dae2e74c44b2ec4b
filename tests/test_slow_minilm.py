"""Slow: a real MiniLM fine-tuning run on a small SST-2 subset, found through ADVROBUST_DATA_DIR."""

from __future__ import annotations

import json

import pytest

from asa_plugin.config import load_config
from asa_plugin.training.loop import train


@pytest.mark.slow
def test_minilm_fine_tunes_on_an_sst2_subset(tmp_path, sst2_data_root):
    cfg = load_config(data={
        "model": {"backbone": "minilm", "max_length": 64},
        "data": {"dataset": "sst2", "max_train_examples": 640, "max_eval_examples": 200},
        "train": {"epochs": 1, "batch_size": 16, "lr": 3e-4, "warmup_ratio": 0.1, "seed": 1},
        "output": {"run_dir": str(tmp_path / "run")},
    })
    metrics = train(cfg)
    assert metrics["steps"] == 40
    assert metrics["eval_accuracy"] > 0.65  # majority class of SST-2 dev is ~51%
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    assert model.config.model_type == "bert" and model.config.num_labels == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["backbone"] == "minilm"
