"""Shared fixtures: offline mode, tiny models, toy data and run configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_model_dir, write_sentiment_tsv  # noqa: E402

pytest_plugins = ["attack_support"]  # fixtures of the attack tests

BACKBONE_ENV = "ADVROBUST_TEST_BACKBONE"
"""The tox matrix factor: which architecture the adapter/defence contract tests use."""


@pytest.fixture(scope="session")
def backbone_type() -> str:
    return os.environ.get(BACKBONE_ENV, "bert")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy-data")
    return {"train": write_sentiment_tsv(root / "train.tsv", 96, seed=1),
            "dev": write_sentiment_tsv(root / "dev.tsv", 32, seed=2)}


@pytest.fixture
def run_config(tmp_path, tiny_bert_dir, toy_data):
    """Factory: a TOML run config on the tiny model and toy data; keyword args become extra lines."""

    def make(defence: str = 'name = "vanilla"', train: str = "", backbone: Path | None = None) -> Path:
        text = f"""
[model]
backbone = "{backbone or tiny_bert_dir}"
num_labels = 2
max_length = 32

[data]
train_file = "{toy_data['train']}"
dev_file = "{toy_data['dev']}"

[defence]
{defence}

[train]
epochs = 2
batch_size = 16
lr = 5e-3
warmup_ratio = 0.0
seed = 7
{train}

[output]
run_dir = "{tmp_path / 'run'}"
"""
        path = tmp_path / "config.toml"
        path.write_text(text)
        return path

    return make
