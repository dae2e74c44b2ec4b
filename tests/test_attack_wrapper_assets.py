"""The fast wrapper matches the model; the offline import works; missing assets say what to do."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from asa_plugin.attacks.textattack_env import import_textattack

TEXTS = ["good", "the movie was really awful and the plot was dull", "", "great fun",
         "a quite tedious and boring story with bad acting but a wonderful charming plot"]


@pytest.fixture(scope="module")
def wrapper(trained_tiny, attack_cache):
    import_textattack(attack_cache)
    from asa_plugin.attacks.runner import load_wrapper

    from asa_plugin.config import load_config

    return load_wrapper(str(trained_tiny), load_config(data={}).attack, 64)


def test_wrapper_logits_equal_unpadded_forwards_in_input_order(wrapper):
    wrapper.batch_size = 2  # several batches, mixed lengths
    logits = wrapper(TEXTS)  # (N, C)
    with torch.no_grad():
        reference = torch.cat([wrapper.model(**wrapper.tokenizer(t, return_tensors="pt")).logits for t in TEXTS])
    assert logits.shape == (len(TEXTS), 2)
    assert torch.allclose(logits, reference, atol=1e-5)
    assert not wrapper.model.training


def test_wrapper_probabilities_match_textattacks_wrapper(wrapper):
    from textattack.models.wrappers import HuggingFaceModelWrapper

    tokenizer = copy.deepcopy(wrapper.tokenizer)
    tokenizer.model_max_length = wrapper.model.config.max_position_embeddings  # the stock wrapper pads to it
    stock = HuggingFaceModelWrapper(wrapper.model, tokenizer)
    ours, theirs = wrapper(TEXTS).softmax(-1), stock(TEXTS).softmax(-1)
    assert (ours - theirs).abs().max() < 1e-4


def test_gradients_point_where_the_loss_grows(wrapper):
    text = TEXTS[1]
    out = wrapper.get_grad(text)
    ids = out["ids"]
    grad = torch.from_numpy(out["gradient"])  # (L, H)
    assert grad.shape == (ids.shape[1], wrapper.model.config.hidden_size)
    embeddings = wrapper.model.get_input_embeddings()(ids)[0].detach()  # (L, H)
    label = wrapper([text]).argmax(-1)

    def loss(emb):
        with torch.no_grad():
            logits = wrapper.model(inputs_embeds=emb.unsqueeze(0)).logits
        return torch.nn.functional.cross_entropy(logits.double(), label).item()

    step = 0.5 * grad / grad.norm()  # the loss is small on a fitted model: a visible step
    assert loss(embeddings + step) > loss(embeddings) > loss(embeddings - step)
    assert all(p.grad is None for p in wrapper.model.parameters())


def test_textattack_imports_offline_into_the_given_cache(tmp_path):
    code = ("import os; from asa_plugin.attacks.textattack_env import import_textattack; "
            "import_textattack(os.environ['CACHE']); print(os.environ.get('HF_HOME'))")
    env = {k: v for k, v in os.environ.items() if k not in ("NLTK_DATA", "TA_CACHE_DIR", "HF_HOME")}
    env.update(HF_HUB_OFFLINE="1", CACHE=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "None"  # TextAttack's HF_HOME redirect was undone
    assert (tmp_path / "cache" / "nltk_data" / "corpora" / "stopwords" / "english").is_file()
    assert not (tmp_path / "home").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def _assets(tmp_path, **attack):
    from asa_plugin.attacks.assets import Assets

    from asa_plugin.config import load_config

    return Assets(load_config(data={"attack": attack}).attack, tmp_path, "textfooler")


MISSING = [
    # (config, call, words the one-line message must contain)
    ({"masked_lm_path": None}, "masked_lm_path", ["masked language model", "attack.masked_lm_path"]),
    ({"embedding_path": "EMPTY"}, "embedding_files", ["attack.embedding_path", "paragramcf", "GloVe"]),
    ({"sentence_encoder_path": "NOWHERE"}, "sentence_encoder_path", ["attack.sentence_encoder_path",
                                                                     "not found"]),
    ({"antonym_files": ["NOWHERE"]}, "antonym_pairs", ["attack.antonym_files", "not found"]),
]


@pytest.mark.parametrize("attack,call,words", MISSING)
def test_missing_assets_are_one_line_with_the_fix(tmp_path, monkeypatch, attack, call, words):
    from asa_plugin.attacks.assets import MissingAsset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "EMPTY").mkdir()
    attack = {k: (str(tmp_path / v) if isinstance(v, str) else v) for k, v in attack.items()}
    attack = {k: ([str(tmp_path / f) for f in v] if isinstance(v, list) else v) for k, v in attack.items()}
    with pytest.raises(MissingAsset) as err:
        getattr(_assets(tmp_path, **attack), call)()
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words)


def test_missing_wordnet_names_nltk_data(tmp_path, monkeypatch):
    import nltk
    from asa_plugin.attacks.assets import MissingAsset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(MissingAsset, match="needs WordNet.*attack.nltk_data"):
        _assets(tmp_path).wordnet()


def test_bae_without_a_masked_lm_fails_clearly(tmp_path, monkeypatch, trained_tiny, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from asa_plugin.cli import main

    data = tmp_path / "d.tsv"
    data.write_text("sentence\tlabel\ngood movie\t1\n")
    argv = ["attack", "--model", str(trained_tiny), "--recipe", "bae", "--data-file", str(data), "--out",
            str(tmp_path / "run"), "--no-progress", "--set", f"attack.cache_dir={tmp_path / 'cache'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("advrobust attack: error:") and "attack.masked_lm_path" in err, err


def test_unknown_recipe_lists_the_registered_ones():
    from asa_plugin.config import load_config
    from asa_plugin.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown recipe 'nope'; available: .*deepwordbug.*pwws.*textfooler"):
        load_config(data={"attack": {"recipes": ["nope"]}})
