"""One tox matrix cell: every built-in defence on the backbone named by ADVROBUST_TEST_BACKBONE.

``tox -e py311-roberta`` runs these (``pytest -m backbone``) with ADVROBUST_TEST_BACKBONE=roberta;
a plain ``pytest`` runs them on bert. Defences are taken from the plugin manager, so every
defence any merged plugin registers is covered without editing this file.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from asa_plugin.adapters.loading import load_adapter
from asa_plugin.adapters.table import ARCHITECTURES
from transformers import AutoModelForSequenceClassification

from asa_plugin.config import TrainConfig, load_config
from asa_plugin.defences.base import build_defence
from asa_plugin.plugins import get_plugin_manager
from asa_plugin.schema import build
from asa_plugin.training.loop import _optimizer, train

DEFENCES = get_plugin_manager().defences.names()
TEXTS = ["the movie was good", "a great film , really wonderful", "bad film and awful plot",
         "the worst story , so boring", "i love this brilliant movie", "i hate the tedious acting",
         "excellent and charming", "horrible , dull mess"]
LABELS = [1, 1, 0, 0, 1, 0, 1, 0]
STEPS = 12
# Literature radii assume pretrained embeddings (token norms around 1); a tiny random model's
# embeddings are ~0.1 per token, so the default radii would drown the input in noise.
TINY_MODEL_PARAMS = {
    "fgm": {"epsilon": 0.05},
    "pgd": {"epsilon": 0.05, "step_size": 0.02},
    "freelb": {"adv_lr": 0.005, "init_mag": 0.01},
    "scal": {"epsilon": 0.05},
    "uscal": {"epsilon": 0.05},
}


@pytest.fixture(scope="module")
def backbone_dir(backbone_type, tiny_backbone_dir):
    if backbone_type not in ARCHITECTURES:
        pytest.fail(f"ADVROBUST_TEST_BACKBONE={backbone_type!r}; choose one of {', '.join(ARCHITECTURES)}")
    return tiny_backbone_dir(backbone_type)


def fixed_batch(adapter) -> dict[str, torch.Tensor]:
    batch = dict(adapter.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor(LABELS)
    return batch


def clean_loss(adapter, batch) -> float:
    adapter.model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(adapter.forward(batch).logits, batch["labels"]).item()
    adapter.model.train()
    return loss


def make_defence(name, adapter):
    registry = get_plugin_manager().defences
    params = build(registry.get(name).Params, TINY_MODEL_PARAMS.get(name, {}), section="defence", source="test")
    return build_defence([name], {name: params}, adapter, registry)


def train_steps(adapter, defence, batch, steps=STEPS) -> list[float]:
    """The loop's own optimizer groups, ``defence.training_step`` on one fixed batch."""
    optimizer = _optimizer(adapter.model, defence, build(TrainConfig, {"lr": 5e-3}, section="train",
                                                         source="test"))
    adapter.model.train()
    losses = []
    defence.attach()
    try:
        for _ in range(steps):
            losses.append(defence.training_step(batch, lambda loss: loss.backward()).loss)
            optimizer.step()
            optimizer.zero_grad()
    finally:
        defence.detach()
    return losses


@pytest.mark.parametrize("defence_name", DEFENCES)
def test_defence_trains_with_finite_falling_loss(defence_name, backbone_dir, backbone_type):
    torch.manual_seed(0)
    adapter = load_adapter(str(backbone_dir), num_labels=2)
    batch = fixed_batch(adapter)
    tree = [(n, type(m).__name__) for n, m in adapter.model.named_modules()]
    keys = list(adapter.model.state_dict())
    losses = train_steps(adapter, make_defence(defence_name, adapter), batch)
    assert all(math.isfinite(loss) for loss in losses), losses
    assert sum(losses[-3:]) < sum(losses[:3]), f"{defence_name} on {backbone_type}: loss did not fall: {losses}"
    # detach() left a plain model: the same modules and parameter names as before training.
    assert [(n, type(m).__name__) for n, m in adapter.model.named_modules()] == tree
    assert list(adapter.model.state_dict()) == keys


@pytest.mark.parametrize("defence_name", DEFENCES)
def test_exported_checkpoint_reloads_with_plain_transformers(defence_name, backbone_dir, tmp_path):
    torch.manual_seed(0)
    adapter = load_adapter(str(backbone_dir), num_labels=2)
    batch = fixed_batch(adapter)
    train_steps(adapter, make_defence(defence_name, adapter), batch, steps=2)
    adapter.model.eval()
    with torch.no_grad():
        expected = adapter.forward(batch).logits
    out = adapter.export(tmp_path / "model")
    assert (out / "model.safetensors").exists()
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    inputs = {k: v for k, v in batch.items() if k in ARCHITECTURES[reloaded.config.model_type].inputs}
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, expected, atol=1e-5)


def blocking_provider(length: int, biases: list):
    """Blocks key 1 in layer 0, zero elsewhere; keeps every bias to inspect its gradient."""

    def provider(index, hidden):
        bias = torch.zeros(hidden.shape[0], 1, length, length)  # (B, 1, L, L)
        if index == 0:
            bias[..., 1] = -1e4
        biases.append(bias.requires_grad_(True))
        return biases[-1]

    return provider


def test_bias_semantics_hold_for_each_attention_implementation(backbone_dir, backbone_type):
    for impl in ARCHITECTURES[backbone_type].attn_implementations:
        adapter = load_adapter(str(backbone_dir), num_labels=2, attn_implementation=impl)
        adapter.model.eval()
        batch = fixed_batch(adapter)
        biases: list[torch.Tensor] = []
        plain = adapter.forward(batch).logits
        with adapter.attention_bias(blocking_provider(batch["input_ids"].shape[1], biases)):
            biased = adapter.forward(batch).logits
        biased.sum().backward()
        assert (biased - plain).abs().max() > 1e-6, impl
        assert len(biases) == adapter.num_layers and all(b.grad.abs().sum() > 0 for b in biases), impl


def test_training_run_end_to_end(backbone_dir, backbone_type, run_config):
    cfg = load_config(run_config(backbone=backbone_dir, train="max_steps = 4"))
    metrics = train(cfg)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    model = AutoModelForSequenceClassification.from_pretrained(cfg.run_dir() / "model")
    assert model.config.model_type == backbone_type
