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
#  adversarial pass or None). Every value is explicit: none depends on a defence's defaults.
CASES = [
    ("fgm", {"epsilon": 0.5}, "l2", 0.5, 0.5),
    ("pgd", {"adv_steps": 3, "epsilon": 0.5, "step_size": 0.2}, "l2", 0.5, None),
    ("pgd", {"adv_steps": 2, "epsilon": 0.5, "step_size": 0.5}, "l2", 0.5, 0.5),  # 2nd step leaves the ball
    # Linf: 3 sign steps of 0.004 overshoot 0.01, so the clamp sets the largest entry to exactly epsilon.
    ("pgd", {"adv_steps": 3, "epsilon": 0.01, "step_size": 0.004, "norm": "linf"}, "linf", 0.01, 0.01),
    ("freelb", {"adv_steps": 3, "adv_lr": 0.1, "init_mag": 0.05, "max_norm": 0.15}, "l2", 0.15, None),
    ("freelb", {"adv_steps": 2, "adv_lr": 0.03, "init_mag": 0.05, "max_norm": 0.0}, "l2", 0.05 + 0.03, None),
    ("scal", {"epsilon": 0.3}, "l2", 0.3, 0.3),
    ("scal", {"epsilon": 0.3, "pooling": "mean"}, "l2", 0.3, 0.3),
    ("uscal", {"epsilon": 0.2}, "l2", 0.2, 0.2),
    ("uscal", {"epsilon": 0.3, "pooling": "mean", "alpha": 0.3}, "l2", 0.3, 0.3),
    ("freelb++", {"adv_steps": 4, "adv_lr": 0.03, "init_mag": 0.05, "max_norm": 0.0}, "l2", 0.05 + 3 * 0.03, None),
    # the clean pass, then the start (std 1e-3 at real tokens) and two ascent steps, each projected to 0.2
    ("creat", {"adv_steps": 3, "adv_lr": 0.15, "max_norm": 0.2, "init_std": 1e-3}, "l2", 0.2, 0.2),
    ("creat", {"adv_steps": 2, "adv_lr": 0.15, "max_norm": 0.2, "init_std": 1e-3, "representation": "tokens"},
     "l2", 0.2, None),  # one step of 0.15 from a start of norm ~0.015 stays inside the ball
    ("infobert", {"adv_steps": 3, "adv_lr": 0.04, "init_mag": 0.08}, "l2", 0.08 + 2 * 0.04, None),
    # the first pass: the sentence-level start (<= init_mag) plus the gathered token rows (unit norm over the
    # batch, so <= 1 per example); later passes are projected into max_norm
    ("tavat", {"adv_steps": 3, "adv_lr": 0.05, "init_mag": 0.2, "max_norm": 0.5}, "l2", 0.2 + 1.0, None),
]


def expected_passes(name: str, params: dict) -> int:
    """Forward passes per training step, as docs/baselines.md gives them."""
    k = params.get("adv_steps")
    return {"fgm": 2, "pgd": (k or 0) + 1, "freelb": k or 0, "freelb++": k or 0, "scal": 2, "uscal": 3,
            "creat": (k or 0) + 1, "infobert": k or 0, "tavat": k or 0}[name]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in params.items())}" for name, params, *_ in CASES]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, backbone_type):
    return tiny_model_dir(tmp_path_factory.mktemp(f"tiny-{backbone_type}"), backbone_type)


def make_defence(model_dir, name: str, params: dict, train_mode: bool = True) -> Defence:
    torch.manual_seed(0)
    adapter = load_adapter(str(model_dir), 2)
    adapter.model.train(train_mode)
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


def recorded_step(model_dir, name, params, train_mode: bool = True):
    """One composed step; returns (defence, batch, each forward's perturbation or None, forwards,
    objective passes, result)."""
    defence = make_defence(model_dir, name, params, train_mode)
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
    assert len(deltas) == forwards == expected_passes(name, params)
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
def test_training_step_leaves_weights_alone_and_fills_only_gradients(model_dir, name, params, norm, bound, exact):
    """The step only accumulates gradients: no weight, and no embedding row, is touched by the perturbation."""
    defence = make_defence(model_dir, name, params)
    model = defence.adapter.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    defence.training_step(fixed_batch(defence.adapter), lambda loss: loss.backward())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters()), "training_step modified weights"
    embedding = defence.adapter.input_embeddings().weight
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0


