"""kill -9 then --resume, --shard + merge, and worker processes reproduce an uninterrupted
one-worker run exactly (timing aside)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asa_plugin.attacks.results import without_timing
from asa_plugin.attacks.runner import KILL_AFTER_ENV
from attack_support import attack_args, read_jsonl

from asa_plugin.cli import main

RECIPE = "deepwordbug"  # random character edits: the per-example seeding is really exercised
N = 9


def outputs(run: Path) -> tuple[list[dict], dict]:
    d = run / "attack" / RECIPE
    return (without_timing(read_jsonl(d / "results.jsonl")),
            without_timing(json.loads((d / "summary.json").read_text())))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, trained_tiny, attack_data, attack_cache):
    out = tmp_path_factory.mktemp("whole")
    assert main(attack_args(trained_tiny, attack_data["dev"], out, attack_cache, RECIPE, "--workers", "1",
                            num_examples=N)) == 0
    return outputs(out)


def test_resume_after_kill_9_gives_the_uninterrupted_results(tmp_path, uninterrupted, trained_tiny, attack_data,
                                                           attack_cache):
    argv = attack_args(trained_tiny, attack_data["dev"], tmp_path, attack_cache, RECIPE, "--workers", "2",
                       num_examples=N)
    env = {**os.environ, KILL_AFTER_ENV: "4"}
    killed = subprocess.run([sys.executable, "-m", "asa_plugin.cli", *argv], env=env, capture_output=True, check=False)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    results = tmp_path / "attack" / RECIPE / "results.jsonl"
    assert len(read_jsonl(results)) == 4
    with open(results, "a", encoding="utf-8") as f:  # a row torn by the kill
        f.write('{"index": 4, "outcome": "succ')

    assert main(argv) == 2  # refuses to overwrite without --resume
    assert main([*argv, "--resume"]) == 0
    rows, summary = outputs(tmp_path)
    assert [r["index"] for r in rows] == list(range(N))  # nothing attacked twice, nothing lost
    assert (rows, summary) == uninterrupted


def test_two_workers_give_the_rows_of_one_and_say_where_the_time_went(tmp_path, uninterrupted, trained_tiny,
                                                                     attack_data, attack_cache):
    argv = attack_args(trained_tiny, attack_data["dev"], tmp_path, attack_cache, RECIPE, "--workers", "2",
                       "--threads", "1", num_examples=N)
    assert main(argv) == 0
    assert outputs(tmp_path) == uninterrupted
    summary = json.loads((tmp_path / "attack" / RECIPE / "summary.json").read_text())
    assert summary["execution"] == {"workers": 2, "threads_per_worker": 1, "threads_source": "config",
                                    "device": "cpu"}
    breakdown = summary["time_breakdown"]
    assert breakdown["examples"] == N
    assert {"model_queries", "transformation", "search_and_other",
            "constraint:LevenshteinEditDistance"} <= set(breakdown["seconds"])
    assert sum(breakdown["seconds"].values()) == pytest.approx(summary["seconds"], abs=0.01 * N)
    assert breakdown["model_forwards_per_example"] >= 1
    assert breakdown["model_texts_per_example"] >= breakdown["model_forwards_per_example"]
    assert breakdown["encoder_forwards_per_example"] == 0  # deepwordbug has no sentence encoder


def test_resume_refuses_changed_settings(tmp_path, trained_tiny, attack_data, attack_cache, capsys):
    argv = attack_args(trained_tiny, attack_data["dev"], tmp_path, attack_cache, RECIPE, "--workers", "1",
                       num_examples=3)
    assert main(argv) == 0
    assert main([*argv, "--resume", "--seed", "1"]) == 2
    assert "different settings (seed)" in capsys.readouterr().err


def test_shards_merge_into_the_unsharded_summary(tmp_path, uninterrupted, trained_tiny, attack_data, attack_cache):
    for shard in ("1/3", "0/3", "2/3"):
        argv = attack_args(trained_tiny, attack_data["dev"], tmp_path, attack_cache, RECIPE, "--shard", shard,
                           num_examples=N)
        assert main(argv) == 0
    shard_rows = read_jsonl(tmp_path / "attack" / RECIPE / "shards" / "1-of-3" / "results.jsonl")
    assert [r["index"] for r in shard_rows] == [1, 4, 7]
    assert main(["merge", str(tmp_path)]) == 0
    assert outputs(tmp_path) == uninterrupted


def test_merge_refuses_a_missing_shard(tmp_path, trained_tiny, attack_data, attack_cache, capsys):
    argv = attack_args(trained_tiny, attack_data["dev"], tmp_path, attack_cache, RECIPE, "--shard", "0/2",
                       "--workers", "1", num_examples=4)
    assert main(argv) == 0
    assert main(["merge", str(tmp_path)]) == 2
    assert "shard 1/2 has not finished" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory, trained_tiny, attack_data, attack_cache):
    """Both shards of a 2-way split of 4 examples, finished and not yet merged."""
    out = tmp_path_factory.mktemp("two-shards")
    for shard in ("0/2", "1/2"):
        argv = attack_args(trained_tiny, attack_data["dev"], out, attack_cache, RECIPE, "--shard", shard,
                           num_examples=4)
        assert main(argv) == 0
    return out


def _mixed_counts(shards: Path) -> None:
    import shutil

    shutil.copytree(shards / "0-of-2", shards / "0-of-3")


def _other_seed(shards: Path) -> None:
    path = shards / "1-of-2" / "run.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"seed": 99}))


def _other_assets(shards: Path) -> None:
    path = shards / "1-of-2" / "summary.json"
    summary = json.loads(path.read_text())
    summary["assets"] = [*summary["assets"], {"asset": "word_embedding", "source": "somewhere else"}]
    path.write_text(json.dumps(summary))


def _duplicate_row(shards: Path) -> None:
    path = shards / "1-of-2" / "results.jsonl"
    first = path.read_text().splitlines()[0]
    path.write_text(path.read_text() + first + "\n")


MERGE_REFUSALS = [  # (how the shards are spoiled, fragment of the one-line error)
    (_mixed_counts, "mixes shard counts (2, 3)"),
    (_other_seed, "shard 1/2 was run with other settings than shard 0 (seed "),
    (_other_assets, "shard 1/2 used different assets than shard 0"),
    (_duplicate_row, "a shard is incomplete or duplicated"),
]


@pytest.mark.parametrize("spoil,fragment", MERGE_REFUSALS, ids=[s.__name__.strip("_") for s, _ in MERGE_REFUSALS])
def test_merge_refuses_shards_that_do_not_make_one_run(two_shards, tmp_path, capsys, spoil, fragment):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_shards, run)
    recipe_dir = run / "attack" / RECIPE
    assert main(["merge", str(run)]) == 0  # the unspoiled copy merges
    (recipe_dir / "summary.json").unlink()
    (recipe_dir / "results.jsonl").unlink()
    capsys.readouterr()
    spoil(recipe_dir / "shards")
    assert main(["merge", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert not (recipe_dir / "summary.json").exists()  # nothing half-merged is left behind


def test_overwrite_starts_a_finished_run_over(tmp_path, trained_tiny, attack_data, attack_cache):
    argv = attack_args(trained_tiny, attack_data["dev"], tmp_path, attack_cache, RECIPE, num_examples=3)
    assert main(argv) == 0
    assert main([*argv, "--overwrite", "--set", "attack.num_examples=2"]) == 0  # other settings: allowed
    rows, summary = outputs(tmp_path)
    assert [r["index"] for r in rows] == [0, 1] and summary["num_examples"] == 2


def test_query_budget_caps_every_examples_queries(tmp_path, trained_tiny, attack_data, attack_cache):
    argv = attack_args(trained_tiny, attack_data["dev"], tmp_path, attack_cache, RECIPE,
                       "--set", "attack.query_budget=5", num_examples=6)
    assert main(argv) == 0
    rows, _ = outputs(tmp_path)
    assert all(r["query_budget"] == 5 for r in rows)
    assert all(r["queries"] <= 5 for r in rows)
    assert any(r["queries"] == 5 for r in rows)  # the cap was reached: it is what stopped those searches
