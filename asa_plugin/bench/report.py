"""report.json and report.md of a bench directory, built from stored results only.

Inputs: ``bench.json`` (the grid and its runs), ``runs/<run>/metrics.json`` (training) and
``runs/<run>/attack/<recipe>/summary.json`` and ``results.jsonl`` (attacks), where ``<run>`` is
``<label>`` for the first seed and ``<label>.seed<s>`` for the others. A cell whose file does not
exist is reported as missing; no value is ever filled in for it.

A cell of the report is one defence under one recipe: its values are means over the seeds that
finished (each seed's values kept in ``per_seed``, ``<key>_std`` the standard deviation when
there are several), the interval of its accuracy under attack, and its paired comparison with the
baseline (see :mod:`asa_plugin.bench.stats`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from asa_plugin import degenerate
from asa_plugin.attacks import results as res
from asa_plugin.bench import stats
from asa_plugin.bench.plan import grid_runs, read_bench_file
from asa_plugin.bench.static import parse as parse_static
from asa_plugin.fileio import write_text_atomic
from asa_plugin.outputs import portable_path

ATTACK_KEYS = ("clean_accuracy", "accuracy_under_attack", "attack_success_rate", "avg_words_perturbed_pct",
               "avg_queries", "num_examples", "unperturbable", "seconds")
TRAINING_KEYS = ("eval_accuracy", "train_seconds", "train_cpu_seconds", "seconds_per_step_vs_vanilla")
SETTINGS = {"model": ("backbone", "max_length"), "data": ("dataset", "train_file", "dev_file", "max_train_examples",
                                                          "subset_seed", "eval_split"),
            "train": ("epochs", "max_steps", "batch_size", "lr", "seed"),
            "attack": ("profile", "split", "num_examples", "seed", "query_budget")}


def _read_json(path: Path) -> dict | None:
    return res.read_json(path, path.name) if path.is_file() else None


def training_row(run: dict, metrics: dict | None) -> dict[str, Any]:
    """One training run: clean dev accuracy, cost, and the degenerate verdict.

    The verdict is judged again from the recorded eval confusion matrix (or the counts it is recovered
    from) with today's criterion; a run with neither keeps the flag it recorded."""
    row = {"defence": run["defence"], "seed": run["seed"], "run": run["run"]}
    if metrics is None:
        return {**row, "status": "missing"}
    steps, seconds = metrics.get("steps"), metrics.get("train_seconds")
    row = {**row, "status": "done", "eval_accuracy": metrics.get("eval_accuracy"), "steps": steps,
           "train_seconds": seconds, "train_cpu_seconds": metrics.get("train_cpu_seconds"),  # None: older run
           "seconds_per_step": seconds / steps if steps else None,
           "degenerate": bool(metrics.get("degenerate", False)), "degenerate_reason": metrics.get("degenerate_reason")}
    history = metrics.get("history") or []
    matrix = degenerate.epoch_confusion(history[-1]) if history else None
    if matrix is not None:
        verdict = degenerate.judge(matrix)
        row.update(degenerate=verdict.degenerate is True, degenerate_reason=verdict.reason,
                   judgement=verdict.to_dict())
    return row


def relative_cost(rows: list[dict]) -> None:
    """Add each row's seconds per step divided by vanilla's with the same seed (the runs of one seed
    ran at about the same time, on the same machine), else by the mean over vanilla's finished seeds."""
    base = {r["seed"]: r["seconds_per_step"] for r in rows
            if r["defence"] == "vanilla" and r["status"] == "done" and r.get("seconds_per_step")}
    mean = statistics.mean(base.values()) if base else None
    for row in rows:
        if row["status"] == "done":
            per_step, vanilla = row.get("seconds_per_step"), base.get(row["seed"], mean)
            row["seconds_per_step_vs_vanilla"] = per_step / vanilla if vanilla and per_step is not None else None


