"""The adapter contract, for every architecture in the table and each attention implementation it offers.

Fast (tiny random models). A plain ``pytest`` checks every architecture; with ADVROBUST_TEST_BACKBONE
set (a tox matrix cell) only that one, next to the deeper tests of test_backbone_matrix.py.
"""

from __future__ import annotations

import pytest
import torch
from asa_plugin.adapters.loading import adapter_class_for, load_adapter
from asa_plugin.adapters.routes import add_to_additive_mask, reweight_probabilities
from asa_plugin.adapters.table import ARCHITECTURES
from conftest import selected_backbone

from asa_plugin.errors import UserError
from asa_plugin.plugins import get_plugin_manager

pytestmark = pytest.mark.backbone
SELECTED = selected_backbone()  # None: every architecture; a name outside the table stops the run
CASES = [(model_type, impl) for model_type, arch in ARCHITECTURES.items() for impl in arch.attn_implementations
         if SELECTED in (None, model_type)]
assert CASES, f"no adapter contract case selected for {SELECTED!r}"
PADDED = ["the movie was good", "bad film , really awful and dull !"]
UNPADDED = ["the movie was good", "the film was bad"]  # equal lengths: sdpa passes no mask at all
BLOCK = torch.finfo(torch.float32).min


def encode(adapter, texts):
    return dict(adapter.tokenizer(texts, padding=True, return_tensors="pt"))


def square_bias(hidden: torch.Tensor, heads: int = 1) -> torch.Tensor:
    batch, length, _ = hidden.shape
    return torch.zeros(batch, heads, length, length)  # (B, heads, L, L)


def block_key(position: int, layer: int = 0):
    """Provider that blocks attention to one key position in one layer."""

    def provider(index, hidden):
        if index != layer:
            return None
        bias = square_bias(hidden)
        bias[..., position] = BLOCK
        return bias

    return provider


def module_tree(model) -> list[tuple[str, str]]:
    return [(name, type(module).__name__) for name, module in model.named_modules()]


def hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.fixture(scope="module", params=CASES, ids=[f"{t}-{i}" for t, i in CASES])
def adapter(request, tiny_backbone_dir):
    model_type, impl = request.param
    adapter = load_adapter(str(tiny_backbone_dir(model_type)), num_labels=2, attn_implementation=impl)
    adapter.model.eval()
    return adapter


# --- pure maths of the two routes ---------------------------------------------------------------
def test_reweighting_probabilities_equals_softmax_of_biased_scores():
    scores, bias = torch.randn(2, 3, 4, 4), torch.randn(2, 1, 4, 4)
    bias[0, 0, 1, 2] = BLOCK
    expected = torch.softmax(scores + bias, dim=-1)
    assert torch.allclose(reweight_probabilities(torch.softmax(scores, -1), bias), expected, atol=1e-6)


def test_reweighting_has_the_gradients_of_an_additive_bias():
    scores = torch.randn(1, 2, 3, 3)
    weights = torch.randn(1, 2, 3, 3)
    bias_a = torch.randn(1, 2, 3, 3, requires_grad=True)
    bias_b = bias_a.detach().clone().requires_grad_(True)
    (torch.softmax(scores + bias_a, -1) * weights).sum().backward()
    (reweight_probabilities(torch.softmax(scores, -1), bias_b) * weights).sum().backward()
    assert torch.allclose(bias_a.grad, bias_b.grad, atol=1e-6)


def test_additive_mask_stays_finite_when_a_block_meets_padding():
    mask = torch.tensor([0.0, BLOCK]).view(1, 1, 1, 2)
    bias = torch.full((1, 1, 2, 2), BLOCK)
    assert torch.isfinite(add_to_additive_mask(mask, bias, torch.float32)).all()
    assert torch.equal(add_to_additive_mask(None, torch.ones(1, 1, 2, 2), torch.float32), torch.ones(1, 1, 2, 2))


