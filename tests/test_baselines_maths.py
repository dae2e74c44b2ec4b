"""The maths of the baselines: per-example norms and projections, FreeLB's start, InfoNCE, PromptBERT."""

from __future__ import annotations

import math

import pytest
import torch

from asa_plugin.defences.contrastive import PromptTemplate, Representations, info_nce
from asa_plugin.defences.perturbation import (
    ascent_direction,
    fgm_delta,
    l2_normalize,
    per_example_norm,
    project,
    random_init,
    token_mask,
)
from asa_plugin.errors import ConfigError
from asa_plugin.schema import build


def padded_mask(lengths: list[int], width: int) -> torch.Tensor:
    """(B, L, 1) token mask with the given real lengths."""
    return torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths]).unsqueeze(-1)


def test_l2_normalize_gives_unit_norm_per_example_and_keeps_zero_rows():
    x = torch.randn(3, 4, 5)
    x[1] = 0
    norms = per_example_norm(l2_normalize(x))
    assert torch.allclose(norms, torch.tensor([1.0, 0.0, 1.0]))


PROJECT_CASES = [("l2", 0.5), ("l2", 2.0), ("linf", 0.1)]


@pytest.mark.parametrize("norm,radius", PROJECT_CASES)
def test_projection_bounds_each_example_and_keeps_points_inside(norm, radius):
    big = torch.randn(4, 6, 8) * 10
    unit = l2_normalize(torch.randn(4, 6, 8)) if norm == "l2" else torch.rand(4, 6, 8)
    small = unit * radius * 0.5
    assert (per_example_norm(project(big, radius, norm), norm) <= radius * (1 + 1e-5)).all()
    assert torch.allclose(project(small, radius, norm), small)


