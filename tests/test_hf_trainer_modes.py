"""``DefenceTrainer`` under Trainer's modes: fp16 loss scaling, the adversaries' gradient mean, and the settings
it refuses in one line (what the defence's training steps would not honour) instead of ignoring them.

fp16 runs here as it runs on a GPU: Accelerate itself does not autocast fp16 on CPU (it would silently train in
float32, which DefenceTrainer refuses), so the fp16 tests give Trainer an Accelerator with the GPU's fp16 path
(``native_amp`` and a CPU ``GradScaler``), as tests/test_mixed_precision.py does for ``advrobust train``.
"""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from huggingface_hub import ModelCard
from test_hf_trainer import plain_trainer
from test_mixed_precision import FP16

import asa_plugin.hf as hf
from asa_plugin.defences import perturbation, scal, uscal
from asa_plugin.errors import UserError


@pytest.fixture
def accelerate_state(request, monkeypatch):
    """TrainingArguments export ACCELERATE_* variables and Accelerate keeps one state per process: both are
    undone after the test."""
    for name in ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_FSDP", "ACCELERATE_DYNAMO_BACKEND"):
        monkeypatch.setenv(name, "no" if name.endswith("PRECISION") else "false")
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND")
    request.addfinalizer(lambda: AcceleratorState._reset_state(reset_partial_state=True))


class GPUPathAccelerator(Accelerator):
    """Accelerate's fp16 path as on a GPU (forward under fp16 autocast, a ``GradScaler`` over backward,
    unscaling, clipping and step), on CPU; records the output dtypes of the model's first Linear layer."""

    dtypes: list[torch.dtype] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        assert self.mixed_precision == "fp16" and self.scaler is None  # what Accelerate does on CPU
        self.native_amp, self.scaler = True, torch.amp.GradScaler("cpu")

    def prepare_model(self, model, *args, **kwargs):
        prepared = super().prepare_model(model, *args, **kwargs)
        first = next(m for m in prepared.modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(lambda module, inputs, out: self.dtypes.append(out.dtype))
        return prepared


@pytest.fixture
def gpu_fp16(monkeypatch, accelerate_state):
    """Trainer's Accelerator takes the fp16 path it takes on a GPU."""
    import transformers.trainer

    monkeypatch.setattr(transformers.trainer, "Accelerator", GPUPathAccelerator)
    monkeypatch.setattr(GPUPathAccelerator, "dtypes", [])


# --- fp16 ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("defence", ["pgd", "scal", "uscal"])
def test_fp16_input_gradients_are_taken_at_the_trainers_loss_scale(gpu_fp16, monkeypatch, tmp_path, tiny_bert_dir,
                                                                   toy_data, defence):
    """PGD, SCAL and USCAL take the embedding gradient with autograd.grad, outside Accelerate's backward: under
    fp16 it must be loss-scaled by the trainer's GradScaler (else it underflows, docs/scale.md); the defence's
    own backward goes through the same scaler, and every forward of the model runs in float16."""
    used: list[object] = []
    real_input_grad = perturbation.input_grad

    def spy(loss, inputs, retain_graph=False):
        used.append(perturbation._scalers[-1] if perturbation._scalers else None)
        return real_input_grad(loss, inputs, retain_graph)

    monkeypatch.setattr(perturbation, "input_grad", spy)
    monkeypatch.setattr(scal, "input_grad", spy)
    monkeypatch.setattr(uscal, "input_grad", spy)
    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], defence, fp16=True, max_steps=2)
    scaler = trainer.accelerator.scaler
    scaled = []
    real_scale = scaler.scale
    monkeypatch.setattr(scaler, "scale", lambda outputs: scaled.append(1) or real_scale(outputs))
    trainer.train()
    assert used and all(s is scaler for s in used)
    assert scaled  # the defence's backward: accelerator.backward -> scaler.scale(loss).backward()
    assert FP16 in set(GPUPathAccelerator.dtypes)
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
    assert trainer.card_facts().training["mixed_precision"] == "fp16"


def test_fp16_on_cpu_is_refused_rather_than_trained_in_float32(accelerate_state, tmp_path, tiny_bert_dir, toy_data):
    with pytest.raises(ValueError, match="fp16=True on cpu would train in float32.*bf16=True") as caught:
        plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], "pgd", fp16=True)
    assert "\n" not in str(caught.value)


# --- several processes: the adversaries' gradients ------------------------------------------------------------
def test_adversary_gradients_are_averaged_before_trainer_unscales_and_clips(monkeypatch, tmp_path, tiny_bert_dir,
                                                                           toy_data):
    """Under several processes Trainer unscales (fp16) and clips the local gradients in ``clip_grad_norm_``;
    the adversaries' mean over the processes must come before it, on the step's last micro-batch only, so that
    every process sees the same gradients (and the same fp16 overflow, so all skip a step or none does)."""
    events: list[str] = []
    real_average = hf._average_across_processes
    monkeypatch.setattr(hf, "_average_across_processes",
                        lambda params, world: events.append(f"mean of {len(params)}") or real_average(params, world))
    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], "asa", max_steps=3,
                            gradient_accumulation_steps=2)
    real_clip = trainer.accelerator.clip_grad_norm_
    monkeypatch.setattr(trainer.accelerator, "clip_grad_norm_",
                        lambda *a, **kw: events.append("unscale and clip") or real_clip(*a, **kw))
    trainer.train()
    adversary = f"mean of {len(trainer.defence_parameters())}"
    assert events == [adversary, "unscale and clip"] * 3


