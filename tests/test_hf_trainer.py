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
import math
from pathlib import Path

import pytest
import torch
from asa_plugin.adapters.loading import load_adapter
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

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
    pytest.param({"name": "creat"}, 'name = "creat"', id="creat"),
    pytest.param({"name": "infobert", "adv_steps": 2}, 'name = "infobert"\nadv_steps = 2', id="infobert"),
    pytest.param({"name": "tavat"}, 'name = "tavat"', id="tavat"),
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


def plain_trainer(out: Path, backbone: Path, train_file: Path, defence, callbacks=(), plugin_manager=None,
                  trainer_kwargs: dict | None = None, **extra_args) -> DefenceTrainer:
    """A DefenceTrainer as a user's script builds one: Trainer's own sampler, scheduler and seeding;
    ``extra_args`` go to TrainingArguments, ``trainer_kwargs`` to the trainer. Seeded before the model
    loads, as transformers' own example scripts do: the adversaries' initial weights come next."""
    set_seed(7)
    adapter = load_adapter(str(backbone), 2)
    cfg = load_config(None, [f"data.train_file='{train_file}'", f"data.dev_file='{train_file}'"])
    data = load_training_data(cfg.data, 2, get_plugin_manager().datasets)
    train_set = EncodedDataset(data.train, adapter.tokenizer, 32)
    defaults = {"per_device_train_batch_size": 16, "num_train_epochs": 2, "save_strategy": "no", "logging_steps": 2}
    args = TrainingArguments(str(out), learning_rate=5e-3, seed=7, report_to=[], use_cpu=True, disable_tqdm=True,
                             **(defaults | extra_args))
    return DefenceTrainer(model=adapter.model, args=args, train_dataset=train_set, eval_dataset=train_set,
                          defence=defence,
                          data_collator=DataCollatorWithPadding(adapter.tokenizer), processing_class=adapter.tokenizer,
                          callbacks=list(callbacks), plugin_manager=plugin_manager, **(trainer_kwargs or {}))


RESUME_CASES = [
    pytest.param({"name": "asa", "tau": 0.1}, ["model.safetensors", "asa_adversary.safetensors"], id="asa"),
    pytest.param({"name": ["asa", "freelb"], "asa": {"tau": 0.5}, "freelb": {"adv_steps": 2}},
                 ["model.safetensors", "asa_adversary.safetensors"], id="asa+freelb"),
    # TAVAT's perturbation vocabulary is state: without it restored, the steps after 8 would differ
    pytest.param({"name": "tavat"}, ["model.safetensors"], id="tavat"),
]


@pytest.mark.parametrize("defence,weights", RESUME_CASES)
def test_resume_from_checkpoint_continues_exactly(tmp_path, tiny_bert_dir, toy_data, defence, weights):
    """Checkpoints every 4 steps; resuming the one at step 8 (mid-epoch 2, 6 steps an epoch) ends
    where the uninterrupted run ends: weights, adversaries, and the defence metrics logged after it
    (logging every 3 steps, so the checkpoint falls inside a logging window). Trainer's own ``loss``
    is left out: stock Trainer restarts its running loss at the checkpoint, so its first log after a
    resume averages only the steps since then."""
    every = {"save_strategy": "steps", "save_steps": 4, "logging_steps": 3}
    straight = plain_trainer(tmp_path / "straight", tiny_bert_dir, toy_data["train"], defence, **every)
    straight.train()
    straight.save_model(str(tmp_path / "straight-model"))
    checkpoint = tmp_path / "straight" / "checkpoint-8"
    assert (checkpoint / "defence_modules.safetensors").is_file() and (checkpoint / "defence_state.json").is_file()

    resumed = plain_trainer(tmp_path / "resumed", tiny_bert_dir, toy_data["train"], defence, **every)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    resumed.save_model(str(tmp_path / "resumed-model"))
    for name in weights:
        assert_same_weights(tmp_path / "straight-model" / name, tmp_path / "resumed-model" / name)

    def logged_after_8(trainer):
        keep = [{k: v for k, v in h.items() if "asa" in k or k == "adversarial_loss"} for h in trainer.state.log_history
                if h.get("step", 0) > 8 and "loss" in h]
        assert keep and all("adversarial_loss" in h or "asa_mask_ratio_per_layer/layer_0" in h for h in keep)
        return keep

    assert logged_after_8(resumed) == logged_after_8(straight)


