"""scal and uscal: the weights of their contrastive terms, and what uscal's perturbation ascends.

All steps run in eval mode (no dropout), so repeated steps from the same weights are the same
computation and gradients can be compared exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from asa_plugin.adapters.loading import load_adapter

from asa_plugin.defences.contrastive import info_nce
from asa_plugin.defences.perturbation import token_mask
from asa_plugin.plugins import get_plugin_manager

SENTENCES = ["the movie is good", "bad awful film and it was boring really", "great", "the plot was dull"]
LABELS = [1, 0, 1, 0]


@pytest.fixture
def adapter(tiny_bert_dir):
    adapter = load_adapter(str(tiny_bert_dir), 2)
    adapter.model.eval()
    return adapter


def batch_of(adapter) -> dict[str, torch.Tensor]:
    batch = dict(adapter.tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor(LABELS)
    return batch


def step(adapter, name: str, **params):
    """One training step from the adapter's current weights: (result, flat model gradient)."""
    cls = get_plugin_manager().defences.get(name)
    defence = cls(cls.Params(**params), adapter)
    adapter.model.zero_grad()
    result = defence.training_step(batch_of(adapter), lambda loss: loss.backward())
    grad = torch.cat([p.grad.flatten() for p in adapter.model.parameters() if p.grad is not None])
    return result, grad


WEIGHTS = [  # (defence, the weight of its contrastive term, three values of it, the loss formula)
    ("scal", "contrastive_weight", (0.0, 1.0, 2.0), lambda m, w: m["clean_loss"] + m["adversarial_loss"]
     + w * m["contrastive_loss"]),
    ("uscal", "alpha", (0.2, 0.4, 0.6), lambda m, w: m["task_loss"] + w * m["contrastive_loss"]),
]


@pytest.mark.parametrize("name,key,values,formula", WEIGHTS, ids=[w[0] for w in WEIGHTS])
def test_the_contrastive_weight_scales_the_trained_contrastive_term(adapter, name, key, values, formula):
    runs = [step(adapter, name, epsilon=0.3, **{key: w}) for w in values]
    for (result, _), w in zip(runs, values):
        assert result.loss == pytest.approx(formula(result.metrics, w), rel=1e-5)
        assert result.metrics["contrastive_loss"] > 0
    # The gradient is affine in the weight: equal steps of the weight move it by equal amounts.
    (_, g0), (_, g1), (_, g2) = runs
    step_change = (g1 - g0).abs().max()
    assert step_change > 1e-2
    assert (g2 - g1 - (g1 - g0)).abs().max() < 1e-4 * step_change  # float32 rounding only


def test_uscal_perturbation_ascends_the_contrastive_loss_not_the_label_loss(adapter):
    """The adversarial view's delta is epsilon along the contrastive gradient of the word embeddings."""
    cls = get_plugin_manager().defences.get("uscal")
    epsilon = 0.3
    defence = cls(cls.Params(epsilon=epsilon), adapter)
    batch = batch_of(adapter)
    embeds = adapter.embed(batch["input_ids"]).detach()  # (B, L, E)
    deltas = []
    plain_forward = adapter.forward

    def recording_forward(view, inputs_embeds=None, **kwargs):
        if inputs_embeds is not None:
            deltas.append((inputs_embeds - embeds).detach())  # (B, L, E)
        return plain_forward(view, inputs_embeds=inputs_embeds, **kwargs)

    adapter.forward = recording_forward
    try:
        defence.training_step(batch, lambda loss: loss.backward())
    finally:
        del adapter.forward
    adversarial = deltas[-1]  # (B, L, E)
    assert torch.allclose(adversarial.flatten(1).norm(dim=1), torch.full((len(LABELS),), epsilon), rtol=1e-4)

    def embedding_gradient(loss_of) -> torch.Tensor:
        x = embeds.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(x), x)
        return grad * token_mask(batch)  # (B, L, E)

    reps = defence.representations
    plain = reps.representation(batch, None, None).detach()  # (B, H): the second view (eval: no dropout)
    contrastive = embedding_gradient(lambda x: info_nce(reps.representation(batch, x, None), plain,
                                                        defence.params.temperature))
    label = embedding_gradient(lambda x: F.cross_entropy(adapter.forward(batch, inputs_embeds=x).logits,
                                                         batch["labels"]))

    def cosines(a, b):
        return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)  # (B,)

    assert (cosines(adversarial, contrastive) > 0.999).all()
    assert (cosines(adversarial, label) < 0.9).all()
