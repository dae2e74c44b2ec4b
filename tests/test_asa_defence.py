"""The ``asa`` defence on a tiny BERT: masks, gradient directions, tau, composition, reversibility."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from asa_plugin.adapters.loading import load_adapter

from asa_plugin.defences.asa import ASADefence, ASAParams
from asa_plugin.defences.asa import functional as asa_f
from asa_plugin.defences.base import Defence, StepResult, build_defence
from asa_plugin.errors import ConfigError
from asa_plugin.plugins import Registry, get_plugin_manager
from asa_plugin.schema import option

TEXTS = ["the movie was good and really fun", "bad boring plot", "i love it", "a very awful film"]


@pytest.fixture
def adapter(tiny_bert_dir):
    torch.manual_seed(0)
    return load_adapter(str(tiny_bert_dir), num_labels=2)


def make_batch(adapter, texts=TEXTS, labels=(1, 0, 1, 0)):
    batch = dict(adapter.tokenizer(list(texts), padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor(labels)
    return batch


def hooks_left(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_one_binary_mask_per_adversarial_layer_with_padding_masked(adapter):
    defence = ASADefence(ASAParams(), adapter)
    batch = make_batch(adapter)
    B, L = batch["input_ids"].shape
    assert (batch["attention_mask"] == 0).any()  # the batch has padding
    with defence.adversarial_attention(batch) as masks:
        adapter.forward(batch)
    assert len(masks) == adapter.num_layers
    real = asa_f.pair_mask(batch["attention_mask"])
    for mask in masks:
        assert mask.shape == (B, L, L)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert (mask[~real] == 0).all()


def test_padding_stays_masked_even_when_the_adversary_would_keep_everything(adapter):
    defence = ASADefence(ASAParams(), adapter)
    for layer in defence.adversary.per_layer.values():  # scores hugely positive everywhere
        torch.nn.init.zeros_(layer.query.weight), torch.nn.init.zeros_(layer.key.weight)
        torch.nn.init.constant_(layer.query.bias, 30.0), torch.nn.init.constant_(layer.key.bias, 30.0)
    batch = make_batch(adapter)
    real = asa_f.pair_mask(batch["attention_mask"])
    with defence.adversarial_attention(batch) as masks:
        adapter.forward(batch)
    for mask in masks:
        assert torch.equal(mask.bool(), real)


def test_only_configured_layers_carry_an_adversary(adapter):
    defence = ASADefence(ASAParams(layers=[1], projection_size=8), adapter)
    batch = make_batch(adapter)
    with defence.adversarial_attention(batch) as masks:
        adapter.forward(batch)
    assert len(masks) == 1
    assert defence.adversary.layers == [1]
    assert defence.adversary.per_layer["1"].query.out_features == 8
    ratios = defence.epoch_metrics()["asa_mask_ratio_per_layer"]
    assert ratios[0] is None and 0 < ratios[1] < 1


def test_a_layer_beyond_the_model_is_a_config_error(adapter):
    with pytest.raises(ConfigError, match="layer 5 does not exist; the backbone has 2 layers"):
        ASADefence(ASAParams(layers=[0, 5]), adapter)


def train_mode_logits(adapter, batch, seed: int = 5) -> torch.Tensor:
    """Logits in train mode (dropout on) under a fixed seed: equal seeds give equal dropout masks."""
    adapter.model.train()
    torch.manual_seed(seed)
    logits = adapter.forward(batch).logits
    adapter.model.eval()
    return logits


def test_masks_change_the_logits_only_inside_the_context(adapter):
    adapter.model.eval()
    batch = make_batch(adapter)
    train_before = train_mode_logits(adapter, batch)  # no defence exists yet
    defence = ASADefence(ASAParams(), adapter)
    plain = adapter.forward(batch).logits
    with defence.adversarial_attention(batch):
        masked = adapter.forward(batch).logits
    after = adapter.forward(batch).logits
    train_after = train_mode_logits(adapter, batch)  # module.training never switches the adversary on
    assert not torch.allclose(plain, masked, atol=1e-4)
    assert torch.equal(plain, after)
    assert hooks_left(adapter.model) == 0
    assert torch.equal(train_after, train_before)
    assert not torch.equal(train_after, plain)  # dropout really was on: the comparison is not eval vs eval


def test_adversary_gradient_is_the_reverse_of_the_objective_gradient(adapter, monkeypatch):
    """Through the reversal the adversary ascends what the model descends."""
    adapter.model.eval()  # no dropout: both passes see the same computation
    defence = ASADefence(ASAParams(tau=0.1, adversarial_ce=True), adapter)
    batch = make_batch(adapter)

    def grads():
        adapter.model.zero_grad(), defence.adversary.zero_grad()
        defence.objective(batch, None).backward()
        adv = torch.cat([p.grad.flatten() for p in defence.adversary.parameters()])
        model = torch.cat([p.grad.flatten() for p in adapter.model.parameters() if p.grad is not None])
        return adv, model

    adv_reversed, model_reversed = grads()
    monkeypatch.setattr(asa_f, "grad_reverse", lambda x, scale=1.0: x)
    adv_plain, model_plain = grads()
    assert adv_plain.abs().max() > 0
    assert torch.allclose(adv_reversed, -adv_plain, atol=1e-6)
    assert torch.allclose(model_reversed, model_plain, atol=1e-6)  # the model is not reversed


@pytest.mark.parametrize("params, weight", [
    (ASAParams(tau=0.3), 0.5),  # default: the average of the two KL directions (official code)
    (ASAParams(tau=0.3, divergence_weight=1.0), 1.0),  # their sum
])
def test_objective_is_ce_plus_weighted_symmetric_kl_and_tau_squared_kept_units_in_the_gradient(adapter, params, weight,
                                                                                                  monkeypatch):
    adapter.model.eval()
    defence = ASADefence(params, adapter)
    batch = make_batch(adapter)
    clean = adapter.forward(batch).logits
    with defence.adversarial_attention(batch) as masks:
        adv = adapter.forward(batch).logits
    kept = sum(m.sum() for m in masks) / batch["labels"].shape[0]
    divergence = asa_f.symmetric_kl(clean, adv)
    expected = F.cross_entropy(clean, batch["labels"]) + weight * divergence  # the value: the model's loss
    assert kept > 0
    assert defence.objective(batch, None).item() == pytest.approx(expected.item(), rel=1e-5)
    # The tiny model's divergence is small, so pin it to see the weight: loss moves by weight x 2.
    monkeypatch.setattr(asa_f, "symmetric_kl", lambda p, q: torch.tensor(2.0))
    pinned = F.cross_entropy(clean, batch["labels"]) + weight * 2.0
    assert defence.objective(batch, None).item() == pytest.approx(pinned.item(), rel=1e-5)


def objective_gradients(adapter, params: ASAParams) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """(model gradients by name, adversary gradients) of one objective pass; adversaries seeded alike."""
    torch.manual_seed(0)
    defence = ASADefence(params, adapter)
    adapter.model.zero_grad()
    defence.objective(make_batch(adapter), None).backward()
    model = {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None}
    return model, [p.grad.clone() for p in defence.adversary.parameters()]


def test_the_tau_term_moves_the_adversaries_and_never_the_model(adapter):
    adapter.model.eval()  # no dropout: both passes see the same computation
    model_0, adversary_0 = objective_gradients(adapter, ASAParams(tau=0.0))
    model_2, adversary_2 = objective_gradients(adapter, ASAParams(tau=2.0))
    assert model_0.keys() == model_2.keys() and model_0
    for name in model_0:
        assert torch.allclose(model_0[name], model_2[name], atol=1e-6), name
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(adversary_0, adversary_2))


def test_the_adversary_gradient_of_the_tau_term_is_tau_squared_times_that_of_the_kept_units(adapter, monkeypatch):
    """The tau term's value is left out of the loss; its gradient is exactly d(tau^2 * kept)/d(adversary)."""
    adapter.model.eval()
    _, plain = objective_gradients(adapter, ASAParams(tau=0.0))
    _, taxed = objective_gradients(adapter, ASAParams(tau=2.0))
    torch.manual_seed(0)
    defence = ASADefence(ASAParams(tau=0.0), adapter)
    batch = make_batch(adapter)
    with defence.adversarial_attention(batch) as masks:
        adapter.forward(batch)
    kept = torch.stack([asa_f.kept_units(m) for m in masks]).sum(0).mean()
    kept.backward()  # through the gradient reversal, as in the objective
    for a, b, k in zip(plain, taxed, defence.adversary.parameters()):
        assert torch.allclose(b - a, 4.0 * k.grad, atol=1e-5)


