"""Nothing computed is lost to a second user or a stale record: one command at a time per output
directory (train, attack), refused with one line naming the holder (a bench locks each training run it works
on: tests/test_bench_clusters.py); a lock left by a dead
process is taken over; the lock goes when its command ends, by success, error or Ctrl-C."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
from attack_support import attack_args

from asa_plugin.cli import main
from asa_plugin.hookspecs import hookimpl
from asa_plugin.locks import LOCK_FILE

HOLD = """
import os, sys, time
from asa_plugin.locks import run_lock
with run_lock(sys.argv[1], "advrobust train other.toml"):
    print("held", flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), 9)
    time.sleep(300)
"""


def hold(directory: Path, then: str = "sleep") -> subprocess.Popen:
    """Another process holding ``directory``'s lock (``then="die"``: killed -9 while holding it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), then], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    if then == "die":
        assert proc.wait(timeout=60) == -9
    return proc


def last_line(capsys, argv: list, code: int = 2) -> str:
    assert main([str(a) for a in argv]) == code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("advrobust ", "Traceback"))]
    assert lines and not any(line.startswith("Traceback") for line in lines)
    return lines[-1]


@pytest.fixture
def commands(tmp_path, run_config, tiny_bert_dir, toy_data, attack_cache):
    """(argv, the directory it locks) of train, train --resume and attack --resume."""
    cfg = run_config(train="max_steps = 1")
    attack = attack_args(tmp_path / "run", toy_data["dev"], tmp_path / "run", attack_cache, "deepwordbug",
                         "--workers", "1", num_examples=2)
    return {"train": (["train", cfg], tmp_path / "run"),
            "train --resume": (["train", cfg, "--resume"], tmp_path / "run"),
            "attack --resume": ([*attack, "--resume"], tmp_path / "run" / "attack" / "deepwordbug")}


@pytest.mark.parametrize("command", ["train", "train --resume", "attack --resume"])
def test_a_second_user_of_a_directory_is_refused_naming_the_holder(capsys, tmp_path, commands, command):
    if command.startswith("attack"):
        assert main(["train", str(commands["train"][0][1])]) == 0  # a model to attack
    argv, locked = commands[command]
    holder = hold(locked)
    try:
        before = sorted(p.name for p in locked.rglob("*"))
        line = last_line(capsys, argv)
        assert line == (f"advrobust {command.split()[0]}: error: {locked} is in use by pid {holder.pid} on "
                        f"{socket.gethostname()} (advrobust train other.toml, since "
                        f"{json.loads((locked / LOCK_FILE).read_text())['since']}); wait for it to finish or "
                        f"stop it, or write elsewhere")
        assert sorted(p.name for p in locked.rglob("*")) == before  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert main([str(a) for a in argv]) == 0  # the holder gone, the same command runs
    assert not (locked / LOCK_FILE).exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, run_config):
    run = tmp_path / "run"
    hold(run, then="die")
    assert json.loads((run / LOCK_FILE).read_text())["command"] == "advrobust train other.toml"  # left behind
    assert main(["train", str(run_config(train="max_steps = 1"))]) == 0
    assert (run / "metrics.json").is_file() and not (run / LOCK_FILE).exists()


def test_a_pre_training_run_holds_its_lock_under_its_own_command(tmp_path, monkeypatch):
    """A second user of a pre-training run is told the holder is `advrobust pretrain`, not `train`."""
    import asa_plugin.training.loop as loop
    from asa_plugin.pretraining.task import MaskedLMTask

    seen = []

    def record(cfg, resume, pm, task, progress_bar):
        seen.append(json.loads((cfg.run_dir() / LOCK_FILE).read_text())["command"])
        return {}

    monkeypatch.setattr(loop, "_train", record)
    cfg = types.SimpleNamespace(run_dir=lambda: tmp_path / "pre", source="pre.toml")
    loop.train(cfg, task=MaskedLMTask())
    loop.train(cfg)
    assert seen == ["advrobust pretrain pre.toml", "advrobust train pre.toml"]


def test_the_lock_is_released_after_an_error_and_after_ctrl_c(capsys, tmp_path, run_config, monkeypatch):
    import asa_plugin.training.loop as loop
    from asa_plugin.locks import run_lock
    from asa_plugin.plugins import PluginManager

    run = tmp_path / "run"
    cfg = run_config(train="max_steps = 1")
    assert main(["train", str(cfg)]) == 0
    assert main(["train", str(cfg), "--resume", "--set", "train.lr=0.1"]) == 2  # an error inside the lock
    assert not (run / LOCK_FILE).exists()

    plugin = types.ModuleType("ctrl_c")
    plugin.advrobust_on_epoch_end = hookimpl(lambda run_dir, epoch, metrics: (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr(loop, "get_plugin_manager", lambda **kw: PluginManager(load_external=False,
                                                                               extra_plugins=[plugin]))
    assert main(["train", str(run_config(train="max_steps = 1")), "--set", f"output.run_dir='{tmp_path}/b'"]) == 130
    assert not (tmp_path / "b" / LOCK_FILE).exists()
    with run_lock(tmp_path / "b", "again"):  # free for the next user
        assert json.loads((tmp_path / "b" / LOCK_FILE).read_text())["pid"] == os.getpid()
