"""Long inputs end to end: IMDB reviews of 300-500 words at ``model.max_length = 512``, every defence trained
on them and the result attacked by pwws and textfooler; truncation is said once per run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import tomli_w
from attack_support import attack_args, read_jsonl
from tiny import tiny_model_dir

from asa_plugin.cli import main
from asa_plugin.plugins import get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
LENGTH = 512
ATTACK_LENGTH = 400
CASES = [[name] for name in get_plugin_manager().defences.names()] + [["asa", "freelb"]]


def load_generator():
    spec = importlib.util.spec_from_file_location("long_reviews", ROOT / "benchmarks" / "long_reviews.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def long_data(tmp_path_factory) -> dict[str, Path]:
    return load_generator().write_long_reviews(tmp_path_factory.mktemp("long-reviews"), train=8, dev=4)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """The tiny BERT (2 layers, hidden 32) with room for 512 positions."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-512"), "bert", max_position_embeddings=LENGTH)


def too_long(model: Path, path: Path) -> int:
    """How many texts of a TSV exceed ``LENGTH`` tokens, counted without truncation."""
    from transformers import AutoTokenizer

    from asa_plugin.data.files import read_rows

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [r["sentence"] for r in read_rows(path)]
    return sum(len(ids) > LENGTH for ids in tokenizer(texts, verbose=False)["input_ids"])


def test_the_generated_reviews_are_long_balanced_and_reproducible(tmp_path, long_data):
    from asa_plugin.data.files import read_rows

    again = load_generator().write_long_reviews(tmp_path, train=8, dev=4)
    for split, count in (("train", 8), ("dev", 4)):
        assert again[split].read_text() == long_data[split].read_text()
        rows = read_rows(long_data[split])
        assert len(rows) == count and sorted(int(r["label"]) for r in rows) == sorted([0, 1] * (count // 2))
        assert all(300 <= len(r["sentence"].split()) <= 500 for r in rows)
    train = {r["sentence"] for r in read_rows(long_data["train"])}
    assert not train & {r["sentence"] for r in read_rows(long_data["dev"])}


def write_config(path: Path, model: Path, data: dict[str, Path], names: list[str], run_dir: Path) -> Path:
    config = {"model": {"backbone": str(model), "num_labels": 2, "max_length": LENGTH},
              "data": {"train_file": str(data["train"]), "dev_file": str(data["dev"])},
              "defence": {"name": names if len(names) > 1 else names[0]},
              "train": {"max_steps": 2, "batch_size": 4, "eval_batch_size": 4, "lr": 1e-3, "seed": 3},
              "output": {"run_dir": str(run_dir)}}
    path.write_text(tomli_w.dumps(config))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, long_model, long_data):
    """Each case trained once at 512 tokens: (run dir, stderr lines)."""
    runs: dict[str, tuple[Path, list[str]]] = {}

    def get(names: list[str], capfd) -> tuple[Path, list[str]]:
        key = "+".join(names)
        if key not in runs:
            root = tmp_path_factory.mktemp(f"long-{key}")
            capfd.readouterr()
            assert main(["train", str(write_config(root / "c.toml", long_model, long_data, names, root / "run"))]) == 0
            runs[key] = (root / "run", capfd.readouterr().err.splitlines())
        return runs[key]

    return get


def test_attack_at_the_default_length_says_once_that_long_reviews_are_cut_to_128_tokens(trained, capfd, long_data,
                                                                                      tmp_path):
    """``advrobust attack --model`` reads at ``model.max_length`` (default 128), not at the length the model was
    trained at: the note names it once, before any example is attacked, and each review is attacked up to the
    last word the model sees."""
    from asa_plugin.attacks.jobs import recipe_jobs
    from transformers import AutoTokenizer

    from asa_plugin.config import load_config
    from asa_plugin.data.files import read_rows

    run_dir, _ = trained(["vanilla"], capfd)
    cfg = load_config(data={"data": {"train_file": str(long_data["train"]), "dev_file": str(long_data["dev"])}})
    notes: list[str] = []
    jobs = recipe_jobs(cfg, str(run_dir / "model"), tmp_path, ["pwws", "textfooler"], note=notes.append)
    assert notes == ["4 of 4 examples are longer than max_length = 128 tokens; each is attacked (and its words "
                     "counted) up to the last word the model sees"]
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    originals = [r["sentence"] for r in read_rows(long_data["dev"])]
    for text in jobs[0].texts:  # a prefix of its review, ending with the word that holds the 128th token
        assert any(original.startswith(text) and len(text) < len(original) for original in originals)
        assert len(tokenizer(text.rsplit(" ", 1)[0])["input_ids"]) <= 128 < len(tokenizer(text)["input_ids"]) + 1


@pytest.mark.parametrize("names", CASES, ids=["+".join(c) for c in CASES])
def test_every_defence_trains_at_512_tokens_and_says_truncation_once(trained, capfd, long_model, long_data, names):
    run_dir, stderr = trained(names, capfd)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2
    assert all(math.isfinite(step["loss"]) for step in metrics["step_history"])
    cut_train, cut_dev = too_long(long_model, long_data["train"]), too_long(long_model, long_data["dev"])
    assert cut_train > 0  # the data really exceeds 512 tokens
    notes = [line for line in stderr if "were truncated" in line]
    assert len(notes) == 1, stderr
    expected = f"{cut_train} of 8 training" + (f", {cut_dev} of 4 dev" if cut_dev else "")
    assert expected in notes[0] and f"model.max_length = {LENGTH}" in notes[0]


@pytest.mark.slow  # minutes: a word-level attack of a 400-word review queries the model thousands of times
@pytest.mark.parametrize("recipe", ["pwws", "textfooler"])
def test_a_model_trained_at_512_tokens_is_attacked_and_truncation_said_once(trained, capfd, tmp_path, long_model,
                                                                          long_data, attack_cache, recipe):
    run_dir, _ = trained(["asa"], capfd)
    # Queries cut at 400 tokens (attack.max_length), so that reviews of this tiny vocabulary exceed it.
    argv = attack_args(run_dir / "model", long_data["dev"], tmp_path, attack_cache, recipe,
                       "--set", f"model.max_length={LENGTH}", "--set", f"attack.max_length={ATTACK_LENGTH}",
                       num_examples=2)
    capfd.readouterr()
    assert main(argv) == 0
    stderr = capfd.readouterr().err.splitlines()
    rows = read_jsonl(tmp_path / "attack" / recipe / "results.jsonl")
    assert len(rows) == 2
    assert all(len(r["original_text"].split()) >= 250 for r in rows)  # long reviews, cut where the model stops
    notes = [line for line in stderr if "up to the last word the model sees" in line]
    assert len(notes) == 1, stderr  # once per run, before any example
    assert f"of 2 examples are longer than max_length = {ATTACK_LENGTH} tokens" in notes[0]
