"""What one training step does, checked in a single process: the learning-rate schedule (warmup
then linear decay, logged per step as ``lr``), the thread count when nothing sets one, and that
gradient accumulation sums to the gradient of one big batch (the loss is divided once)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_model_dir

from asa_plugin.cli import main

LR = 5e-3


def linear_warmup_then_decay(step: int, warmup: int, total: int) -> float:
    """The rate optimizer step ``step`` (0-based) uses: transformers' linear schedule with warmup."""
    return LR * (step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup)))


@pytest.mark.parametrize("warmup_ratio, total", [(0.0, 4), (0.5, 4), (0.25, 8)])
def test_each_step_logs_the_rate_of_the_warmup_then_linear_decay_schedule(capsys, tmp_path, run_config,
                                                                          warmup_ratio, total):
    cfg = run_config(train=f"max_steps = {total}\nwarmup_ratio = {warmup_ratio}\nlog_every_steps = 1\n"
                           f"batch_size = 8\nlr = {LR}")
    assert main(["train", str(cfg)]) == 0
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["step_history"]
    warmup = int(warmup_ratio * total)
    expected = [linear_warmup_then_decay(step, max(warmup, 1), total) if warmup else
                LR * (total - step) / total for step in range(total)]
    assert [h["step"] for h in history] == list(range(1, total + 1))
    assert [h["lr"] for h in history] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    log = (tmp_path / "run" / "train.log").read_text()
    assert f'"lr": {history[-1]["lr"]}' in log  # train.log shows it too


@pytest.fixture
def torch_default_threads():
    """The process as a fresh one is: torch at its own default count, no OMP/MKL variable."""
    from asa_plugin.threads import cpu_count

    before = torch.get_num_threads()
    torch.set_num_threads(cpu_count())
    yield cpu_count()
    torch.set_num_threads(before)


def test_train_runs_on_one_thread_when_nothing_sets_threads(tmp_path, run_config, monkeypatch,
                                                            torch_default_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    seen = []
    monkeypatch.setattr("asa_plugin.training.loop.Accelerator.backward",
                        lambda self, loss, **kw: (seen.append(torch.get_num_threads()), loss.backward()))
    assert main(["train", str(run_config(train="max_steps = 2"))]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["threads"] == {"threads": 1, "source": "default"}
    assert seen and set(seen) == {1}  # the steps really ran on one thread


def first_step_gradients(monkeypatch, config, main_args) -> list[torch.Tensor]:
    """The model's gradients as the first optimizer step sees them (after every micro-batch)."""
    import asa_plugin.training.loop as loop

    grads: list[torch.Tensor] = []
    make_optimizer = loop._optimizer

    def recording(model, defence, cfg):
        optimizer = make_optimizer(model, defence, cfg)
        params = [p for group in optimizer.param_groups for p in group["params"]]

        def record(opt, args, kwargs):
            if not grads:
                grads.extend(p.grad.detach().clone() for p in params)

        optimizer.register_step_pre_hook(record)
        return optimizer

    monkeypatch.setattr(loop, "_optimizer", recording)
    assert main(main_args(config)) == 0
    return grads


@pytest.mark.parametrize("defence", ['name = "vanilla"', 'name = "fgm"'])
def test_two_accumulated_micro_batches_give_the_gradient_of_one_batch_twice_as_big(
        tmp_path, run_config, toy_data, monkeypatch, defence):
    model = tiny_model_dir(tmp_path / "tiny-no-dropout", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    common = "max_steps = 1\nmax_grad_norm = 0.0\ngroup_by_length = false\n"
    one = run_config(defence, common + "batch_size = 16", backbone=model)
    big = first_step_gradients(monkeypatch, one, lambda c: ["train", str(c), "--set", f"output.run_dir='{tmp_path}/a'"])
    two = run_config(defence, common + "batch_size = 8\ngradient_accumulation_steps = 2", backbone=model)
    accumulated = first_step_gradients(monkeypatch, two,
                                       lambda c: ["train", str(c), "--set", f"output.run_dir='{tmp_path}/b'"])
    assert len(big) == len(accumulated) > 0
    scale = max(g.abs().max().item() for g in big)
    assert scale > 0
    worst = max((a - b).abs().max().item() for a, b in zip(accumulated, big))
    assert worst < 1e-4 * scale  # not half of it (the loss divided twice), nor twice