# --- adapter contract per architecture ----------------------------------------------------------
@pytest.mark.parametrize("texts", [PADDED, UNPADDED], ids=["padded", "unpadded"])
def test_zero_bias_leaves_logits_unchanged(adapter, texts):
    batch = encode(adapter, texts)
    with torch.no_grad():
        plain = adapter.forward(batch).logits
        with adapter.attention_bias(lambda i, h: square_bias(h, heads=2)):
            zero = adapter.forward(batch).logits
    assert torch.allclose(plain, zero, atol=1e-6)


@pytest.mark.parametrize("texts", [PADDED, UNPADDED], ids=["padded", "unpadded"])
def test_blocking_one_key_in_layer_zero_changes_logits(adapter, texts):
    batch = encode(adapter, texts)
    with torch.no_grad():
        plain = adapter.forward(batch).logits
        with adapter.attention_bias(block_key(position=1, layer=0)):
            blocked = adapter.forward(batch).logits
    assert torch.isfinite(blocked).all()
    assert (blocked - plain).abs().max() > 1e-6


def test_blocking_a_key_equals_removing_it_from_the_attention_mask(adapter):
    batch = encode(adapter, UNPADDED)
    without = dict(batch, attention_mask=batch["attention_mask"].clone())
    without["attention_mask"][:, 2] = 0
    providers = {layer: block_key(position=2, layer=layer) for layer in range(adapter.num_layers)}
    with torch.no_grad():
        expected = adapter.forward(without).logits
        with adapter.attention_bias(lambda i, h: providers[i](i, h)):
            blocked = adapter.forward(batch).logits
    assert torch.allclose(blocked, expected, atol=1e-5)


def test_gradients_reach_every_layers_bias(adapter):
    batch = encode(adapter, PADDED)
    biases = {}

    def provider(index, hidden):
        biases[index] = square_bias(hidden, heads=2).requires_grad_(True)
        return biases[index]

    with adapter.attention_bias(provider):
        adapter.forward(batch).logits[:, 0].sum().backward()
    assert sorted(biases) == list(range(adapter.num_layers))
    for index, bias in biases.items():
        assert bias.grad is not None and bias.grad.abs().sum() > 0, f"layer {index} got no gradient"


def test_provider_sees_each_layers_hidden_states_in_order(adapter):
    batch = encode(adapter, PADDED)
    seen = []
    with torch.no_grad(), adapter.attention_bias(lambda i, h: seen.append((i, tuple(h.shape)))):
        adapter.forward(batch)
        adapter.forward(batch)  # indices restart with every forward
    length = batch["input_ids"].shape[1]
    assert seen == [(i, (2, length, adapter.hidden_size)) for i in range(adapter.num_layers)] * 2


def test_injection_is_reversible(adapter):
    tree, keys, hooks = module_tree(adapter.model), list(adapter.model.state_dict()), hook_count(adapter.model)
    batch = encode(adapter, PADDED)
    with torch.no_grad():
        before = adapter.forward(batch).logits
        with adapter.attention_bias(block_key(position=1)):
            assert module_tree(adapter.model) == tree and list(adapter.model.state_dict()) == keys
            adapter.forward(batch)
        after = adapter.forward(batch).logits
    assert module_tree(adapter.model) == tree
    assert list(adapter.model.state_dict()) == keys
    assert hook_count(adapter.model) == hooks
    assert torch.equal(before, after)


def test_injection_is_removed_when_the_forward_raises(adapter):
    hooks = hook_count(adapter.model)

    def broken(index, hidden):
        raise ValueError("provider failed")

    with pytest.raises(ValueError), adapter.attention_bias(broken):
        adapter.forward(encode(adapter, PADDED))
    assert hook_count(adapter.model) == hooks


def test_embed_gives_word_embeddings_the_forward_accepts(adapter):
    batch = encode(adapter, PADDED)
    embeds = adapter.embed(batch["input_ids"])  # (B, L, E)
    assert embeds.shape == (*batch["input_ids"].shape, adapter.embedding_size)
    assert adapter.input_embeddings() is adapter.model.get_input_embeddings()
    with torch.no_grad():
        assert torch.allclose(adapter.forward(batch, inputs_embeds=embeds).logits, adapter.forward(batch).logits,
                              atol=1e-6)


