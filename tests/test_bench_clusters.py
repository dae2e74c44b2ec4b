"""Clusters for real: per-run bench locks, a killed cell under every executor, executors as plugins,
SLURM through submitit (its local executor: the same code path with processes instead of sbatch),
and the one-line refusals of executor keys that would do nothing.

Tiny BERT, toy data, 3 dev examples, one recipe: each grid takes seconds per cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import tomli_w
from attack_support import nltk_data_dir

from asa_plugin.attacks.results import read_rows, without_timing
from asa_plugin.attacks.runner import KILL_AFTER_ENV
from asa_plugin.cli import main
from asa_plugin.locks import LOCKS_DIR

N = 3
SLURM_LOCAL = {"slurm": {"cluster": "local", "poll_s": 0.2}}


def config(tmp_path: Path, model: Path, data: dict, cache: Path, defences=("vanilla",), **bench) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(tomli_w.dumps({
        "bench": {"defences": list(defences), "recipes": ["deepwordbug"], "out_dir": str(tmp_path / "out"), **bench},
        "model": {"backbone": str(model), "num_labels": 2, "max_length": 32},
        "data": {"train_file": str(data["train"]), "dev_file": str(data["dev"])},
        "defence": {"fgm": {"epsilon": 0.5}},
        "train": {"max_steps": 2, "batch_size": 16, "lr": 5e-3, "warmup_ratio": 0.0, "seed": 7},
        "attack": {"profile": "stock", "num_examples": N, "seed": 3, "cache_dir": str(cache),
                   "nltk_data": nltk_data_dir(), "workers": 1},
    }))
    return path


def rows(out: Path, run: str) -> list[dict]:
    return [without_timing(r) for r in read_rows(out / "runs" / run / "attack" / "deepwordbug" / "results.jsonl")]


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


# --- a cell whose process is killed (kill -9) fails alone, under every executor ------------------------------
EXECUTORS = [  # (flags, [bench] keys): the local processes and submitit jobs; Ray: test_bench_executors.py
    (["--max-parallel", "2"], {}),
    (["--executor", "slurm"], {**SLURM_LOCAL, "retries": 0}),
]


@pytest.mark.parametrize(("flags", "keys"), EXECUTORS, ids=["local", "slurm"])
def test_a_cell_killed_by_sigkill_is_a_failed_line_and_failures_json_not_a_dead_bench(
        tmp_path, tiny_bert_dir, toy_data, attack_cache, monkeypatch, capfd, flags, keys):
    cfg = config(tmp_path, tiny_bert_dir, toy_data, attack_cache, **keys)
    monkeypatch.setenv(KILL_AFTER_ENV, "1")  # the attack cell's process SIGKILLs itself after its first row
    assert main(["bench", str(cfg), "--no-progress", *flags]) == 1
    printed = capfd.readouterr().out
    failed = [line for line in printed.splitlines() if line.startswith("[bench] FAILED attack vanilla/deepwordbug: ")]
    assert len(failed) == 1, printed
    assert "killed by signal 9" in failed[0] or "died" in failed[0]
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert list(failures) == ["attack vanilla/deepwordbug"]
    assert report(tmp_path / "out")["failed"][0]["cell"] == "attack vanilla/deepwordbug"
    monkeypatch.delenv(KILL_AFTER_ENV)
    assert main(["bench", str(cfg), "--no-progress", *flags]) == 0  # the rerun resumes after the kept row
    assert not (tmp_path / "out" / "failures.json").exists()
    assert sorted(r["index"] for r in rows(tmp_path / "out", "vanilla")) == list(range(N))
