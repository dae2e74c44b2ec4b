"""report.json and report.md of a bench directory, built from stored results only.

Inputs: ``bench.json`` (the grid), ``runs/<label>/metrics.json`` (training) and
``runs/<label>/attack/<recipe>/summary.json`` (attacks). A cell whose file does not exist is
reported as missing; no value is ever filled in for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from asa_plugin.attacks import results as res
from asa_plugin.bench.plan import read_bench_file
from asa_plugin.outputs import portable_path

ATTACK_KEYS = ("clean_accuracy", "accuracy_under_attack", "attack_success_rate", "avg_words_perturbed_pct",
               "avg_queries", "num_examples", "seconds")
SETTINGS = {"model": ("backbone", "max_length"), "data": ("dataset", "train_file", "dev_file", "max_train_examples",
                                                          "subset_seed", "eval_split"),
            "train": ("epochs", "max_steps", "batch_size", "lr", "seed"),
            "attack": ("profile", "split", "num_examples", "seed", "query_budget")}


def _read_json(path: Path) -> dict | None:
    return res.read_json(path, path.name) if path.is_file() else None


def training_row(label: str, metrics: dict | None) -> dict[str, Any]:
    if metrics is None:
        return {"defence": label, "status": "missing"}
    steps, seconds = metrics.get("steps"), metrics.get("train_seconds")
    return {"defence": label, "status": "done", "eval_accuracy": metrics.get("eval_accuracy"), "steps": steps,
            "train_seconds": seconds, "seconds_per_step": seconds / steps if steps else None}


def relative_cost(rows: list[dict]) -> None:
    """Add each row's seconds per step divided by vanilla's (None without a finished vanilla)."""
    base = next((r.get("seconds_per_step") for r in rows if r["defence"] == "vanilla"), None)
    for row in rows:
        if row["status"] == "done":
            per_step = row.get("seconds_per_step")
            row["seconds_per_step_vs_vanilla"] = per_step / base if base and per_step is not None else None


def attack_row(label: str, recipe: str, summary: dict | None, training: dict) -> dict[str, Any]:
    row: dict[str, Any] = {"defence": label, "recipe": recipe, "status": "missing" if summary is None else "done"}
    for key in ("eval_accuracy", "train_seconds", "seconds_per_step_vs_vanilla"):
        if key in training:
            row[key] = training[key]
    if summary is not None:
        row.update({k: summary.get(k) for k in ATTACK_KEYS})
    return row


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


def collect(out_dir: str | Path) -> dict[str, Any]:
    """The report of bench directory ``out_dir`` (without plots)."""
    out = Path(out_dir)
    info = read_bench_file(out)
    runs = out / "runs"
    training = [training_row(label, _read_json(runs / label / "metrics.json")) for label in info["defences"]]
    relative_cost(training)
    cells, summaries, missing = [], [], []
    for train in training:
        label = train["defence"]
        if train["status"] == "missing":
            missing.append(f"train {label}")
        for recipe in info["recipes"]:
            summary = _read_json(runs / label / "attack" / recipe / "summary.json")
            cells.append(attack_row(label, recipe, summary, train))
            if summary is None:
                missing.append(f"attack {label}/{recipe}")
            else:
                summaries.append(summary)
    settings = {section: {k: info["settings"].get(section, {}).get(k) for k in keys
                          if info["settings"].get(section, {}).get(k) is not None}
                for section, keys in SETTINGS.items()}
    if settings["data"].get("train_file"):
        settings["data"].pop("dataset", None)  # a local train file overrides the dataset name
    return {"bench_dir": portable_path(out), "config": info.get("source"), "defences": info["defences"],
            "recipes": info["recipes"], "settings": settings, "defence_params": info.get("defence_params", {}),
            "machines": info.get("machines", []), "training": training, "cells": cells,
            "assets": _assets(summaries), "missing": missing}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the defence x recipe table, training cost, machine, settings, assets, missing cells, plots."""
    lines = [f"# Robustness bench: {report['bench_dir']}", ""]
    if report.get("config"):
        lines += [f"Config: `{report['config']}`. Defences: {', '.join(report['defences'])}. "
                  f"Recipes: {', '.join(report['recipes'])}.", ""]
    lines += ["## Defence x attack", "",
              "Accuracies in %. *Clean (dev)*: eval_accuracy of training; *clean (attacked)*: accuracy on the "
              "attacked subset; *success*: successful / (successful + failed); *words*: % words perturbed in "
              "successful attacks; *s/step*: training seconds per step relative to vanilla. "
              "`missing`: not run yet; `n/a`: no value (e.g. no successful attack).", "",
              "| Defence | Recipe | Clean (dev) | Clean (attacked) | Under attack | Success | Words % | Queries "
              "| Train s | s/step vs vanilla |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in report["cells"]:
        trained = "eval_accuracy" in c
        head = [c["defence"], c["recipe"], _pct(c.get("eval_accuracy")) if trained else "missing"]
        tail = ([_num(c.get("train_seconds")), _num(c.get("seconds_per_step_vs_vanilla"), 2, "x")]
                if trained else ["missing", "missing"])
        if c["status"] == "done":
            body = [_pct(c["clean_accuracy"]), _pct(c["accuracy_under_attack"]), _pct(c["attack_success_rate"]),
                    _num(c["avg_words_perturbed_pct"]), _num(c["avg_queries"])]
        else:
            body = ["missing"] * 5
        row = head + body + tail
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Training cost", "", "| Defence | Clean (dev) % | Steps | Train s | s/step | vs vanilla |",
              "|---|---:|---:|---:|---:|---:|"]
    for t in report["training"]:
        if t["status"] == "missing":
            lines.append(f"| {t['defence']} | missing | missing | missing | missing | missing |")
        else:
            lines.append(f"| {t['defence']} | {_pct(t['eval_accuracy'])} | {t['steps']} | {_num(t['train_seconds'])} "
                         f"| {_num(t['seconds_per_step'], 3)} | {_num(t['seconds_per_step_vs_vanilla'], 2, 'x')} |")
    attacked = sorted({c["num_examples"] for c in report["cells"] if c["status"] == "done"})
    if attacked:
        lines += ["", f"Examples attacked per cell: {', '.join(map(str, attacked))}."]
    lines += ["", "## Settings (the same for every defence)", ""]
    for section, values in report["settings"].items():
        lines.append(f"- `[{section}]` " + ", ".join(f"{k} = {v!r}" for k, v in values.items()))
    for label, params in report["defence_params"].items():
        lines.append(f"- defence `{label}`: `{json.dumps(params, sort_keys=True)}`")
    lines += ["", "## Machine", ""]
    for m in report["machines"] or [{}]:
        lines.append(f"- {m.get('platform', 'unknown')}; CPU {m.get('cpu', '?')} ({m.get('cpu_count', '?')} cores); "
                     f"GPU {m.get('gpu') or 'none'}; Python {m.get('python', '?')}, torch {m.get('torch', '?')}")
    lines += ["", "## Attack assets and substitutes", ""]
    if not report["assets"]:
        finished = any(c["status"] == "done" for c in report["cells"])
        lines.append("- none: the recipes used no external assets" if finished
                     else "- none recorded (no attack finished yet)")
    for a in report["assets"]:
        extra = {k: v for k, v in a.items() if k != "recipes"}
        lines.append(f"- `{json.dumps(extra, sort_keys=True)}` (recipes: {', '.join(a['recipes'])})")
    lines += ["", "## Missing cells", ""]
    lines += [f"- {m}" for m in report["missing"]] or ["- none: every cell finished"]
    lines += ["", "## Plots", ""]
    for plot in report.get("plots", []):
        if plot.get("file"):
            lines += [f"### {plot['title']}", "", f"![{plot['title']}]({plot['file']})", ""]
        else:
            lines += [f"- {plot['title']}: not drawn ({plot['skipped']})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out_dir: str | Path, pm=None) -> dict[str, Any]:
    """Collect, draw the plots, write report.json and report.md into ``out_dir``; return the report."""
    from asa_plugin.bench.plots import draw_all

    out = Path(out_dir)
    report = collect(out)
    report["plots"] = draw_all(report, out)
    res.write_json(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    if pm is not None:
        pm.on_report(report_dir=out, report=report)
    return report
