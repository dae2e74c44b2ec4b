"""Real attacks on a tiny trained classifier: outcomes must be consistent with the model."""

from __future__ import annotations

import json
import math

import pytest
from attack_support import attack_args, flipped_copy, nltk_data_dir, predict, read_jsonl

from asa_plugin.cli import main

RECIPES = ["deepwordbug", "pwws", "textfooler"]


class Attacked:
    """Each (profile, recipe) attacked once, on first use, on toy data where every 5th label is flipped."""

    def __init__(self, root, trained, data, cache):
        self.root, self.trained, self.cache = root, trained, cache
        self.data = flipped_copy(data, root / "dev.tsv")
        self.runs: dict[tuple[str, str], tuple[list[dict], dict]] = {}

    def __getitem__(self, key: tuple[str, str]) -> tuple[list[dict], dict]:
        if key not in self.runs:
            profile, recipe = key
            out = self.root / profile
            assert main(attack_args(self.trained, self.data, out, self.cache, recipe, "--profile", profile)) == 0
            recipe_dir = out / "attack" / recipe
            self.runs[key] = (read_jsonl(recipe_dir / "results.jsonl"),
                              json.loads((recipe_dir / "summary.json").read_text()))
        return self.runs[key]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, trained_tiny, attack_data, attack_cache):
    return Attacked(tmp_path_factory.mktemp("attacked"), trained_tiny, attack_data["dev"], attack_cache)


PROFILES = ["stock", pytest.param("textdefender", marks=pytest.mark.slow)]  # the TextDefender runs are slow


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_successful_perturbations_really_flip_the_model(attacked, trained_tiny, recipe, profile):
    rows, _ = attacked[profile, recipe]
    won = [r for r in rows if r["outcome"] == "successful"]
    assert won, f"{recipe}/{profile} succeeded on no example: the check below would be vacuous"
    predictions = predict(trained_tiny, [r["perturbed_text"] for r in won])
    for row, prediction in zip(won, predictions):
        assert row["perturbed_text"] != row["original_text"]
        assert prediction == row["perturbed_prediction"] != row["gold_label"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_skipped_examples_are_exactly_those_the_model_gets_wrong(attacked, trained_tiny, recipe):
    rows, summary = attacked["stock", recipe]
    predictions = predict(trained_tiny, [r["original_text"] for r in rows])
    wrong = {r["index"] for r, p in zip(rows, predictions) if p != r["gold_label"]}
    assert wrong, "the flipped labels should make the model wrong on some examples"
    assert {r["index"] for r in rows if r["outcome"] == "skipped"} == wrong
    assert summary["clean_accuracy"] == pytest.approx(1 - len(wrong) / len(rows))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_textdefender_profile_limits_hold(attacked, recipe):
    rows, summary = attacked["textdefender", recipe]
    assert summary["profile"] == "textdefender"
    for row in rows:
        assert row["words_perturbed"] <= math.ceil(0.3 * row["num_words"])
        assert row["query_budget"] == 50 * row["num_words"]
        assert row["queries"] <= row["query_budget"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_summary_is_computed_from_the_rows(attacked, recipe):
    rows, summary = attacked["stock", recipe]
    outcomes = [r["outcome"] for r in rows]
    won, lost = outcomes.count("successful"), outcomes.count("failed")
    assert summary["num_examples"] == len(rows) == 8
    assert summary["accuracy_under_attack"] == pytest.approx(lost / len(rows))
    assert summary["attack_success_rate"] == pytest.approx(won / (won + lost))
    assert [r["index"] for r in rows] == list(range(len(rows)))


def test_textfooler_names_its_offline_substitutes(attacked):
    _, summary = attacked["stock", "textfooler"]
    substituted = {a["asset"]: a for a in summary["substitutes"]}
    assert "counter-fitted" in substituted["word_embedding"]["substitute_for"]
    assert "GloVe" in substituted["word_embedding"]["source"]
    assert "Universal Sentence Encoder" in substituted["sentence_encoder"]["substitute_for"]
    assert "pos_tagger" in {a["asset"] for a in summary["assets"]}


def test_pwws_uses_the_configured_wordnet(attacked):
    _, summary = attacked["stock", "pwws"]
    wordnet = next(a for a in summary["assets"] if a["asset"] == "wordnet")
    assert "wordnet" in wordnet["source"] and "substitute_for" not in wordnet


@pytest.fixture(scope="module")
def tiny_masked_lm(tmp_path_factory):
    """A random tiny BERT masked LM over the tiny vocabulary (stands in for bert-base-uncased)."""
    from tiny import TINY_DIMS, tiny_tokenizer
    from transformers import BertConfig, BertForMaskedLM

    path = tmp_path_factory.mktemp("tiny-mlm")
    tokenizer = tiny_tokenizer(path / "_tok")
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), **TINY_DIMS)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