def test_adversarial_ce_adds_the_cross_entropy_of_the_masked_logits(adapter):
    adapter.model.eval()
    batch = make_batch(adapter)
    torch.manual_seed(0)
    plain = ASADefence(ASAParams(tau=0.3), adapter)
    torch.manual_seed(0)
    with_ce = ASADefence(ASAParams(tau=0.3, adversarial_ce=True), adapter)  # the same adversaries
    with with_ce.adversarial_attention(batch):
        masked_ce = F.cross_entropy(adapter.forward(batch).logits, batch["labels"])
    assert masked_ce.item() > 0.1  # a visible addition
    expected = plain.objective(batch, None) + masked_ce
    assert with_ce.objective(batch, None).item() == pytest.approx(expected.item(), rel=1e-5)


def mask_ratio_under_training(adapter, tau: float, steps: int = 12) -> float:
    """Mean masked fraction over ``steps`` SGD steps of the adversary on a fixed batch."""
    torch.manual_seed(0)
    defence = ASADefence(ASAParams(tau=tau), adapter)
    batch = make_batch(adapter)
    optimizer = torch.optim.SGD(defence.adversary.parameters(), lr=0.05)
    for _ in range(steps):
        defence.training_step(batch, lambda loss: loss.backward())
        optimizer.step(), optimizer.zero_grad(), adapter.model.zero_grad()
    ratios = defence.epoch_metrics()["asa_mask_ratio_per_layer"]
    return sum(ratios) / len(ratios)


