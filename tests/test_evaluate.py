"""`advrobust evaluate`: accuracy and per-example predictions on a static set (AdvGLUE layout, local files)."""

from __future__ import annotations

import json

import pytest
import tomli_w
import torch
from tiny import tiny_model_dir, write_pair_tsv

from asa_plugin.cli import main
from asa_plugin.config import load_config
from asa_plugin.training.loop import train


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    """A tiny BERT trained on a toy NLI task with string labels (contradiction = 0, entailment = 1)."""
    root = tmp_path_factory.mktemp("eval-run")
    data = {"train": write_pair_tsv(root / "train.tsv", 64, seed=1),
            "dev": write_pair_tsv(root / "dev.tsv", 16, seed=2)}
    config = {"model": {"backbone": str(tiny_model_dir(root / "tiny", "bert")), "max_length": 32},
              "data": {"train_file": str(data["train"]), "dev_file": str(data["dev"])},
              "train": {"epochs": 6, "batch_size": 16, "lr": 3e-3, "warmup_ratio": 0.0, "seed": 3},
              "output": {"run_dir": str(root / "run")}}
    (root / "c.toml").write_text(tomli_w.dumps(config))
    train(load_config(root / "c.toml"))
    return root / "run"


def reference_predictions(model_dir, pairs) -> list[int]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return [int(model(**tokenizer(a, b, return_tensors="pt")).logits.argmax(-1)) for a, b in pairs]


def advglue_file(path, pairs, labels) -> None:
    """AdvGLUE's dev.json layout: one list per task, each record with its task's columns and idx."""
    path.write_text(json.dumps({
        "sst2": [{"idx": 0, "label": 1, "sentence": "a single sentence"}],
        "rte": [{"idx": i, "label": y, "sentence1": a, "sentence2": b} for i, ((a, b), y) in enumerate(zip(pairs,
                                                                                                         labels))],
    }))


def test_an_advglue_layout_file_evaluates(pair_run, tmp_path, capsys):
    pairs = [("the movie was quite", "the plot was great"), ("the film is", "story really awful"),
             ("acting was quite really", "plot is best"), ("the story", "the film was boring"),
             ("really the plot", "acting was wonderful"), ("film is the", "the story was worst")]
    labels = [1, 0, 1, 1, 0, 0]
    advglue_file(tmp_path / "dev.json", pairs, labels)
    assert main(["evaluate", str(pair_run), "--data-file", str(tmp_path / "dev.json"), "--task", "rte"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = pair_run / "evaluate" / "dev-rte"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    expected = reference_predictions(pair_run / "model", pairs)
    assert [r["prediction"] for r in rows] == expected
    assert [(r["text"], r["text_pair"], r["gold_label"]) for r in rows] == [(*p, y) for p, y in zip(pairs, labels)]
    assert {r["prediction_name"] for r in rows} <= {"contradiction", "entailment"}
    accuracy = sum(p == y for p, y in zip(expected, labels)) / len(labels)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(accuracy) == printed["accuracy"]
    assert summary["num_examples"] == 6


def test_string_labels_of_a_local_file_are_read_by_name(pair_run, tmp_path, capsys):
    path = tmp_path / "static.tsv"
    path.write_text("premise\thypothesis\tlabel\nthe film\tit was great\tentailment\nthe plot\tawful\tcontradiction\n")
    assert main(["evaluate", str(pair_run), "--data-file", str(path), "--name", "mine"]) == 0
    predictions = pair_run / "evaluate" / "mine" / "predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [(r["gold_label"], r["gold_name"]) for r in rows] == [(1, "entailment"), (0, "contradiction")]


BAD_SETS = [
    # (file name, content, extra args, words of the one error line)
    ("dev.json", json.dumps({"rte": [], "qnli": []}), [], ["holds several tasks", "rte, qnli", "--task"]),
    ("dev.json", json.dumps({"rte": []}), ["--task", "mnli"], ["no task 'mnli'"]),
    ("s.tsv", "premise\thypothesis\tlabel\na\tb\tneutral\n", [], ["row 1", "'neutral' was not seen in training"]),
]


@pytest.mark.parametrize("name,content,extra,words", BAD_SETS)
def test_bad_static_sets_give_one_line(pair_run, tmp_path, capsys, name, content, extra, words):
    (tmp_path / name).write_text(content)
    assert main(["evaluate", str(pair_run), "--data-file", str(tmp_path / name), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    for word in words:
        assert word in err[0]


def test_bench_lists_static_sets_beside_recipes(tmp_path, tiny_bert_dir, toy_data, attack_cache):
    from attack_support import nltk_data_dir

    advglue = tmp_path / "dev.json"
    advglue.write_text(json.dumps({"sst2": [{"idx": 0, "label": 1, "sentence": "a great film"},
                                            {"idx": 1, "label": 0, "sentence": "awful and boring"}],
                                   "qqp": [{"idx": 0, "label": 0, "question1": "a", "question2": "b"}]}))
    out = tmp_path / "bench"
    config = {"bench": {"defences": ["vanilla", "fgm"], "recipes": ["deepwordbug"], "out_dir": str(out),
                        "static_sets": [f"{advglue}#sst2", str(toy_data["dev"])],
                        "max_parallel": 1},  # cells in the test's process: imports paid once
              "model": {"backbone": str(tiny_bert_dir), "max_length": 32},
              "data": {"train_file": str(toy_data["train"]), "dev_file": str(toy_data["dev"])},
              "train": {"epochs": 1, "batch_size": 16, "lr": 5e-3, "warmup_ratio": 0.0, "seed": 7},
              "attack": {"num_examples": 2, "seed": 3, "cache_dir": str(attack_cache), "nltk_data": nltk_data_dir(),
                         "workers": 1}}
    (tmp_path / "bench.toml").write_text(tomli_w.dumps(config))
    assert main(["bench", str(tmp_path / "bench.toml"), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["static_sets"] == ["dev-sst2", "dev"] and report["missing"] == []
    for row in report["training"]:
        for name in ("dev-sst2", "dev"):
            summary = json.loads((out / "runs" / row["defence"] / "evaluate" / name / "summary.json").read_text())
            assert row["static"][name] == summary["accuracy"]
        assert json.loads((out / "runs" / row["defence"] / "evaluate" / "dev-sst2" / "summary.json")
                          .read_text())["num_examples"] == 2
    markdown = (out / "report.md").read_text()
    assert "## Static sets" in markdown and "| Defence | Seed | Run | dev-sst2 | dev |" in markdown


def test_a_registered_datasets_split_evaluates(pair_run, tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    (root / "rte").mkdir(parents=True)
    (root / "rte" / "dev.tsv").write_text("sentence1\tsentence2\tlabel\nthe film\tit was great\t1\n"
                                          "the plot\tit was awful\t0\n")
    monkeypatch.setenv("ADVROBUST_DATA_DIR", str(root))
    assert main(["evaluate", str(pair_run), "--dataset", "rte", "--split", "dev"]) == 0
    summary = json.loads((pair_run / "evaluate" / "rte-dev" / "summary.json").read_text())
    expected = reference_predictions(pair_run / "model", [("the film", "it was great"), ("the plot", "it was awful")])
    assert summary["num_examples"] == 2
    assert summary["accuracy"] == sum(p == y for p, y in zip(expected, [1, 0])) / 2
