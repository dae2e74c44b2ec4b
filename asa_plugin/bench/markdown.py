"""report.md of a bench: the tables of a collected report (see :mod:`asa_plugin.bench.report`)."""

from __future__ import annotations

import json
from typing import Any

DEGENERATE = "degenerate"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _spread(cell: dict, key: str, fmt=_pct) -> str:
    """Mean, and ``± std`` when the cell has several seeds (std in the unit of the mean)."""
    text = fmt(cell.get(key))
    std = cell.get(f"{key}_std")
    if std is not None:
        text += f" ± {fmt(std)}"
    return text


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def delta_text(diff: dict) -> str:
    """``+2.7 [-1.0, +6.3]``: a difference in points with its interval."""
    low, high = diff["ci"]
    return f"{_points(diff['delta'])} [{_points(low)}, {_points(high)}]"


def verdict(comparison: dict) -> str:
    if comparison.get("degenerate"):
        return DEGENERATE
    diff = comparison["accuracy_under_attack"]
    if not diff["significant"]:
        return "not significant"
    text = "significantly higher" if diff["delta"] > 0 else "significantly lower"
    disagree = [m for m in comparison["mcnemar"] if m["p_value"] >= 0.05]
    if len(comparison["mcnemar"]) == 1 and disagree:  # the two tests differ at the border: say so
        text += f" by the interval only (McNemar p = {disagree[0]['p_value']:.3g})"
    return text


def _p_values(comparison: dict) -> str:
    return "; ".join(f"{m['p_value']:.3g}" for m in comparison["mcnemar"])


def _holm(comparison: dict) -> str:
    return "; ".join("n/a" if m.get("p_holm") is None else f"{m['p_holm']:.3g}" for m in comparison["mcnemar"])


def _detectable(comparison: dict) -> str:
    """``±7.2``: the smallest difference in points the comparison detects at 80 % power, ``n/a`` without one."""
    found = comparison.get("detectable_difference") or {}
    return "n/a" if found.get("difference") is None else f"±{100 * found['difference']:.1f}"


def train_seconds(row: dict) -> str:
    """Wall seconds of training, with the process's CPU seconds beside them where recorded:
    ``2500.4 (CPU 2391.0)``."""
    text = _spread(row, "train_seconds", _num)
    if row.get("train_cpu_seconds") is not None:
        text += f" (CPU {_spread(row, 'train_cpu_seconds', _num)})"
    return text


def _seeds(cell: dict) -> str:
    """The seeds of a cell: ``42, 43``, ``42 (43 missing)`` or ``42 missing``."""
    absent = ", ".join(str(s) for s in cell["seeds"] if s not in cell["seeds_done"])
    if not cell["seeds_done"]:
        return f"{absent} missing"
    text = ", ".join(str(s) for s in cell["seeds_done"])
    return text + (f" ({absent} missing)" if absent else "")


def _paired_columns(cell: dict, baseline: str | None) -> list[str]:
    """Δ under attack with its interval, and McNemar's p, for the main table."""
    if cell["defence"] == baseline:
        return ["baseline", "baseline"]
    comparison = cell.get("comparison")
    if cell["status"] == "missing" or comparison is None:
        return ["missing", "missing"] if cell["status"] == "missing" else ["n/a", "n/a"]
    if comparison["status"] != "done":
        return ["n/a", "n/a"]
    if comparison["degenerate"]:
        return [DEGENERATE, DEGENERATE]
    return [delta_text(comparison["accuracy_under_attack"]), _p_values(comparison)]


def judged(cell: dict) -> str:
    """The degenerate check of a cell: ``ok (BA 88.9)``, ``degenerate``, ``too few examples`` or ``missing``."""
    if cell["status"] == "missing":
        return "missing"
    if cell["degenerate"]:
        return DEGENERATE
    if cell.get("degenerate_undetermined"):
        return "too few examples"
    value = cell.get("balanced_accuracy_attacked")
    return "n/a" if value is None else f"ok (BA {_spread(cell, 'balanced_accuracy_attacked')})"


def cell_row(cell: dict, baseline: str | None) -> list[str]:
    trained = "eval_accuracy" in cell
    unperturbable = f" ({cell['unperturbable']:.0f} unperturbable)" if cell.get("unperturbable") else ""
    head = [cell["defence"], cell["recipe"], _seeds(cell), _num(cell.get("num_examples"), 0) + unperturbable,
            _spread(cell, "eval_accuracy") if trained else "missing"]
    tail = ([train_seconds(cell), _num(cell.get("seconds_per_step_vs_vanilla"), 2, "x")]
            if trained else ["missing", "missing"])
    if cell["status"] == "missing":
        body = ["missing"] * 5
    else:
        robust = DEGENERATE if cell["degenerate"] else _spread(cell, "accuracy_under_attack")
        body = [_spread(cell, "clean_accuracy"), robust, _spread(cell, "attack_success_rate"),
                _spread(cell, "avg_words_perturbed_pct", _num), _spread(cell, "avg_queries", _num)]
    return head + body + tail + _paired_columns(cell, baseline) + [judged(cell)]