def test_larger_tau_weakens_the_adversary(adapter):
    ratios = [mask_ratio_under_training(adapter, tau) for tau in (0.0, 0.3, 1.0)]
    assert 0 < ratios[0] < 1
    assert ratios[0] > ratios[1] > ratios[2], ratios


# --- composition with a procedure defence -------------------------------------------------
@dataclass
class TinyFGMParams:
    epsilon: float = option(0.1, gt=0, help="L2 size of the embedding perturbation")


class TinyFGM(Defence):
    """A minimal FGM: a clean pass, then a pass on gradient-perturbed embeddings."""

    name = "tinyfgm"
    Params = TinyFGMParams
    role = "procedure"

    def training_step(self, batch, backward):
        embeds = self.adapter.embed(batch["input_ids"]).detach().requires_grad_(True)  # (B, L, H)
        clean = self.objective(batch, embeds)
        backward(clean)
        delta = self.params.epsilon * embeds.grad / embeds.grad.norm().clamp_min(1e-12)  # (B, L, H)
        perturbed = self.objective(batch, embeds.detach() + delta)
        backward(perturbed)
        return StepResult(loss=clean.item())


def test_composes_with_a_procedure_defence_every_pass_uses_asa(adapter):
    registry = Registry("defence")
    registry.add("asa", ASADefence, "test")
    registry.add("tinyfgm", TinyFGM, "test")
    composed = build_defence(["asa", "tinyfgm"], {"asa": ASAParams(), "tinyfgm": TinyFGMParams()},
                             adapter, registry)
    asa = composed.parts[0]
    assert composed.name == "asa+tinyfgm"
    assert composed.trainable_modules() == [asa.adversary]
    batch = make_batch(adapter)
    result = composed.training_step(batch, lambda loss: loss.backward())
    assert torch.isfinite(torch.tensor(result.loss))
    real_units = int(asa_f.pair_mask(batch["attention_mask"]).sum())
    assert int(asa.epoch_counts.units[0]) == 2 * real_units  # both passes ran the adversarial forward
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in asa.adversary.parameters()
               if p.dim() == 2)
    assert all(0 < r < 1 for r in composed.epoch_metrics()["asa_mask_ratio_per_layer"])
    assert hooks_left(adapter.model) == 0


