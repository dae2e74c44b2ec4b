"""Paired statistics of the bench: a defence against the baseline on the same attacked examples.

Per-example outcomes come from each attack's ``results.jsonl`` (one row per attacked example,
``index`` = position in the attacked selection, the same for every model because the selection
depends only on ``attack.seed`` and the split):

=============  ===============  ==========================
outcome        clean correct    correct after the attack
=============  ===============  ==========================
``skipped``    no               no (the model was already wrong, nothing to attack)
``successful`` yes              no (the attack flipped the prediction)
``failed``     yes              yes (the attack found no adversarial example)
``maximized``  yes              yes (counted as summary.json counts it)
=============  ===============  ==========================

so the mean of "correct after the attack" is summary.json's ``accuracy_under_attack`` and the
mean of "clean correct" its ``clean_accuracy``.

The interval is a percentile bootstrap of the mean difference. With several seeds the outcomes
form a seeds x examples table in which both factors are random (crossed, not nested: every seed's
model is attacked on the same examples), and each resample draws seeds and examples independently
with replacement (Owen 2007, "the pigeonhole bootstrap"), so the interval covers both the choice of
examples and seed-to-seed variation. The generator is seeded: report.json is reproducible.
McNemar's exact test is a binomial test (``scipy.stats.binomtest``) on the discordant examples of
one seed's pair of models.

Over the whole bench the McNemar p-values form one family of tests (every defence x recipe x seed
against the baseline): :func:`holm` adjusts them (Holm 1979), so a reader can see which differences
survive the number of comparisons made. :func:`detectable_difference` is the smallest difference in
accuracy under attack McNemar's test would detect with 80 % power, from the discordant rate and the
number of examples (Connor 1987's sample size for McNemar's test, solved for the difference), so a
"not significant" can be told from "too few examples to say".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.95
"""Confidence level of every interval."""
RESAMPLES = 10_000
"""Bootstrap resamples per interval."""
BOOTSTRAP_SEED = 0
"""Seed of the bootstrap generator (the same report every time it is rebuilt)."""

ALPHA = 0.05
"""Two-sided significance level of the detectable difference."""
POWER = 0.8
"""Power at which the detectable difference is computed."""

CLEAN_CORRECT = {"skipped": False, "successful": True, "failed": True, "maximized": True}
ROBUST_CORRECT = {"skipped": False, "successful": False, "failed": True, "maximized": True}


@dataclass
class Outcomes:
    """Per-example outcomes of one model under one recipe, indexed like results.jsonl."""

    index: np.ndarray  # (n,) example index in the attacked selection
    text: list[str]  # (n,) original text, to check that two models saw the same examples
    clean: np.ndarray  # (n,) bool: correct before the attack
    robust: np.ndarray  # (n,) bool: still correct after the attack

    @classmethod
    def from_rows(cls, rows: list[dict]) -> Outcomes:
        """Outcomes of the attacked rows: an unperturbable text (nothing to attack) is left out, as in
        summary.json's rates; it is unperturbable under every model, so pairing is unchanged."""
        rows = sorted((r for r in rows if r["outcome"] != "unperturbable"), key=lambda r: r["index"])
        return cls(index=np.array([r["index"] for r in rows], dtype=int), text=[r["original_text"] for r in rows],
                   clean=np.array([CLEAN_CORRECT[r["outcome"]] for r in rows], dtype=bool),
                   robust=np.array([ROBUST_CORRECT[r["outcome"]] for r in rows], dtype=bool))


def align(defence: list[Outcomes], baseline: list[Outcomes]) -> tuple[np.ndarray, np.ndarray, int]:
    """Keep the examples every run has, with the same text in each: index arrays into each run.

    Returns ``(keep, positions, excluded)``: the common example indices (m,), for each run the
    positions of those indices in its own arrays (runs, m), and how many examples some run lacked
    or saw with another text.
    """
    runs = defence + baseline
    common = set(runs[0].index.tolist())
    for run in runs[1:]:
        common &= set(run.index.tolist())
    everything = set().union(*(set(r.index.tolist()) for r in runs))
    keep = []
    for i in sorted(common):
        texts = {run.text[int(np.searchsorted(run.index, i))] for run in runs}
        if len(texts) == 1:
            keep.append(i)
    keep_arr = np.array(keep, dtype=int)
    positions = np.array([np.searchsorted(run.index, keep_arr) for run in runs], dtype=int).reshape(len(runs), -1)
    return keep_arr, positions, len(everything) - len(keep)


