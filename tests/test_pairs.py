"""Sentence-pair tasks and string labels: loading, tokenization, every defence, export, pipeline.

Pair data is written by the tests (premise/hypothesis TSVs with string labels); the models are
tiny and random: one architecture with token_type_ids (bert), one without (distilbert).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from asa_plugin.adapters.loading import load_adapter
from tiny import tiny_model_dir, write_pair_tsv

from asa_plugin.config import DataConfig, load_config
from asa_plugin.data import LabelMap, load_split, load_training_data
from asa_plugin.errors import DataError
from asa_plugin.training.batching import EncodedDataset
from asa_plugin.training.loop import train

NAMES = ["contradiction", "entailment"]


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    return {"train": write_pair_tsv(root / "train.tsv", 32, seed=1),
            "dev": write_pair_tsv(root / "dev.tsv", 16, seed=2)}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    return {t: tiny_model_dir(tmp_path_factory.mktemp(f"pair-{t}"), t) for t in ("bert", "distilbert")}


def write_config(path, model_dir, data: dict, defence: dict, run_dir, **sections) -> Path:
    config = {"model": {"backbone": str(model_dir), "max_length": 32},
              "data": {"train_file": str(data["train"]), "dev_file": str(data["dev"]), **sections.pop("data", {})},
              "defence": defence,
              "train": {"epochs": 1, "batch_size": 8, "lr": 5e-3, "warmup_ratio": 0.0, "seed": 3},
              "output": {"run_dir": str(run_dir)}, **sections}
    path.write_text(tomli_w.dumps(config))
    return path


# --- loading ------------------------------------------------------------------------------
PAIR_LAYOUTS = [
    # (columns written, data settings, expected (text, text_pair) of the first row's columns)
    (("premise", "hypothesis"), {}, ("premise", "hypothesis")),
    (("sentence1", "sentence2"), {}, ("sentence1", "sentence2")),
    (("question1", "question2"), {}, ("question1", "question2")),
    (("a", "b"), {"text_column": "a", "text_pair_column": "b"}, ("a", "b")),
]


@pytest.mark.parametrize("columns,settings,expected", PAIR_LAYOUTS)
def test_pair_columns_are_found_or_named(tmp_path, columns, settings, expected):
    path = write_pair_tsv(tmp_path / "t.tsv", 4, columns=columns)
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    examples = load_split(DataConfig(dataset=None, train_file=str(path), **settings), "train")
    assert [(e.text, e.text_pair) for e in examples] == [(r[0], r[1]) for r in rows]


def test_string_labels_become_sorted_ids_or_follow_label_names(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("text\tlabel\na\tSports\nb\tBusiness\nc\tWorld\nd\tSports\n")
    cfg = DataConfig(dataset=None, train_file=str(path), dev_file=str(path))
    data = load_training_data(cfg, None)
    assert data.labels.names == ("Business", "Sports", "World") and data.labels.num_labels == 3
    assert [e.label for e in data.train] == [1, 0, 2, 1]
    ordered = DataConfig(dataset=None, train_file=str(path), dev_file=str(path),
                         label_names=["World", "Sports", "Business"])
    assert [e.label for e in load_training_data(ordered, None).train] == [1, 2, 0, 1]


def test_integer_labels_keep_working_and_num_labels_is_inferred(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("text\tlabel\na\t0\nb\t2\nc\t1\n")
    data = load_training_data(DataConfig(dataset=None, train_file=str(path), dev_file=str(path)), None)
    assert data.labels.num_labels == 3 and data.labels.names is None
    assert [e.label for e in data.train] == [0, 2, 1]
    stars = DataConfig(dataset=None, train_file=str(path), dev_file=str(path), label_names=["1", "2", "0"])
    assert [e.label for e in load_training_data(stars, None).train] == [2, 1, 0]  # looked up by name


LABEL_MISMATCHES = [
    # (train labels, dev labels, data settings, num_labels, words of the one error line)
    (["pos", "neg"], ["pos", "meh"], {}, None, ["dev.tsv: row 2", "'meh' was not seen in training",
                                                  "labels: neg, pos", "data.label_names"]),
    (["pos", "neg"], ["pos"], {"label_names": ["pos", "meh"]}, None, ["train.tsv: row 2", "'neg' was not seen"]),
    (["pos", "neg", "meh"], ["pos"], {}, 2, ["3 labels", "meh, neg, pos", "model.num_labels = 2"]),
    (["pos", ""], ["pos"], {}, None, ["train.tsv: row 2", "empty label"]),
    (["pos", "pos"], ["pos"], {}, None, ["only one label"]),
    ([0, 1], [0, 3], {}, None, ["dev.tsv: row 2", "label 3 outside 0..1"]),
]


@pytest.mark.parametrize("train_labels,dev_labels,settings,num_labels,words", LABEL_MISMATCHES)
def test_label_mismatches_give_one_line(tmp_path, train_labels, dev_labels, settings, num_labels, words):
    for name, labels in (("train", train_labels), ("dev", dev_labels)):
        (tmp_path / f"{name}.tsv").write_text("text\tlabel\n" + "".join(f"t{i}\t{x}\n" for i, x in enumerate(labels)))
    cfg = DataConfig(dataset=None, train_file=str(tmp_path / "train.tsv"), dev_file=str(tmp_path / "dev.tsv"),
                     **settings)
    with pytest.raises(DataError) as info:
        load_training_data(cfg, num_labels)
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_bad_labels_stop_the_cli_before_the_model_loads(tmp_path, pair_data, tiny_dirs):
    dev = tmp_path / "dev.tsv"
    dev.write_text("premise\thypothesis\tlabel\na\tb\tneutral\n")
    config = write_config(tmp_path / "c.toml", tiny_dirs["bert"], {**pair_data, "dev": dev},
                          {"name": "vanilla"}, tmp_path / "run")
    # At info verbosity transformers logs every config and weights file it loads: one line of stderr
    # means the data was rejected before any model file was read.
    proc = subprocess.run([sys.executable, "-m", "asa_plugin.cli", "train", str(config)],
                          capture_output=True, text=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "info"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'neutral' was not seen in training" in lines[0], proc.stderr
    assert not (tmp_path / "run" / "model").exists()


def test_pairs_and_single_texts_do_not_mix(tmp_path, pair_data):
    dev = tmp_path / "dev.tsv"
    dev.write_text("text\tlabel\na\tentailment\n")
    cfg = DataConfig(dataset=None, train_file=str(pair_data["train"]), dev_file=str(dev))
    with pytest.raises(DataError, match="holds single texts but .* holds text pairs"):
        load_training_data(cfg, None)


# --- tokenization --------------------------------------------------------------------------
def test_pairs_tokenize_with_segments_and_truncate_the_longer_text_first(tiny_dirs, tmp_path):
    adapter = load_adapter(str(tiny_dirs["bert"]), 2)
    path = tmp_path / "t.tsv"
    long = " ".join(["movie"] * 40)
    path.write_text(f"premise\thypothesis\tlabel\n{long}\tthe plot is good\tentailment\n")
    (example,) = load_split(DataConfig(dataset=None, train_file=str(path)), "train", LabelMap(2, tuple(NAMES)))
    (item,) = EncodedDataset([example], adapter.tokenizer, max_length=16).features
    tokens = adapter.tokenizer.convert_ids_to_tokens(item["input_ids"])
    assert len(tokens) == 16 and tokens[-6:] == ["[SEP]", "the", "plot", "is", "good", "[SEP]"]
    assert item["token_type_ids"] == [0] * 11 + [1] * 5  # segment B: the hypothesis and its [SEP]
    assert set(adapter.model_inputs({k: v for k, v in item.items()})) >= {"token_type_ids"}
    distil = load_adapter(str(tiny_dirs["distilbert"]), 2)
    assert "token_type_ids" not in distil.model_inputs(dict(item))  # DistilBERT has no segments


# --- every defence on pairs, two architectures ----------------------------------------------
DEFENCES = [
    {"name": "vanilla"},
    {"name": "asa"},
    {"name": "fgm"},
    {"name": "pgd", "adv_steps": 2},
    {"name": "freelb", "adv_steps": 2},
    {"name": "scal"},
    {"name": "scal", "pooling": "prompt", "template": 'This film "[X]" was [MASK] .'},
    {"name": "uscal"},
    {"name": ["asa", "freelb"], "freelb": {"adv_steps": 2}},
]
CASES = [(arch, d) for arch in ("bert", "distilbert") for d in DEFENCES]


@pytest.mark.parametrize("arch,defence", CASES,
                         ids=[f"{a}-{json.dumps(d, separators=(',', ':'))}" for a, d in CASES])
def test_every_defence_trains_on_pairs_and_exports_label_names(tmp_path, tiny_dirs, pair_data, arch, defence):
    config = write_config(tmp_path / "c.toml", tiny_dirs[arch], pair_data, defence, tmp_path / "run")
    metrics = train(load_config(config))
    assert metrics["steps"] == 4 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert metrics["labels"] == NAMES
    exported = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert exported["id2label"] == {"0": "contradiction", "1": "entailment"}
    assert exported["label2id"] == {"contradiction": 0, "entailment": 1}


def test_pair_model_learns_from_the_second_text(tmp_path, tiny_dirs, pair_data):
    config = write_config(tmp_path / "c.toml", tiny_dirs["bert"], pair_data, {"name": "vanilla"}, tmp_path / "run")
    cfg = load_config(config, ["train.epochs=12", "train.lr=3e-3"])
    assert train(cfg)["eval_accuracy"] >= 0.75


def test_string_labels_round_trip_through_a_stock_pipeline(tmp_path, tiny_dirs, pair_data):
    config = write_config(tmp_path / "c.toml", tiny_dirs["bert"], pair_data, {"name": "vanilla"}, tmp_path / "run")
    train(load_config(config))
    code = ("import json, sys; from transformers import pipeline; "
            f"p = pipeline('text-classification', model={str(tmp_path / 'run' / 'model')!r}); "
            "out = p({'text': 'the film is quite', 'text_pair': 'the plot was great'}); "
            "print(json.dumps([out, 'asa_plugin' in sys.modules]))")
    out, imported = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                              check=True).stdout.strip().splitlines()[-1])
    assert not imported
    result = out[0] if isinstance(out, list) else out
    assert result["label"] in NAMES


def test_prompt_template_holds_both_texts_and_their_separator(tiny_dirs):
    from asa_plugin.defences.contrastive import PromptTemplate

    adapter = load_adapter(str(tiny_dirs["bert"]), 2)
    batch = dict(adapter.tokenizer(["the film"], ["was good"], return_tensors="pt"))
    wrapped, positions = PromptTemplate('This film "[X]" was [MASK] .', adapter).wrap(batch)
    tokens = adapter.tokenizer.convert_ids_to_tokens(wrapped["input_ids"][0])
    assert tokens == ["[CLS]", "this", "film", '"', "the", "film", "[SEP]", "was", "good", '"', "was", "[MASK]",
                      ".", "[SEP]"]
    assert tokens[int(positions[0])] == "[MASK]"


# --- built-in pair tasks: the real hub paths, with `datasets` faked (no hub here) -------------
HUB_TASKS = [
    # (name, split, hub path, hub config, hub split, hub columns, label names)
    ("mnli", "dev", "glue", "mnli", "validation_matched", ("premise", "hypothesis"), 3),
    ("mnli", "dev_mismatched", "glue", "mnli", "validation_mismatched", ("premise", "hypothesis"), 3),
    ("qnli", "train", "glue", "qnli", "train", ("question", "sentence"), 2),
    ("qqp", "test", "glue", "qqp", "validation", ("question1", "question2"), 2),
    ("rte", "dev", "glue", "rte", "validation", ("sentence1", "sentence2"), 2),
    ("mrpc", "dev", "glue", "mrpc", "validation", ("sentence1", "sentence2"), 2),
    ("snli", "test", "stanfordnlp/snli", None, "test", ("premise", "hypothesis"), 3),
]


@pytest.mark.parametrize("name,split,path,config,hub_split,columns,num_labels", HUB_TASKS)
def test_builtin_pair_tasks_load_through_datasets(monkeypatch, name, split, path, config, hub_split, columns,
                                                  num_labels):
    import datasets

    from asa_plugin.plugins import get_plugin_manager

    calls = []

    def fake_load_dataset(p, c, split):
        calls.append((p, c, split))
        return [{columns[0]: "first", columns[1]: "second", "label": 1},
                {columns[0]: "no gold", columns[1]: "label", "label": -1}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("ADVROBUST_DATA_DIR", raising=False)
    registry = get_plugin_manager().datasets
    examples = load_split(DataConfig(dataset=name), split, registry.get(name).num_labels, registry)
    assert calls == [(path, config, hub_split)]
    assert [(e.text, e.text_pair, e.label) for e in examples] == [("first", "second", 1)]
    assert len(registry.get(name).label_names) == num_labels
