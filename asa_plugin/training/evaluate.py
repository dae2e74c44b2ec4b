"""Clean accuracy of a model on a dataloader (eval mode, no defence active)."""

from __future__ import annotations

import torch


@torch.no_grad()
def accuracy(adapter, model, loader, accelerator) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        logits = model(**adapter.model_inputs(batch)).logits  # (B, C)
        preds, labels = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"]))
        correct += (preds == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    return correct / max(total, 1)