def _mean_std(values: list) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def seed_cell(label: str, recipe: str, seeds: list[int], summaries: dict[int, dict],
              training: dict[int, dict]) -> dict[str, Any]:
    """One defence under one recipe over its ``seeds``: per-seed values, their mean (and std)."""
    done = [s for s in seeds if s in summaries]
    status = "done" if len(done) == len(seeds) else "partial" if done else "missing"
    cell: dict[str, Any] = {"defence": label, "recipe": recipe, "status": status, "seeds": seeds, "seeds_done": done}
    per_seed = {}
    for seed in seeds:
        train = training.get(seed, {})
        values = {k: train[k] for k in TRAINING_KEYS if k in train}
        if seed in summaries:
            values.update({k: summaries[seed].get(k) for k in ATTACK_KEYS})
        judged = summaries.get(seed, {}).get("judgement")
        if judged is not None:  # the attacked examples, judged from their stored predictions
            values["balanced_accuracy_attacked"] = judged["balanced_accuracy"]
            values["judgement"] = judged
        reasons = [f"dev: {train['degenerate_reason']}" if train.get("degenerate") else None,
                   f"attacked examples: {judged['reason']}" if judged and judged["degenerate"] else None]
        if any(reasons):
            values["degenerate"], values["degenerate_reason"] = True, "; ".join(r for r in reasons if r)
        if values:
            per_seed[str(seed)] = values
    keys = [k for k in (*TRAINING_KEYS, *ATTACK_KEYS, "balanced_accuracy_attacked")
            if any(k in v for v in per_seed.values())]
    for key in keys:
        mean, std = _mean_std([v.get(key) for v in per_seed.values()])
        cell[key] = mean
        if std is not None:
            cell[f"{key}_std"] = std
    flagged = [f"seed {s}: {v.get('degenerate_reason')}" for s, v in per_seed.items() if v.get("degenerate")]
    cell["degenerate"] = bool(flagged)
    if flagged:
        cell["degenerate_reason"] = "; ".join(flagged)
    undetermined = [s for s, v in per_seed.items() if v.get("judgement", {}).get("degenerate", False) is None]
    if undetermined and not flagged:
        cell["degenerate_undetermined"] = undetermined
    cell["per_seed"] = per_seed
    return cell


def _assets(summaries: list[dict]) -> list[dict]:
    """Every distinct asset (and substitute) named by the attack summaries, with the recipes using it."""
    found: dict[str, dict] = {}
    for summary in summaries:
        for asset in summary.get("assets", []):
            key = json.dumps(asset, sort_keys=True)
            entry = found.setdefault(key, {**asset, "recipes": []})
            if summary["recipe"] not in entry["recipes"]:
                entry["recipes"].append(summary["recipe"])
    return [found[k] for k in sorted(found)]


def add_statistics(cells: list[dict], outcomes: dict[tuple[str, str], dict[int, stats.Outcomes]],
                   baseline: str | None) -> None:
    """Each cell's accuracy interval and its paired comparison with ``baseline`` under the same recipe."""
    by_key = {(c["defence"], c["recipe"]): c for c in cells}
    for cell in cells:
        mine = outcomes.get((cell["defence"], cell["recipe"]), {})
        cell["accuracy_under_attack_ci"] = stats.accuracy_interval(mine)
        if baseline is None or cell["defence"] == baseline or cell["status"] == "missing":
            continue
        theirs = outcomes.get((baseline, cell["recipe"]), {})
        if not mine or not theirs:
            reason = ("the baseline has no finished attack under this recipe" if not theirs
                      else "no results.jsonl for this cell")
            cell["comparison"] = {"baseline": baseline, "status": "unavailable", "reason": reason}
            continue
        cell["comparison"] = {"baseline": baseline, **stats.compare(mine, theirs),
                              "degenerate": cell["degenerate"] or by_key[(baseline, cell["recipe"])]["degenerate"]}
        if cell["comparison"]["status"] == "done":
            cell["comparison"]["detectable_difference"] = detectable(cell["comparison"])
    adjust_holm(cells)


def detectable(comparison: dict) -> dict[str, Any]:
    """The smallest difference in accuracy under attack the comparison could detect (80 % power, two-sided
    0.05), from its discordant rate (mean over its seeds) and its number of examples."""
    n = comparison["n_examples"]
    rates = [(m["defence_only_correct"] + m["baseline_only_correct"]) / n for m in comparison["mcnemar"]]
    rate = statistics.mean(rates)
    return {"difference": stats.detectable_difference(rate, n), "discordant_rate": rate, "n_examples": n,
            "power": stats.POWER, "alpha": stats.ALPHA}


def adjust_holm(cells: list[dict]) -> int:
    """Add ``p_holm`` to every McNemar test of the report: Holm's adjustment over all of them (each
    defence x recipe x seed against the baseline is one test of the family). Returns the family's size."""
    tests = [m for c in cells if c.get("comparison", {}).get("status") == "done" for m in c["comparison"]["mcnemar"]]
    for test, adjusted in zip(tests, stats.holm([m["p_value"] for m in tests])):
        test["p_holm"] = adjusted
    return len(tests)


