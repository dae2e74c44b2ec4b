"""Masked-LM data, adapter view and evaluation: what the training loop needs to pre-train.

The defences compute ``F.cross_entropy(adapter.forward(batch).logits, batch["labels"])`` and, for
ASA, the symmetric KL of two forwards' logits. Pre-training keeps that contract: the collator puts
the selected (to-be-predicted) positions in ``batch["mlm_positions"]`` (B, L) and their original
tokens in ``batch["labels"]`` (N,), and the masked-LM adapter's ``forward`` returns the logits of
those positions only, (N, V). Cross-entropy is then the standard MLM loss (mean over the selected
tokens) and ASA's divergence is taken over the predicted token distributions at the selected
positions only, with no change to any defence.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase
from transformers.data.data_collator import pad_without_fast_tokenizer_warning

IGNORE = -100
"""Label of a position that is not predicted (transformers' convention)."""


class MLMDataset(Dataset):
    """Tokenized texts as masked-LM examples; each item carries its index (``idx``) for the collator.

    ``packing``: the texts (each with its special tokens, as ``run_mlm.py`` tokenizes them) are
    concatenated and cut into blocks of ``max_length`` tokens; the last, shorter block is kept.
    Otherwise each text is one example, truncated to ``max_length``.
    """

    def __init__(self, texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int,
                 packing: bool, offsets: bool = False):
        enc = tokenizer(list(texts), truncation=not packing, max_length=None if packing else max_length,
                        return_special_tokens_mask=True, return_offsets_mapping=offsets, verbose=False)
        keys = list(enc.keys())
        rows = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
        if packing:
            joined = {k: [v for row in rows for v in row[k]] for k in keys}
            total = len(joined["input_ids"])
            rows = [{k: joined[k][s:s + max_length] for k in keys} for s in range(0, total, max_length)]
        self.features = [row | {"idx": i} for i, row in enumerate(rows)]
        self.lengths = [len(f["input_ids"]) for f in self.features]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


class MLMCollator:
    """transformers' ``DataCollatorForLanguageModeling`` (selection rate, 80/10/10, whole words) applied
    to each example with a generator seeded by (seed, epoch, the example's index), then padded.

    An example's masks therefore depend on nothing else: not on the global RNG, the batch it lands in,
    its padding, how many batches were prefetched or skipped on resume, or the number of processes
    (Accelerate fills a short last batch with repeated examples on every process). A run resumed after
    kill -9 sees exactly the masks of an uninterrupted one, and the eval loader's sampler stays at
    epoch 0, so the held-out masks are the same every epoch and in every run with the same seed.

    A batch in which no token was selected (possible for tiny batches) gets its first ordinary token
    selected and replaced by the mask token, so its loss is defined.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, cfg, seed: int, sampler=None):
        # transformers 4.57 refuses whole words with random replacement through a broken warnings.warn call
        # (data_collator.py: TypeError); its masking code handles them (per token, as BERT's
        # create_pretraining_data.py does), so the replacement shares are set after construction.
        self.base = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mlm_probability,
                                                    mask_replace_prob=1.0, random_replace_prob=0.0,
                                                    whole_word_mask=cfg.whole_word_mask)
        self.base.mask_replace_prob = float(cfg.mask_replace_prob)
        self.base.random_replace_prob = float(cfg.random_replace_prob)
        self.tokenizer, self.seed, self.sampler = tokenizer, seed, sampler

    def generator(self, epoch: int, index: int) -> torch.Generator:
        digest = hashlib.sha256(f"{self.seed}:{epoch}:{index}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))

    def mask_one(self, feature: dict, epoch: int) -> tuple[dict, list[int]]:
        """(the example's model inputs with its tokens masked, its labels), as lists."""
        self.base.generator = self.generator(epoch, feature["idx"])
        one = self.base([{k: v for k, v in feature.items() if k != "idx"}])  # (1, len) each
        inputs = {k: feature[k] for k in feature if k not in ("idx", "special_tokens_mask", "offset_mapping")}
        inputs["input_ids"] = one["input_ids"][0].tolist()
        return inputs, one["labels"][0].tolist()

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        epoch = getattr(self.sampler, "epoch", 0)
        masked = [self.mask_one(f, epoch) for f in features]
        batch = pad_without_fast_tokenizer_warning(self.tokenizer, [m[0] for m in masked], return_tensors="pt")
        width = batch["input_ids"].shape[1]
        pad = [[IGNORE] * (width - len(m[1])) for m in masked]
        rows = [p + m[1] if self.tokenizer.padding_side == "left" else m[1] + p for m, p in zip(masked, pad)]
        labels = torch.tensor(rows)  # (B, L): the original token where selected, IGNORE elsewhere
        if not (labels != IGNORE).any():
            self._select_one(batch["input_ids"], labels, batch["attention_mask"])
        positions = labels != IGNORE  # (B, L)
        batch["mlm_labels"] = labels  # (B, L)
        batch["mlm_positions"] = positions  # (B, L)
        batch["labels"] = labels[positions]  # (N,)
        return dict(batch)

    def _select_one(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> None:
        special = torch.isin(input_ids, torch.tensor(self.tokenizer.all_special_ids))  # (B, L)
        candidates = (~special & attention_mask.bool()).nonzero()
        if len(candidates):
            row, col = candidates[0].tolist()
            labels[row, col] = input_ids[row, col]
            input_ids[row, col] = self.tokenizer.mask_token_id


def masked_lm_adapter(adapter):
    """The same adapter, its ``forward`` returning the logits of the selected positions only.

    The vocabulary projection (the model's output embeddings) runs on the selected positions only
    (a forward pre-hook keeps their hidden states): at 15 % selection that drops most of the head's
    cost, which for a small encoder such as MiniLM is as large as the encoder's. A head that does not
    call its output-embedding module (it gives (B, L, V) logits) is cut afterwards.
    """
    base = type(adapter)

    class MaskedLMAdapter(base):
        def forward(self, batch, inputs_embeds=None, output_hidden_states=False):
            positions = batch.get("mlm_positions")
            if positions is None:
                return super().forward(batch, inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states)
            decoder = self.model.get_output_embeddings()
            handle = None if decoder is None else decoder.register_forward_pre_hook(
                lambda module, args: (args[0][positions], *args[1:]))  # (B, L, H) -> (N, H)
            try:
                out = super().forward(batch, inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states)
            finally:
                if handle is not None:
                    handle.remove()
            if out.logits.dim() == 3:
                out["logits"] = out.logits[positions]  # (B, L, V) -> (N, V)
            return out

    MaskedLMAdapter.__name__ = MaskedLMAdapter.__qualname__ = f"MaskedLM{base.__name__}"
    return MaskedLMAdapter(adapter.model, adapter.tokenizer)


@torch.no_grad()
def evaluate_mlm(adapter, model, loader, accelerator) -> dict[str, Any]:
    """Masked-LM loss, accuracy (top-1 at the selected positions) and perplexity on ``loader``."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # (nll sum, correct, selected)
    for batch in loader:
        logits = model(**adapter.model_inputs(batch)).logits.float()  # (B, L, V)
        labels = batch["mlm_labels"]  # (B, L)
        selected = labels != IGNORE  # (B, L)
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")  # (B, L)
        correct = (logits.argmax(-1) == labels) & selected  # (B, L)
        per_example = torch.stack([nll.sum(1), correct.sum(1), selected.sum(1)], dim=1).double()  # (B, 3)
        totals += accelerator.gather_for_metrics(per_example).sum(0).cpu()
    model.train(was_training)
    nll, correct, count = totals.tolist()
    loss = nll / max(count, 1)
    return {"eval_accuracy": correct / max(count, 1), "eval_mlm_loss": loss,
            "eval_perplexity": math.exp(min(loss, 700.0)), "eval_predicted_tokens": int(count)}


CollateFactory = Callable[[Any], MLMCollator]
