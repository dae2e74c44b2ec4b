"""Contrastive pieces of ``scal`` and ``uscal``: InfoNCE, pooling, the PromptBERT template.

Representations come from the same forward passes that compute the task loss: while the
defence's ``objective`` runs, :func:`capture_outputs` asks the model for its hidden states and
keeps the outputs, so a composed objective (ASA) still supplies every pass's loss and no extra
forward is needed. The representation is read from the objective's first forward pass on the
given inputs (for ASA: its clean, unmasked pass).

PromptBERT (Jiang et al., 2022): the batch arrives tokenized, so the template is applied at the
token level: each example's own tokens (specials and padding removed) are placed between the
tokenized halves of the template, special tokens are added back, and the representation is the
last hidden state at the template's mask token. No decode/re-tokenize round trip changes the
tokens. A sentence pair fills [X] with both texts and the separator the tokenizer put between
them (``This sentence : "premise [SEP] hypothesis" means [MASK] .``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from asa_plugin.errors import ConfigError
from asa_plugin.schema import option

if TYPE_CHECKING:
    from asa_plugin.adapters.base import BackboneAdapter
    from asa_plugin.defences.base import Batch, Defence

Pooling = Literal["cls", "mean", "prompt"]
TEMPLATES = {
    # PromptBERT (Jiang et al., 2022): the template of its untrained-BERT setting (the default here) ...
    "promptbert": 'This sentence : "[X]" means [MASK] .',
    # ... and of its setting that fine-tunes BERT (the one closer to training a classifier).
    "promptbert-trained": 'This sentence of "[X]" means [MASK].',
}
DEFAULT_TEMPLATE = TEMPLATES["promptbert"]
TEXT_SLOT, MASK_SLOT = "[X]", "[MASK]"


def resolve_template(template: str) -> str:
    """A template by name (a key of :data:`TEMPLATES`) or given literally with [X] and [MASK]."""
    if TEXT_SLOT not in template and MASK_SLOT not in template:
        if template not in TEMPLATES:
            raise ValueError(f"template {template!r} is neither a known name ({', '.join(TEMPLATES)}) nor a "
                             f"template with {TEXT_SLOT} and {MASK_SLOT}")
        return TEMPLATES[template]
    return template


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives: row i's positive is ``positives[i]``, the others negatives.

    ``anchors``, ``positives``: (B, H). Similarity is cosine / ``temperature``; the loss is the
    mean over i of -log softmax_j(sim(a_i, p_j))[i].
    """
    sim = F.cosine_similarity(anchors.unsqueeze(1), positives.unsqueeze(0), dim=-1) / temperature  # (B, B)
    targets = torch.arange(sim.shape[0], device=sim.device)  # (B,)
    return F.cross_entropy(sim.float(), targets)


def check_template(template: str) -> None:
    """A PromptBERT template holds the text slot and the mask slot once each, text first."""
    if template.count(TEXT_SLOT) != 1 or template.count(MASK_SLOT) != 1:
        raise ValueError(f"template must contain {TEXT_SLOT} and {MASK_SLOT} exactly once, got {template!r}")
    if template.index(MASK_SLOT) < template.index(TEXT_SLOT):
        raise ValueError(f"template must put {MASK_SLOT} after {TEXT_SLOT}, got {template!r}")


@dataclass
class ContrastiveOptions:
    """The InfoNCE options ``scal`` and ``uscal`` share (their Params extend this)."""

    temperature: float = option(0.05, gt=0, help="InfoNCE temperature of the cosine similarities")
    pooling: Pooling = option("cls", help="sequence representation: cls, mean, or prompt (PromptBERT)")
    template: str = option("promptbert", help="PromptBERT template with [X] and [MASK], or a name: "
                                                  "promptbert, promptbert-trained (pooling=prompt)")

    def __post_init__(self):
        check_template(resolve_template(self.template))