# --- settings the defence would not honour: one line each -----------------------------------------------------
class OwnLoss(hf.DefenceTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch) * 2


REFUSED = [  # (TrainingArguments, trainer kwargs, what the one line says)
    pytest.param({"label_smoothing_factor": 0.1}, {}, "label_smoothing_factor=0.1 would be ignored", id="smoothing"),
    pytest.param({}, {"model_card": {"dataset": ["sst2"]}}, "unknown key 'dataset'; valid keys: datasets,",
                 id="card-key"),
    pytest.param({}, {"model_card": {"task": "qa"}}, "task 'qa' is not one of", id="card-task"),
    pytest.param({"fsdp": "full_shard"}, {}, "FSDP .* is not supported; supported: one process, or several with DDP",
                 id="fsdp"),
    pytest.param({"torch_compile": True}, {}, "defence asa adds its attention bias through forward hooks.*"
                 r"torch_compile=False", id="compiled-asa"),
]


@pytest.mark.parametrize("args,kwargs,message", REFUSED)
def test_a_setting_the_defence_would_ignore_is_refused_in_one_line(accelerate_state, tmp_path, tiny_bert_dir,
                                                                   toy_data, args, kwargs, message):
    with pytest.raises((ValueError, UserError), match=message) as caught:
        plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], "asa", trainer_kwargs=kwargs, **args)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("DefenceTrainer")


def test_a_compute_loss_override_is_refused_in_one_line(accelerate_state, monkeypatch, tmp_path, tiny_bert_dir,
                                                        toy_data):
    import test_hf_trainer

    monkeypatch.setattr(test_hf_trainer, "DefenceTrainer", OwnLoss)
    with pytest.raises(ValueError, match=r"OwnLoss.compute_loss would be ignored in training.*defence plugin"):
        plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], "fgm")


def test_apex_is_refused_in_one_line(accelerate_state, tmp_path, tiny_bert_dir, toy_data):
    """Trainer's apex backend (``use_apex``; apex cannot even be configured without it installed, as here):
    its loss scaling is not the one the defence's backward goes through."""
    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], "pgd")
    trainer.use_apex = True  # what Trainer sets for fp16=True, half_precision_backend="apex"
    with pytest.raises(ValueError, match="half_precision_backend='apex' is not supported .*'auto'") as caught:
        trainer._refuse_what_would_be_ignored()
    assert "\n" not in str(caught.value)


class DeepSpeedAccelerator(Accelerator):
    """What ``accelerate launch --use_deepspeed`` gives (DeepSpeed itself is not installed here)."""

    @property
    def distributed_type(self):
        return DistributedType.DEEPSPEED


def test_deepspeed_from_accelerate_launch_is_refused_in_one_line(accelerate_state, monkeypatch, tmp_path,
                                                                 tiny_bert_dir, toy_data):
    import transformers.trainer

    monkeypatch.setattr(transformers.trainer, "Accelerator", DeepSpeedAccelerator)
    with pytest.raises(UserError, match="DefenceTrainer: DeepSpeed .*FGM/PGD/FreeLB back-propagate several times"):
        plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], "freelb")


def test_pgd_trains_compiled_with_the_same_weights(accelerate_state, tmp_path, tiny_bert_dir, toy_data):
    """``torch_compile=True`` (backend ``eager``: dynamo's graph capture without a C++ compiler): the defence's
    passes go through the compiled model and train the weights eager training gives."""
    weights = {}
    for compiled in (False, True):
        trainer = plain_trainer(tmp_path / f"out{compiled}", tiny_bert_dir, toy_data["train"], "pgd", max_steps=2,
                                torch_compile=compiled, torch_compile_backend="eager" if compiled else None)
        trainer.train()
        assert hasattr(trainer.model_wrapped, "_orig_mod") == compiled
        weights[compiled] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert all(torch.equal(weights[False][k], weights[True][k]) for k in weights[False])


# --- push_to_hub ------------------------------------------------------------------------------------------------
def test_push_to_hub_uploads_the_robustness_card(accelerate_state, monkeypatch, tmp_path, tiny_bert_dir, toy_data):
    """Trainer's ``push_to_hub`` writes its own generic card just before uploading; DefenceTrainer's is the
    robustness card, with the metadata passed to push_to_hub (license, tags), and a user's README text kept."""
    import transformers.trainer

    uploaded: dict[str, str] = {}

    def upload_folder(repo_id, folder_path, **kwargs):
        uploaded["card"] = (tmp_path / "out" / "README.md").read_text()
        return "https://huggingface.co/me/model"

    trainer = plain_trainer(tmp_path / "out", tiny_bert_dir, toy_data["train"], {"name": "asa", "tau": 0.3},
                            max_steps=2)
    trainer.train()
    (tmp_path / "out" / "README.md").write_text("# My model\n\nWhat I wrote by hand.\n")
    monkeypatch.setattr(transformers.trainer, "upload_folder", upload_folder)
    monkeypatch.setattr(trainer, "init_hf_repo", lambda token=None: setattr(trainer, "hub_model_id", "me/model"))
    trainer.push_to_hub(license="mit", tags=["sentiment"])
    card = ModelCard(uploaded["card"])
    assert card.data.to_dict()["advrobust"]["defence_params"]["tau"] == 0.3
    assert card.data.license == "mit" and {"sentiment", "defence-asa"} <= set(card.data.tags)
    assert "What I wrote by hand." in card.content
