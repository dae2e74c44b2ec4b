"""Behaviour of the baseline defences on a tiny model of the backbone under test (tox factor).

Every case runs the defence's own ``training_step`` with a plain optimizer on a fixed, padded
batch. A recording objective (composed the way ASA composes) sees every pass's input
embeddings, so the perturbation each pass used is ``inputs_embeds - embed(input_ids)``.
"""

from __future__ import annotations

import json

import pytest
import torch
from asa_plugin.adapters.loading import load_adapter
from tiny import tiny_model_dir

from asa_plugin.config import load_config
from asa_plugin.defences.base import ComposedDefence, Defence
from asa_plugin.defences.perturbation import per_example_norm
from asa_plugin.errors import ConfigError
from asa_plugin.plugins import get_plugin_manager
from asa_plugin.training.loop import train

SENTENCES = ["the movie is good", "bad awful film and it was boring really", "great",
             "the plot was dull", "i love this wonderful story", "worst acting ever and not fun"]
LABELS = [1, 0, 1, 0, 1, 0]

# (defence, params, norm of the per-example bound, bound on every perturbed pass, exact norm of the
#  adversarial pass or None)
CASES = [
    ("fgm", {"epsilon": 0.5}, "l2", 0.5, 0.5),
    ("pgd", {"adv_steps": 3, "epsilon": 0.5, "step_size": 0.2}, "l2", 0.5, None),
    ("pgd", {"adv_steps": 2, "epsilon": 0.01, "step_size": 0.004, "norm": "linf"}, "linf", 0.01, None),
    ("freelb", {"adv_steps": 3, "adv_lr": 0.1, "init_mag": 0.05, "max_norm": 0.15}, "l2", 0.15, None),
    ("freelb", {"adv_steps": 2}, "l2", 0.05 + 0.03, None),  # defaults: unbounded, init_mag + 1 step
    ("scal", {"epsilon": 0.3}, "l2", 0.3, 0.3),
    ("scal", {"pooling": "mean"}, "l2", 0.1, 0.1),  # default epsilon
    ("uscal", {"epsilon": 0.2}, "l2", 0.2, 0.2),
    ("uscal", {"pooling": "mean", "alpha": 0.3}, "l2", 0.1, 0.1),  # default epsilon
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in params.items())}" for name, params, *_ in CASES]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, backbone_type):
    return tiny_model_dir(tmp_path_factory.mktemp(f"tiny-{backbone_type}"), backbone_type)


def make_defence(model_dir, name: str, params: dict) -> Defence:
    torch.manual_seed(0)
    adapter = load_adapter(str(model_dir), 2)
    adapter.model.train()
    cls = get_plugin_manager().defences.get(name)
    return cls(cls.Params(**params), adapter)


def fixed_batch(adapter) -> dict[str, torch.Tensor]:
    batch = dict(adapter.tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor(LABELS)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    return batch


class RecordingObjective(Defence):
    """An objective defence that counts its passes, then computes cross-entropy."""

    name = "recorder"
    role = "objective"

    def __init__(self, adapter):
        super().__init__(None, adapter)
        self.passes = 0
        self.objective = self.record

    def record(self, batch, inputs_embeds=None):
        self.passes += 1
        return self.cross_entropy_objective(batch, inputs_embeds)


PLAIN_PASSES = {"uscal": 2}
"""Forward passes that only read a representation, so they skip the (composed) objective:
uscal's second dropout view and its adversarial view."""


def recorded_step(model_dir, name, params):
    """One composed step; returns (defence, batch, each forward's perturbation or None, forwards,
    objective passes, result)."""
    defence = make_defence(model_dir, name, params)
    recorder = RecordingObjective(defence.adapter)
    composed = ComposedDefence(recorder, defence)
    batch = fixed_batch(defence.adapter)
    adapter, deltas, forwards = defence.adapter, [], []
    plain_forward = adapter.forward

    def recording_forward(view, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            deltas.append(None)
        else:
            deltas.append((inputs_embeds - adapter.embed(view["input_ids"])).detach())  # (B, L, E)
        return plain_forward(view, inputs_embeds=inputs_embeds, **kwargs)

    adapter.forward = recording_forward
    handle = adapter.model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        result = composed.training_step(batch, lambda loss: loss.backward())
    finally:
        handle.remove()
        del adapter.forward
    return defence, batch, deltas, len(forwards), recorder.passes, result


@pytest.mark.parametrize("name,params,norm,bound,exact", CASES, ids=IDS)
def test_loss_is_finite_and_falls_on_a_fixed_batch(model_dir, name, params, norm, bound, exact):
    defence = make_defence(model_dir, name, params)
    batch = fixed_batch(defence.adapter)
    optimizer = torch.optim.AdamW(defence.adapter.model.parameters(), lr=5e-3)
    losses = []
    for _ in range(12):
        result = defence.training_step(batch, lambda loss: loss.backward())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(result.loss)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3]), losses