class PromptTemplate:
    """Wraps tokenized batches in a template such as ``This sentence : "[X]" means [MASK] .``."""

    def __init__(self, template: str, adapter: BackboneAdapter):
        template = resolve_template(template)
        check_template(template)
        tok = adapter.tokenizer
        if tok.mask_token_id is None:
            raise ConfigError(f"defence.pooling = \"prompt\" needs a tokenizer with a mask token; "
                              f"{type(tok).__name__} has none; use pooling = \"cls\" or \"mean\"")
        self.tokenizer = tok
        prefix, suffix = template.split(TEXT_SLOT)
        suffix = suffix.replace(MASK_SLOT, tok.mask_token)
        self.prefix = tok(prefix.rstrip(), add_special_tokens=False)["input_ids"] if prefix.strip() else []
        self.suffix = tok(suffix, add_special_tokens=False)["input_ids"]
        limits = [n for n in (tok.model_max_length, getattr(adapter.config, "max_position_embeddings", None))
                  if isinstance(n, int) and 0 < n < 1_000_000]
        self.max_length = min(limits) if limits else 512
        self.room = (self.max_length - len(self.prefix) - len(self.suffix)
                     - tok.num_special_tokens_to_add(pair=False))
        if self.room < 1:
            raise ConfigError(f"defence.template is too long for the backbone ({self.max_length} positions)")

    def _sentence_tokens(self, ids: list[int]) -> list[int]:
        """The example's tokens without its outer special tokens. A text pair keeps the separator
        between its two texts (``a [SEP] b``; RoBERTa's ``a </s></s> b``), so [X] holds both."""
        special = self.tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
        real = [i for i, s in enumerate(special) if not s]
        if not real:
            return []
        return ids[real[0]:real[-1] + 1][: self.room]

    def wrap(self, batch: Batch) -> tuple[Batch, torch.Tensor]:
        """(template-wrapped batch, (B,) index of the template's mask token in each row)."""
        tok = self.tokenizer
        rows, positions = [], []
        lengths = batch["attention_mask"].sum(1).tolist() if "attention_mask" in batch else None
        for i, ids in enumerate(batch["input_ids"].tolist()):
            if lengths is not None:
                n = int(lengths[i])
                ids = ids[:n] if tok.padding_side == "right" else ids[len(ids) - n:]
            row = tok.build_inputs_with_special_tokens(self.prefix + self._sentence_tokens(ids) + self.suffix)
            rows.append(row)
            positions.append(len(row) - 1 - row[::-1].index(tok.mask_token_id))
        width = max(map(len, rows))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        device = batch["input_ids"].device
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)  # (B, L')
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        wrapped: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
        if "token_type_ids" in batch:
            wrapped["token_type_ids"] = torch.zeros_like(input_ids)
        if "labels" in batch:
            wrapped["labels"] = batch["labels"]
        return wrapped, torch.tensor(positions, device=device)


@contextmanager
def capture_outputs(adapter: BackboneAdapter) -> Iterator[list[Any]]:
    """Inside the block every forward of the model returns hidden states; outputs are collected."""
    outputs: list[Any] = []

    def ask_hidden_states(module, args, kwargs):
        kwargs["output_hidden_states"] = True
        return args, kwargs

    def keep(module, args, kwargs, output):
        outputs.append(output)

    handles = [adapter.model.register_forward_pre_hook(ask_hidden_states, with_kwargs=True),
               adapter.model.register_forward_hook(keep, with_kwargs=True)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class Representations:
    """Pooling of a defence's passes: ``cls`` / ``mean`` through the adapter, or ``prompt``."""

    def __init__(self, defence: Defence, pooling: Pooling, template: str):
        self.defence = defence
        self.pooling = pooling
        self.prompt = PromptTemplate(template, defence.adapter) if pooling == "prompt" else None

    def view(self, batch: Batch) -> tuple[Batch, torch.Tensor | None]:
        """The batch the contrastive views are built from, and its mask positions (prompt only)."""
        if self.prompt is None:
            return batch, None
        return self.prompt.wrap(batch)

    def objective_and_representation(self, batch: Batch, inputs_embeds: torch.Tensor | None,
                                     mask_positions: torch.Tensor | None = None
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective loss, (B, H) representation) from the objective's own forward pass."""
        with capture_outputs(self.defence.adapter) as outputs:
            loss = self.defence.objective(batch, inputs_embeds)
        if not outputs:
            raise RuntimeError("the defence objective ran no forward pass of the model")
        return loss, self._pool(outputs[0], batch, mask_positions)

    def representation(self, batch: Batch, inputs_embeds: torch.Tensor | None,
                       mask_positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H) representation from one plain forward pass (dropout on), when no loss of the
        pass is used: the same pass an objective's first (clean) forward would run, at a fraction
        of a composed objective's cost (ASA's masked pass is skipped)."""
        with capture_outputs(self.defence.adapter) as outputs:
            self.defence.adapter.forward(batch, inputs_embeds=inputs_embeds)
        return self._pool(outputs[0], batch, mask_positions)

    def _pool(self, first, batch: Batch, mask_positions: torch.Tensor | None) -> torch.Tensor:
        if mask_positions is not None:
            last = first.hidden_states[-1]  # (B, L, H)
            rows = torch.arange(last.shape[0], device=last.device)
            return last[rows, mask_positions]  # (B, H)
        return self.defence.adapter.sequence_representation(first, batch, pooling=self.pooling)
