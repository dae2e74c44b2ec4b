"""The bench grid as a graph of cells on its executors: local processes and a local Ray cluster.

Tiny BERT, toy data, 5 dev examples. One grid (vanilla, fgm) x (deepwordbug, pwws) runs three ways:
sequentially in the bench's process (``max_parallel = 1``), in two local processes, and on a
2-CPU Ray cluster with every attack split into 2 shards. All three must write the same
per-example rows. Then Ray's retries (a worker SIGKILLed mid attack) and a cell that fails alone.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import tomli_w
from asa_plugin.attacks.results import read_rows, without_timing
from asa_plugin.attacks.runner import KILL_AFTER_ENV
from attack_support import nltk_data_dir

from asa_plugin.bench.cells import build_cells, priority, step_cost
from asa_plugin.bench.executors import read_failures
from asa_plugin.bench.grid import run_grid
from asa_plugin.bench.plan import load_plan
from asa_plugin.bench.report import write_report
from asa_plugin.cli import main

DEFENCES = ["vanilla", "fgm"]
RECIPES = ["deepwordbug", "pwws"]
N = 5


def grid_config(path: Path, out: Path, model: Path, data: dict, cache: Path, **bench) -> Path:
    config = {
        "bench": {"defences": DEFENCES, "recipes": RECIPES, "out_dir": str(out), **bench},
        "model": {"backbone": str(model), "num_labels": 2, "max_length": 32},
        "data": {"train_file": str(data["train"]), "dev_file": str(data["dev"])},
        "defence": {"fgm": {"epsilon": 0.5}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "warmup_ratio": 0.0, "seed": 7},
        # workers = 1: the sequential run attacks in its own process (rows never depend on the worker count)
        "attack": {"profile": "stock", "num_examples": N, "seed": 3, "cache_dir": str(cache),
                   "nltk_data": nltk_data_dir(), "workers": 1},
    }
    path.write_text(tomli_w.dumps(config))
    return path


def rows(out: Path, run: str, recipe: str) -> list[dict]:
    return [without_timing(r) for r in read_rows(out / "runs" / run / "attack" / recipe / "results.jsonl")]


def all_rows(out: Path) -> dict[tuple[str, str], list[dict]]:
    return {(d, r): rows(out, d, r) for d in DEFENCES for r in RECIPES}


def metrics(out: Path, run: str) -> dict:
    found = json.loads((out / "runs" / run / "metrics.json").read_text())
    return {k: found[k] for k in ("eval_accuracy", "steps", "eval_accuracy_per_epoch")}


@pytest.fixture(scope="module")
def grids(tmp_path_factory, tiny_bert_dir, toy_data, attack_cache):
    """The same grid run sequentially and in 2 local processes: {max_parallel: out_dir}."""
    root = tmp_path_factory.mktemp("grids")
    outs = {}
    for parallel in (1, 2):
        out = root / f"parallel{parallel}"
        config = grid_config(root / f"p{parallel}.toml", out, tiny_bert_dir, toy_data, attack_cache)
        assert main(["bench", str(config), "--no-progress", "--max-parallel", str(parallel)]) == 0
        outs[parallel] = out
    return outs


@pytest.fixture(scope="module")
def cluster():
    """One local 2-CPU Ray cluster for the module (start-up takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# --- the graph -------------------------------------------------------------------------------------------------
def test_the_graph_has_a_cell_per_training_shard_and_merge_with_their_dependencies(tmp_path, tiny_bert_dir,
                                                                                   toy_data, attack_cache):
    plan = load_plan(grid_config(tmp_path / "g.toml", tmp_path / "out", tiny_bert_dir, toy_data, attack_cache,
                                 defences=["vanilla", "asa+freelb"], static_sets=["dev.tsv"]))
    cells = {c.key: c for c in build_cells(plan, shards=2)}
    for label in ("vanilla", "asa+freelb"):
        train = f"train {label}"
        assert cells[train].deps == ()
        for recipe in RECIPES:
            shards = [f"attack {label}/{recipe} [{i}-of-2]" for i in range(2)]
            assert all(cells[s].deps == (train,) and cells[s].cost == N / 2 for s in shards)
            assert cells[f"merge {label}/{recipe}"].deps == tuple(shards)
        assert cells[f"evaluate {label}/dev"].deps == (train,)
    assert len(cells) == 2 * (1 + 2 * 3 + 1)
    assert step_cost("asa+freelb") == pytest.approx(2.075 + 2.874 - 1)
    ready = sorted((c for c in cells.values() if not c.deps), key=priority)
    assert [c.key for c in ready] == ["train asa+freelb", "train vanilla"]  # the longest training first


# --- local executor --------------------------------------------------------------------------------------------
def test_local_parallel_run_writes_the_rows_of_the_sequential_run(grids):
    sequential, parallel = grids[1], grids[2]
    assert all_rows(parallel) == all_rows(sequential)
    assert all(len(r) == N for r in all_rows(parallel).values())
    for label in DEFENCES:
        assert metrics(parallel, label) == metrics(sequential, label)
    report = json.loads((parallel / "report.json").read_text())
    assert report["missing"] == [] and report["failed"] == []


def test_progress_lines_count_cells_and_estimate_the_time_left(tmp_path, grids, tiny_bert_dir, toy_data,
                                                                attack_cache, capfd):
    out = tmp_path / "out"
    shutil.copytree(grids[1], out)
    for recipe in RECIPES:
        shutil.rmtree(out / "runs" / "fgm" / "attack" / recipe)
    config = grid_config(tmp_path / "g.toml", out, tiny_bert_dir, toy_data, attack_cache)
    assert main(["bench", str(config), "--no-progress", "--max-parallel", "2"]) == 0
    printed = capfd.readouterr().out
    assert "6 cells: 4 done, 2 to run on 2 local processes" in printed
    assert "[bench] train fgm: done, skipped" in printed
    finished = [line for line in printed.splitlines() if line.startswith(("[bench] 5/6 ", "[bench] 6/6 "))]
    assert len(finished) == 2 and "left" in finished[0] and finished[1].endswith("nothing left")
    assert all_rows(out) == all_rows(grids[1])


def test_the_time_left_counts_the_cells_of_a_kind_not_timed_yet_instead_of_guessing_their_length():
    from asa_plugin.bench.cells import GridCell
    from asa_plugin.bench.executors import Progress

    def train(cost: float) -> GridCell:
        return GridCell("train", run=None, cost=cost)

    attack = GridCell("attack", run=None, recipe="pwws", cost=300.0)
    progress = Progress([], done=0, parallel=2)
    assert progress.left([train(1.0), attack]) == "time left unknown (1 train cell, 1 attack cell not timed yet)"
    progress.add(train(1.0), 600.0)  # 600 s per unit of training cost; an attack's length is not known yet
    assert progress.left([train(2.0), train(1.0), attack, attack]) == (
        "about 15 min 00 s left + 2 attack cells not timed yet")  # (1,200 s + 600 s) over 2 processes
    progress.add(attack, 300.0)
    assert progress.left([attack, attack, attack]) == "about 7 min 30 s left"  # 3 x 300 s over 2 processes
    assert progress.left([]) == "nothing left"


# --- Ray ---------------------------------------------------------------------------------------------------------
def test_ray_with_two_shards_per_attack_writes_the_rows_of_the_local_run(cluster, tmp_path, grids, tiny_bert_dir,
                                                                         toy_data, attack_cache):
    out = tmp_path / "ray"
    plan = load_plan(grid_config(tmp_path / "g.toml", out, tiny_bert_dir, toy_data, attack_cache,
                                 executor="ray", shards=2))
    outcome = run_grid(plan)
    assert outcome["failed"] == [] and len(outcome["ran"]) == 2 * (1 + 2 * 3)
    assert all_rows(out) == all_rows(grids[2])
    for label in DEFENCES:
        assert metrics(out, label) == metrics(grids[2], label)
        for recipe in RECIPES:
            assert sorted(p.name for p in (out / "runs" / label / "attack" / recipe / "shards").iterdir()) == \
                ["0-of-2", "1-of-2"]


def trained_copy(src: Path, dst: Path, labels: list[str]) -> None:
    """The trained runs of ``src`` without their attacks, in a fresh bench directory."""
    for label in labels:
        shutil.copytree(src / "runs" / label, dst / "runs" / label, ignore=shutil.ignore_patterns("attack"))


def test_a_ray_worker_killed_mid_attack_is_retried_and_every_example_is_kept_once(
        cluster, tmp_path, grids, tiny_bert_dir, toy_data, attack_cache, monkeypatch):
    out = tmp_path / "out"
    trained_copy(grids[2], out, ["vanilla"])
    config = grid_config(tmp_path / "g.toml", out, tiny_bert_dir, toy_data, attack_cache, executor="ray",
                         defences=["vanilla"], recipes=["deepwordbug"], retries=0)
    results = out / "runs" / "vanilla" / "attack" / "deepwordbug" / "results.jsonl"
    monkeypatch.setenv(KILL_AFTER_ENV, "2")  # each attempt's worker is SIGKILLed after its 2nd new row
    outcome = run_grid(load_plan(config))  # no retries: the kill is visible
    assert outcome["failed"] == ["attack vanilla/deepwordbug"]
    assert [r["index"] for r in read_rows(results)] == [0, 1]
    # Exactly bench.retries retries: 1 retry is 2 attempts, each SIGKILLed after its one new row.
    monkeypatch.setenv(KILL_AFTER_ENV, "1")
    outcome = run_grid(load_plan(config, ["bench.retries=1"]))
    assert outcome["failed"] == ["attack vanilla/deepwordbug"]
    assert [r["index"] for r in read_rows(results)] == [0, 1, 2, 3]
    assert read_failures(out)["attack vanilla/deepwordbug"].startswith("Ray gave up after 1 retries: ")
    outcome = run_grid(load_plan(config, ["bench.retries=3"]))  # killed after the last row, then retried
    assert outcome["failed"] == [] and outcome["ran"] == ["attack vanilla/deepwordbug"]
    kept = read_rows(results)
    assert sorted(r["index"] for r in kept) == list(range(N))  # every example exactly once
    assert [without_timing(r) for r in kept] == rows(grids[2], "vanilla", "deepwordbug")
    assert not (out / "failures.json").exists()


class RecordingRay:
    """The part of the ``ray`` module RayPool uses, on a cluster that is already up: it records each task's
    options, and every task's worker dies (Ray has used up the retries it was given)."""

    def __init__(self):
        self.options: list[dict] = []

    def is_initialized(self):
        return True

    def cluster_resources(self):
        return {"CPU": 2}

    def remote(self, function):
        ray = self

        class Task:
            def options(self, **options):
                ray.options.append(options)
                return SimpleNamespace(remote=lambda cell: object())

        return Task()

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        from ray.exceptions import WorkerCrashedError

        raise WorkerCrashedError()


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_ray_gets_exactly_bench_retries_as_each_tasks_max_retries(monkeypatch, retries):
    """Ray reads max_retries = -1 as unlimited: an off-by-one at retries = 0 would retry a killed cell forever."""
    from asa_plugin.bench.cells import GridCell
    from asa_plugin.bench.ray_executor import RayPool

    fake = RecordingRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    pool = RayPool(retries=retries)
    pool.submit(GridCell("attack", run=SimpleNamespace(name="vanilla"), recipe="deepwordbug"))
    (options,) = fake.options
    assert options["max_retries"] == retries and options["retry_exceptions"] is False
    ((cell, line, error, _),) = pool.wait()
    assert cell.key == "attack vanilla/deepwordbug" and line is None
    assert error.startswith(f"Ray gave up after {retries} retries: ")


def test_a_cell_with_a_bad_recipe_asset_fails_alone_and_is_reported(cluster, tmp_path, grids, tiny_bert_dir,
                                                                     toy_data, attack_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # bae's masked LM is then a missing asset
    out = tmp_path / "out"
    trained_copy(grids[2], out, DEFENCES)
    config = grid_config(tmp_path / "g.toml", out, tiny_bert_dir, toy_data, attack_cache, executor="ray",
                         recipes=["deepwordbug", "bae"])
    outcome = run_grid(load_plan(config))  # as a cell finds it (the CLI's pre-flight would refuse earlier)
    assert sorted(outcome["failed"]) == ["attack fgm/bae", "attack vanilla/bae"]
    assert sorted(outcome["ran"]) == ["attack fgm/deepwordbug", "attack vanilla/deepwordbug"]
    report = write_report(out)
    assert [f["cell"] for f in report["failed"]] == ["attack fgm/bae", "attack vanilla/bae"]
    error = report["failed"][0]["error"]
    assert "bae" in error and "\n" not in error
    md = (out / "report.md").read_text()
    assert "## Failed cells" in md and f"- attack vanilla/bae: {error}" in md
    for label in DEFENCES:
        assert rows(out, label, "deepwordbug") == rows(grids[2], label, "deepwordbug")
    outcome = run_grid(load_plan(config))  # a rerun retries only what is not done
    assert outcome["ran"] == [] and sorted(outcome["failed"]) == ["attack fgm/bae", "attack vanilla/bae"]


# --- lending idle cores to training (bench.lend_idle_cores) -------------------------------------------------------
def test_idle_cores_go_to_the_training_cells_never_to_attacks(tmp_path, tiny_bert_dir, toy_data, attack_cache):
    from asa_plugin.bench.executors import lend_idle_cores

    plan = load_plan(grid_config(tmp_path / "g.toml", tmp_path / "out", tiny_bert_dir, toy_data, attack_cache))
    cells = {c.key: c for c in build_cells(plan)}
    train_v, train_f = cells["train vanilla"], cells["train fgm"]
    attack = cells["attack vanilla/pwws"]
    assert lend_idle_cores(2, [train_f]) == [2]  # alone on 2 cores: both
    assert lend_idle_cores(2, [train_f, attack]) == [1, 1]  # the core is taken back
    assert lend_idle_cores(2, [attack]) == [1]  # attacks keep one thread
    assert lend_idle_cores(8, [train_v, attack, train_f]) == [4, 1, 3]  # 5 idle cores, evenly, first first
    assert lend_idle_cores(1, [train_v, train_f]) == [1, 1]  # more cells than cores: one each


def test_a_training_cell_alone_trains_on_the_idle_cores_and_says_so(tmp_path, tiny_bert_dir, toy_data, attack_cache,
                                                                    monkeypatch):
    from asa_plugin.threads import THREAD_ENVS, cpu_count

    for name in THREAD_ENVS:  # a count set in the environment is the user's: it is never changed
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out"
    config = grid_config(tmp_path / "g.toml", out, tiny_bert_dir, toy_data, attack_cache, defences=["vanilla"],
                         recipes=["deepwordbug"])
    assert main(["bench", str(config), "--no-progress", "--max-parallel", "2", "--lend-idle-cores"]) == 0
    threads = json.loads((out / "runs" / "vanilla" / "metrics.json").read_text())["threads"]
    cores = cpu_count()
    assert threads["source"] == "default"
    assert threads.get("changes", []) == ([{"step": 0, "threads": cores}] if cores > 1 else [])
    assert len(rows(out, "vanilla", "deepwordbug")) == N


def test_lending_cores_is_refused_on_ray_in_one_line(tmp_path, tiny_bert_dir, toy_data, attack_cache, capsys):
    config = grid_config(tmp_path / "g.toml", tmp_path / "out", tiny_bert_dir, toy_data, attack_cache)
    assert main(["bench", str(config), "--executor", "ray", "--lend-idle-cores"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bench.lend_idle_cores applies to the local executor" in err[0]
    assert not (tmp_path / "out").exists()


def test_lending_where_it_cannot_apply_says_so():
    from asa_plugin.bench.executors import InlinePool, ProcessPool, lending_note

    assert "no effect with max_parallel = 1" in lending_note(InlinePool(), True)
    assert "no effect on GPUs" in lending_note(ProcessPool(2, gpus=2, lend_idle_cores=True), True)
    assert lending_note(ProcessPool(2, lend_idle_cores=True), True) is None  # CPU, 2 slots: it lends
    assert lending_note(InlinePool(), False) is None  # not asked for: nothing to say
