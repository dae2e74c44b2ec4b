"""Summaries, crash-safe JSONL, shards and per-example seeds: pure functions, checked by value."""

from __future__ import annotations

import pytest
from asa_plugin.attacks.results import read_rows, summarize, without_timing
from asa_plugin.attacks.runner import Shard, example_seed

from asa_plugin.errors import UserError

MANIFEST = {"recipe": "pwws", "profile": "stock", "seed": 1, "split": "dev", "model": "m", "data": "d",
            "selection_size": 4}


def row(index, outcome, pct=0.0, queries=10):
    return {"index": index, "outcome": outcome, "words_perturbed_pct": pct, "queries": queries, "seconds": 1.0}


CASES = [
    # rows -> (clean accuracy, accuracy under attack, success rate, avg % perturbed, avg queries)
    ([row(0, "successful", 20, 30), row(1, "failed", 0, 50), row(2, "skipped", 0, 1), row(3, "successful", 10, 10)],
     (0.75, 0.25, 2 / 3, 15.0, 30.0)),
    ([row(0, "skipped", 0, 1), row(1, "skipped", 0, 1)], (0.0, 0.0, None, None, None)),
    ([row(0, "failed", 0, 7), row(1, "failed", 0, 9)], (1.0, 1.0, 0.0, None, 8.0)),
    # texts with no word to perturb are left out of every rate (not counted as failed attacks)
    ([row(0, "unperturbable", 0, 1), row(1, "successful", 50, 20), row(2, "failed", 0, 40)],
     (1.0, 0.5, 0.5, 50.0, 30.0)),
    ([row(0, "unperturbable", 0, 1), row(1, "skipped", 0, 1), row(2, "unperturbable", 0, 1), row(3, "failed", 0, 5)],
     (0.5, 0.5, 0.0, None, 5.0)),
]


@pytest.mark.parametrize("rows,expected", CASES)
def test_summary_values(rows, expected):
    s = summarize(rows, MANIFEST, [])
    got = (s["clean_accuracy"], s["accuracy_under_attack"], s["attack_success_rate"],
           s["avg_words_perturbed_pct"], s["avg_queries"])
    assert got == pytest.approx(expected) if None not in expected else got == expected


def test_unperturbable_texts_are_counted_apart():
    s = summarize(CASES[4][0], MANIFEST, [])
    assert (s["num_examples"], s["unperturbable"], s["outcomes"]["unperturbable"], s["outcomes"]["failed"]) == (
        4, 2, 2, 1)


def test_summary_does_not_depend_on_row_order_or_timing():
    rows = CASES[0][0]
    slower = [dict(r, seconds=9.0) for r in reversed(rows)]
    assert without_timing(summarize(rows, MANIFEST, [])) == without_timing(summarize(slower, MANIFEST, []))


def test_summary_marks_a_model_that_ignores_its_input():
    """summary.json carries the degenerate verdict of the attacked examples, not only a printed warning."""
    constant = [{**row(i, "failed" if i % 2 else "skipped"), "gold_label": i % 2, "original_prediction": 1}
                for i in range(40)]
    s = summarize(constant, MANIFEST, [])
    assert s["degenerate"] is True and s["degenerate_reason"].startswith("it recognises class 0 in 0.0% of its 20")
    assert s["balanced_accuracy"] == 0.5
    learned = [{**c, "original_prediction": c["gold_label"]} for c in constant]
    assert summarize(learned, MANIFEST, [])["degenerate"] is False
    assert summarize(CASES[0][0], MANIFEST, [])["degenerate"] is None  # rows without labels: not judged


def test_read_rows_repairs_a_torn_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    rows = '{"index": 0, "outcome": "failed"}\n{"index": 1, "outcome": "skipped"}\n'
    path.write_text(rows + '{"index": 2, "outc')
    assert [r["index"] for r in read_rows(path, repair=True)] == [0, 1]
    assert path.read_text() == rows


SHARDS = [("0/2", [0, 2, 4]), ("1/2", [1, 3]), ("2/3", [2]), ("0/1", [0, 1, 2, 3, 4])]


@pytest.mark.parametrize("text,expected", SHARDS)
def test_shards_partition_the_examples(text, expected):
    assert Shard.parse(text).select(range(5)) == expected


@pytest.mark.parametrize("text", ["2/2", "a/b", "1", "-1/3"])
def test_bad_shard_specs_are_one_line_errors(text):
    with pytest.raises(UserError, match="--shard"):
        Shard.parse(text)


def test_example_seeds_differ_per_example_and_seed():
    seeds = {example_seed(s, i) for s in (0, 1, 765) for i in range(100)}
    assert len(seeds) == 300


SEEDS = [  # (run seed, example index, the example's seed): pinned, so a changed formula fails
    (0, 0, 12345),
    (765, 3, 765038397),
    (1, 99, 1796329),
    (5000, 0, 705060049),  # wraps modulo 2**32
]


@pytest.mark.parametrize("seed,index,expected", SEEDS)
def test_example_seeds_are_pinned(seed, index, expected):
    assert example_seed(seed, index) == expected
