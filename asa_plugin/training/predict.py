"""Predictions of a saved classifier on a fixed set of examples, in their order."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from asa_plugin.data import Example
from asa_plugin.training.batching import EncodedDataset


@torch.inference_mode()
def predict(model, tokenizer, examples: Sequence[Example], max_length: int, batch_size: int = 64,
            device: str | torch.device = "cpu") -> torch.Tensor:
    """Class probabilities (N, C) of ``examples`` (single texts or pairs), in input order."""
    dataset = EncodedDataset(examples, tokenizer, max_length)
    accepted = set(inspect.signature(model.forward).parameters) & {"input_ids", "attention_mask", "token_type_ids"}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=DataCollatorWithPadding(tokenizer))
    model = model.to(device).eval()
    out = []
    for batch in loader:
        inputs = {k: v.to(device) for k, v in batch.items() if k in accepted}
        out.append(model(**inputs).logits.float().softmax(-1).cpu())  # (B, C)
    return torch.cat(out)  # (N, C)
