"""Clusters for real: per-run bench locks, a killed cell under every executor, executors as plugins,
SLURM through submitit (its local executor: the same code path with processes instead of sbatch),
and the one-line refusals of executor keys that would do nothing.

Tiny BERT, toy data, 3 dev examples, one recipe: each grid takes seconds per cell.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import tomli_w
from asa_plugin.attacks.results import read_rows, without_timing
from asa_plugin.attacks.runner import KILL_AFTER_ENV
from attack_support import nltk_data_dir

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
EXECUTORS = [  # (flags, [bench] keys, flags of the rerun, its kill): Ray: test_bench_clusters_ray.py
    (["--max-parallel", "2"], {}, [], None),  # a rerun resumes the attack after its kept row
    # the rerun's job is killed again after 2 more rows (all 3 are then kept) and resubmitted once; it ends
    (["--executor", "slurm"], {**SLURM_LOCAL, "retries": 0}, ["--set", "bench.retries=1"], "2"),
]


@pytest.mark.parametrize(("flags", "keys", "rerun", "kill_again"), EXECUTORS, ids=["local", "slurm"])
def test_a_cell_killed_by_sigkill_is_a_failed_line_and_failures_json_not_a_dead_bench(
        tmp_path, tiny_bert_dir, toy_data, attack_cache, monkeypatch, capfd, flags, keys, rerun, kill_again):
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
    if kill_again:
        monkeypatch.setenv(KILL_AFTER_ENV, kill_again)
    else:
        monkeypatch.delenv(KILL_AFTER_ENV)
    assert main(["bench", str(cfg), "--no-progress", *flags, *rerun]) == 0  # resumes after the kept rows
    printed = capfd.readouterr().out
    assert "[bench] train vanilla: done, skipped" in printed  # a rerun skips the finished cells
    assert not (tmp_path / "out" / "failures.json").exists()
    assert sorted(r["index"] for r in rows(tmp_path / "out", "vanilla")) == list(range(N))  # each example once


# --- several benches on one out_dir ----------------------------------------------------------------------------
def bench_process(cfg: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "asa_plugin.cli", "bench", str(cfg), "--no-progress",
                             "--max-parallel", "1", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_two_benches_with_disjoint_defences_on_one_out_dir_both_finish_and_the_report_has_every_cell(
        tmp_path, tiny_bert_dir, toy_data, attack_cache):
    cfg = config(tmp_path, tiny_bert_dir, toy_data, attack_cache, defences=("vanilla", "fgm"))
    out = tmp_path / "out"
    first = bench_process(cfg, "--only-defences", "vanilla")
    deadline = time.monotonic() + 300
    while not (out / "bench.json").exists():  # the first bench holds its locks and works
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
        time.sleep(0.2)
    second = bench_process(cfg, "--only-defences", "fgm")
    logs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], logs
    assert report(out)["missing"] == [] and report(out)["failed"] == []
    assert sorted(os.listdir(out / LOCKS_DIR)) == ["report.lock", "shared.lock"]  # the run locks are gone


HOLD = """
import sys, time
from asa_plugin.locks import run_locks
with run_locks(sys.argv[1], ["vanilla"], "advrobust bench other.toml --only-defences vanilla"):
    print("held", flush=True)
    time.sleep(300)