@pytest.mark.parametrize("names", [["asa"], ["asa", "freelb"], ["asa", "scal"]], ids=["asa", "asa+freelb", "asa+scal"])
def test_recomputing_the_clean_pass_gives_the_same_gradients(tiny_bert_dir, names):
    """``recompute_clean`` (activation checkpointing of the clean pass, dropout on) changes memory, not maths."""
    registry = get_plugin_manager().defences
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        adapter = load_adapter(str(tiny_bert_dir), num_labels=2)
        adapter.model.train()  # dropout on: the recomputed pass must replay it
        params = {n: registry.get(n).Params() for n in names}
        params["asa"] = ASAParams(recompute_clean=recompute)
        defence = build_defence(names, params, adapter, registry)
        torch.manual_seed(1)
        defence.training_step(make_batch(adapter), lambda loss: loss.backward())
        modules = [adapter.model, *defence.trainable_modules()]
        grads.append(torch.cat([p.grad.flatten() for m in modules for p in m.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[1], grads[0])  # bit for bit on CPU: why resume and bench may change it


@pytest.mark.parametrize("names", [["asa"], ["asa", "freelb"]], ids=["asa", "asa+freelb"])
def test_recomputed_clean_pass_shows_checkpoint_its_device_tensors(adapter, monkeypatch, names):
    """torch's checkpoint saves and replays a device's RNG state (dropout) only for the tensors it finds in
    its arguments (``get_device_states`` walks them with pytree). The collators return a ``BatchEncoding``,
    which pytree keeps as one opaque leaf: the token tensors must reach checkpoint as leaves of their own."""
    from torch.utils._pytree import tree_flatten
    from transformers import BatchEncoding

    from asa_plugin.defences.asa import defence as asa_module

    seen: list[list[object]] = []
    real_checkpoint = asa_module.checkpoint

    def recording(fn, *args, **kwargs):
        seen.append(tree_flatten(args)[0])  # what get_device_states / _infer_device_type would inspect
        return real_checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(asa_module, "checkpoint", recording)
    registry = get_plugin_manager().defences
    params = {n: registry.get(n).Params() for n in names} | {"asa": ASAParams(recompute_clean=True)}
    defence = build_defence(names, params, adapter, registry)
    batch = BatchEncoding(make_batch(adapter))  # what the collators hand the defence
    defence.training_step(batch, lambda loss: loss.backward())
    assert seen
    for leaves in seen:
        assert not any(isinstance(leaf, BatchEncoding) for leaf in leaves)
        assert any(leaf is batch["input_ids"] for leaf in leaves)
        assert any(leaf is batch["attention_mask"] for leaf in leaves)


AUTO_CASES = [  # (recompute_clean, padded tokens per example, whether the clean pass is recomputed)
    ("auto", 64, False), ("auto", 255, False), ("auto", 256, True), ("auto", 512, True),
    (True, 64, True), (True, 512, True), (False, 64, False), (False, 512, False),
]


@pytest.mark.parametrize("setting,length,recompute", AUTO_CASES)
def test_recompute_clean_auto_recomputes_long_batches_only(setting, length, recompute):
    assert ASAParams().recompute_clean == "auto"  # the default
    assert ASAParams(recompute_clean=setting).recompute_for(length) is recompute


@pytest.mark.parametrize("threshold_offset,checkpointed", [(0, True), (1, False)])
def test_auto_decides_per_batch_from_its_length(adapter, monkeypatch, threshold_offset, checkpointed):
    from asa_plugin.defences.asa import config as asa_config
    from asa_plugin.defences.asa import defence as asa_module

    batch = make_batch(adapter)
    monkeypatch.setattr(asa_config, "AUTO_RECOMPUTE_FROM", batch["input_ids"].shape[1] + threshold_offset)
    calls = []
    real_checkpoint = asa_module.checkpoint
    monkeypatch.setattr(asa_module, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    ASADefence(ASAParams(), adapter).training_step(batch, lambda loss: loss.backward())
    assert bool(calls) is checkpointed


def test_layer_gradient_checkpointing_is_refused_in_one_line(adapter):
    """Recomputed in the backward, the masked pass's layers would run without the adversaries' hooks: with
    reentrant checkpointing (transformers' default) the gradients change silently."""
    adapter.model.gradient_checkpointing_enable()
    adapter.model.train()
    with pytest.raises(ConfigError, match=r"^defence asa: the model has gradient checkpointing on .*turn it off"):
        ASADefence(ASAParams(), adapter).training_step(make_batch(adapter), lambda loss: loss.backward())
