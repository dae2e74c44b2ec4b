"""Clean evaluation of a model on a dataloader (eval mode, no defence active)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Evaluation:
    """Accuracy plus how often each class was predicted and how often it is the gold label."""

    correct: int
    total: int
    predicted_counts: list[int]
    label_counts: list[int]

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.total, 1)

    def metrics(self) -> dict[str, float | list[int]]:
        """The per-epoch metrics a training run records."""
        return {"eval_accuracy": self.accuracy, "eval_predicted_counts": self.predicted_counts,
                "eval_label_counts": self.label_counts}


@torch.no_grad()
def evaluate(adapter, model, loader, accelerator) -> Evaluation:
    """Evaluate ``model`` on every example of ``loader`` (gathered across processes)."""
    was_training = model.training
    model.eval()
    num_labels = adapter.config.num_labels
    correct = total = 0
    predicted = torch.zeros(num_labels, dtype=torch.long)
    gold = torch.zeros(num_labels, dtype=torch.long)
    for batch in loader:
        logits = model(**adapter.model_inputs(batch)).logits  # (B, C)
        preds, labels = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"]))
        correct += (preds == labels).sum().item()
        total += labels.numel()
        predicted += torch.bincount(preds.cpu(), minlength=num_labels)[:num_labels]
        gold += torch.bincount(labels.cpu(), minlength=num_labels)[:num_labels]
    model.train(was_training)
    return Evaluation(correct, total, predicted.tolist(), gold.tolist())