"""


def test_an_overlapping_bench_is_refused_naming_the_holder_before_any_work(tmp_path, tiny_bert_dir, toy_data,
                                                                           attack_cache, capsys):
    cfg = config(tmp_path, tiny_bert_dir, toy_data, attack_cache, defences=("vanilla", "fgm"))
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        since = json.loads((out / LOCKS_DIR / "vanilla.lock").read_text())["since"]
        assert main(["bench", str(cfg), "--only-defences", "fgm,vanilla"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"advrobust bench: error: run 'vanilla' of bench {out} is in use by pid {holder.pid} on "
                       f"{socket.gethostname()} (advrobust bench other.toml --only-defences vanilla, since {since}); "
                       f"wait for it to finish or stop it, or run other defences or seeds (--only-defences, "
                       f"--only-seeds)"]
        assert sorted(os.listdir(out)) == [LOCKS_DIR] and not (out / LOCKS_DIR / "fgm.lock").exists()
    finally:
        holder.kill()
        holder.wait()


NO_FLOCK = [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS]


@pytest.mark.parametrize("code", NO_FLOCK, ids=[errno.errorcode[c] for c in NO_FLOCK])
def test_a_file_system_without_flock_is_one_line_naming_the_directory_and_the_fix(tmp_path, monkeypatch, code,
                                                                                  run_config, capsys):
    import fcntl

    def no_flock(fd, how):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    assert main(["train", str(run_config(train="max_steps = 1"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"advrobust train: error: {tmp_path / 'run'}: this file system does not support file locks "
                   f"({os.strerror(code)}); write to a file system that does (a local disk, NFS with lockd), or set "
                   f"ADVROBUST_NO_LOCKS=1 to run without locks"]
    monkeypatch.setenv("ADVROBUST_NO_LOCKS", "1")  # the fix the line names
    from asa_plugin.locks import run_lock, run_locks, shared_lock

    with run_lock(tmp_path / "a", "x"), run_locks(tmp_path / "b", ["r"], "x"), shared_lock(tmp_path / "b"):
        pass


# --- executors as plugins ----------------------------------------------------------------------------------------
def test_the_builtin_executors_register_through_the_hook_and_an_unknown_one_lists_them(tmp_path, tiny_bert_dir,
                                                                                      toy_data, attack_cache, capsys):
    from asa_plugin.plugins import PluginManager

    listing = PluginManager(load_external=False).listing()["executors"]
    assert listing == {name: {"plugin": "builtin_executors"} for name in ("local", "ray", "slurm")}
    cfg = config(tmp_path, tiny_bert_dir, toy_data, attack_cache)
    assert main(["bench", str(cfg), "--executor", "slrum"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"advrobust bench: error: {cfg}: bench.executor: unknown executor 'slrum'; registered: local, "
                   f"ray, slurm (advrobust plugins lists them)"]


def touch_plugin(elsewhere: set[str]):
    """A third-party executor in one class: it 'runs' a cell by writing its output, except for the cells in
    ``elsewhere`` (run on a node that does not share the out_dir)."""
    from asa_plugin.bench.executors import Executor
    from asa_plugin.hookspecs import hookimpl

    class TouchExecutor(Executor):
        capacity = 2

        def __init__(self):
            self.cells = []

        @classmethod
        def from_bench(cls, bench, settings, progress, log):
            return cls()

        def submit(self, cell):
            self.cells.append(cell)

        def running(self):
            return len(self.cells)

        def wait(self):
            cell = self.cells.pop(0)
            if cell.key not in elsewhere:  # a node without the shared disk writes to its own
                cell.output().parent.mkdir(parents=True, exist_ok=True)
                cell.output().write_text("{}")
            return [(cell, "touched", None, 0.0)]

    plugin = types.ModuleType("touch_plugin")
    plugin.advrobust_register_executors = hookimpl(lambda register: register("touch", TouchExecutor))
    return plugin


def test_a_plugin_executor_runs_the_graph_and_a_cell_whose_output_is_not_here_fails_naming_the_shared_disk(
        tmp_path, tiny_bert_dir, toy_data, attack_cache):
    from asa_plugin.bench.cells import build_cells
    from asa_plugin.bench.executors import make_executor, run_cells
    from asa_plugin.bench.plan import load_plan
    from asa_plugin.plugins import PluginManager

    pm = PluginManager(load_external=False, extra_plugins=[touch_plugin({"train fgm"})])
    plan = load_plan(config(tmp_path, tiny_bert_dir, toy_data, attack_cache, defences=("vanilla", "fgm")),
                     values={"executor": "touch"}, pm=pm)
    lines = []
    outcome = run_cells(build_cells(plan), make_executor(plan.bench, pm), plan.out_dir, lines.append)
    assert outcome == {"ran": ["train vanilla", "attack vanilla/deepwordbug"], "failed": ["train fgm"],
                       "blocked": ["attack fgm/deepwordbug"]}
    failed = json.loads((plan.out_dir / "failures.json").read_text())["train fgm"]
    assert failed == (f"it finished, but its output {plan.out_dir / 'runs' / 'fgm' / 'metrics.json'} does not exist "
                      f"on this machine: the node that ran it does not share the bench's out_dir; put "
                      f"bench.out_dir on storage every node mounts at the same path")


def test_a_plugin_registering_something_that_is_not_an_executor_is_refused_naming_it():
    from asa_plugin.errors import PluginError
    from asa_plugin.hookspecs import hookimpl
    from asa_plugin.plugins import PluginManager

    plugin = types.ModuleType("bad_executor")
    plugin.advrobust_register_executors = hookimpl(lambda register: register("k8s", object))
    with pytest.raises(PluginError, match="registered executor 'k8s' as .* which is not a subclass of "
                                          "asa_plugin.bench.executors.Executor"):
        PluginManager(load_external=False, extra_plugins=[plugin])


# --- executor keys: typed, and never silently ignored --------------------------------------------------------------
REFUSED = [  # (argv after the config, the one line's text after "CONFIG: ", or after "--set '...': " for a --set)
    (["--ray-address", "127.0.0.1:6379"], "[bench] bench.ray_address (--ray-address) applies to the ray executor, "
                                          "but bench.executor is 'local': add --executor ray, or remove it"),
    (["--executor", "slurm", "--set", "bench.ray_num_cpus=2"],
     "bench.ray_num_cpus applies to the ray executor, but bench.executor is 'slurm': add --executor ray, "
     "or remove it"),
    (["--executor", "ray", "--max-parallel", "2"],
     "[bench] bench.max_parallel (--max-parallel) applies to the local executor; the CPUs of the local Ray cluster "
     "are bench.ray_num_cpus (--set bench.ray_num_cpus=N)"),
    (["--executor", "slurm", "--lend-idle-cores"],
     "[bench] bench.lend_idle_cores applies to the local executor; slurm gives each cell the CPUs it requests: "
     "remove it, or use --executor local"),
    (["--set", "bench.slurm.cpus_per_cell='four'"], "bench.slurm.cpus_per_cell must be int, got 'four'"),
    (["--set", "bench.slurm.gpus=1"], "unknown key bench.slurm.gpus; allowed keys in [bench.slurm]: additional, "
                                      "cluster, cpus_per_cell, folder, gpus_per_cell, max_parallel, mem_gb, "
                                      "partition, poll_s, setup, time_min"),
]


@pytest.mark.parametrize(("argv", "line"), REFUSED, ids=[r[1][:40] for r in REFUSED])
def test_a_key_of_another_executor_or_a_mistyped_one_is_one_line_before_any_work(tmp_path, tiny_bert_dir, toy_data,
                                                                                 attack_cache, capsys, argv, line):
    cfg = config(tmp_path, tiny_bert_dir, toy_data, attack_cache)
    assert main(["bench", str(cfg), *argv]) == 2
    blamed = f"--set {argv[-1]!r}" if "--set" in argv else str(cfg)  # a key a --set gave is blamed on it
    assert capsys.readouterr().err.strip().splitlines() == [f"advrobust bench: error: {blamed}: {line}"]
    assert not (tmp_path / "out").exists()


def test_slurm_without_sbatch_is_one_line_naming_the_local_cluster(tmp_path, tiny_bert_dir, toy_data, attack_cache,
                                                                   capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    cfg = config(tmp_path, tiny_bert_dir, toy_data, attack_cache)
    assert main(["bench", str(cfg), "--executor", "slurm"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "advrobust bench: error: bench.executor = 'slurm': no SLURM here (sbatch is not on PATH); run the bench on "
        "a SLURM login node, or set bench.slurm.cluster = \"local\" to run the jobs as local processes")
    assert not (tmp_path / "out" / "runs").exists()


def test_max_parallel_beyond_the_cores_is_said_and_clamped(monkeypatch):
    import asa_plugin.bench.executors as executors

    monkeypatch.setattr(executors, "cpu_slots", lambda: 2)
    monkeypatch.setattr(executors, "gpu_count", lambda: 0)
    lines = []
    bench = types.SimpleNamespace(max_parallel=100000, lend_idle_cores=False)
    pool = executors.make_local(bench, log=lines.append)
    assert pool.describe() == "2 local processes"
    assert lines == ["bench.max_parallel = 100000 is more than this machine's 2 CPU cores: 2 cells at a time"]
    lines.clear()
    assert executors.make_local(types.SimpleNamespace(max_parallel=2, lend_idle_cores=False),
                                log=lines.append).capacity == 2 and lines == []


def test_a_stopped_bench_lets_its_cell_processes_unwind_instead_of_dying_by_sigterm(tmp_path, tiny_bert_dir, toy_data,
                                                                                  attack_cache):
    """A bench stopped by SIGTERM or Ctrl-C stops its cells with SIGTERM; each unwinds as after Ctrl-C (exit 1), so
    its multiprocessing semaphores are released: no "leaked semaphore" warning after the bench."""
    from asa_plugin.bench.cells import build_cells
    from asa_plugin.bench.executors import ProcessPool
    from asa_plugin.bench.plan import load_plan

    plan = load_plan(config(tmp_path, tiny_bert_dir, toy_data, attack_cache), ["train.max_steps=100000"])
    (train,) = [c for c in build_cells(plan) if c.kind == "train"]
    pool = ProcessPool(2)
    pool.submit(train)
    (_, proc, *_), = pool.procs.values()
    deadline = time.monotonic() + 300
    while not (train.run.run_dir / "train.log").exists():  # training has started
        assert proc.is_alive() and time.monotonic() < deadline
        time.sleep(0.2)
    pool.close()
    assert proc.exitcode == 1  # unwound (killed by SIGTERM: -15)
