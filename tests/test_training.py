"""`advrobust train`: run directory, metrics, export, resume after kill -9, divergence."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asa_plugin.cli import main

KILL_AT_STEP = str(Path(__file__).with_name("kill_at_step.py"))


def train_killed_at(step: int, config: Path, *args: str) -> subprocess.CompletedProcess:
    """``advrobust train`` in a child process that SIGKILLs itself right after optimizer step ``step``
    (tests/kill_at_step.py: a step callback of the loop)."""
    return subprocess.run([sys.executable, KILL_AT_STEP, str(step), "train", str(config), *args],
                          capture_output=True, text=True)


def train_here(config: Path, *args: str) -> int:
    """``advrobust train`` in this process (fast: no interpreter start, no re-import of torch)."""
    return main(["train", str(config), *args])


def test_run_directory_holds_a_plain_hf_model_config_and_metrics(tmp_path, run_config, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's thread setting: respected and recorded
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert train_here(run_config()) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("defence", "backbone", "eval_accuracy", "eval_accuracy_per_epoch", "train_seconds",
                "train_examples_per_second", "steps"):
        assert key in metrics
    assert metrics["steps"] == 12 and len(metrics["eval_accuracy_per_epoch"]) == 2
    assert metrics["threads"] == {"threads": 1, "source": "OMP_NUM_THREADS"}  # the user's setting, recorded
    assert (run / "config.resolved.toml").is_file() and (run / "train.log").is_file()
    assert not (run / "checkpoint").exists()
    resolved = (run / "config.resolved.toml").read_text()
    assert "warmup_ratio" in resolved and "gradient_accumulation_steps" in resolved  # defaults filled in

    # The export loads with plain transformers in a fresh interpreter and has no extra weights.
    code = ("import sys; from transformers import AutoModelForSequenceClassification as A; "
            f"m = A.from_pretrained({str(run / 'model')!r}); "
            "print(sum(p.numel() for p in m.parameters())); print('asa_plugin' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "vocab.txt").is_file()


def test_no_progress_hides_the_bar_and_train_log_keeps_the_steps(tmp_path, run_config, capfd):
    config = run_config(train="log_every_steps = 6")
    assert train_here(config) == 0
    assert "train vanilla: 100%|" in capfd.readouterr().err
    assert train_here(config, "--no-progress", "--set", f"output.run_dir={str(tmp_path / 'quiet')!r}") == 0
    assert "%|" not in capfd.readouterr().err
    assert "step 12:" in (tmp_path / "quiet" / "train.log").read_text()


def test_learns_the_toy_task(tmp_path, run_config):
    assert train_here(run_config(train="epochs = 10\nlr = 3e-3\nwarmup_ratio = 0.1")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_accuracy"] >= 0.75


RESUME_CASES = [  # (defence table, files of the run that must be bit-identical after resume)
    pytest.param('name = "vanilla"', ["model/model.safetensors"], id="vanilla"),
    pytest.param('name = "asa"\ntau = 0.5', ["model/model.safetensors", "asa_adversary.safetensors"], id="asa"),
    # Each case costs a child interpreter (~10 s on 2 cores): the next two run with the slow tests.
    pytest.param('name = "fgm"\nepsilon = 0.5', ["model/model.safetensors"], id="fgm", marks=pytest.mark.slow),
    pytest.param('name = ["asa", "freelb"]\n[asa]\ntau = 0.5\n[freelb]\nadv_steps = 2',
                 ["model/model.safetensors", "asa_adversary.safetensors"], id="asa+freelb", marks=pytest.mark.slow),
    # TAVAT's perturbation vocabulary (a (V, E) table) and InfoBERT's critic are checkpointed state
    pytest.param('name = "tavat"', ["model/model.safetensors"], id="tavat"),
    pytest.param('name = "infobert"', ["model/model.safetensors"], id="infobert", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("defence,weights", RESUME_CASES)
def test_resume_after_kill_minus_9_matches_an_uninterrupted_run(tmp_path, run_config, capsys, defence, weights):
    config = run_config(defence=defence, train="checkpoint_every_steps = 2")
    assert train_here(config, "--set", f"output.run_dir='{tmp_path / 'straight'}'") == 0

    killed_dir = tmp_path / "killed"
    killed = train_killed_at(9, config, "--set", f"output.run_dir='{killed_dir}'")
    assert killed.returncode == -signal.SIGKILL  # step 9 of 12: in the second epoch, after a mid-epoch checkpoint
    assert not (killed_dir / "metrics.json").exists() and (killed_dir / "checkpoint").is_dir()

    assert train_here(config, "--set", f"output.run_dir='{killed_dir}'") == 2
    assert "--resume" in capsys.readouterr().err  # nothing is overwritten by accident

    assert train_here(config, "--set", f"output.run_dir='{killed_dir}'", "--resume") == 0
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((killed_dir / "metrics.json").read_text())
    timing = {"train_seconds", "train_cpu_seconds", "train_examples_per_second"}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert len(a["history"]) == 2
    for name in weights:
        wa, wb = load_file(tmp_path / "straight" / name), load_file(killed_dir / name)
        assert wa.keys() == wb.keys(), name
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name


OLD_CHECKPOINT = {  # trainer_state.json of a checkpoint written before step_history, CPU seconds and threads
    "epoch": 1, "batches_done": 2, "global_step": 8, "history": [{"epoch": 1, "eval_accuracy": 0.5}],
    "train_seconds": 3.5, "examples_seen": 128, "num_processes": 1, "data_sha256": "ab12", "defence_state": {"n": 3},
    "a_key_of_another_version": 1,
}


def test_the_train_state_reads_a_checkpoint_written_before_its_newer_fields():
    from asa_plugin.training.state import TrainState

    state = TrainState.from_checkpoint(OLD_CHECKPOINT)
    assert (state.epoch, state.batches_done, state.global_step, state.examples_seen) == (1, 2, 8, 128)
    assert state.defence_state == {"n": 3} and state.history == OLD_CHECKPOINT["history"]
    assert state.step_history == [] and state.thread_changes == []
    assert state.train_cpu_seconds is None  # not counted before: unknown, not 0
    assert TrainState.from_checkpoint(state.to_dict()) == state  # what a checkpoint saves, it restores
    assert TrainState().train_cpu_seconds == 0.0  # a fresh run counts from 0


def test_step_callbacks_see_every_optimizer_step_after_its_checkpoint(tmp_path, run_config):
    """The loop's one extension point per step (the kill -9 tests use it through tests/kill_at_step.py)."""
    from asa_plugin.training.callbacks import step_callback

    seen = []

    def record(end):
        seen.append((end.step, end.epoch, end.process_index, (end.run_dir / "checkpoint").is_dir()))

    with step_callback(record):
        assert train_here(run_config(train="checkpoint_every_steps = 4")) == 0
    # 12 steps, 6 per epoch; a step's checkpoint (steps 4 and 8; each epoch's end) is written before it is told
    assert [s[:3] for s in seen] == [(step, (step - 1) // 6, 0) for step in range(1, 13)]
    assert [step for step, _, _, saved in seen if saved] == list(range(4, 13))


def test_a_failed_write_of_metrics_json_leaves_no_finished_mark_and_resume_finishes(tmp_path, run_config,
                                                                                   monkeypatch):
    """metrics.json marks a run finished (the bench skips such a cell): a disk that fills while it is written
    must not leave a torn one behind (asa_plugin.fileio writes it through a temporary file)."""
    import errno

    real = Path.write_text

    def disk_full(self, data, *args, **kwargs):
        if self.name.startswith("metrics.json"):
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, *args, **kwargs)

    config = run_config()
    with monkeypatch.context() as patched:
        patched.setattr(Path, "write_text", disk_full)
        assert train_here(config) != 0
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists() and (run / "checkpoint").is_dir()
    assert train_here(config, "--resume") == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 12


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, run_config, capsys):
    # lr = 1e30 makes the weights explode after the first steps, so the loss becomes NaN/inf.
    assert train_here(run_config(train="lr = 1e30\nmax_grad_norm = 0.0\ncheckpoint_every_steps = 1")) == 3
    error = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error) == 1 and "loss became" in error[0]
    assert (tmp_path / "run" / "checkpoint" / "trainer_state.json").is_file()
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())
    assert state["global_step"] >= 1


def test_gradient_accumulation_counts_optimizer_steps(tmp_path, run_config):
    assert train_here(run_config(train="gradient_accumulation_steps = 2\nepochs = 1")) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 3


def test_max_steps_overrides_epochs(tmp_path, run_config):
    assert train_here(run_config(train="max_steps = 4")) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["epochs"] == 1


@pytest.mark.parametrize("group_by_length", [True, False])
def test_batches_cover_every_example_once_per_epoch(group_by_length):
    from asa_plugin.training.batching import LengthGroupedBatches

    lengths = [5, 9, 3, 7, 7, 2, 11, 4, 6, 8]
    sampler = LengthGroupedBatches(lengths, batch_size=3, seed=1, group_by_length=group_by_length, mega=2)
    first = sampler.batches()
    assert sorted(i for b in first for i in b) == list(range(10))
    sampler.start_epoch(1)
    assert sampler.batches() != first  # reshuffled each epoch
    sampler.start_epoch(0)
    assert sampler.batches() == first  # deterministic from seed + epoch
