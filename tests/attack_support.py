"""Shared pieces of the attack tests: a tiny classifier trained on the toy task, and asset paths.

Asset locations come from the environment (CI points them at ../shared/resources):
``ADVROBUST_NLTK_DATA`` or ``NLTK_DATA`` (WordNet), ``ADVROBUST_ANTONYM_FILES`` (PPDB antonyms).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny import tiny_model_dir, write_sentiment_tsv


def nltk_data_dir() -> str:
    """NLTK data with WordNet, from the environment; fails (never skips) when it is not set."""
    for env in ("ADVROBUST_NLTK_DATA", "NLTK_DATA"):
        for path in os.environ.get(env, "").split(os.pathsep):
            if path and (Path(path) / "corpora" / "wordnet").exists():
                return path
    pytest.fail("the attack tests need WordNet: set ADVROBUST_NLTK_DATA (or NLTK_DATA) to an NLTK data dir "
                "holding corpora/wordnet (CI: ../shared/resources/nltk_data)")


def train_tiny_classifier(directory: Path, train_file: Path, epochs: int = 8, seed: int = 0) -> Path:
    """A 2-layer hidden-32 BERT fitted to the toy sentiment task (a few seconds on CPU)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from asa_plugin.data.files import read_rows

    tiny_model_dir(directory, "bert", seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    rows = read_rows(train_file)
    enc = tokenizer([r["sentence"] for r in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([int(r["label"]) for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(16):
            loss = model(input_ids=enc["input_ids"][batch], attention_mask=enc["attention_mask"][batch],
                         labels=labels[batch]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def attack_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("attack-data")
    return {"train": write_sentiment_tsv(root / "train.tsv", 160, seed=11),
            "dev": write_sentiment_tsv(root / "dev.tsv", 40, seed=12)}


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, attack_data) -> Path:
    return train_tiny_classifier(tmp_path_factory.mktemp("trained-tiny"), attack_data["train"])


@pytest.fixture(scope="session")
def attack_cache(tmp_path_factory) -> Path:
    """One TextAttack cache for the session (the GloVe neighbour matrix is computed once)."""
    return tmp_path_factory.mktemp("ta-cache")


def flipped_copy(src: Path, dst: Path, flip_every: int = 5) -> Path:
    """``src`` with every ``flip_every``-th label flipped: examples the model must get wrong."""
    lines = src.read_text(encoding="utf-8").splitlines()
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        text, label = line.rsplit("\t", 1)
        out.append(f"{text}\t{1 - int(label) if i % flip_every == 0 else label}")
    dst.write_text("\n".join(out) + "\n", encoding="utf-8")
    return dst


def attack_args(model: Path, data: Path, out: Path, cache: Path, recipe: str, *extra: str,
                num_examples: int = 8) -> list[str]:
    """argv of ``advrobust attack`` on the toy data, offline assets from the environment.

    One worker (the attack runs in the test's process, TextAttack imported once per session) unless
    ``extra`` asks for workers: the worker pool has its own tests, which say ``--workers``."""
    workers = [] if any("workers" in arg for arg in extra) else ["--workers", "1"]
    return ["attack", "--model", str(model), "--recipe", recipe, "--data-file", str(data),
            "--num-examples", str(num_examples), "--out", str(out), "--no-progress",
            "--set", f"attack.cache_dir={cache}", "--set", f"attack.nltk_data={nltk_data_dir()}",
            "--set", "attack.embedding_vocab_size=8000", *workers, *extra]


def read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def predict(model_dir: Path, texts: list[str]) -> list[int]:
    """The model's own predictions, one unpadded forward per text (the reference for consistency)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return [int(model(**tokenizer(t, return_tensors="pt")).logits.argmax(-1)) for t in texts]
