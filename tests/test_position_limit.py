"""``model.max_length`` beyond the backbone's position table is refused in one line, before any data is read.

Past the table a long text is an index error on CPU and an opaque device-side assert on CUDA (issue 31).
"""

from __future__ import annotations

import pytest
import tomli_w

from asa_plugin.checks import position_limit
from asa_plugin.cli import main

LIMIT_CASES = [
    # (config, tokens the position table holds, or None: no absolute table)
    ({"model_type": "bert", "max_position_embeddings": 512}, 512),
    ({"model_type": "distilbert", "max_position_embeddings": 512}, 512),
    ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "xlm-roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "deberta-v2", "max_position_embeddings": 512, "position_biased_input": False}, None),
    ({"model_type": "deberta-v2", "max_position_embeddings": 512, "position_biased_input": True}, 512),
    ({"model_type": "xlnet"}, None),
]


@pytest.mark.parametrize("config,limit", LIMIT_CASES, ids=[c["model_type"] for c, _ in LIMIT_CASES])
def test_position_limit_follows_the_config(config, limit):
    found = position_limit(config)
    assert (found[0] if found else None) == limit


@pytest.fixture
def no_data_read(monkeypatch):
    """Reading or tokenizing data fails the test: the refusal must come first."""
    import asa_plugin.data as data
    import asa_plugin.data.loading as loading

    def fail(*args, **kwargs):
        pytest.fail("data was read before max_length was checked")

    for module, name in ((data, "load_training_data"), (data, "load_split"), (loading, "read_split"),
                         (loading, "to_examples")):
        monkeypatch.setattr(module, name, fail)
    import asa_plugin.pretraining.task as task

    monkeypatch.setattr(task, "load_corpus", fail)


def _config(tmp_path, backbone, toy_data, max_length: int, pretrain: bool = False):
    config = {"model": {"backbone": str(backbone), "num_labels": 2, "max_length": max_length},
              "data": {"train_file": str(toy_data["train"]), "dev_file": str(toy_data["dev"])},
              "train": {"max_steps": 1}, "output": {"run_dir": str(tmp_path / "run")}}
    if pretrain:
        del config["data"], config["model"]["num_labels"]
        config["pretrain"] = {"corpus": str(toy_data["train"])}
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(config))
    return path


COMMAND_CASES = [
    # (model type, command, argv after the command ({cfg}, {model}, {data} filled in), the setting named, fix)
    ("bert", "train", ["{cfg}"], "{cfg}: model.max_length = 129", "use --set model.max_length=128 or less"),
    ("roberta", "train", ["{cfg}"], "{cfg}: model.max_length = 129", "use --set model.max_length=127 or less"),
    ("bert", "pretrain", ["{cfg}"], "{cfg}: model.max_length = 129", "use --set model.max_length=128 or less"),
    ("bert", "attack", ["--model", "{model}", "--recipe", "pwws", "--data-file", "{data}", "--set",
                        "model.max_length=129"], "command line: model.max_length = 129",
     "use --set attack.max_length=128 (the attack's own, over model.max_length)"),
    ("bert", "attack", ["--model", "{model}", "--recipe", "pwws", "--data-file", "{data}", "--set",
                        "attack.max_length=129"], "command line: attack.max_length = 129",
     "use --set attack.max_length=128 or less"),
    ("bert", "evaluate", ["{model}", "--data-file", "{data}", "--max-length", "129"], "--max-length = 129",
     "pass --max-length 128 or less"),
]


@pytest.mark.parametrize("model_type,command,argv,setting,fix", COMMAND_CASES,
                         ids=[f"{c[1]}-{c[0]}-{i}" for i, c in enumerate(COMMAND_CASES)])
def test_max_length_past_the_position_table_is_refused_before_data(
        capsys, tmp_path, tiny_backbone_dir, toy_data, no_data_read, model_type, command, argv, setting, fix):
    """The tiny backbones have a 128-position table; the tiny RoBERTa holds 127 tokens (its positions start
    after its pad id 0; the real ones' pad id 1 leaves 512 of 514)."""
    model = tiny_backbone_dir(model_type)
    cfg = _config(tmp_path, model, toy_data, 129, pretrain=command == "pretrain")
    filled = [a.replace("{cfg}", str(cfg)).replace("{model}", str(model)).replace("{data}", str(toy_data["dev"]))
              for a in argv]
    assert main([command, *filled]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"advrobust {command}: error: {setting.replace('{cfg}', str(cfg))} is longer than ")
    assert "its position table holds" in lines[0]
    assert lines[0].endswith(fix)
