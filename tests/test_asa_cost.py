"""ASA's arithmetic: a step costs two passes of the model plus its adversaries, nothing more.

Counted with torch's FlopCounterMode (matrix products, deterministic, independent of machine load), on a
tiny BERT. The adversary of one layer, with N = B * L tokens, hidden size H and projection size d:
forward  Q and K projections 2 * 2NHd, scores Q K^T 2BL^2d; backward the projections' weight gradients
2 * 2NHd (their input is gradient-stopped, so no input gradient) and the scores' two operands 2 * 2BL^2d.
At MiniLM's 32 x 64 this makes the default (projection = hidden, as the official code) 2.12x vanilla's
FLOPs, and a 64-wide adversary 2.02x (benchmarks/README.md, "Defence cost").
"""

from __future__ import annotations

import pytest
import torch
from asa_plugin.adapters.loading import load_adapter
from torch.utils.flop_counter import FlopCounterMode

from asa_plugin.defences.asa import ASAParams
from asa_plugin.defences.base import build_defence
from asa_plugin.plugins import get_plugin_manager

TEXTS = ["the movie was good and really fun", "bad boring plot", "i love it", "a very awful film"]


def adversary_flops(batch_size: int, length: int, hidden: int, projection: int, layers: int) -> int:
    tokens = batch_size * length
    per_layer = 8 * tokens * hidden * projection + 6 * batch_size * length * length * projection
    return layers * per_layer


def step_flops(tiny_bert_dir, names: list[str], params: dict) -> tuple[int, int, dict]:
    """FLOPs of one training step of ``names`` and of one forward of the same model and batch."""
    registry = get_plugin_manager().defences
    torch.manual_seed(0)
    adapter = load_adapter(str(tiny_bert_dir), num_labels=2)
    adapter.model.train()
    batch = dict(adapter.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 1, 0])
    full = {n: registry.get(n).Params() for n in names} | params
    defence = build_defence(names, full, adapter, registry)
    step = FlopCounterMode(display=False)
    with step:
        defence.training_step(batch, lambda loss: loss.backward())
    forward = FlopCounterMode(display=False)
    with forward, torch.no_grad():
        adapter.forward(batch)
    shape = {"batch_size": batch["input_ids"].shape[0], "length": batch["input_ids"].shape[1],
             "hidden": adapter.hidden_size, "layers": adapter.num_layers}
    return step.get_total_flops(), forward.get_total_flops(), shape


@pytest.mark.parametrize("projection", [None, 8])
def test_an_asa_step_is_two_model_passes_plus_its_adversaries(tiny_bert_dir, projection):
    vanilla, _, shape = step_flops(tiny_bert_dir, ["vanilla"], {})
    asa, _, _ = step_flops(tiny_bert_dir, ["asa"], {"asa": ASAParams(recompute_clean=False,
                                                                      projection_size=projection)})
    adversaries = adversary_flops(projection=projection or shape["hidden"], **shape)
    assert asa == 2 * vanilla + adversaries


def test_recomputing_the_clean_pass_adds_one_forward(tiny_bert_dir):
    """One forward less its last product: the checkpoint stops recomputing once the backward has what it saved
    (the classifier's output, the logits, is not among it)."""
    kept, _, shape = step_flops(tiny_bert_dir, ["asa"], {"asa": ASAParams(recompute_clean=False)})
    recomputed, forward, _ = step_flops(tiny_bert_dir, ["asa"], {"asa": ASAParams(recompute_clean=True)})
    classifier = 2 * shape["batch_size"] * shape["hidden"] * 2  # (B, H) @ (H, 2 labels)
    assert recomputed - kept == forward - classifier


def test_the_default_keeps_the_clean_pass_of_a_short_batch(tiny_bert_dir):
    """At the toy batch's few tokens ``"auto"`` must not pay the extra forward (it recomputes from 256)."""
    default, _, _ = step_flops(tiny_bert_dir, ["asa"], {})
    kept, _, _ = step_flops(tiny_bert_dir, ["asa"], {"asa": ASAParams(recompute_clean=False)})
    assert default == kept