OTHER_RECIPES = [
    # (recipe, substitutes it must name); PSO (population 60 x 20 iterations) and the masked-LM recipes are slow
    ("textbugger", {"homoglyphs", "word_embedding", "sentence_encoder"}),
    ("a2t", {"word_embedding", "sentence_encoder"}),
    pytest.param("pso", {"word_embedding", "sememes"}, marks=pytest.mark.slow),
    pytest.param("bae", {"sentence_encoder"}, marks=pytest.mark.slow),
    pytest.param("bert-attack", {"sentence_encoder"}, marks=pytest.mark.slow),
]
OTHER_EXAMPLES = 8


@pytest.mark.parametrize("recipe,substitutes", OTHER_RECIPES)
def test_other_recipes_run_offline_and_name_their_substitutes(tmp_path, trained_tiny, attack_data, attack_cache,
                                                              tiny_masked_lm, recipe, substitutes):
    argv = attack_args(trained_tiny, attack_data["dev"], tmp_path, attack_cache, recipe,
                       "--set", f"attack.masked_lm_path={tiny_masked_lm}", num_examples=OTHER_EXAMPLES)
    assert main(argv) == 0
    recipe_dir = tmp_path / "attack" / recipe
    rows = read_jsonl(recipe_dir / "results.jsonl")
    summary = json.loads((recipe_dir / "summary.json").read_text())
    assert substitutes <= {a["asset"] for a in summary["substitutes"]}
    outcomes = [r["outcome"] for r in rows]
    assert summary["num_examples"] == len(rows) == OTHER_EXAMPLES
    assert summary["accuracy_under_attack"] == pytest.approx(outcomes.count("failed") / OTHER_EXAMPLES)
    won = [r for r in rows if r["outcome"] == "successful"]
    assert won, f"{recipe} succeeded on none of {OTHER_EXAMPLES} examples: the check below would be vacuous"
    for row, prediction in zip(won, predict(trained_tiny, [r["perturbed_text"] for r in won])):
        assert row["perturbed_text"] != row["original_text"]
        assert prediction == row["perturbed_prediction"] != row["gold_label"]


@pytest.mark.parametrize("profile", ["stock", "textdefender"])
def test_the_textdefender_profile_offers_k_50_candidates_and_judges_with_the_offline_encoder(
        trained_tiny, attack_cache, profile):
    from asa_plugin.attacks.recipes import TEXTDEFENDER_SIMILARITY, build_attack
    from asa_plugin.attacks.runner import load_wrapper
    from asa_plugin.attacks.textattack_env import import_textattack

    from asa_plugin.config import load_config
    from asa_plugin.plugins import get_plugin_manager

    import_textattack(attack_cache)  # before anything imports textattack
    from asa_plugin.attacks.substitutes import TransformerSentenceEncoder
    from textattack.constraints.overlap import MaxWordsPerturbed

    cfg = load_config(data={"attack": {"profile": profile, "embedding_vocab_size": 8000,
                                       "nltk_data": nltk_data_dir()}}).attack
    wrapper = load_wrapper(str(trained_tiny), cfg, 64)
    attack, _ = build_attack(get_plugin_manager().recipes.get("a2t"), wrapper, cfg, attack_cache)
    candidates = attack.transformation._get_replacement_words("movie")
    encoders = [c for c in attack.constraints if isinstance(c, TransformerSentenceEncoder)]
    assert len(encoders) == 1  # USE's offline stand-in, never a second (or a missing) encoder
    if profile == "stock":
        assert len(candidates) == 20  # A2T's own K
        return
    assert len(candidates) == 50  # TextDefender's K
    assert encoders[0].threshold == pytest.approx(TEXTDEFENDER_SIMILARITY) and encoders[0].metric == "angular"
    limits = [c for c in attack.constraints if isinstance(c, MaxWordsPerturbed)]
    assert [c.max_percent for c in limits] == [0.3]


def test_checking_the_recipes_before_a_bench_warns_about_nothing(attack_cache, tmp_path, capfd):
    """The bench builds each recipe against a stand-in model before it trains; TextAttack's note that it
    cannot tell whether that stand-in suits the goal function is about the stand-in, not the user's model."""
    from asa_plugin.attacks.config import AttackConfig
    from asa_plugin.attacks.warmup import build_recipes

    from asa_plugin.plugins import get_plugin_manager

    cfg = AttackConfig(cache_dir=str(attack_cache), nltk_data=nltk_data_dir(), embedding_vocab_size=8000)
    build_recipes(RECIPES, cfg, tmp_path / "attack", get_plugin_manager())
    assert "Unknown if model" not in capfd.readouterr().err
