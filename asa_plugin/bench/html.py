"""report.html of a bench: one self-contained page to look at the attacks (issue 36).

The page holds everything it shows: report.json as it is (every number of the overview comes from
it; the page computes no statistic of its own), the labels report.md gives each cell (verdict,
degenerate check), every attacked example of every run and recipe from ``results.jsonl``, the
training curves from ``metrics.json``, and the PNG plots as data URIs. Scripts and styles are inlined
from ``report_html/``, so the file opens from disk with no server and no network, and can be attached
to a paper's supplement.

Examples are stored compactly: every distinct string (texts, outcomes) once in a table, and each
result row as a list of ``ROW_FIELDS`` with strings replaced by their position in that table. The
same sentence attacked under several models and recipes is then stored once.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from asa_plugin.attacks import results as res
from asa_plugin.bench.markdown import judged, verdict
from asa_plugin.bench.plan import grid_runs
from asa_plugin.fileio import write_text_atomic

ASSETS = Path(__file__).with_name("report_html")
ROW_FIELDS = ("index", "outcome", "gold_label", "original_prediction", "perturbed_prediction", "original_text",
              "perturbed_text", "original_text_pair", "perturbed_text_pair", "num_words", "words_perturbed",
              "queries", "original_confidence", "perturbed_confidence")
"""The fields of a results.jsonl row the page shows, in the order of each stored row."""
STRING_FIELDS = {"outcome", "original_text", "perturbed_text", "original_text_pair", "perturbed_text_pair"}
CURVE_KEYS = ("loss", "lr", "asa_mask_ratio_per_layer")
"""The step_history values of metrics.json drawn as training curves (those a run has)."""


class Strings:
    """A table of distinct strings; :meth:`id` gives a string's position (added on first use)."""

    def __init__(self) -> None:
        self.table: list[str] = []
        self._ids: dict[str, int] = {}

    def id(self, text: str | None) -> int | None:
        if text is None:
            return None
        if text not in self._ids:
            self._ids[text] = len(self.table)
            self.table.append(text)
        return self._ids[text]


def compact_row(row: dict, strings: Strings) -> list:
    """One results.jsonl row as a list of ``ROW_FIELDS`` (strings as ids into ``strings``)."""
    return [strings.id(row.get(k)) if k in STRING_FIELDS else row.get(k) for k in ROW_FIELDS]


def attacked_examples(out: Path, strings: Strings) -> list[dict[str, Any]]:
    """Every finished attack of the grid (one per run and recipe) with its rows, in the grid's order."""
    found = []
    for run in grid_runs(_bench(out)):
        for recipe in run["recipes"]:
            path = out / "runs" / run["run"] / "attack" / recipe / "results.jsonl"
            rows = res.read_rows(path) if path.is_file() else []
            if rows:
                found.append({"run": run["run"], "defence": run["defence"], "seed": run["seed"], "recipe": recipe,
                              "rows": [compact_row(r, strings) for r in sorted(rows, key=lambda r: r["index"])]})
    return found


def training_curves(out: Path, report: dict) -> list[dict[str, Any]]:
    """Per training run: its step_history curves (loss, lr, ASA mask ratio per layer) and eval accuracy
    per epoch, from metrics.json; runs without metrics are left out."""
    curves = []
    for row in report["training"]:
        path = out / "runs" / row["run"] / "metrics.json"
        if row["status"] != "done" or not path.is_file():
            continue
        metrics = res.read_json(path, path.name)
        steps = metrics.get("step_history") or []
        series = {key: [[s["step"], s[key]] for s in steps if s.get(key) is not None] for key in CURVE_KEYS}
        curves.append({"run": row["run"], "defence": row["defence"], "seed": row["seed"],
                       "series": {k: v for k, v in series.items() if v},
                       "eval_accuracy": [[h.get("step"), h.get("eval_accuracy")] for h in metrics.get("history", [])],
                       "asa_mask_ratio_per_layer": metrics.get("asa_mask_ratio_per_layer")})
    return curves


def plot_images(out: Path, report: dict) -> list[dict[str, str]]:
    """The drawn plots of the report as PNG data URIs (a plot not drawn keeps its reason)."""
    images = []
    for plot in report.get("plots", []):
        path = out / plot["file"] if plot.get("file") else None
        if path is not None and path.is_file():
            encoded = base64.b64encode(path.read_bytes()).decode("ascii")
            images.append({"name": plot["name"], "title": plot["title"], "src": f"data:image/png;base64,{encoded}"})
        else:
            images.append({"name": plot["name"], "title": plot["title"], "skipped": plot.get("skipped", "not drawn")})
    return images


def cell_labels(report: dict) -> list[dict[str, str]]:
    """report.md's words for each cell (verdict and degenerate check), so the page says the same."""
    baseline, labels = report.get("baseline"), []
    for cell in report["cells"]:
        comparison = cell.get("comparison") or {}
        if cell["status"] == "missing":
            kind, text = "missing", "missing"
        elif cell["defence"] == baseline:
            kind, text = "baseline", "baseline"
        elif comparison.get("status") != "done":
            kind, text = "na", comparison.get("reason", "n/a")
        else:
            text = verdict(comparison)
            kind = ("degenerate" if comparison.get("degenerate")
                    else "higher" if text.startswith("significantly higher")
                    else "lower" if text.startswith("significantly lower") else "ns")
        labels.append({"verdict": text, "kind": kind, "check": judged(cell)})
    return labels


def page_data(out: Path, report: dict) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able object."""
    strings = Strings()
    examples = attacked_examples(out, strings)
    return {"report": report, "labels": cell_labels(report), "fields": list(ROW_FIELDS), "strings": strings.table,
            "examples": examples, "curves": training_curves(out, report), "plots": plot_images(out, report)}


def render(data: dict[str, Any]) -> str:
    """The HTML text: the template with the styles, the script and the data inlined."""
    template = (ASSETS / "template.html").read_text(encoding="utf-8")
    payload = json.dumps(_finite(data), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    payload = payload.replace("<", "\\u003c")  # no </script> or <!-- inside the script element; JSON reads it as <
    title = f"Robustness bench: {data['report']['bench_dir']}"
    return (template.replace("{{title}}", _escape(title))
            .replace("/*{{style}}*/", (ASSETS / "report.css").read_text(encoding="utf-8"))
            .replace("/*{{script}}*/", (ASSETS / "report.js").read_text(encoding="utf-8"))
            .replace("{{data}}", payload))


def write_html(out_dir: str | Path, report: dict[str, Any]) -> Path:
    """Write ``out_dir/report.html`` for a collected report (with its plots); return its path."""
    out = Path(out_dir)
    path = out / "report.html"
    write_text_atomic(path, render(page_data(out, report)))
    return path


def _bench(out: Path) -> dict:
    from asa_plugin.bench.plan import read_bench_file

    return read_bench_file(out)


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has neither; the page shows n/a)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
