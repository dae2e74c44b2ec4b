"""The bench's PNG figures (matplotlib, Agg backend), drawn from a collected report.

Each ``plot_*`` function returns ``None`` when it drew the file, or a one-line reason why its
inputs do not exist yet; :func:`draw_all` lists both in the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from asa_plugin.errors import UserError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _done_cells(report: dict) -> list[dict]:
    return [c for c in report["cells"] if c["status"] == "done"]


def plot_accuracy_under_attack(report: dict, path: Path) -> str | None:
    """Grouped bars: accuracy under attack per defence (groups) and recipe (bars); clean dev accuracy as a tick."""
    cells = _done_cells(report)
    if not cells:
        return "no attack cell has finished yet"
    plt = _pyplot()
    defences, recipes = report["defences"], report["recipes"]
    width = 0.8 / len(recipes)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(defences) * max(1, len(recipes)) * 0.6 + 2), 4.5))
    by_key = {(c["defence"], c["recipe"]): c for c in cells}
    for j, recipe in enumerate(recipes):
        xs, ys = [], []
        for i, defence in enumerate(defences):
            cell = by_key.get((defence, recipe))
            if cell is not None and cell["accuracy_under_attack"] is not None:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(100 * cell["accuracy_under_attack"])
        bars = ax.bar(xs, ys, width, label=recipe, color=f"C{j}")  # fixed colour even when empty
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    clean_label = "clean (dev)"
    for i, defence in enumerate(defences):
        clean = next((t.get("eval_accuracy") for t in report["training"] if t["defence"] == defence), None)
        if clean is not None:
            ax.hlines(100 * clean, i - 0.4, i + 0.4, colors="black", linestyles="dashed", linewidth=1,
                      label=clean_label)
            clean_label = None  # one legend entry
        if not any((defence, r) in by_key for r in recipes):
            ax.text(i, 2, "missing", ha="center", fontsize=8, color="gray", rotation=90)
    ax.set_xticks(range(len(defences)), defences, rotation=20)
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy under attack per defence and recipe")
    from matplotlib.patches import Patch

    # Explicit handles: an empty bar group (a recipe not run yet) has no patch to take a colour from.
    handles = [h for h in ax.get_legend_handles_labels()[0] if not hasattr(h, "patches")]
    handles += [Patch(color=f"C{j}", label=recipe) for j, recipe in enumerate(recipes)]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def plot_clean_vs_attack(report: dict, path: Path) -> str | None:
    """Scatter: clean dev accuracy (x) against accuracy under attack (y), one labelled point per cell."""
    points = [c for c in _done_cells(report)
              if c.get("eval_accuracy") is not None and c["accuracy_under_attack"] is not None]
    if not points:
        return "no finished attack cell with a finished training run yet"
    plt = _pyplot()
    markers = "osD^vP*X"
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for j, recipe in enumerate(report["recipes"]):
        mine = [c for c in points if c["recipe"] == recipe]
        if not mine:
            continue
        at: dict[tuple[float, float], list[str]] = {}  # defences on the same point share one label
        for c in mine:
            at.setdefault((100 * c["eval_accuracy"], 100 * c["accuracy_under_attack"]), []).append(c["defence"])
        ax.scatter([x for x, _ in at], [y for _, y in at], marker=markers[j % len(markers)], label=recipe, s=40)
        for (x, y), names in at.items():
            ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.plot([0, 100], [0, 100], color="gray", linewidth=0.8, linestyle=":", label="no loss under attack")
    ax.set_xlim(0, 102)
    ax.set_ylim(0, 102)
    ax.set_xlabel("clean accuracy on dev (%)")
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_title("Clean accuracy vs accuracy under attack")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="recipe")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def asa_labels(report: dict) -> list[str]:
    """The defences of the grid that include ASA (``asa`` or a composition such as ``asa+freelb``)."""
    return [d for d in report["defences"] if "asa" in [p.strip() for p in d.split("+")]]


def plot_asa_mask_ratio(report: dict, out_dir: Path, path: Path) -> str | None:
    """One line per ASA-bearing run: fraction of attention units masked per layer (last epoch)."""
    series = {}
    for label in asa_labels(report):
        metrics_path = out_dir / "runs" / label / "metrics.json"
        if metrics_path.is_file():
            ratios = json.loads(metrics_path.read_text(encoding="utf-8")).get("asa_mask_ratio_per_layer")
            if ratios:
                series[label] = ratios
    if not series:
        return ("no defence of the grid includes asa" if not asa_labels(report)
                else "no finished ASA run with asa_mask_ratio_per_layer yet")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, ratios in series.items():
        ys = [math.nan if r is None else 100 * r for r in ratios]
        ax.plot(range(len(ys)), ys, marker="o", label=label)
    ax.set_ylim(bottom=0)
    layers = max(len(r) for r in series.values())
    ax.set_xticks(range(layers))
    ax.set_xlabel("layer")
    ax.set_ylabel("attention units masked (%)")
    ax.set_title("ASA mask ratio per layer (last training epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def map_sentences(run_dir: Path, count: int = 5, min_words: int = 5) -> list[str]:
    """Dev sentences attacked for this run (stored results): the ``count`` shortest with at least
    ``min_words`` words, so that the drawn map stays legible."""
    from asa_plugin.attacks import results as res

    texts = sorted({r["original_text"] for f in sorted((run_dir / "attack").glob("*/results.jsonl"))
                    for r in res.read_rows(f)})
    long_enough = [t for t in texts if len(t.split()) >= min_words] or texts
    return sorted(long_enough, key=lambda t: (len(t.split()), t))[:count]


def plot_asa_map(report: dict, out_dir: Path, path: Path) -> str | None:
    """Clean attention beside the ASA mask, on the layer masked most, for the first finished ASA run."""
    from asa_plugin.defences.asa.maps import compute_maps, render

    labels = asa_labels(report)
    if not labels:
        return "no defence of the grid includes asa"
    for label in labels:
        run_dir = out_dir / "runs" / label
        if not (run_dir / "metrics.json").is_file():
            continue
        candidates = []  # (masked ratio, -order, text, tokens, map): the sentence and layer masked most
        try:
            for order, text in enumerate(map_sentences(run_dir)):
                tokens, maps = compute_maps(run_dir, text)
                for m in maps:
                    candidates.append((m.masked_ratio, -order, -m.layer, text, tokens, m))
        except UserError:
            continue
        if candidates:
            *_, text, tokens, chosen = max(candidates, key=lambda c: c[:3])
            render(tokens, [chosen], path, title=f"{label}: {text}")
            return None
    return "no finished ASA run with attacked dev sentences yet"


PLOTS = [
    ("accuracy_under_attack", "Accuracy under attack per defence and recipe"),
    ("clean_vs_attack", "Clean accuracy vs accuracy under attack"),
    ("asa_mask_ratio", "ASA mask ratio per layer"),
    ("asa_map", "ASA attention and mask map"),
]


def draw_all(report: dict, out_dir: Path) -> list[dict[str, Any]]:
    """Draw every plot into ``out_dir``; a plot whose inputs are missing is listed with the reason."""
    out_dir = Path(out_dir)
    drawers = {
        "accuracy_under_attack": lambda p: plot_accuracy_under_attack(report, p),
        "clean_vs_attack": lambda p: plot_clean_vs_attack(report, p),
        "asa_mask_ratio": lambda p: plot_asa_mask_ratio(report, out_dir, p),
        "asa_map": lambda p: plot_asa_map(report, out_dir, p),
    }
    listed = []
    for name, title in PLOTS:
        path = out_dir / f"{name}.png"
        skipped = drawers[name](path)
        if skipped:
            path.unlink(missing_ok=True)  # never leave a stale figure beside a report that lacks its inputs
            listed.append({"name": name, "title": title, "file": None, "skipped": skipped})
        else:
            listed.append({"name": name, "title": title, "file": path.name})
    return listed
