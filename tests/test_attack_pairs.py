"""Attacks on sentence pairs: only the configured column changes, byte for byte.

A tiny BERT is trained through `advrobust train` on a toy NLI task whose label is carried by the
second text; recipes then attack (premise, hypothesis) pairs through TextAttack's multi-column inputs.
"""

from __future__ import annotations

import json

import pytest
import tomli_w
import torch
from attack_support import attack_args, read_jsonl
from tiny import tiny_model_dir, write_pair_tsv

from asa_plugin.cli import main
from asa_plugin.config import load_config
from asa_plugin.training.loop import train

RECIPES = ["deepwordbug", "pwws"]


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair-run")
    data = {"train": write_pair_tsv(root / "train.tsv", 96, seed=1),
            "dev": write_pair_tsv(root / "dev.tsv", 24, seed=2)}
    config = {"model": {"backbone": str(tiny_model_dir(root / "tiny", "bert")), "max_length": 32},
              "data": {"train_file": str(data["train"]), "dev_file": str(data["dev"])},
              "train": {"epochs": 12, "batch_size": 16, "lr": 3e-3, "warmup_ratio": 0.0, "seed": 3},
              "output": {"run_dir": str(root / "run")}}
    (root / "c.toml").write_text(tomli_w.dumps(config))
    assert train(load_config(root / "c.toml"))["eval_accuracy"] >= 0.75  # the attacks need a model that works
    return root / "run", data["dev"]


def predict_pairs(model_dir, pairs: list[tuple[str, str]]) -> list[int]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return [int(model(**tokenizer(a, b, return_tensors="pt")).logits.argmax(-1)) for a, b in pairs]


def attack(run, data, out, cache, recipe, *extra) -> tuple[list[dict], dict]:
    assert main(attack_args(run, data, out, cache, recipe, *extra, num_examples=8)) == 0
    recipe_dir = out / "attack" / recipe
    return read_jsonl(recipe_dir / "results.jsonl"), json.loads((recipe_dir / "summary.json").read_text())


@pytest.mark.parametrize("recipe", RECIPES)
def test_attack_on_pairs_leaves_the_first_text_byte_identical(pair_run, attack_cache, tmp_path, recipe):
    run, data = pair_run
    rows, summary = attack(run, data, tmp_path, attack_cache, recipe)
    sources = {tuple(line.split("\t")[:2]) for line in data.read_text(encoding="utf-8").splitlines()[1:]}
    for row in rows:
        assert (row["original_text"], row["original_text_pair"]) in sources
        assert row["perturbed_text"] == row["original_text"]  # byte-identical
        assert row["num_words"] == len(row["original_text_pair"].split())  # the modified column's words
    won = [r for r in rows if r["outcome"] == "successful"]
    assert won, f"{recipe} succeeded on no pair: the checks below would be vacuous"
    predictions = predict_pairs(run / "model", [(r["perturbed_text"], r["perturbed_text_pair"]) for r in won])
    for row, prediction in zip(won, predictions):
        assert row["perturbed_text_pair"] != row["original_text_pair"]
        assert prediction == row["perturbed_prediction"] != row["gold_label"]
        assert 0 < row["words_perturbed"] <= row["num_words"]
    assert json.loads((tmp_path / "attack" / recipe / "run.json").read_text())["modify_columns"] == ["text_pair"]


def test_modify_columns_can_attack_the_first_text_instead(pair_run, attack_cache, tmp_path):
    run, data = pair_run
    rows, _ = attack(run, data, tmp_path, attack_cache, "deepwordbug", "--set", 'attack.modify_columns=["text"]')
    assert all(r["perturbed_text_pair"] == r["original_text_pair"] for r in rows)
    assert any(r["perturbed_text"] != r["original_text"] for r in rows)
    assert all(r["num_words"] == len(r["original_text"].split()) for r in rows)


def test_a_recipe_that_cannot_attack_pairs_says_why_in_one_line(tmp_path):
    from asa_plugin.attacks.config import AttackConfig
    from asa_plugin.attacks.recipes import Recipe, build_attack, build_deepwordbug

    from asa_plugin.errors import UserError

    single_only = Recipe("single-only", build_deepwordbug, "test recipe", pairs="it rewrites the input as one text")
    with pytest.raises(UserError) as info:
        build_attack(single_only, None, AttackConfig(), tmp_path, pairs=True)
    assert str(info.value) == "recipe 'single-only' cannot attack sentence pairs: it rewrites the input as one text"


def test_wrapper_gradient_of_a_pair_covers_both_texts(pair_run, attack_cache):
    from asa_plugin.attacks.textattack_env import import_textattack

    import_textattack(attack_cache, allow_download=False)
    from asa_plugin.attacks.wrapper import FastModelWrapper
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = pair_run[0] / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    wrapper = FastModelWrapper(AutoModelForSequenceClassification.from_pretrained(model_dir), tokenizer,
                               device="cpu")
    out = wrapper.get_grad(("the film was", "really great"))
    tokens = tokenizer.convert_ids_to_tokens(out["ids"][0])
    assert tokens == ["[CLS]", "the", "film", "was", "[SEP]", "really", "great", "[SEP]"]
    assert out["gradient"].shape[0] == len(tokens) and (abs(out["gradient"]).sum(1) > 0).all()
