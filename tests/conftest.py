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

pytest_plugins = ["attack_support", "plugin_support"]  # fixtures of the attack and plugin tests

BACKBONE_ENV = "ADVROBUST_TEST_BACKBONE"
"""The tox matrix factor: which architecture the adapter/defence contract tests use."""


def selected_backbone() -> str | None:
    """ADVROBUST_TEST_BACKBONE, checked: a name that is no architecture would select no test at all."""
    from asa_plugin.adapters.table import ARCHITECTURES

    selected = os.environ.get(BACKBONE_ENV) or None
    if selected is not None and selected not in ARCHITECTURES:
        raise pytest.UsageError(f"{BACKBONE_ENV}={selected!r} is not a model_type of the adapter table; "
                                f"use one of: {', '.join(ARCHITECTURES)}")
    return selected


def pytest_configure(config):
    selected_backbone()  # fail the whole run at once on a bad name, never select nothing quietly


@pytest.fixture(scope="session")
def backbone_type() -> str:
    return selected_backbone() or "bert"


def pytest_collection_modifyitems(items):
    """Tests that take ``backbone_type`` form the tox matrix cell: ``pytest -m backbone``."""
    for item in items:
        if "backbone_type" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.backbone)


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory):
    """Factory: ``model_type`` -> directory of a tiny random classifier of it (built once per session)."""
    built: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in built:
            built[model_type] = tiny_model_dir(tmp_path_factory.mktemp(f"tiny-{model_type}"), model_type)
        return built[model_type]

    return make


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
    """Factory: a TOML run config on the tiny model and toy data.

    ``defence`` and ``train`` are TOML lines merged over the defaults (``train="epochs = 1"``
    replaces the default epochs); ``extra`` is a dict of further sections to merge.
    """
    import tomli_w
    import tomllib

    def make(defence: str = 'name = "vanilla"', train: str = "", backbone: Path | None = None,
             extra: dict | None = None) -> Path:
        config = {
            "model": {"backbone": str(backbone or tiny_bert_dir), "num_labels": 2, "max_length": 32},
            "data": {"train_file": str(toy_data["train"]), "dev_file": str(toy_data["dev"])},
            "defence": tomllib.loads(defence),
            "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "warmup_ratio": 0.0, "seed": 7,
                      **tomllib.loads(train)},
            "output": {"run_dir": str(tmp_path / "run")},
        }
        for section, values in (extra or {}).items():
            config.setdefault(section, {}).update(values)
        path = tmp_path / "config.toml"
        path.write_text(tomli_w.dumps(config))
        return path

    return make


@pytest.fixture(scope="session")
def sst2_data_root() -> Path:
    """The data root holding sst2/{train,dev}.tsv, from ADVROBUST_DATA_DIR (CI: ../shared/data)."""
    root = os.environ.get("ADVROBUST_DATA_DIR")
    if not root or not (Path(root) / "sst2" / "train.tsv").is_file():
        pytest.fail("slow tests need ADVROBUST_DATA_DIR pointing at a folder with sst2/train.tsv and "
                    "sst2/dev.tsv (e.g. ../shared/data); see README 'Tests'")
    return Path(root)