def paired_table(report: dict) -> list[str]:
    """The comparison of every cell with the baseline under the same recipe."""
    baseline = report.get("baseline")
    lines = ["", f"## Paired comparison with {baseline or 'a baseline'}", ""]
    if baseline is None:
        return lines + ["- none: the grid has no `vanilla` and sets no `bench.baseline`"]
    lines += [f"Each defence against `{baseline}` on the same attacked examples, seed paired with seed "
              f"(the seeds both have). *Δ*: defence minus {baseline}, in accuracy points, with its "
              f"{100 * report['statistics']['level']:.0f} % bootstrap interval over examples (and seeds when "
              f"there are several; {report['statistics']['bootstrap_resamples']} resamples, generator seed "
              f"{report['statistics']['bootstrap_seed']}). *Only D / only B*: examples still correct after the "
              f"attack for the defence only / for {baseline} only, per seed (`;` between seeds). *McNemar p*: "
              f"exact test on those discordant examples, per seed. *Holm p*: McNemar's p adjusted by Holm's method "
              f"over all {report['statistics'].get('holm_family', 'the')} tests of this table (every defence x recipe "
              f"x seed), the p to read when asking whether *any* of these differences is real. *Detectable*: the "
              f"smallest Δ McNemar's test would find with {100 * report['statistics'].get('power', 0.8):.0f} % power "
              f"at p < 0.05, from the discordant rate and n (Connor 1987): a non-significant Δ with a large "
              f"detectable Δ means too few examples, not no difference. *Not significant*: the interval covers 0.",
              "", "| Defence | Recipe | Seeds | n | Δ clean (attacked) | Δ under attack | Only D / only B | McNemar p "
              "| Holm p | Detectable | Verdict |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for cell in report["cells"]:
        comparison = cell.get("comparison")
        if cell["defence"] == baseline or comparison is None:
            continue
        head = [cell["defence"], cell["recipe"]]
        if comparison["status"] != "done":
            lines.append("| " + " | ".join(head + ["-", "-", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a",
                                                    comparison["reason"]]) + " |")
            continue
        counts = "; ".join(f"{m['defence_only_correct']}/{m['baseline_only_correct']}" for m in comparison["mcnemar"])
        robust = DEGENERATE if comparison["degenerate"] else delta_text(comparison["accuracy_under_attack"])
        row = head + [", ".join(map(str, comparison["seeds"])), str(comparison["n_examples"]),
                      delta_text(comparison["clean_accuracy"]), robust, counts, _p_values(comparison),
                      _holm(comparison), _detectable(comparison), verdict(comparison)]
        lines.append("| " + " | ".join(row) + " |")
    excluded = sorted({c["comparison"]["excluded_examples"] for c in report["cells"]
                       if c.get("comparison", {}).get("status") == "done"} - {0})
    if excluded:
        lines += ["", f"Some comparisons left out examples that one of the runs lacked or saw with another text "
                      f"({', '.join(map(str, excluded))})."]
    return lines


def training_table(report: dict) -> list[str]:
    lines = ["", "## Training cost", "", "*Train s*: wall seconds of the training loop; *CPU s*: CPU seconds of the "
             "training process over the same steps (all its threads; `n/a` for runs recorded before it was "
             "measured). On a shared machine wall seconds grow with the load, CPU seconds much less.", "",
             "| Defence | Seed | Run | Clean (dev) % | Steps | Train s | CPU s | s/step "
             "| vs vanilla | Degenerate |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for t in report["training"]:
        head = f"| {t['defence']} | {t['seed']} | {t['run']} |"
        if t["status"] == "missing":
            lines.append(head + " missing | missing | missing | missing | missing | missing | missing |")
        else:
            flag = f"yes: {t['degenerate_reason']}" if t["degenerate"] else \
                f"no (BA {_pct(t['judgement']['balanced_accuracy'])})" if t.get("judgement") else "no"
            lines.append(f"{head} {_pct(t['eval_accuracy'])} | {t['steps']} | {_num(t['train_seconds'])} "
                         f"| {_num(t.get('train_cpu_seconds'))} "
                         f"| {_num(t['seconds_per_step'], 3)} | {_num(t['seconds_per_step_vs_vanilla'], 2, 'x')} "
                         f"| {flag} |")
    return lines


def static_table(report: dict[str, Any]) -> list[str]:
    """The static sets (``[bench] static_sets``): one accuracy column per set, one row per trained run."""
    names = report.get("static_sets") or []
    if not names:
        return []
    lines = ["", "## Static sets", "", "Accuracy in % of each trained model on each fixed set (`advrobust evaluate`).",
             "", "| Defence | Seed | Run | " + " | ".join(names) + " |", "|---|---:|---|" + "---:|" * len(names)]
    for t in report["training"]:
        static = t.get("static") or {}
        values = [_pct(static[n]) if static.get(n) is not None else "missing" for n in names]
        lines.append(f"| {t['defence']} | {t['seed']} | {t['run']} | " + " | ".join(values) + " |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the defence x recipe table, paired comparisons, training cost, machine, settings,
    assets, missing cells, plots."""
    baseline = report.get("baseline")
    lines = [f"# Robustness bench: {report['bench_dir']}", ""]
    if report.get("config"):
        lines += [f"Config: `{report['config']}`. Defences: {', '.join(report['defences'])}. "
                  f"Recipes: {', '.join(report['recipes'])}. Seeds: {', '.join(map(str, report['seeds']))}.", ""]
    lines += ["## Defence x attack", "",
              "Accuracies in %, mean ± standard deviation over the seeds listed (no ± with one seed). "
              "*n*: examples attacked; *clean (dev)*: eval_accuracy of training; *clean (attacked)*: accuracy on "
              "the attacked subset; *success*: successful / (successful + failed); *words*: % words perturbed in "
              "successful attacks; *train s*: wall seconds of training (the training process's CPU seconds in brackets "
              "where recorded); *s/step*: training seconds per step relative to vanilla (same seed); "
              "*Δ under attack*: "
              f"paired difference with {baseline or 'the baseline'} in points [95 % interval] and McNemar's p "
              "(per seed), see below. *Degenerate check*: judged from the stored predictions on the dev set and on "
              "the attacked examples (training/degenerate.py: a class recognised significantly less than half as "
              "often as chance, or predictions independent of the label, at p < 0.05); *BA*: balanced accuracy "
              "(mean per-class recall, chance = 1/classes) on the attacked examples. `degenerate`: the model "
              "(almost) ignores its input, so its accuracy under attack does not measure robustness (values kept "
              "in report.json). "
              "`missing`: not run yet; `n/a`: no value (e.g. no successful attack).", "",
              "| Defence | Recipe | Seeds | n | Clean (dev) | Clean (attacked) | Under attack | Success | Words % "
              f"| Queries | Train s | s/step vs vanilla | Δ under attack vs {baseline or 'baseline'} | McNemar p "
              "| Degenerate check |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(cell_row(c, baseline)) + " |" for c in report["cells"]]
    lines += paired_table(report)
    lines += training_table(report)
    lines += static_table(report)
    lines += ["", "## Settings (the same for every defence)", ""]
    for section, values in report["settings"].items():
        lines.append(f"- `[{section}]` " + ", ".join(f"{k} = {v!r}" for k, v in values.items()))
    lines.append(f"- seeds: {', '.join(map(str, report['seeds']))} (train.seed of each run; the data subset and the "
                 f"attacked examples are the same for every seed)")
    for label, params in report["defence_params"].items():
        lines.append(f"- defence `{label}`: `{json.dumps(params, sort_keys=True)}`")
    lines += ["", "## Machine", ""]
    for m in report["machines"] or [{}]:
        lines.append(f"- {m.get('platform', 'unknown')}; CPU {m.get('cpu', '?')} ({m.get('cpu_count', '?')} cores); "
                     f"GPU {m.get('gpu') or 'none'}; Python {m.get('python', '?')}, torch {m.get('torch', '?')}")
    lines += ["", "## Attack assets and substitutes", ""]
    if not report["assets"]:
        finished = any(c["status"] != "missing" for c in report["cells"])
        lines.append("- none: the recipes used no external assets" if finished
                     else "- none recorded (no attack finished yet)")
    for a in report["assets"]:
        extra = {k: v for k, v in a.items() if k != "recipes"}
        lines.append(f"- `{json.dumps(extra, sort_keys=True)}` (recipes: {', '.join(a['recipes'])})")
    lines += ["", "## Missing cells", ""]
    lines += [f"- {m}" for m in report["missing"]] or ["- none: every cell finished"]
    if report.get("failed"):  # issue 22: the cells whose last attempt failed, with their errors
        lines += ["", "## Failed cells", "", "Rerun the bench after fixing the cause; only these and the missing "
                  "cells run.", ""]
        lines += [f"- {f['cell']}: {f['error']}" for f in report["failed"]]
    lines += ["", "## Plots", ""]
    for plot in report.get("plots", []):
        if plot.get("file"):
            lines += [f"### {plot['title']}", "", f"![{plot['title']}]({plot['file']})", ""]
        else:
            lines += [f"- {plot['title']}: not drawn ({plot['skipped']})", ""]
    return "\n".join(lines).rstrip() + "\n"