def collect(out_dir: str | Path, baseline: str | None = None) -> dict[str, Any]:
    """The report of bench directory ``out_dir`` (without plots): every cell compared with ``baseline``,
    by default the bench's own (``bench.baseline``, else vanilla when the grid has it)."""
    out = Path(out_dir)
    info = read_bench_file(out)
    runs_dir = out / "runs"
    runs = grid_runs(info)
    training = [training_row(run, _read_json(runs_dir / run["run"] / "metrics.json")) for run in runs]
    relative_cost(training)
    summaries: dict[tuple[str, str], dict[int, dict]] = {}
    outcomes: dict[tuple[str, str], dict[int, stats.Outcomes]] = {}
    missing = []
    for run, train in zip(runs, training):
        if train["status"] == "missing":
            missing.append(f"train {run['run']}")
        for recipe in run["recipes"]:
            recipe_dir = runs_dir / run["run"] / "attack" / recipe
            summary = _read_json(recipe_dir / "summary.json")
            if summary is None:
                missing.append(f"attack {run['run']}/{recipe}")
                continue
            rows = res.read_rows(recipe_dir / "results.jsonl")
            verdict = degenerate.judge_rows(rows)
            summary = {**summary, "judgement": verdict.to_dict() if verdict else None}
            summaries.setdefault((run["defence"], recipe), {})[run["seed"]] = summary
            if rows:
                outcomes.setdefault((run["defence"], recipe), {})[run["seed"]] = stats.Outcomes.from_rows(rows)
    cells = []
    for label in info["defences"]:
        mine = {t["seed"]: t for t in training if t["defence"] == label}
        for recipe in info["recipes"]:
            seeds = [r["seed"] for r in runs if r["defence"] == label and recipe in r["recipes"]]
            cells.append(seed_cell(label, recipe, seeds, summaries.get((label, recipe), {}), mine))
    baseline = baseline or info.get("baseline", "vanilla" if "vanilla" in info["defences"] else None)
    add_statistics(cells, outcomes, baseline)
    static = [parse_static(spec)[2] for spec in info.get("static_sets", [])]
    for train in training:  # static sets: one accuracy per trained run
        found = {n: _read_json(runs_dir / train["run"] / "evaluate" / n / "summary.json") for n in static}
        train["static"] = {n: None if s is None else s["accuracy"] for n, s in found.items()}
        missing += [f"evaluate {train['run']}/{n}" for n, s in found.items() if s is None]
    settings = {section: {k: info["settings"].get(section, {}).get(k) for k in keys
                          if info["settings"].get(section, {}).get(k) is not None}
                for section, keys in SETTINGS.items()}
    if settings["data"].get("train_file"):
        settings["data"].pop("dataset", None)  # a local train file overrides the dataset name
    return {"bench_dir": portable_path(out), "config": info.get("source"), "defences": info["defences"],
            "recipes": info["recipes"], "seeds": list(dict.fromkeys(r["seed"] for r in runs)),
            "baseline": baseline, "statistics": {"level": stats.LEVEL, "bootstrap_resamples": stats.RESAMPLES,
                                                 "bootstrap_seed": stats.BOOTSTRAP_SEED,
                                                 "holm_family": _family(cells), "power": stats.POWER,
                                                 "alpha": stats.ALPHA},
            "settings": settings, "defence_params": info.get("defence_params", {}),
            "machines": info.get("machines", []), "training": training, "cells": cells, "static_sets": static,
            "assets": _assets([s for by_seed in summaries.values() for s in by_seed.values()]), "missing": missing,
            "failed": failed_cells(out)}


def _family(cells: list[dict]) -> int:
    """How many McNemar tests the Holm adjustment covered."""
    return sum(len(c["comparison"]["mcnemar"]) for c in cells if c.get("comparison", {}).get("status") == "done")


def failed_cells(out: Path) -> list[dict[str, str]]:
    """The cells whose last attempt failed, with their one-line errors (OUT/failures.json, issue 22)."""
    from asa_plugin.bench.executors import read_failures

    return [{"cell": key, "error": error} for key, error in sorted(read_failures(out).items())]


def write_report(out_dir: str | Path, pm=None) -> dict[str, Any]:
    """Collect, draw the plots, write report.json, report.md and report.html into ``out_dir``; return the report."""
    from asa_plugin.bench.html import write_html
    from asa_plugin.bench.markdown import render_markdown
    from asa_plugin.bench.plots import draw_all

    out = Path(out_dir)
    report = collect(out)
    report["plots"] = draw_all(report, out)
    res.write_json(out / "report.json", report)
    write_text_atomic(out / "report.md", render_markdown(report))
    write_html(out, report)
    if pm is not None:
        pm.on_report(report_dir=out, report=report)
    return report