def crossed_bootstrap(values: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (seeds, examples), resampling seeds and
    examples independently with replacement. One row: the ordinary bootstrap over examples."""
    values = np.asarray(values, dtype=float)  # (k, n)
    k, n = values.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, k, size=(resamples, k))  # (B, k) drawn seed rows
    examples = rng.integers(0, n, size=(resamples, n))  # (B, n) drawn example columns
    per_example = values[seeds].mean(axis=1)  # (B, n): mean over the drawn seeds
    means = np.take_along_axis(per_example, examples, axis=1).mean(axis=1)  # (B,)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar_exact(defence: np.ndarray, baseline: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test on paired booleans (n,): two-sided binomial test of the discordant pairs."""
    from scipy.stats import binomtest

    defence_only = int(np.sum(defence & ~baseline))
    baseline_only = int(np.sum(~defence & baseline))
    discordant = defence_only + baseline_only
    p = 1.0 if discordant == 0 else float(binomtest(defence_only, discordant, 0.5).pvalue)
    return {"defence_only_correct": defence_only, "baseline_only_correct": baseline_only, "p_value": p}


def difference(defence: np.ndarray, baseline: np.ndarray, resamples: int = RESAMPLES,
               seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Mean difference defence - baseline of paired booleans (seeds, examples), its interval, and
    whether the interval excludes 0."""
    diff = defence.astype(float) - baseline.astype(float)  # (k, n) in {-1, 0, 1}
    low, high = crossed_bootstrap(diff, resamples, seed)
    return {"delta": float(diff.mean()), "ci": [low, high], "significant": bool(low > 0 or high < 0)}


def compare(defence: dict[int, Outcomes], baseline: dict[int, Outcomes], resamples: int = RESAMPLES,
            seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Paired comparison of one defence with the baseline under one recipe.

    ``defence``/``baseline`` map seed -> outcomes. Runs are paired seed by seed (the same seed
    means the same data order and initial head), on the seeds both have; examples on the indices
    every run has with the same text.
    """
    seeds = sorted(set(defence) & set(baseline))
    if not seeds:
        return {"status": "unavailable", "reason": "no seed with both the defence and the baseline attacked"}
    keep, positions, excluded = align([defence[s] for s in seeds], [baseline[s] for s in seeds])
    if keep.size == 0:
        return {"status": "unavailable", "reason": "the defence and the baseline share no attacked example"}
    k = len(seeds)
    mine, theirs = positions[:k], positions[k:]  # (k, m) each

    def table(runs: dict[int, Outcomes], pos: np.ndarray, field: str) -> np.ndarray:
        return np.stack([getattr(runs[s], field)[p] for s, p in zip(seeds, pos)])  # (k, m)

    robust_d, robust_b = table(defence, mine, "robust"), table(baseline, theirs, "robust")
    clean_d, clean_b = table(defence, mine, "clean"), table(baseline, theirs, "clean")
    return {"status": "done", "seeds": seeds, "n_examples": int(keep.size), "excluded_examples": excluded,
            "accuracy_under_attack": difference(robust_d, robust_b, resamples, seed),
            "clean_accuracy": difference(clean_d, clean_b, resamples, seed),
            "mcnemar": [{"seed": s, **mcnemar_exact(robust_d[j], robust_b[j])} for j, s in enumerate(seeds)]}


def accuracy_interval(runs: dict[int, Outcomes], field: str = "robust", resamples: int = RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """Interval of one cell's accuracy (over its seeds and examples); None without runs."""
    if not runs:
        return None
    keep, positions, _ = align(list(runs.values()), [])
    if keep.size == 0:
        return None
    values = np.stack([getattr(run, field)[p] for run, p in zip(runs.values(), positions)])  # (k, m)
    return list(crossed_bootstrap(values, resamples, seed))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given: the i-th smallest of m is
    multiplied by m - i + 1, made monotone, and capped at 1. Rejecting where the adjusted p < alpha
    controls the family-wise error rate at alpha over all m tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def detectable_difference(discordant_rate: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest |p10 - p01| McNemar's test detects with ``power`` at two-sided ``alpha``, for ``n``
    paired examples of which a share ``discordant_rate`` (psi = p10 + p01) is discordant.

    Connor (1987), "Sample size for testing differences in proportions for the paired-sample design",
    Biometrics 43:207-211: n = (z_{a/2} sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2.
    Solved for d: (n + z_b^2) d^2 - 2 z_{a/2} sqrt(n psi) d + (z_{a/2}^2 - z_b^2) psi = 0, the larger root,
    at most psi (the difference cannot exceed the discordant share). None when nothing is discordant
    (psi = 0: no difference was seen to size the test by) or there are no examples."""
    from scipy.stats import norm

    if n <= 0 or discordant_rate <= 0:
        return None
    za, zb = norm.ppf(1 - alpha / 2), norm.ppf(power)
    a, b, c = n + zb ** 2, -2 * za * (n * discordant_rate) ** 0.5, (za ** 2 - zb ** 2) * discordant_rate
    root = (-b + max(b * b - 4 * a * c, 0.0) ** 0.5) / (2 * a)
    return float(min(root, discordant_rate))