def test_saved_model_loads_with_stock_transformers_without_adversary_weights(tmp_path, tiny_bert_dir, toy_data):
    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], "asa", num_train_epochs=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    model, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model", output_loading_info=True)
    assert not any(info.values())  # no missing, unexpected or mismatched keys
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert saved.keys() == load_file(str(tiny_bert_dir / "model.safetensors")).keys()
    assert (tmp_path / "model" / "asa_adversary.safetensors").is_file()  # beside the model, as advrobust train
    # The defence's hooks are gone after training: the trainer's model is the plain model.
    batch = {k: torch.tensor([[2, 10, 11, 3]]) for k in ("input_ids",)}
    torch.testing.assert_close(trainer.model.cpu().eval()(**batch).logits, model.eval()(**batch).logits)


class Recorder(TrainerCallback):
    """What a reporting callback (TensorBoard, W&B, MLflow) receives in ``on_log``."""

    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_defence_metrics_reach_the_log_history_and_callbacks(tmp_path, tiny_bert_dir, toy_data):
    recorder = Recorder()
    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], {"name": "asa", "tau": 0.5},
                            callbacks=[recorder], num_train_epochs=1, logging_steps=3)
    trainer.train()
    training_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in training_logs] == [3, 6]
    for entry in training_logs:
        ratios = [entry[f"asa_mask_ratio_per_layer/layer_{i}"] for i in range(2)]  # the tiny model's 2 layers
        assert all(0.0 <= r <= 1.0 for r in ratios)
        assert entry["asa_symmetric_kl"] >= 0.0 and entry["asa_kept_units"] > 0
        # The logged loss is the mean of the window's step losses, which for ASA are the model's loss.
        assert entry["loss"] == pytest.approx(entry["asa_model_loss"], abs=1e-4)
    assert [r for r in recorder.logs if "loss" in r] == [{k: v for k, v in h.items() if k != "step"}
                                                        for h in training_logs]


def test_a_third_party_defence_trains_by_name(install_plugin, tmp_path, tiny_bert_dir, toy_data):
    from test_third_party_plugin import PLUGIN_SOURCE

    install_plugin("advrobust_smooth", PLUGIN_SOURCE)
    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], {"name": "smooth", "smoothing": 0.2},
                            num_train_epochs=1)
    assert trainer.defence.name == "smooth" and trainer.defence.params.smoothing == 0.2
    trainer.train()
    assert trainer.state.global_step == 6


BAD_SPECS = [  # (defence=, what the one-line error says)
    ("nonesuch", "unknown defence 'nonesuch'; available:"),
    ({"name": "asa", "tau": -1}, "defence.tau"),
    ({"name": "asa", "tua": 0.3}, "tua"),
    (["asa", "vanilla"], "cannot compose"),
    (["asa", "freelb", "fgm"], "cannot compose"),
    (3, "defence must be a name, a list of names or a dict"),
]


