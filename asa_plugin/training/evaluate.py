"""Clean evaluation of a model on a dataloader (eval mode, no defence active)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Evaluation:
    """Accuracy, how often each class was predicted and is the gold label, and the confusion matrix."""

    correct: int
    total: int
    predicted_counts: list[int]
    label_counts: list[int]
    confusion: list[list[int]]  # [gold][predicted]

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.total, 1)

    def metrics(self) -> dict[str, float | list[int]]:
        """The per-epoch metrics a training run records."""
        return {"eval_accuracy": self.accuracy, "eval_predicted_counts": self.predicted_counts,
                "eval_label_counts": self.label_counts, "eval_confusion": self.confusion}


@torch.no_grad()
def evaluate(adapter, model, loader, accelerator) -> Evaluation:
    """Evaluate ``model`` on every example of ``loader`` (gathered across processes)."""
    was_training = model.training
    model.eval()
    num_labels = adapter.config.num_labels
    correct = total = 0
    predicted = torch.zeros(num_labels, dtype=torch.long)
    gold = torch.zeros(num_labels, dtype=torch.long)
    confusion = torch.zeros(num_labels * num_labels, dtype=torch.long)  # (C*C,) flattened [gold][predicted]
    for batch in loader:
        logits = model(**adapter.model_inputs(batch)).logits  # (B, C)
        preds, labels = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"]))
        correct += (preds == labels).sum().item()
        total += labels.numel()
        predicted += torch.bincount(preds.cpu(), minlength=num_labels)[:num_labels]
        gold += torch.bincount(labels.cpu(), minlength=num_labels)[:num_labels]
        confusion += torch.bincount(labels.cpu() * num_labels + preds.cpu(), minlength=num_labels ** 2)
    model.train(was_training)
    return Evaluation(correct, total, predicted.tolist(), gold.tolist(), confusion.view(num_labels, -1).tolist())
