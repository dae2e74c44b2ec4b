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


ROUND_TRIPS = [  # (file name, text): each must come back from config.resolved.toml as the same config
    ("defaults.toml", "[train]\nseed = 42\n"),  # every other key at its default (an empty config is an error)
    ("nulls.yaml", "data:\n  dataset: null\n  train_file: t.tsv\n  dev_file: d.tsv\n"
                   "defence:\n  name: asa\n  adversary_lr: null\n  projection_size: null\n"),
    ("asa.toml", "[defence]\nname = 'asa'\ntau = 0.3\nlayers = [0, 2]\nprojection_size = 16\nadversary_lr = 0.02\n"),
    ("composed.toml", "[defence]\nname = ['asa', 'freelb']\n[defence.asa]\ntau = 0.1\n"
                      "[defence.freelb]\nadv_steps = 2\n"),
    ("attack.yaml", "attack:\n  recipes: [pwws, textfooler]\n  num_examples: 7\ntrain:\n  max_steps: 5\n"),
]


@pytest.mark.parametrize("name,text", ROUND_TRIPS, ids=[n for n, _ in ROUND_TRIPS])
def test_resolved_config_round_trips_to_the_same_run(tmp_path, name, text):
    import dataclasses

    from asa_plugin.config import dump_toml

    path = tmp_path / name
    path.write_text(text)
    cfg = load_config(path)
    dump_toml(cfg, tmp_path / "config.resolved.toml")
    again = load_config(tmp_path / "config.resolved.toml")
    for section in dataclasses.fields(cfg):
        if section.name != "source":
            assert getattr(again, section.name) == getattr(cfg, section.name), section.name


def test_a_null_with_a_non_null_default_survives_the_round_trip(tmp_path):
    """A file-based run must not fall back to SST-2 for a split it has no file for."""
    from asa_plugin.config import dump_toml

    path = tmp_path / "c.yaml"
    path.write_text("data:\n  dataset: null\n  train_file: t.tsv\n")
    dump_toml(load_config(path), tmp_path / "resolved.toml")
    assert load_config(tmp_path / "resolved.toml").data.dataset is None
    assert load_config(path, ["data.dataset=none"]).data.dataset is None  # the same word from --set


def test_config_command_prints_a_config_that_loads_back_identically(tmp_path, capsys):
    from asa_plugin.cli import main

    path = tmp_path / "c.toml"
    path.write_text("[defence]\nname = 'fgm'\nepsilon = 0.25\n[train]\nepochs = 1\n")
    assert main(["config", str(path), "--set", "train.lr=3e-4"]) == 0
    printed = tmp_path / "printed.toml"
    printed.write_text(capsys.readouterr().out)
    again, cfg = load_config(printed), load_config(path, ["train.lr=3e-4"])
    assert again.train == cfg.train and again.defence == cfg.defence
    assert again.train.lr == pytest.approx(3e-4) and again.defence.params["fgm"].epsilon == 0.25


def test_config_command_reports_a_bad_key_in_one_line(tmp_path, capsys):
    from asa_plugin.cli import main

    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 1\n")
    assert main(["config", str(path), "--set", "train.epoch=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.epoch" in err


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("examples/*.toml"),
                                                          *ROOT.glob("benchmarks/configs/*.toml")])


@pytest.mark.parametrize("relative", SHIPPED)
def test_shipped_configs_load_and_validate(relative):
    import tomllib

    path = ROOT / relative
    if "bench" in tomllib.loads(path.read_text()):
        from asa_plugin.bench.plan import load_plan

        plan = load_plan(path, [])
        assert plan.cells and plan.recipes
    elif "pretrain" in tomllib.loads(path.read_text()):
        from asa_plugin.pretraining.config import load_pretrain_config

        assert load_pretrain_config(path).pretrain.corpus
    else:
        cfg = load_config(path)
        assert cfg.source == str(path)


def test_there_are_shipped_configs_to_check():
    assert any(p.startswith("examples/") for p in SHIPPED) and any(p.startswith("benchmarks/") for p in SHIPPED)


def test_config_command_prints_a_pretraining_config_that_loads_back_identically(tmp_path, capsys):
    from asa_plugin.cli import main
    from asa_plugin.pretraining.config import load_pretrain_config

    path = tmp_path / "p.toml"
    path.write_text("[pretrain]\ncorpus = 'corpus.txt'\nwhole_word_mask = true\n[defence]\nname = 'asa'\n")
    assert main(["config", str(path), "--set", "pretrain.mlm_probability=0.2"]) == 0
    printed = tmp_path / "printed.toml"
    printed.write_text(capsys.readouterr().out)
    again, cfg = load_pretrain_config(printed), load_pretrain_config(path, ["pretrain.mlm_probability=0.2"])
    assert again.pretrain == cfg.pretrain and again.defence == cfg.defence
    assert again.pretrain.mlm_probability == pytest.approx(0.2) and again.pretrain.whole_word_mask
    assert main(["config", str(path), "--set", "pretrain.corpus_file=x"]) == 2
    assert "unknown key pretrain.corpus_file" in capsys.readouterr().err


def test_config_command_prints_a_bench_config_with_each_labels_parameters(tmp_path, capsys):
    import tomllib

    from asa_plugin.cli import main

    path = tmp_path / "b.toml"
    path.write_text("[bench]\ndefences = ['vanilla', 'asa+freelb']\nrecipes = ['pwws']\n"
                    "[defence.asa]\ntau = 0.3\n[train]\nepochs = 1\n")
    assert main(["config", str(path)]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["bench"]["defences"] == ["vanilla", "asa+freelb"] and printed["train"]["epochs"] == 1
    assert printed["defence"]["asa+freelb"]["asa"]["tau"] == 0.3
    assert printed["defence"]["vanilla"] == {"name": "vanilla"}
    assert main(["config", str(path), "--set", "bench.defences=[]"]) == 2
    assert "bench.defences is empty" in capsys.readouterr().err