def test_representation_is_the_first_token_the_head_reads(adapter):
    batch = encode(adapter, PADDED)
    with torch.no_grad():
        out = adapter.forward(batch, output_hidden_states=True)
    rep = adapter.sequence_representation(out, batch)  # (B, H)
    assert torch.equal(rep, out.hidden_states[-1][:, 0])
    mean = adapter.sequence_representation(out, batch, pooling="mean")
    assert mean.shape == rep.shape == (2, adapter.hidden_size)


def perturb_last_attention_output(adapter, positions: slice):
    """Forward hook adding noise to the last layer's attention output at ``positions``.

    After the last attention only position-wise layers remain, so positions the head does not
    read cannot reach the logits.
    """
    last = adapter.attention_modules()[-1]
    calls_per_forward = adapter.attention_modules().count(last)  # ALBERT shares one module
    calls = []

    def hook(_module, _args, output):
        calls.append(1)
        if len(calls) % calls_per_forward:
            return None
        states = output[0].clone()  # (B, L, H)
        states[:, positions] += torch.randn_like(states[:, positions])
        return (states, *output[1:])

    return last.register_forward_hook(hook)


def test_the_head_reads_only_the_first_token(adapter):
    batch = encode(adapter, PADDED)
    with torch.no_grad():
        plain = adapter.forward(batch).logits
        for positions, changes in ((slice(1, None), False), (slice(0, 1), True)):
            handle = perturb_last_attention_output(adapter, positions)
            try:
                perturbed = adapter.forward(batch).logits
            finally:
                handle.remove()
            assert torch.allclose(perturbed, plain, atol=1e-6) is not changes, positions


def test_classifier_head_outputs_the_logits(adapter):
    head = adapter.classifier_head()
    outputs = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert outputs.out_features == adapter.model.config.num_labels
    assert all(p.requires_grad for p in head.parameters())


def test_every_table_row_is_a_registered_adapter():
    registry = get_plugin_manager().adapters
    for model_type in ARCHITECTURES:
        assert registry.get(model_type).architecture.model_type == model_type


def test_unsupported_type_names_supported_ones_and_the_plugin_hook():
    with pytest.raises(UserError) as err:
        adapter_class_for("gpt2", get_plugin_manager().adapters)
    message = str(err.value)
    assert "\n" not in message and "gpt2" in message
    assert all(model_type in message for model_type in ARCHITECTURES)
    assert "advrobust_register_adapters" in message


def test_an_attention_implementation_the_architecture_lacks_is_a_one_line_error(tiny_backbone_dir):
    with pytest.raises(UserError, match="eager") as err:
        load_adapter(str(tiny_backbone_dir("deberta-v2")), num_labels=2, attn_implementation="sdpa")
    assert "\n" not in str(err.value)


def test_a_plugin_row_builds_a_working_adapter_and_a_wrong_row_is_caught(tiny_backbone_dir):
    from dataclasses import replace

    from asa_plugin.adapters.encoder import adapter_for

    plain = load_adapter(str(tiny_backbone_dir("bert")), num_labels=2)
    row = replace(ARCHITECTURES["bert"], model_type="my-bert")
    adapter = adapter_for(row)(plain.model.eval(), plain.tokenizer)
    assert type(adapter).__name__ == "MyBertAdapter" and adapter.num_layers == 2
    batch = encode(adapter, PADDED)
    with torch.no_grad():
        before = adapter.forward(batch).logits
        with adapter.attention_bias(block_key(position=1)):
            assert not torch.allclose(adapter.forward(batch).logits, before, atol=1e-6)
    with pytest.raises(TypeError, match="no 'mask'"):
        adapter_for(replace(row, mask_arg="mask"))(plain.model, plain.tokenizer)