PROCEDURE_CASES = [  # (defence, params): the ascent's intermediate passes must not train the model
    ("pgd", {"adv_steps": 3, "epsilon": 0.5, "step_size": 0.2}),
    ("pgd", {"adv_steps": 1, "epsilon": 0.5, "step_size": 0.2}),
]


@pytest.mark.parametrize("name,params", PROCEDURE_CASES)
def test_pgd_trains_exactly_clean_plus_final_adversarial(model_dir, name, params):
    """PGD's gradient is that of CE(clean) + CE(final delta): intermediate ascent steps leak nothing."""
    # eval mode: no dropout, so the recompute below sees the same computation as the step
    defence, batch, deltas, _, _, _ = recorded_step(model_dir, name, params, train_mode=False)
    assert len(deltas) == params["adv_steps"] + 1
    got = {n: p.grad.clone() for n, p in defence.adapter.model.named_parameters() if p.grad is not None}
    defence.adapter.model.zero_grad()
    embed = defence.adapter.embed(batch["input_ids"])
    loss = sum(defence.cross_entropy_objective(batch, embed + d) for d in (deltas[0], deltas[-1]))
    loss.backward()
    for n, p in defence.adapter.model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got[n], p.grad, atol=1e-6), n


def test_freelb_averages_its_k_losses(model_dir):
    """FreeLB's step loss is the mean of the K passes' losses and its gradient their average."""
    params = {"adv_steps": 3, "adv_lr": 0.1, "init_mag": 0.05, "max_norm": 0.0}
    defence, batch, deltas, _, _, result = recorded_step(model_dir, "freelb", params, train_mode=False)
    got = {n: p.grad.clone() for n, p in defence.adapter.model.named_parameters() if p.grad is not None}
    defence.adapter.model.zero_grad()
    embed = defence.adapter.embed(batch["input_ids"])
    losses = [defence.cross_entropy_objective(batch, embed + d) for d in deltas]
    assert len(losses) == 3
    assert result.loss == pytest.approx(sum(v.item() for v in losses) / 3, rel=1e-5)
    (sum(losses) / 3).backward()
    for n, p in defence.adapter.model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got[n], p.grad, atol=1e-6), n


PROMPT = {"pooling": "prompt", "template": 'This film "[X]" was [MASK] .'}  # the tiny vocabulary's words


@pytest.mark.parametrize("name", ["scal", "uscal"])
def test_prompt_pooling_reads_the_mask_token(model_dir, name):
    _, _, deltas, forwards, objective_passes, result = recorded_step(model_dir, name, PROMPT)
    assert len(deltas) == forwards == 4  # task pass(es) on the plain batch, views on the wrapped one
    assert objective_passes == 4 - PLAIN_PASSES.get(name, 0)
    assert torch.isfinite(torch.tensor(result.loss))


@pytest.mark.parametrize("name", ["scal", "uscal"])
def test_prompt_pooling_rejects_a_tokenizer_without_a_mask_token(model_dir, name):
    adapter = load_adapter(str(model_dir), 2)
    adapter.tokenizer.mask_token = None  # as a GPT-style tokenizer has none
    assert adapter.tokenizer.mask_token_id is None
    cls = get_plugin_manager().defences.get(name)
    with pytest.raises(ConfigError, match="needs a tokenizer with a mask token"):
        cls(cls.Params(**PROMPT), adapter)


def test_freelb_trains_through_a_config(run_config):
    cfg = load_config(run_config(defence='name = "freelb"\nadv_steps = 2', train="max_steps = 4"))
    assert cfg.defence.params["freelb"].adv_steps == 2
    metrics = train(cfg)
    assert metrics["defence"] == "freelb"
    assert metrics["steps"] == 4
    assert metrics["eval_accuracy_per_epoch"] == [metrics["eval_accuracy"]]
    assert metrics["eval_accuracy"] * 32 == pytest.approx(round(metrics["eval_accuracy"] * 32))  # 32 dev rows
    resolved = load_config(cfg.run_dir() / "config.resolved.toml")  # every default written out, and read back
    assert resolved.defence.params["freelb"] == cfg.defence.params["freelb"]
    assert "adv_lr = " in (cfg.run_dir() / "config.resolved.toml").read_text()
    assert json.loads((cfg.run_dir() / "metrics.json").read_text())["steps"] == 4


def test_two_perturbation_defences_do_not_compose(run_config):
    with pytest.raises(ConfigError, match="cannot compose"):
        load_config(run_config(defence='name = ["fgm", "freelb"]'))
