"""Model cards: every exported model has a README.md that stock ``huggingface_hub.ModelCard.load`` parses,
with values equal to the run's own files (metrics.json, config, attack summaries, bench report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from test_bench import DEFENCES, RECIPE, bench, read, summary_path  # noqa: F401 (bench: the tiny grid fixture)

from asa_plugin.cli import main
from asa_plugin.modelcard import CardFacts


def card(model_dir: Path) -> ModelCard:
    return ModelCard.load(model_dir / "README.md")


def metric(loaded: ModelCard, name: str) -> float:
    (value,) = [r.metric_value for r in loaded.data.eval_results if r.metric_name == name]
    return value


CASES = [  # (defence table, its parameters as the card states them)
    pytest.param('name = "vanilla"', {}, id="vanilla"),
    pytest.param('name = "asa"\ntau = 0.5', {"tau": 0.5, "layers": "all", "gumbel_noise": False,
                                             "adversarial_ce": False, "divergence_weight": 0.5,
                                             "recompute_clean": "auto"}, id="asa"),
    pytest.param('name = ["asa", "freelb"]\n[asa]\ntau = 0.3\n[freelb]\nadv_steps = 2', None, id="asa+freelb"),
]


@pytest.mark.parametrize("table,params", CASES)
def test_advrobust_train_writes_a_card_with_the_runs_values(tmp_path, run_config, table, params):
    assert main(["train", str(run_config(defence=table, train="epochs = 1"))]) == 0
    run = tmp_path / "run"
    metrics = read(run / "metrics.json")
    loaded = card(run / "model")
    meta = loaded.data.to_dict()["advrobust"]
    assert meta["defence"] == metrics["defence"]
    if params is not None:
        assert meta["defence_params"] == params
    else:  # a composition: one table per defence
        assert meta["defence_params"]["freelb"]["adv_steps"] == 2 and meta["defence_params"]["asa"]["tau"] == 0.3
    assert meta["training"]["steps"] == metrics["steps"] == 6
    assert meta["training"]["train_examples"] == metrics["train_examples"]
    assert metric(loaded, "clean accuracy") == metrics["eval_accuracy"]
    assert f"defence-{metrics['defence'].split('+')[0]}" in loaded.data.tags
    assert loaded.data.base_model is None  # a local directory is no hub id
    assert str(tmp_path) not in loaded.content  # no machine paths


def test_defence_trainer_writes_a_card_with_its_state(tmp_path, tiny_bert_dir, toy_data):
    from test_hf_trainer import plain_trainer

    def accuracy(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    extra = {"compute_metrics": accuracy, "model_card": {"datasets": ["toy"], "data_description": "the toy set"}}
    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], {"name": "asa", "tau": 0.3},
                            trainer_kwargs=extra, num_train_epochs=1, eval_strategy="epoch")
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    loaded = card(tmp_path / "model")
    meta = loaded.data.to_dict()["advrobust"]
    accuracy = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h][-1]
    assert metric(loaded, "clean accuracy") == accuracy
    assert meta["defence"] == "asa" and meta["defence_params"]["tau"] == 0.3
    assert meta["training"]["steps"] == trainer.state.global_step == 6 and meta["training"]["train_examples"] == 96
    assert loaded.data.datasets == ["toy"] and "the toy set" in loaded.content


def test_defence_trainer_card_states_the_last_evaluation_not_the_first(tmp_path, tiny_bert_dir, toy_data):
    """Two evaluations that differ (the metric is the test's own, so they surely differ): the card is the model's
    as saved, after the last one."""
    from test_hf_trainer import plain_trainer

    shares = iter([0.25, 0.75])
    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], "vanilla",
                            trainer_kwargs={"compute_metrics": lambda prediction: {"accuracy": next(shares)}},
                            num_train_epochs=2, eval_strategy="epoch")
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    assert [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h] == [0.25, 0.75]
    assert metric(card(tmp_path / "model"), "clean accuracy") == 0.75


def test_a_cards_attack_entry_is_the_accuracy_under_attack_not_the_clean_one(tmp_path):
    """A run whose attack succeeded (clean 0.9, 0.25 under attack), written as advrobust train and attack do."""
    import tomli_w

    from asa_plugin.modelcard import write_model_card

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "attack" / "pwws").mkdir(parents=True)
    (run / "config.resolved.toml").write_text(tomli_w.dumps({"model": {"backbone": "minilm"},
                                                             "defence": {"name": "asa", "tau": 0.3}}))
    (run / "metrics.json").write_text(json.dumps({"defence": "asa", "eval_accuracy": 0.9, "steps": 6}))
    summary = {"recipe": "pwws", "clean_accuracy": 0.9, "accuracy_under_attack": 0.25, "attack_success_rate": 0.72,
               "num_examples": 40, "split": "dev"}
    (run / "attack" / "pwws" / "summary.json").write_text(json.dumps(summary))
    loaded = card(write_model_card(run).parent)
    assert metric(loaded, "accuracy under pwws") == 0.25 and metric(loaded, "clean accuracy") == 0.9
    (under,) = [r for r in loaded.data.eval_results if r.metric_config == "pwws"]
    assert under.dataset_split == "dev"
    assert loaded.data.to_dict()["advrobust"]["attacks"]["pwws"]["accuracy_under_attack"] == 0.25
    assert "| pwws | 25.0% | 72.0% | 40 |" in loaded.content


BASE_MODELS = [  # (backbone as configured, base_model in the card)
    ("minilm", "sentence-transformers/all-MiniLM-L6-v2"),
    ("bert-base-uncased", "bert-base-uncased"),
    ("/models/local-bert", None),
    ("./runs/x/model", None),
]


@pytest.mark.parametrize("backbone,expected", BASE_MODELS)
def test_base_model_is_a_hub_id_or_absent(backbone, expected):
    assert CardFacts(defence="vanilla", defence_params={}, backbone=backbone).base_model == expected


def test_bench_adds_accuracy_under_attack_and_the_comparison_to_every_card(bench):  # noqa: F811
    _, out = bench
    report = read(out / "report.json")
    cells = {c["defence"]: c for c in report["cells"]}
    for label in DEFENCES:
        summary = read(summary_path(out, label))
        loaded = card(out / "runs" / label / "model")
        meta = loaded.data.to_dict()["advrobust"]
        assert metric(loaded, f"accuracy under {RECIPE}") == summary["accuracy_under_attack"]
        assert metric(loaded, "clean accuracy") == read(out / "runs" / label / "metrics.json")["eval_accuracy"]
        assert meta["attacks"][RECIPE]["attack_success_rate"] == summary["attack_success_rate"]
        if label == "vanilla":  # the baseline is compared with nothing
            assert "comparison_with_baseline" not in meta
        else:
            assert meta["comparison_with_baseline"][RECIPE] == json.loads(json.dumps(cells[label]["comparison"]))
            assert f"| {RECIPE} |" in loaded.content and "vanilla:" in loaded.content


# --- a README.md the user wrote is never overwritten ----------------------------------------------------------
HAND_WRITTEN = "# My sentiment model\n\nNotes I wrote by hand.\n"
FACTS = CardFacts(defence="asa", defence_params={"tau": 0.3}, backbone="minilm", clean_accuracy=0.8)

MERGES = [  # (README.md before, text that must survive, metadata the merged card has)
    pytest.param(None, [], {"license": None}, id="no-readme"),
    pytest.param(HAND_WRITTEN, ["Notes I wrote by hand."], {}, id="text"),
    pytest.param("---\nlicense: mit\nbase_model: me/my-base\ntags: [mine]\n---\n" + HAND_WRITTEN,
                 ["Notes I wrote by hand."], {"license": "mit", "base_model": "me/my-base"}, id="text-and-metadata"),
    pytest.param("---\nlicense: mit\n---\n", [], {"license": "mit"}, id="metadata-only"),
]


@pytest.mark.parametrize("before,kept,metadata", MERGES)
def test_the_card_is_merged_into_a_users_readme_and_said_once(tmp_path, capsys, before, kept, metadata):
    from asa_plugin.modelcard import CARD_END, CARD_START, write_card

    if before is not None:
        (tmp_path / "README.md").write_text(before)
    write_card(tmp_path, FACTS)
    note = capsys.readouterr().err
    assert (note.count("advrobust: note:") == 1 and "it is kept, and the model card is merged into it between "
            f"{CARD_START} and {CARD_END}" in note) == (before is not None)
    text = (tmp_path / "README.md").read_text()
    assert all(t in text for t in kept) and text.count(CARD_START) == text.count(CARD_END) == 1
    loaded = card(tmp_path)
    assert {k: loaded.data.to_dict().get(k) for k in metadata} == metadata
    assert loaded.data.to_dict()["advrobust"]["defence_params"] == {"tau": 0.3}
    assert metric(loaded, "clean accuracy") == 0.8 and "defence-asa" in loaded.data.tags
    if "mine" in (before or ""):
        assert loaded.data.tags[0] == "mine"


def test_a_rewrite_replaces_only_the_cards_section_and_keeps_text_around_it(tmp_path, capsys):
    from asa_plugin.modelcard import CARD_END, CARD_START, write_card

    write_card(tmp_path, FACTS)
    first = (tmp_path / "README.md").read_text()
    edited = first.replace(CARD_START, f"Intro I added.\n\n{CARD_START}") + "\nA footnote I added.\n"
    (tmp_path / "README.md").write_text(edited.replace("tags:\n", "license: mit\ntags:\n- mine\n", 1))
    later = CardFacts(**{**FACTS.__dict__, "clean_accuracy": 0.9})
    write_card(tmp_path, later)
    text = (tmp_path / "README.md").read_text()
    assert text.index("Intro I added.") < text.index(CARD_START) < text.index(CARD_END) < text.index("A footnote")
    assert text.count(CARD_START) == 1 and "90.0%" in text and "80.0%" not in text
    loaded = card(tmp_path)
    assert metric(loaded, "clean accuracy") == 0.9 and loaded.data.license == "mit" and "mine" in loaded.data.tags
    assert "is kept" in capsys.readouterr().err


def test_a_readme_that_cannot_be_merged_is_left_alone_or_refused(tmp_path, capsys):
    from asa_plugin.modelcard import BESIDE_FILE, write_card

    broken = "---\nlicense: [mit\n---\n" + HAND_WRITTEN
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "README.md").write_text(broken)
    assert write_card(tmp_path / "a", FACTS).name == BESIDE_FILE
    assert (tmp_path / "a" / "README.md").read_text() == broken
    assert ModelCard.load(tmp_path / "a" / BESIDE_FILE).data.to_dict()["advrobust"]["defence"] == "asa"
    assert f"the model card is written beside it, to {BESIDE_FILE}" in capsys.readouterr().err
    (tmp_path / "b" / "README.md").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="a directory where the model card") as raised:
        write_card(tmp_path / "b", FACTS)
    assert raised.value.filename == str(tmp_path / "b" / "README.md")


def assert_hand_written_text_kept(model_dir: Path, capsys) -> ModelCard:
    text = (model_dir / "README.md").read_text()
    assert text.startswith("---\n") and HAND_WRITTEN in text
    assert "is kept, and the model card is merged into it" in capsys.readouterr().err
    return card(model_dir)


def test_defence_trainer_save_model_keeps_a_hand_written_readme(tmp_path, capsys, tiny_bert_dir, toy_data):
    from test_hf_trainer import plain_trainer

    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], "fgm", max_steps=1)
    trainer.train()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "README.md").write_text(HAND_WRITTEN)
    trainer.save_model(str(tmp_path / "model"))
    assert assert_hand_written_text_kept(tmp_path / "model", capsys).data.to_dict()["advrobust"]["defence"] == "fgm"


def test_advrobust_train_export_keeps_a_readme_written_during_training(tmp_path, capsys, monkeypatch, run_config):
    """A README.md the user puts into RUN/model while the run trains (or before a --resume) survives the export."""
    from asa_plugin.training import loop

    real_evaluate = loop.Task.evaluate

    def evaluate_and_write(self, adapter, model, loader, accelerator):
        (tmp_path / "run" / "model").mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / "model" / "README.md").write_text(HAND_WRITTEN)
        return real_evaluate(self, adapter, model, loader, accelerator)

    monkeypatch.setattr(loop.Task, "evaluate", evaluate_and_write)
    assert main(["train", str(run_config(train="epochs = 1"))]) == 0
    loaded = assert_hand_written_text_kept(tmp_path / "run" / "model", capsys)
    assert metric(loaded, "clean accuracy") == read(tmp_path / "run" / "metrics.json")["eval_accuracy"]


def test_a_bench_rerun_keeps_every_hand_written_readme(bench, tmp_path, tiny_bert_dir, toy_data, attack_cache,  # noqa: F811
                                                       capsys):
    """A finished bench rerun rewrites every run's card (write_bench_cards): each user's text is kept."""
    import shutil

    from test_bench import bench_config

    _, out = bench
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for label in DEFENCES:
        readme = copy / "runs" / label / "model" / "README.md"
        metadata, body = readme.read_text().split("\n---\n", 1)  # the user's text right after the metadata
        readme.write_text(f"{metadata}\n---\n{HAND_WRITTEN}\n{body}")
    config = bench_config(tmp_path / "bench.toml", copy, tiny_bert_dir, toy_data, attack_cache)
    assert main(["bench", str(config), "--no-progress"]) == 0
    err = capsys.readouterr().err
    for label in DEFENCES:
        text = (copy / "runs" / label / "model" / "README.md").read_text()
        assert HAND_WRITTEN in text and text.count("<!-- advrobust:card:start -->") == 1
        assert f"{copy / 'runs' / label / 'model' / 'README.md'} has text of its own: it is kept" in err
        assert metric(card(copy / "runs" / label / "model"), f"accuracy under {RECIPE}") == read(
            summary_path(copy, label))["accuracy_under_attack"]
