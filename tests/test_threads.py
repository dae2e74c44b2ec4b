"""The thread policy and the worker plan: who decides the thread count, how many workers run."""

from __future__ import annotations

import pytest
import torch

from asa_plugin import threads as tp
from asa_plugin.config import load_config


@pytest.fixture
def clean_env(monkeypatch):
    for name in tp.THREAD_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tp, "torch_default_threads", lambda: {torch.get_num_threads()})
    monkeypatch.setattr(tp, "_applied", None, raising=False)  # no earlier command of this process set a count
    return monkeypatch


@pytest.mark.parametrize(("configured", "env", "default", "expected"), [
    (3, {"OMP_NUM_THREADS": "2"}, 1, tp.ThreadChoice(3, "config")),  # the config beats the environment
    (None, {"OMP_NUM_THREADS": "2"}, 1, tp.ThreadChoice(2, "OMP_NUM_THREADS")),
    (None, {"MKL_NUM_THREADS": "4"}, 1, tp.ThreadChoice(4, "MKL_NUM_THREADS")),
    (None, {"OMP_NUM_THREADS": "lots"}, 1, tp.ThreadChoice(1, "default")),  # not a count: ignored
    (None, {}, 1, tp.ThreadChoice(1, "default")),
    (None, {}, 2, tp.ThreadChoice(2, "default")),
])
def test_thread_precedence(clean_env, configured, env, default, expected):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert tp.resolve_threads(configured, default) == expected


def test_a_count_set_with_torch_is_respected(clean_env):
    clean_env.setattr(tp, "torch_default_threads", lambda: {torch.get_num_threads() + 5})
    assert tp.resolve_threads(None, 1) == tp.ThreadChoice(torch.get_num_threads(), "torch.set_num_threads")


def test_a_count_an_earlier_command_set_is_not_taken_for_the_users(clean_env):
    """Two commands in one process resolve alike: the first one's torch.set_num_threads is no user's choice."""
    before = torch.get_num_threads()
    clean_env.setattr(tp, "torch_default_threads", lambda: {3})  # torch's own count, as a fresh process has it
    try:
        torch.set_num_threads(3)
        assert tp.apply_threads(None, 1) == tp.ThreadChoice(1, "default") and torch.get_num_threads() == 1
        assert tp.apply_threads(None, 1) == tp.ThreadChoice(1, "default")  # not "torch.set_num_threads"
        torch.set_num_threads(2)  # the user's own count, set after that command, still wins
        assert tp.apply_threads(None, 1) == tp.ThreadChoice(2, "torch.set_num_threads")
    finally:
        torch.set_num_threads(before)


def test_apply_threads_sets_torch(clean_env):
    before = torch.get_num_threads()
    try:
        choice = tp.apply_threads(1, 4)
        assert (choice.threads, torch.get_num_threads()) == (1, 1)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("attack", "cpus", "todo", "in_process", "workers", "threads"), [
    ({}, 4, 100, False, 4, 1),  # one single-threaded worker per core
    ({"threads": 2}, 4, 100, False, 2, 2),  # cores / threads per worker
    ({"threads": 8}, 4, 100, False, 1, 8),
    ({"workers": 3}, 1, 100, False, 3, 1),  # explicit
    ({}, 4, 2, False, 2, 1),  # never more workers than examples left
    ({}, 4, 0, False, 1, 1),
    ({"workers": 3}, 4, 100, True, 1, 1),  # a preloaded model runs in this process
])
def test_worker_plan_on_cpu(clean_env, attack, cpus, todo, in_process, workers, threads):
    from asa_plugin.attacks import workers as pool

    clean_env.setattr(pool, "cpu_count", lambda: cpus)
    cfg = load_config(data={"attack": {"device": "cpu", **attack}}).attack
    execution = pool.plan(cfg, todo, in_process=in_process)
    assert (execution.workers, execution.threads.threads, execution.device) == (workers, threads, "cpu")
    assert execution.to_dict()["threads_per_worker"] == threads


@pytest.mark.parametrize(("attack", "note"), [
    ({"workers": 8}, "8 workers x 1 threads on 2 CPU cores: the workers share cores (no faster) and each holds a "
                     "model copy in memory; attack.workers = 2 uses every core once"),
    ({"workers": 2, "threads": 2}, "attack.workers = 1 uses every core once"),
    ({"workers": 2}, None),  # one per core: nothing to say
    ({}, None),  # the default never over-subscribes
])
def test_more_cpu_workers_than_cores_gets_a_note(clean_env, attack, note):
    from asa_plugin.attacks import workers as pool

    clean_env.setattr(pool, "cpu_count", lambda: 2)
    cfg = load_config(data={"attack": {"device": "cpu", **attack}}).attack
    said = pool.oversubscription(pool.plan(cfg, 100))
    assert said is None if note is None else note in said


def test_worker_plan_on_gpu_is_one_per_device(clean_env):
    from asa_plugin.attacks import workers as pool

    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    clean_env.setattr(torch.cuda, "device_count", lambda: 3)
    cfg = load_config(data={"attack": {}}).attack
    assert pool.plan(cfg, 100).workers == 3
    assert pool.plan(cfg, 100).device == "cuda"


# --- threads lent by the bench's local executor (bench.lend_idle_cores) -----------------------------------------
@pytest.fixture
def lent(monkeypatch):
    """A shared thread count installed as the executor's loan to this process; torch's count restored after."""
    import multiprocessing

    before = torch.get_num_threads()
    shared = multiprocessing.RawValue("i", 1)
    monkeypatch.setattr(tp, "_lent_threads", shared)
    monkeypatch.setattr(tp, "_applied", tp._applied)  # restored with torch's count
    yield shared
    torch.set_num_threads(before)


def test_a_default_count_follows_the_lent_threads_both_ways(lent):
    torch.set_num_threads(1)
    default = tp.ThreadChoice(1, "default")
    assert tp.follow_thread_budget(default) is None  # 1 lent, 1 running: nothing to do
    lent.value = 2
    assert tp.follow_thread_budget(default) == 2 and torch.get_num_threads() == 2
    assert tp.follow_thread_budget(default) is None
    lent.value = 1  # a new cell started: the core is taken back
    assert tp.follow_thread_budget(default) == 1 and torch.get_num_threads() == 1


@pytest.mark.parametrize("source", ["config", "OMP_NUM_THREADS", "torch.set_num_threads"])
def test_a_count_the_user_chose_is_never_changed_by_a_loan(lent, source):
    torch.set_num_threads(1)
    lent.value = 2
    assert tp.follow_thread_budget(tp.ThreadChoice(1, source)) is None
    assert torch.get_num_threads() == 1


def test_outside_a_lending_executor_nothing_follows():
    assert tp._lent_threads is None
    assert tp.follow_thread_budget(tp.ThreadChoice(1, "default")) is None


def test_training_records_when_its_thread_count_changed(lent, clean_env, run_config):
    from asa_plugin.training.loop import train

    torch.set_num_threads(1)
    lent.value = 2
    metrics = train(load_config(run_config(train="epochs = 1")))
    assert metrics["threads"] == {"threads": 1, "source": "default", "changes": [{"step": 0, "threads": 2}]}
    assert torch.get_num_threads() == 2


def test_training_without_a_loan_records_no_changes(clean_env, run_config):
    from asa_plugin.training.loop import train

    metrics = train(load_config(run_config(train="epochs = 1")))
    assert "changes" not in metrics["threads"]
