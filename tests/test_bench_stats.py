"""The bench's paired statistics on synthetic per-example outcomes whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from asa_plugin.attacks.results import summarize

from asa_plugin.bench import stats

OUTCOME_CASES = [  # (results.jsonl outcome, correct before the attack, still correct after it)
    ("skipped", False, False),  # the model was already wrong: nothing to attack
    ("successful", True, False),  # the attack flipped a correct prediction
    ("failed", True, True),  # the attack found no adversarial example
    ("maximized", True, True),  # counted as summary.json counts it
]


def rows(outcomes: list[str], texts: list[str] | None = None) -> list[dict]:
    return [{"index": i, "outcome": o, "original_text": (texts or [f"text {j}" for j in range(len(outcomes))])[i],
             "words_perturbed_pct": 10.0, "queries": 5, "seconds": 0.1} for i, o in enumerate(outcomes)]


def outcomes(robust: list[bool] | np.ndarray, clean: list[bool] | None = None) -> stats.Outcomes:
    robust = np.asarray(robust, dtype=bool)
    clean = robust.copy() if clean is None else np.asarray(clean, dtype=bool)
    return stats.Outcomes(index=np.arange(robust.size), text=[f"text {i}" for i in range(robust.size)],
                          clean=clean, robust=robust)


@pytest.mark.parametrize(("outcome", "clean", "robust"), OUTCOME_CASES, ids=[c[0] for c in OUTCOME_CASES])
def test_each_outcome_maps_to_clean_and_robust_correctness(outcome, clean, robust):
    found = stats.Outcomes.from_rows(rows([outcome]))
    assert (bool(found.clean[0]), bool(found.robust[0])) == (clean, robust)


@pytest.mark.parametrize("extra", [[], ["unperturbable"], ["unperturbable", "unperturbable"]])
def test_outcome_means_are_the_summary_accuracies(extra):
    mixed = rows(["skipped", "successful", "failed", *extra, "failed", "maximized", "successful", "skipped",
                  "failed"])
    summary = summarize(mixed, {"recipe": "r", "profile": "p", "seed": 0, "split": "dev", "model": "m",
                                "data": "d", "selection_size": len(mixed)}, [])
    found = stats.Outcomes.from_rows(mixed)
    assert found.robust.mean() == summary["accuracy_under_attack"]
    assert found.clean.mean() == summary["clean_accuracy"]
    assert found.index.size == len(mixed) - len(extra) == len(mixed) - summary["unperturbable"]


def test_identical_pair_has_delta_zero_an_interval_of_zero_and_p_one():
    rng = np.random.default_rng(0)
    same = outcomes(rng.random(300) < 0.4)
    result = stats.compare({42: same}, {42: same}, resamples=2000)
    diff = result["accuracy_under_attack"]
    assert diff["delta"] == 0.0 and diff["ci"] == [0.0, 0.0] and not diff["significant"]
    assert result["mcnemar"] == [{"seed": 42, "defence_only_correct": 0, "baseline_only_correct": 0, "p_value": 1.0}]
    assert result["n_examples"] == 300 and result["excluded_examples"] == 0


MCNEMAR_CASES = [  # (examples only the defence keeps, only the baseline keeps, exact two-sided p)
    (10, 0, 2 * 0.5**10),
    (0, 10, 2 * 0.5**10),
    (1, 1, 1.0),
    (3, 0, 0.25),
    (0, 0, 1.0),
]


@pytest.mark.parametrize(("only_d", "only_b", "p"), MCNEMAR_CASES)
def test_mcnemar_exact_p_values(only_d, only_b, p):
    both = 20  # concordant examples do not change the test
    defence = np.array([True] * only_d + [False] * only_b + [True] * both)
    baseline = np.array([False] * only_d + [True] * only_b + [True] * both)
    result = stats.mcnemar_exact(defence, baseline)
    assert (result["defence_only_correct"], result["baseline_only_correct"]) == (only_d, only_b)
    assert result["p_value"] == pytest.approx(p)


def test_a_large_effect_is_significant_in_both_tests():
    rng = np.random.default_rng(1)
    baseline = rng.random(300) < 0.3
    defence = baseline | (rng.random(300) < 0.4)  # the defence keeps every example the baseline keeps, and more
    result = stats.compare({1: outcomes(defence)}, {1: outcomes(baseline)}, resamples=2000)
    diff = result["accuracy_under_attack"]
    assert diff["significant"] and diff["ci"][0] > 0.15
    assert diff["delta"] == pytest.approx(defence.mean() - baseline.mean())
    assert result["mcnemar"][0]["p_value"] < 1e-10


def test_a_small_effect_on_few_examples_is_not_significant():
    baseline = np.array([True, False] * 15)  # 30 examples
    defence = baseline.copy()
    defence[1] = True  # one more example kept: +3.3 points
    result = stats.compare({1: outcomes(defence)}, {1: outcomes(baseline)}, resamples=2000)
    assert result["accuracy_under_attack"]["delta"] == pytest.approx(1 / 30)
    assert not result["accuracy_under_attack"]["significant"] and result["mcnemar"][0]["p_value"] == 1.0


def test_the_interval_covers_the_true_difference_at_about_its_nominal_rate():
    rng = np.random.default_rng(2)
    true_delta, n, trials, covered = 0.10, 300, 200, 0
    for t in range(trials):
        baseline = rng.random(n) < 0.40
        # paired outcomes: the defence keeps an example the baseline keeps with probability 0.9, others with
        # probability (0.5 - 0.4 * 0.9) / 0.6, so its accuracy is 0.5 and the true difference 0.10
        keep = np.where(baseline, rng.random(n) < 0.9, rng.random(n) < (0.5 - 0.36) / 0.6)
        low, high = stats.crossed_bootstrap((keep.astype(float) - baseline)[None, :], resamples=1000, seed=t)
        covered += low <= true_delta <= high
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_with_one_seed_the_interval_is_scipys_percentile_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(3)
    diff = (rng.random(300) < 0.5).astype(float) - (rng.random(300) < 0.4)
    ours = stats.crossed_bootstrap(diff[None, :], resamples=20_000)
    theirs = bootstrap((diff,), np.mean, method="percentile", n_resamples=20_000, random_state=0).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.01)  # Monte Carlo error only


def test_seed_to_seed_variation_widens_the_interval():
    rng = np.random.default_rng(4)
    base = rng.random(300) < 0.4
    steady = np.stack([base.astype(float)] * 3)  # three seeds that agree
    shifts = [0.0, 0.15, 0.3]  # three seeds that disagree a lot: each keeps a different share of examples
    varied = np.stack([(rng.random(300) < 0.25 + s).astype(float) for s in shifts])
    width = {name: np.subtract(*stats.crossed_bootstrap(v, resamples=4000)[::-1])
             for name, v in (("steady", steady), ("varied", varied))}
    examples_only = np.subtract(*stats.crossed_bootstrap(varied.mean(axis=0, keepdims=True), resamples=4000)[::-1])
    assert width["varied"] > 1.5 * examples_only  # seeds resampled too, not only examples
    assert width["steady"] == pytest.approx(
        np.subtract(*stats.crossed_bootstrap(base[None, :].astype(float), resamples=4000)[::-1]), rel=0.05)


def test_the_bootstrap_is_reproducible():
    diff = np.random.default_rng(5).integers(-1, 2, size=(3, 100)).astype(float)
    assert stats.crossed_bootstrap(diff) == stats.crossed_bootstrap(diff)


def test_seeds_are_paired_by_seed_and_examples_by_index_and_text():
    base = outcomes([True, False, True, True])
    other = stats.Outcomes(index=np.array([0, 1, 2, 3]), text=["text 0", "text 1", "another text", "text 3"],
                           clean=np.ones(4, bool), robust=np.array([True, True, False, True]))
    result = stats.compare({42: other, 43: other}, {42: base, 44: base}, resamples=500)
    assert result["seeds"] == [42]  # 43 and 44 have no partner
    assert result["n_examples"] == 3 and result["excluded_examples"] == 1  # index 2 was another sentence
    assert result["accuracy_under_attack"]["delta"] == pytest.approx(1 / 3)
    assert stats.compare({43: other}, {44: base})["status"] == "unavailable"


HOLM_CASES = [  # (p-values, Holm-adjusted p-values): multiply the i-th smallest of m by m - i + 1, keep monotone
    ([0.01], [0.01]),
    ([0.01, 0.04, 0.03, 0.5], [0.04, 0.09, 0.09, 0.5]),  # 4*0.01, 3*0.03, max(2*0.04, 0.09), 1*0.5
    ([0.2, 0.2, 0.2], [0.6, 0.6, 0.6]),
    ([0.6, 0.001], [0.6, 0.002]),  # capped below at the running maximum, in the order given
    ([0.9, 0.8], [1.0, 1.0]),  # 2 * 0.8 capped at 1, and monotone
    ([], []),
]


@pytest.mark.parametrize(("p_values", "adjusted"), HOLM_CASES)
def test_holm_adjusted_p_values(p_values, adjusted):
    assert stats.holm(p_values) == pytest.approx(adjusted)


def test_holm_agrees_with_its_definition_on_random_p_values():
    """Holm (1979): adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j)), for sorted p."""
    p = np.random.default_rng(1).uniform(0, 0.2, size=12)
    order = np.argsort(p)
    expected = np.empty_like(p)
    expected[order] = np.minimum(1, np.maximum.accumulate((12 - np.arange(12)) * p[order]))
    assert stats.holm(p.tolist()) == pytest.approx(expected.tolist())


@pytest.mark.parametrize(("rate", "n"), [(0.2, 300), (0.05, 300), (0.3, 50), (0.5, 1000)])
def test_the_detectable_difference_solves_connors_sample_size_for_n(rate, n):
    """Connor (1987): n = (z_{a/2} sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2 at the difference returned."""
    from scipy.stats import norm

    d = stats.detectable_difference(rate, n)
    za, zb = norm.ppf(0.975), norm.ppf(0.8)
    assert 0 < d <= rate
    assert (za * rate ** 0.5 + zb * (rate - d * d) ** 0.5) ** 2 / d ** 2 == pytest.approx(n)


def test_the_detectable_difference_shrinks_with_more_examples_and_needs_discordant_ones():
    assert stats.detectable_difference(0.2, 1200) == pytest.approx(stats.detectable_difference(0.2, 300) / 2, rel=0.05)
    assert stats.detectable_difference(0.2, 300) > stats.detectable_difference(0.2, 3000)
    assert stats.detectable_difference(0.0, 300) is None and stats.detectable_difference(0.2, 0) is None
    assert stats.detectable_difference(0.3, 5) == 0.3  # never more than the discordant share


def test_a_real_difference_of_the_detectable_size_is_found_about_80_percent_of_the_time():
    """Simulated McNemar tests at the detectable difference: power near the nominal 80 %."""
    rng = np.random.default_rng(0)
    n, rate = 300, 0.2
    d = stats.detectable_difference(rate, n)
    p10, p01 = (rate + d) / 2, (rate - d) / 2
    found = 0
    for _ in range(400):
        cells = rng.choice(3, size=n, p=[p10, p01, 1 - rate])  # 0: only defence correct, 1: only baseline
        defence, baseline = cells == 0, cells == 1
        found += stats.mcnemar_exact(defence, baseline)["p_value"] < 0.05
    assert 0.7 <= found / 400 <= 0.9