@pytest.mark.parametrize("name,params,norm,bound,exact", CASES, ids=IDS)
def test_every_loss_pass_goes_through_the_composed_objective(model_dir, name, params, norm, bound, exact):
    _, _, deltas, forwards, objective_passes, result = recorded_step(model_dir, name, params)
    assert len(deltas) == forwards >= 2
    assert objective_passes == forwards - PLAIN_PASSES.get(name, 0) >= 1
    assert torch.isfinite(torch.tensor(result.loss))


@pytest.mark.parametrize("name,params,norm,bound,exact", CASES, ids=IDS)
def test_perturbations_are_bounded_and_leave_padding_alone(model_dir, name, params, norm, bound, exact):
    _, batch, deltas, _, _, _ = recorded_step(model_dir, name, params)
    padding = batch["attention_mask"] == 0  # (B, L)
    perturbed = [d for d in deltas if d is not None]
    norms = torch.stack([per_example_norm(d, norm) for d in perturbed])  # (passes, B)
    assert norms.max() > 0, "no pass was perturbed"
    assert (norms <= bound * (1 + 1e-4)).all(), norms
    for delta in perturbed:
        assert (delta[padding] == 0).all()
    if exact is not None:  # the single adversarial step has exactly norm epsilon per example
        assert torch.allclose(norms.max(dim=0).values, torch.full_like(norms[0], exact), rtol=1e-4)


@pytest.mark.parametrize("name,params,norm,bound,exact", CASES, ids=IDS)
def test_weights_change_only_by_the_optimizer_update(model_dir, name, params, norm, bound, exact):
    defence = make_defence(model_dir, name, params)
    model = defence.adapter.model
    lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    defence.training_step(fixed_batch(defence.adapter), lambda loss: loss.backward())
    after_step = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(torch.equal(before[n], after_step[n]) for n in before), "training_step modified weights"
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    embedding = defence.adapter.input_embeddings().weight
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
    optimizer.step()
    for n, p in model.named_parameters():
        expected = before[n].add(grads[n], alpha=-lr) if n in grads else before[n]
        assert torch.equal(p.detach(), expected), n


@pytest.mark.parametrize("name", ["scal", "uscal"])
def test_prompt_pooling_reads_mask_or_rejects_a_tokenizer_without_one(model_dir, name):
    template = 'This film "[X]" was [MASK] .'  # the tiny vocabulary's words
    params = {"pooling": "prompt", "template": template}
    if load_adapter(str(model_dir), 2).tokenizer.mask_token_id is None:
        with pytest.raises(ConfigError, match="mask token"):
            make_defence(model_dir, name, params)
        return
    _, _, deltas, forwards, objective_passes, result = recorded_step(model_dir, name, params)
    assert len(deltas) == forwards == 4  # task pass(es) on the plain batch, views on the wrapped one
    assert objective_passes == 4 - PLAIN_PASSES.get(name, 0)
    assert torch.isfinite(torch.tensor(result.loss))


def test_freelb_trains_through_a_config(run_config):
    cfg = load_config(run_config(defence='name = "freelb"\nadv_steps = 2', train="max_steps = 4"))
    assert cfg.defence.params["freelb"].adv_steps == 2
    metrics = train(cfg)
    assert metrics["defence"] == "freelb"
    assert metrics["steps"] == 4
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    resolved = (cfg.run_dir() / "config.resolved.toml").read_text()
    assert "adv_steps = 2" in resolved and "adv_lr = 0.03" in resolved
    assert json.loads((cfg.run_dir() / "metrics.json").read_text())["steps"] == 4


def test_two_perturbation_defences_do_not_compose(run_config):
    with pytest.raises(ConfigError, match="cannot compose"):
        load_config(run_config(defence='name = ["fgm", "freelb"]'))
