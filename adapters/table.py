"""Per-architecture knowledge, in one plain table keyed by ``config.model_type``.

Every row says where the pieces a defence needs live inside a Hugging Face
``*ForSequenceClassification`` model, and how an additive attention bias gets into that
architecture's attention scores. Paths are dotted attribute paths from the classification
model; ``*`` walks every child of a ``ModuleList``.

Mask kinds (how the attention module receives its mask, measured on transformers 4.57):

``additive``
    The attention module takes an additive float mask (``0`` keep, dtype-min block), or
    ``None`` under sdpa without padding, shaped ``(B, 1, 1|L, L)``. The bias is added to it.
    BERT, RoBERTa, XLM-R, ELECTRA and ALBERT, eager and sdpa alike.
``keep``
    The module receives a 0/1 keep mask and applies it with ``masked_fill`` (no additive
    route exists). The bias is applied to the softmax output instead, at the dropout module
    named ``probs_dropout``: ``softmax(s + b) = p * exp(b) / sum(p * exp(b))`` with
    ``p = softmax(s)``, which is exact. DeBERTa-v2 (eager only).
``keep_2d_else_additive``
    DistilBERT: eager attention (and sdpa's eager fallback) gets a ``(B, L)`` keep mask,
    sdpa gets an additive ``(B, 1, L, L)`` mask or ``None``; the route is chosen per call.

A plugin supporting another architecture registers ``adapter_for(Architecture(...))``; see
:mod:`asa_plugin.adapters.encoder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MaskKind = Literal["additive", "keep", "keep_2d_else_additive"]


@dataclass(frozen=True)
class Architecture:
    """Where one architecture keeps what defences need, and how its attention takes a bias."""

    model_type: str
    attention: str
    """Dotted path (with ``*``) to the attention modules that receive the mask, bottom first."""
    classifier: str
    """The module that outputs the logits (a linear layer or the model's classification head)."""
    mask_arg: str = "attention_mask"
    """Name of the mask argument of the attention module's ``forward``."""
    mask_position: int = 1
    """Its position when passed positionally (ALBERT, DeBERTa-v2 call their attention so)."""
    hidden_arg: str = "hidden_states"
    """Name of the hidden-states argument (always first)."""
    mask_kind: MaskKind = "additive"
    probs_dropout: str | None = None
    """Path inside the attention module to the dropout applied to softmax probabilities
    (needed by the ``keep`` mask kinds)."""
    representation: Literal["first_token"] = "first_token"
    """Which hidden state the classification head reads: every encoder here classifies from the
    first token's last-layer state (BERT/ALBERT through a tanh pooler, DistilBERT through
    ``pre_classifier``, DeBERTa-v2 through ``ContextPooler``, RoBERTa/ELECTRA inside their heads)."""
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    """Batch keys the model's ``forward`` accepts."""
    attn_implementations: tuple[str, ...] = ("eager", "sdpa")
    """Attention implementations the architecture offers (on CPU)."""
    route: str = "mask_argument"
    """Injection route (a key of ``asa_plugin.adapters.routes.ROUTES``). A transformers-5 route
    through ``AttentionInterface`` is added there and selected here; defences never change."""


def _bert_like(model_type: str, prefix: str) -> Architecture:
    return Architecture(model_type, attention=f"{prefix}.encoder.layer.*.attention.self", classifier="classifier")


ARCHITECTURES: dict[str, Architecture] = {
    arch.model_type: arch
    for arch in (
        _bert_like("bert", "bert"),
        _bert_like("roberta", "roberta"),
        _bert_like("xlm-roberta", "roberta"),
        Architecture("electra", attention="electra.encoder.layer.*.attention.self", classifier="classifier",
                     attn_implementations=("eager",)),
        Architecture("albert", attention="albert.encoder.albert_layer_groups.*.albert_layers.*.attention",
                     classifier="classifier"),
        Architecture("distilbert", attention="distilbert.transformer.layer.*.attention", classifier="classifier",
                     mask_arg="mask", mask_position=3, hidden_arg="query", mask_kind="keep_2d_else_additive",
                     probs_dropout="dropout", inputs=("input_ids", "attention_mask")),
        Architecture("deberta-v2", attention="deberta.encoder.layer.*.attention.self", classifier="classifier",
                     mask_kind="keep", probs_dropout="dropout", attn_implementations=("eager",)),
    )
}
"""The built-in rows; ``adapters/plugin.py`` registers one adapter per row."""