def test_ascent_direction_masks_padding_and_ignores_non_finite_entries():
    mask = padded_mask([3, 1], 4)
    grad = torch.randn(2, 4, 5)
    grad[0, 0, 0] = float("inf")
    grad[1, 0, 1] = float("nan")
    for norm in ("l2", "linf"):
        step = ascent_direction(grad, mask, norm)
        assert torch.isfinite(step).all()
        assert (step * (1 - mask) == 0).all()
    assert torch.allclose(per_example_norm(ascent_direction(grad, mask, "l2")), torch.ones(2))
    assert set(ascent_direction(grad, mask, "linf").unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_fgm_delta_has_norm_epsilon_and_increases_a_linear_loss():
    mask = padded_mask([4, 2], 4)
    weights = torch.randn(2, 4, 3)
    x = torch.zeros(2, 4, 3, requires_grad=True)
    (x * weights).sum().backward()
    delta = fgm_delta(x.grad, mask, 0.7)
    assert torch.allclose(per_example_norm(delta), torch.full((2,), 0.7))
    assert ((delta * weights).sum(dim=(1, 2)) > 0).all()  # ascent: the loss grows along delta


def test_random_init_is_masked_bounded_and_length_normalized():
    torch.manual_seed(0)
    mask = padded_mask([64, 16, 4], 64)
    delta = random_init(mask, 32, magnitude=0.05)
    norms = per_example_norm(delta)
    assert (delta * (1 - mask) == 0).all()
    assert (norms <= 0.05).all()
    # Uniform(-1, 1) has E[u^2] = 1/3: every length lands near magnitude / sqrt(3).
    assert torch.allclose(norms, torch.full((3,), 0.05 / math.sqrt(3)), rtol=0.15)


def test_info_nce_equals_hand_computed_value_on_three_examples():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    temperature = 0.5
    s = 1 / math.sqrt(2)
    cos = [[1.0, s, 0.0],
           [0.0, s, 1.0],
           [s, 1.0, s]]
    expected = sum(-math.log(math.exp(cos[i][i] / temperature)
                             / sum(math.exp(c / temperature) for c in cos[i])) for i in range(3)) / 3
    assert info_nce(anchors, positives, temperature).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_gradient_pulls_positive_towards_its_anchor():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    positives = torch.tensor([[0.6, 0.8], [0.8, 0.6], [-0.6, -0.8]], requires_grad=True)
    before = info_nce(anchors, positives, 0.1)
    before.backward()
    moved = positives.detach() - 0.05 * positives.grad
    cos_before = torch.cosine_similarity(anchors, positives.detach())
    cos_after = torch.cosine_similarity(anchors, moved)
    assert (cos_after > cos_before).all()
    assert info_nce(anchors, moved, 0.1) < before


def test_prompt_template_wraps_tokens_and_reads_the_mask_position(tiny_bert_dir):
    from asa_plugin.adapters.loading import load_adapter

    adapter = load_adapter(str(tiny_bert_dir), 2)
    adapter.model.eval()
    tok = adapter.tokenizer
    batch = dict(tok(["the movie is good", "bad"], padding=True, return_tensors="pt"))
    template = 'This film "[X]" was [MASK] .'  # the tiny vocabulary's words
    prompt = PromptTemplate(template, adapter)
    wrapped, positions = prompt.wrap(batch)
    rows = zip(wrapped["input_ids"], wrapped["attention_mask"])
    texts = [tok.decode(row[mask.bool()]) for row, mask in rows]
    assert texts[0] == '[CLS] this film " the movie is good " was [MASK]. [SEP]'
    assert texts[1] == '[CLS] this film " bad " was [MASK]. [SEP]'
    assert (wrapped["input_ids"][torch.arange(2), positions] == tok.mask_token_id).all()

    class Probe:  # the minimal defence surface Representations needs
        def __init__(self):
            self.adapter = adapter

        def objective(self, b, inputs_embeds):
            return adapter.forward(b, inputs_embeds=inputs_embeds).logits.sum()

    reps = Representations(Probe(), "prompt", template)
    view, view_positions = reps.view(batch)
    _, rep = reps.objective_and_representation(view, None, view_positions)
    hidden = adapter.forward(view, output_hidden_states=True).hidden_states[-1]  # (B, L, H)
    assert torch.allclose(rep, hidden[torch.arange(2), positions])
    assert not torch.allclose(rep, hidden[:, 0])


PARAM_ERRORS = [
    ("pgd", {"norm": "l3"}, "defence.norm"),
    ("pgd", {"adv_steps": 0}, "defence.adv_steps"),
    ("fgm", {"epsilon": 0}, "defence.epsilon"),
    ("freelb", {"max_norm": -1.0}, "defence.max_norm"),
    ("uscal", {"alpha": 1.0}, "defence.alpha"),
    ("scal", {"pooling": "max"}, "defence.pooling"),
    ("scal", {"template": "[X] means nothing"}, "[MASK]"),
]


@pytest.mark.parametrize("name,values,message", PARAM_ERRORS)
def test_invalid_parameters_give_one_line_config_errors(name, values, message):
    from asa_plugin.plugins import get_plugin_manager

    cls = get_plugin_manager().defences.get(name)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build(cls.Params, values, section="defence", source="cfg.toml")


def test_token_mask_is_one_at_tokens_zero_at_padding():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}
    assert token_mask(batch).squeeze(-1).tolist() == [[1, 1, 0], [1, 0, 0]]


def test_representation_comes_from_the_objectives_first_forward(tiny_bert_dir):
    """A composed objective may run several forwards (ASA: clean, then masked); the first one counts."""
    from asa_plugin.adapters.loading import load_adapter

    adapter = load_adapter(str(tiny_bert_dir), 2)
    adapter.model.eval()
    batch = dict(adapter.tokenizer(["the movie is good", "bad"], padding=True, return_tensors="pt"))

    class TwoForwards:
        def __init__(self):
            self.adapter = adapter

        def objective(self, b, inputs_embeds):
            first = adapter.forward(b, inputs_embeds=inputs_embeds).logits
            second = adapter.forward(b, inputs_embeds=adapter.embed(b["input_ids"]) * 0).logits
            return (first + second).sum()

    _, rep = Representations(TwoForwards(), "cls", "[X] [MASK]").objective_and_representation(batch, None)
    hidden = adapter.forward(batch, output_hidden_states=True).hidden_states[-1]  # (B, L, H)
    assert torch.allclose(rep, hidden[:, 0])
    assert adapter.model._forward_hooks == {} and adapter.model._forward_pre_hooks == {}
