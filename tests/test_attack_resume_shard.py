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
