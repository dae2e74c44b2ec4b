"""Is a trained classifier degenerate, i.e. (almost) a constant prediction?

Such a model cannot be attacked (nothing flips a constant) and would look perfectly "robust", so
training flags it in metrics.json and attacks and reports mark it instead of presenting its
accuracy under attack as robustness.
"""

from __future__ import annotations

from typing import Any

DOMINANT_SHARE = 0.95
"""A model that gives one class to at least this share of the eval examples is degenerate."""
MAJORITY_MARGIN = 0.02
"""A model whose accuracy is at most the majority-class rate plus this margin is degenerate."""


def check(predicted_counts: list[int], label_counts: list[int], accuracy: float) -> str | None:
    """Why the model is degenerate (one line), or None when it is not.

    ``predicted_counts[c]``/``label_counts[c]``: how often class c was predicted / is the gold label
    on the eval split.
    """
    total = sum(predicted_counts)
    if total == 0 or sum(label_counts) == 0:
        return None
    top = max(range(len(predicted_counts)), key=predicted_counts.__getitem__)
    share = predicted_counts[top] / total
    if share >= DOMINANT_SHARE:
        return f"it predicts class {top} for {share:.1%} of the {total} eval examples"
    majority = max(label_counts) / sum(label_counts)
    if accuracy <= majority + MAJORITY_MARGIN:
        return (f"its eval accuracy {accuracy:.1%} is within {MAJORITY_MARGIN:.0%} of always predicting the "
                f"majority class ({majority:.1%})")
    return None


def reason(epoch_metrics: dict[str, Any]) -> str | None:
    """:func:`check` on one epoch's recorded metrics (None when the counts are not recorded)."""
    predicted, gold = epoch_metrics.get("eval_predicted_counts"), epoch_metrics.get("eval_label_counts")
    if predicted is None or gold is None:
        return None
    return check(predicted, gold, epoch_metrics["eval_accuracy"])