@pytest.mark.parametrize("spec,message", BAD_SPECS)
def test_a_bad_defence_is_one_clear_error_before_training(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as caught:
        defence_config(spec, get_plugin_manager().defences)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("DefenceTrainer(defence=...)")


def test_specs_give_the_configs_a_defence_table_gives(run_config):
    table = load_config(run_config(defence='name = ["asa", "freelb"]\n[asa]\ntau = 0.3')).defence
    spec = defence_config({"name": ["asa", "freelb"], "asa": {"tau": 0.3}}, get_plugin_manager().defences)
    assert spec.names == table.names and spec.params == table.params


def test_two_processes_train_as_one_process_with_the_double_batch(tmp_path):
    """``accelerate launch`` on two CPU processes (gloo), batch 8 each, against one process with
    batch 16 (the same 16 examples a step: Accelerate deals process i the i-th batch of 8): both
    processes end with identical model and adversary weights, equal to the single process's.
    Dropout is off, so a step depends only on the weights and the data."""
    from test_distributed import WEIGHT_TOLERANCE, failure, launch
    from tiny import tiny_model_dir, write_sentiment_tsv

    model = tiny_model_dir(tmp_path / "tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    train_file = write_sentiment_tsv(tmp_path / "train.tsv", 96, seed=1)
    probe = str(Path(__file__).with_name("hf_ddp_probe.py"))
    for processes, batch in ((2, 8), (1, 16)):
        spec = {"model": str(model), "train_file": str(train_file), "defence": "asa",
                "batch_size": batch, "steps": 3, "out": str(tmp_path / f"p{processes}")}
        (tmp_path / f"p{processes}.json").write_text(json.dumps(spec))
        proc = launch(processes, probe, str(tmp_path / f"p{processes}.json"))
        assert proc.returncode == 0, failure(proc)
    rank0, rank1 = (load_file(str(tmp_path / "p2" / f"rank{r}.safetensors")) for r in (0, 1))
    assert any(k.startswith("defence.") for k in rank0)
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []
    single = load_file(str(tmp_path / "p1" / "rank0.safetensors"))
    for key in single:
        torch.testing.assert_close(rank0[key], single[key], atol=WEIGHT_TOLERANCE, rtol=0, msg=key)
    history = json.loads((tmp_path / "p2" / "log_history.json").read_text())
    assert all("asa_mask_ratio_per_layer/layer_0" in h for h in history if "loss" in h)


@pytest.mark.slow
def test_the_example_script_trains_minilm_on_local_sst2(tmp_path, sst2_data_root):
    """examples/hf_trainer.py at a tiny size: offline, a plain model with its card and the adversary beside it."""
    import subprocess
    import sys

    from huggingface_hub import ModelCard

    script = Path(__file__).parents[1] / "examples" / "hf_trainer.py"
    proc = subprocess.run([sys.executable, str(script), "--defence", '{"name": "asa", "tau": 0.3}', "--max-steps", "4",
                           "--max-train-examples", "64", "--max-eval-examples", "32", "--batch-size", "8",
                           "--data-dir", str(sst2_data_root), "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["defence"] == "asa" and 0.0 <= result["eval_accuracy"] <= 1.0
    model_dir = tmp_path / "out" / "model"
    _, info = AutoModelForSequenceClassification.from_pretrained(model_dir, output_loading_info=True)
    assert not any(info.values())
    assert (model_dir / "asa_adversary.safetensors").is_file()
    card = ModelCard.load(model_dir / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    (clean,) = [r.metric_value for r in card.data.eval_results if r.metric_name == "clean accuracy"]
    assert clean == result["eval_accuracy"]
    assert card.data.to_dict()["advrobust"]["defence_params"]["tau"] == 0.3


def test_bf16_from_training_arguments_autocasts_the_model_and_the_adversary(request, monkeypatch, tmp_path,
                                                                          tiny_bert_dir, toy_data):
    """``bf16=True`` on CPU: Trainer's autocast covers the defence's passes (the model's Linear layers compute
    in bfloat16; ASA's adversaries score in float32 under autocast, as in `advrobust train`: their tau term
    overflows half precision, docs/scale.md), the weights stay float32 and the losses are finite."""
    from accelerate.state import AcceleratorState

    # Process-wide: TrainingArguments(bf16=True) exports ACCELERATE_MIXED_PRECISION=bf16 and Accelerate keeps
    # one state per process; both are undone after the test (monkeypatch restores the environment).
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    request.addfinalizer(lambda: AcceleratorState._reset_state(reset_partial_state=True))
    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], "asa", num_train_epochs=1,
                            bf16=True)
    seen: dict[str, set[str]] = {"model": set(), "adversary": set()}
    for part, module in (("model", trainer.model), ("adversary", trainer.defence.trainable_modules()[0])):
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.register_forward_hook(lambda m, a, out, part=part: seen[part].add(str(out.dtype)))
    trainer.train()
    assert seen == {"model": {"torch.bfloat16"}, "adversary": {"torch.float32"}}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(v) for v in losses)


def test_load_best_model_at_end_brings_back_the_best_checkpoints_adversary(tmp_path, tiny_bert_dir, toy_data):
    evaluations = iter(range(100))

    def earliest_is_best(prediction):  # a metric that makes the first evaluated checkpoint the best
        return {"earliness": -next(evaluations)}

    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], {"name": "asa", "tau": 0.1},
                            trainer_kwargs={"compute_metrics": earliest_is_best}, eval_strategy="steps",
                            eval_steps=4, save_strategy="steps", save_steps=4, load_best_model_at_end=True,
                            metric_for_best_model="earliness", greater_is_better=True)
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.name == "checkpoint-4" and trainer.state.global_step == 12
    trainer.save_model(str(tmp_path / "model"))
    assert_same_weights(best / "model.safetensors", tmp_path / "model" / "model.safetensors")
    saved = load_file(str(best / "defence_modules.safetensors"))
    now = trainer._defence_state_tensors()
    assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)
