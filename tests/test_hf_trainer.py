"""``DefenceTrainer``: the defences of ``advrobust train`` inside a transformers ``Trainer``.

Equivalence with ``advrobust train`` is tested with what the two cannot share by construction made
equal (the rest is the same code): Trainer's own sampler is replaced by the loop's length-grouped
batches in the loop's per-epoch order, and the global RNG is set, before training, to the state
the loop has when its first step begins (Trainer's ``__init__`` re-seeds, the loop does not; the
state then drives dropout, FreeLB's random start and ASA's Gumbel noise alike). Scheduler: both use
``get_linear_schedule_with_warmup`` over the same step count; warmup is 0 here because Trainer
rounds the warmup steps up (``ceil``) where the loop rounds down (``int``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, TrainerCallback, \
    TrainingArguments, set_seed

from asa_plugin.adapters.loading import load_adapter
from asa_plugin.cli import main
from asa_plugin.config import load_config
from asa_plugin.data import load_training_data
from asa_plugin.defences.base import build_defence
from asa_plugin.errors import ConfigError
from asa_plugin.hf import DefenceTrainer, defence_config
from asa_plugin.plugins import get_plugin_manager
from asa_plugin.training.batching import EncodedDataset, make_loader

ATOL = 0.0
"""Weights after 12 steps agree exactly: the same float32 operations in the same order (CPU)."""

EQUIVALENCE_CASES = [  # (DefenceTrainer's defence=, the same as a [defence] TOML table)
    pytest.param("vanilla", 'name = "vanilla"', id="vanilla"),
    pytest.param({"name": "asa", "tau": 0.5}, 'name = "asa"\ntau = 0.5', id="asa"),
    pytest.param({"name": "fgm", "epsilon": 0.5}, 'name = "fgm"\nepsilon = 0.5', id="fgm"),
    pytest.param({"name": "freelb", "adv_steps": 2}, 'name = "freelb"\nadv_steps = 2', id="freelb"),
    pytest.param({"name": ["asa", "freelb"], "asa": {"tau": 0.5}, "freelb": {"adv_steps": 2}},
                 'name = ["asa", "freelb"]\n[asa]\ntau = 0.5\n[freelb]\nadv_steps = 2', id="asa+freelb"),
]


class LoopOrder(TrainerCallback):
    """Sets the loop's length-grouped batches to each epoch's order, as ``advrobust train`` does."""

    def __init__(self, batches):
        self.batches = batches

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.batches.start_epoch(round(state.epoch or 0))


class LoopDataTrainer(DefenceTrainer):
    """DefenceTrainer fed by the loop's own DataLoader (same batches, same order, same padding)."""

    def __init__(self, *args, loop_loader, **kwargs):
        super().__init__(*args, **kwargs)
        self.loop_loader = loop_loader

    def get_train_dataloader(self):
        return self.accelerator.prepare(self.loop_loader)


def trainer_like_the_loop(config: Path, out: Path, defence, grad_accum: int = 1, **extra_args) -> DefenceTrainer:
    """A DefenceTrainer set up as ``advrobust train`` sets ``config`` up, with the loop's RNG state."""
    cfg = load_config(config)
    tc, pm = cfg.train, get_plugin_manager()

    def start(seed: int):  # the loop's order: seed, data, model, defence
        set_seed(seed)
        data = load_training_data(cfg.data, 2, pm.datasets)
        return data, load_adapter(cfg.model.backbone, 2)

    data, adapter = start(tc.seed)
    build_defence(cfg.defence.names, cfg.defence.params, adapter, pm.defences)
    rng_at_first_step = torch.get_rng_state()
    data, adapter = start(tc.seed)
    train_set = EncodedDataset(data.train, adapter.tokenizer, cfg.model.max_length)
    loader, batches = make_loader(train_set, adapter.tokenizer, tc.batch_size, tc.seed, shuffle=True)
    args = TrainingArguments(str(out), per_device_train_batch_size=tc.batch_size, num_train_epochs=tc.epochs,
                             learning_rate=tc.lr, weight_decay=tc.weight_decay, warmup_ratio=tc.warmup_ratio,
                             max_grad_norm=tc.max_grad_norm, seed=tc.seed, optim="adamw_torch",
                             gradient_accumulation_steps=grad_accum, report_to=[], use_cpu=True,
                             disable_tqdm=True, logging_steps=2, **({"save_strategy": "no"} | extra_args))
    trainer = LoopDataTrainer(model=adapter.model, args=args, train_dataset=train_set, defence=defence,
                              data_collator=DataCollatorWithPadding(adapter.tokenizer),
                              processing_class=adapter.tokenizer, callbacks=[LoopOrder(batches)], loop_loader=loader)
    torch.set_rng_state(rng_at_first_step)
    return trainer


def assert_same_weights(a: Path, b: Path, atol: float = ATOL) -> None:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize("defence,table", EQUIVALENCE_CASES)
def test_same_weights_as_advrobust_train(tmp_path, run_config, defence, table):
    config = run_config(defence=table)  # 96 examples, batch 16, 2 epochs = 12 steps, lr 5e-3, seed 7
    assert main(["train", str(config)]) == 0
    trainer = trainer_like_the_loop(config, tmp_path / "hf", defence)
    trainer.train()
    assert trainer.state.global_step == 12
    trainer.save_model(str(tmp_path / "hf-model"))
    assert_same_weights(tmp_path / "run" / "model" / "model.safetensors", tmp_path / "hf-model" / "model.safetensors")
    if "asa" in trainer.defence.name:  # the adversary too, saved beside the model
        assert_same_weights(tmp_path / "run" / "asa_adversary.safetensors",
                            tmp_path / "hf-model" / "asa_adversary.safetensors")


def test_gradient_accumulation_matches_the_loop(tmp_path, run_config):
    """2 micro-batches of 8 per step: the defence's losses are scaled by 1/2 in both loops."""
    config = run_config(defence='name = "asa"\ntau = 0.5', train="batch_size = 8\ngradient_accumulation_steps = 2")
    assert main(["train", str(config)]) == 0
    trainer = trainer_like_the_loop(config, tmp_path / "hf", {"name": "asa", "tau": 0.5}, grad_accum=2)
    trainer.train()
    trainer.save_model(str(tmp_path / "hf-model"))
    assert trainer.state.global_step == 12
    assert_same_weights(tmp_path / "run" / "model" / "model.safetensors", tmp_path / "hf-model" / "model.safetensors")
    assert_same_weights(tmp_path / "run" / "asa_adversary.safetensors",
                        tmp_path / "hf-model" / "asa_adversary.safetensors")
