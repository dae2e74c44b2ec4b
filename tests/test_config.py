"""Configs: TOML/YAML load into typed objects; every mistake is one line naming file and key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asa_plugin.config import load_config
from asa_plugin.errors import ConfigError

BAD_CONFIGS = [
    # (config text, words the one-line error must contain)
    ("[train]\nepoch = 3\n", ["train.epoch", "allowed keys", "epochs"]),
    ("[train]\nepochs = 'three'\n", ["train.epochs", "must be int"]),
    ("[train]\nlr = -1.0\n", ["train.lr", "must be > 0"]),
    ("[train]\nwarmup_ratio = 2.0\n", ["train.warmup_ratio", "<= 1"]),
    ("[train]\nmixed_precision = 'fp8'\n", ["train.mixed_precision", "'bf16'"]),
    ("[defence]\nname = 'asaa'\n", ["defence.name", "unknown defence 'asaa'", "available", "vanilla"]),
    ("[data]\ndataset = 'sst3'\n", ["data.dataset", "unknown dataset 'sst3'", "sst2"]),
    ("[modle]\nbackbone = 'x'\n", ["unknown section [modle]", "model"]),
    ("[defence]\nname = 'vanilla'\ntau = 0.5\n", ["defence.tau", "allowed keys"]),
    ("[model]\nnum_labels = 1\n", ["model.num_labels", ">= 2"]),
    ("[train\n", ["cannot parse"]),
]


@pytest.mark.parametrize("text,expected", BAD_CONFIGS)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for word in expected:
        assert word in message


def test_toml_and_yaml_give_the_same_typed_config(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\nmax_length = 64\n[train]\nlr = 3e-5\nepochs = 2\n[defence]\nname = 'vanilla'\n")
    yaml = tmp_path / "c.yaml"
    yaml.write_text("model:\n  max_length: 64\ntrain:\n  lr: 3.0e-5\n  epochs: 2\ndefence:\n  name: vanilla\n")
    a, b = load_config(toml), load_config(yaml)
    assert a.to_dict() == b.to_dict()
    assert a.train.lr == pytest.approx(3e-5) and isinstance(a.train.epochs, int)


def test_set_overrides_win_and_parse_values(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 3\n")
    cfg = load_config(path, ["train.epochs=1", "train.lr=1e-4", "model.backbone=roberta-base",
                             "data.max_train_examples=100"])
    assert cfg.train.epochs == 1 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.model.backbone == "roberta-base" and cfg.data.max_train_examples == 100


def test_bad_override_names_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("")
    with pytest.raises(ConfigError, match="train.epochs must be int"):
        load_config(path, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["epochs=3"])


def test_cli_reports_config_error_in_one_line_with_exit_code_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nbatch_size = 0\n")
    proc = subprocess.run([sys.executable, "-m", "asa_plugin.cli", "train", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.batch_size" in lines[0] and "Traceback" not in proc.stderr
