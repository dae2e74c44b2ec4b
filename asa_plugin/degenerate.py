"""Is a trained classifier degenerate: does it (almost) ignore its input?

Such a model cannot be attacked on the class it always predicts, so its accuracy under attack would
read as robustness. Training flags it in metrics.json, ``advrobust attack`` in summary.json, and the
bench report judges every cell again from the stored per-example predictions.

The judgement works on the confusion matrix (gold x predicted) and uses per-class recall, whose
chance level does not depend on how biased a classifier is: a classifier that ignores its input
recognises class ``c`` with probability ``q_c`` (how often it predicts ``c``), so its recalls
average exactly ``1/K`` (balanced accuracy = chance) whatever ``q`` is. Plain accuracy has no such
fixed point (a constant classifier scores the majority rate), which is why the former rule
(one class >= 95 % of predictions, or accuracy within 2 points of the majority rate) let through a
model that predicts one class 94 % of the time (SST-2 accuracy ~0.57 > 0.53).

A model is degenerate when either, at ``ALPHA`` = 0.05:

- **a class collapsed**: the model recognises some class significantly less often than half of
  chance (recall < ``1/(2K)``; exact one-sided binomial test over that class's examples). A model that
  predicts one SST-2 class 94 % of the time recognises the other in about 12 % of its examples.
- **no skill**: the predictions do not depend on the gold label (Fisher's exact test for two
  classes, the chi-squared test of independence otherwise, one-sided via balanced accuracy > 1/K).

Both take the number of examples into account. With too few examples for even a perfect classifier
to show skill, the verdict is ``None`` (undetermined), not degenerate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

ALPHA = 0.05
"""Significance level of both tests."""
COLLAPSE_FRACTION = 0.5
"""A class is collapsed when its recall is significantly below this fraction of chance (1/K)."""


@dataclass
class Judgement:
    """The verdict on one confusion matrix, with the figures behind it."""

    examples: int
    balanced_accuracy: float
    chance: float
    recalls: list[float | None]  # per gold class; None for a class with no examples
    skill_p_value: float
    collapsed: list[int]
    degenerate: bool | None  # None: too few examples to judge
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confusion(gold: Iterable[int], predicted: Iterable[int], num_classes: int) -> list[list[int]]:
    """``matrix[g][p]``: how many examples of gold class ``g`` were predicted as ``p``."""
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for g, p in zip(gold, predicted):
        matrix[int(g)][int(p)] += 1
    return matrix


def _skill_p_value(matrix: list[list[int]]) -> float:
    """p-value of "predictions are independent of the gold label" against "they carry it"."""
    from scipy.stats import chi2_contingency, fisher_exact

    rows = [r for r in matrix if sum(r)]
    cols = [j for j in range(len(matrix)) if any(r[j] for r in rows)]
    if len(rows) < 2 or len(cols) < 2:
        return 1.0  # one gold class, or one predicted class: nothing to depend on
    table = [[r[j] for j in cols] for r in rows]
    if len(table) == 2 and len(cols) == 2:
        # one-sided: the diagonal (as laid out by class index) is over-represented
        return float(fisher_exact(table, alternative="greater").pvalue)
    return float(chi2_contingency(table).pvalue)


def judge(matrix: list[list[int]]) -> Judgement:
    """The verdict on a confusion matrix (see the module docstring for the criteria)."""
    from scipy.stats import binomtest

    k = len(matrix)
    sizes = [sum(row) for row in matrix]
    present = [c for c in range(k) if sizes[c]]
    recalls = [matrix[c][c] / sizes[c] if sizes[c] else None for c in range(k)]
    chance = 1 / len(present) if present else 0.0
    balanced = sum(recalls[c] for c in present) / len(present) if present else 0.0
    p_value = _skill_p_value(matrix)
    if len(present) < 2:
        return Judgement(sum(sizes), balanced, chance, recalls, p_value, [], None,
                         None if not present else "only one class among the examples: skill cannot be judged")
    floor = COLLAPSE_FRACTION * chance
    collapsed = [c for c in present
                 if binomtest(matrix[c][c], sizes[c], floor, alternative="less").pvalue < ALPHA]
    perfect = _skill_p_value([[sizes[c] if j == c else 0 for j in present] for c in present])
    reasons = []
    if collapsed:
        each = ", ".join(f"class {c} in {recalls[c]:.1%} of its {sizes[c]} examples" for c in collapsed)
        reasons.append(f"it recognises {each}, significantly below half of chance ({floor:.1%})")
    no_skill = p_value >= ALPHA or balanced <= chance
    if no_skill and perfect < ALPHA:
        reasons.append(f"its predictions show no dependence on the label (balanced accuracy {balanced:.1%}, chance "
                       f"{chance:.1%}, p = {p_value:.2g} over {sum(sizes)} examples)")
    if reasons:
        return Judgement(sum(sizes), balanced, chance, recalls, p_value, collapsed, True, "; ".join(reasons))
    if no_skill:  # even a perfect classifier could not show skill on so few examples
        return Judgement(sum(sizes), balanced, chance, recalls, p_value, [], None,
                         f"{sum(sizes)} examples are too few to judge")
    return Judgement(sum(sizes), balanced, chance, recalls, p_value, [], False, None)


def judge_rows(rows: list[dict], num_classes: int | None = None) -> Judgement | None:
    """The verdict on an attack's stored rows (each with ``gold_label`` and ``original_prediction``)."""
    pairs = [(r["gold_label"], r["original_prediction"]) for r in rows
             if r.get("gold_label") is not None and r.get("original_prediction") is not None]
    if not pairs:
        return None
    k = max(num_classes or 0, 1 + max(max(g, p) for g, p in pairs))
    return judge(confusion([g for g, _ in pairs], [p for _, p in pairs], k))


def epoch_confusion(epoch_metrics: dict[str, Any]) -> list[list[int]] | None:
    """The eval confusion matrix of one epoch's metrics.

    Recorded as ``eval_confusion`` since this module judges confusion matrices; for runs recorded
    before, a two-class matrix is recovered exactly from the predicted and gold counts and the
    accuracy (n00 + n11 = correct, n00 + n10 = predicted 0, n00 + n01 = gold 0)."""
    if epoch_metrics.get("eval_confusion") is not None:
        return epoch_metrics["eval_confusion"]
    predicted, gold = epoch_metrics.get("eval_predicted_counts"), epoch_metrics.get("eval_label_counts")
    accuracy = epoch_metrics.get("eval_accuracy")
    if predicted is None or gold is None or accuracy is None or len(gold) != 2:
        return None
    total = sum(gold)
    correct = round(accuracy * total)
    n00 = (predicted[0] + gold[0] + correct - total) // 2
    n11 = correct - n00
    return [[n00, gold[0] - n00], [gold[1] - n11, n11]]


def reason(epoch_metrics: dict[str, Any]) -> str | None:
    """Why one epoch's evaluated model is degenerate (None when it is not, or cannot be judged)."""
    matrix = epoch_confusion(epoch_metrics)
    if matrix is None:
        return None
    verdict = judge(matrix)
    return verdict.reason if verdict.degenerate else None
