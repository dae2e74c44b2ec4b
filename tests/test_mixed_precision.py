"""Defences under fp16 and bf16 autocast on CPU: counts that fit, gradients that neither underflow nor overflow.

The model is a 12-layer tiny BERT (hidden 32) with room for 512 positions and dropout off, so that a
half-precision step can be compared with the float32 step on the same batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from asa_plugin.adapters.loading import load_adapter
from tiny import tiny_model_dir

from asa_plugin.defences import perturbation, scal
from asa_plugin.defences.asa import ASADefence, ASAParams
from asa_plugin.defences.asa import functional as asa_f
from asa_plugin.defences.base import Defence

FP16, BF16 = torch.float16, torch.bfloat16
FP16_MAX = torch.finfo(FP16).max  # 65,504
DEEP = dict(num_hidden_layers=12, max_position_embeddings=512, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def deep_dir(tmp_path_factory):
    """A 12-layer tiny BERT (hidden 32) with 512 positions and no dropout."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-deep"), "bert", **DEEP)


def deep_adapter(deep_dir):
    torch.manual_seed(0)
    adapter = load_adapter(str(deep_dir), num_labels=2)
    adapter.model.train()
    return adapter


def token_batch(batch_size: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random real tokens (no padding) and alternating labels: (B, L)."""
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 100, (batch_size, length), generator=generator),
            "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
            "labels": torch.arange(batch_size) % 2}


def test_asa_kept_units_are_exact_float32_counts_under_fp16_autocast(deep_dir):
    """12 layers x 128^2 units per example: about half kept at initialisation, ~98,000 > fp16's 65,504."""
    adapter = deep_adapter(deep_dir)
    defence = ASADefence(ASAParams(), adapter)
    batch = token_batch(4, 128)
    with torch.autocast("cpu", dtype=FP16):
        with defence.adversarial_attention(batch) as masks:
            adapter.forward(batch)
        loss = defence.asa_objective(batch)
    assert masks[0].dtype == FP16  # the masks themselves stay in the autocast dtype
    per_layer = [asa_f.kept_units(m) for m in masks]  # (B,) each
    exact = [(m.detach() != 0).sum(dim=(1, 2)) for m in masks]  # (B,) int64 each
    for counted, truth in zip(per_layer, exact):
        assert counted.dtype == torch.float32
        assert torch.equal(counted.long(), truth) and torch.equal(counted, counted.round())
    total = torch.stack(exact).sum(0)  # (B,)
    assert total.min() > FP16_MAX  # the test really exceeds fp16's range
    assert torch.isfinite(loss)
    assert defence._last["asa_kept_units"] == pytest.approx(total.double().mean().item(), abs=0.5)


def confident_adapter(deep_dir, batch):
    """The deep model made confident on ``batch`` (its labels set to the predictions, the classifier
    weights x 500): per-example CE 3e-6 to 2e-3, as late in training, where fp16 gradients underflow."""
    adapter = deep_adapter(deep_dir)
    with torch.no_grad():
        batch["labels"] = adapter.forward(batch).logits.argmax(-1)
        adapter.model.classifier.weight.mul_(500.0)
    return adapter


def per_example_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, ...) x 2 -> (B,) cosine similarity of each example's entries."""
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


def assert_same_direction_per_example(half: torch.Tensor, full: torch.Tensor) -> None:
    """Every token that has a float32 gradient keeps one (unscaled fp16 keeps only the [CLS] position of
    the most confident examples), and each example's direction matches float32's."""
    assert torch.isfinite(half).all()
    assert (full.norm(dim=-1) > 0).all()  # (B, L): every token has a gradient in float32
    assert (half.norm(dim=-1) > 0).all(), "input gradients of some tokens underflowed to zero"
    assert per_example_cosine(half, full).min() > 0.99


def test_pgd_input_gradient_under_fp16_keeps_every_examples_direction(deep_dir):
    batch = token_batch(4, 128)
    adapter = confident_adapter(deep_dir, batch)
    defence = Defence(None, adapter)
    delta = perturbation.zero_delta(adapter, batch).detach()
    full = perturbation.input_gradient(defence, batch, delta)
    with torch.autocast("cpu", dtype=FP16):
        half = perturbation.input_gradient(defence, batch, delta)
    assert half.dtype == torch.float32
    assert_same_direction_per_example(half, full)


def test_scal_fgm_gradient_under_fp16_keeps_every_examples_direction(deep_dir, monkeypatch):
    batch = token_batch(4, 128)
    adapter = confident_adapter(deep_dir, batch)
    defence = scal.SCALDefence(scal.SCALParams(), adapter)
    seen: list[torch.Tensor] = []
    real_fgm_delta = scal.fgm_delta

    def spy(grad, mask, epsilon):
        seen.append(grad.detach())
        return real_fgm_delta(grad, mask, epsilon)

    monkeypatch.setattr(scal, "fgm_delta", spy)
    defence.adversarial_pair(batch, None)
    with torch.autocast("cpu", dtype=FP16):
        defence.adversarial_pair(batch, None)
    full, half = seen
    assert_same_direction_per_example(half, full)


def test_input_grad_backs_off_when_the_scaled_gradient_overflows():
    """A gradient of 1e3 per entry scaled by 2^16 overflows float16; the result is still the true one."""
    x = torch.ones(2, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=FP16):
        loss = (x.half() * 1000.0).sum()
        grad = perturbation.input_grad(loss, x)
    assert torch.equal(grad, torch.full((2, 3), 1000.0))
