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
    """Cells with at least one finished seed."""
    return [c for c in report["cells"] if c["status"] != "missing"]


def _yerr(cell: dict) -> tuple[float, float]:
    """Lower and upper error-bar lengths (points) of a cell's accuracy-under-attack interval."""
    ci = cell.get("accuracy_under_attack_ci")
    if not ci:
        return 0.0, 0.0
    y = 100 * cell["accuracy_under_attack"]
    return max(0.0, y - 100 * ci[0]), max(0.0, 100 * ci[1] - y)


def plot_accuracy_under_attack(report: dict, path: Path) -> str | None:
    """Grouped bars: accuracy under attack per defence (groups) and recipe (bars) with their 95 %
    intervals; clean dev accuracy as a dashed tick; degenerate models hatched and labelled."""
    cells = _done_cells(report)
    if not cells:
        return "no attack cell has finished yet"
    plt = _pyplot()
    from matplotlib.patches import Patch

    defences, recipes = report["defences"], report["recipes"]
    width = 0.8 / len(recipes)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * len(defences) * max(1, len(recipes)) + 2), 4.8))
    by_key = {(c["defence"], c["recipe"]): c for c in cells}
    for j, recipe in enumerate(recipes):
        for i, defence in enumerate(defences):
            cell = by_key.get((defence, recipe))
            if cell is None or cell["accuracy_under_attack"] is None:
                continue
            x, y = i - 0.4 + width * (j + 0.5), 100 * cell["accuracy_under_attack"]
            low, high = _yerr(cell)
            if cell["degenerate"]:
                ax.bar(x, y, width, color="lightgray", hatch="//", edgecolor="gray")
                ax.text(x, 1, "degenerate", ha="center", va="bottom", fontsize=7, rotation=90, color="dimgray")
                continue
            ax.bar(x, y, width, color=f"C{j}")
            ax.errorbar(x, y, yerr=[[low], [high]], color="black", capsize=2, linewidth=0.8)
            ax.text(x, y + high + 1, f"{y:.0f}", ha="center", va="bottom", fontsize=6)
    clean_label = "clean (dev)"
    for i, defence in enumerate(defences):
        clean = [t["eval_accuracy"] for t in report["training"]
                 if t["defence"] == defence and t.get("eval_accuracy") is not None]
        if clean:
            ax.hlines(100 * sum(clean) / len(clean), i - 0.4, i + 0.4, colors="black", linestyles="dashed",
                      linewidth=1, label=clean_label)
            clean_label = None  # one legend entry
        if not any((defence, r) in by_key for r in recipes):
            ax.text(i, 2, "missing", ha="center", fontsize=8, color="gray", rotation=90)
    ax.set_xticks(range(len(defences)), defences, rotation=20)
    ax.set_xlim(-0.6, len(defences) - 0.4)  # defences without any bar keep their place
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy under attack per defence and recipe (bars: 95 % interval)")
    ax.grid(axis="y", alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    handles += [Patch(color=f"C{j}", label=recipe) for j, recipe in enumerate(recipes)]
    if any(c["degenerate"] for c in cells):
        handles.append(Patch(facecolor="lightgray", hatch="//", edgecolor="gray", label="degenerate model"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def plot_clean_vs_attack(report: dict, path: Path) -> str | None:
    """Accuracy vs robustness across defences, one panel per recipe: clean dev accuracy (x, ± std
    over seeds) against accuracy under attack (y, 95 % interval). Degenerate models are not drawn
    as points (their accuracy under attack is no robustness): each panel names them."""
    points = [c for c in _done_cells(report)
              if c.get("eval_accuracy") is not None and c["accuracy_under_attack"] is not None]
    if not points:
        return "no finished attack cell with a finished training run yet"
    plt = _pyplot()
    recipes = [r for r in report["recipes"] if any(c["recipe"] == r for c in points)]
    drawn = [c for c in points if not c["degenerate"]] or points
    xs = [100 * c["eval_accuracy"] for c in drawn]
    fig, axes = plt.subplots(1, len(recipes), figsize=(max(6.5, 4.2 * len(recipes) + 0.5), 4.6), sharey=True,
                             squeeze=False)
    for ax, recipe in zip(axes[0], recipes):
        names: dict[tuple[float, float], list[str]] = {}  # defences on the same point share one label
        for c in (c for c in points if c["recipe"] == recipe and not c["degenerate"]):
            x, y = 100 * c["eval_accuracy"], 100 * c["accuracy_under_attack"]
            low, high = _yerr(c)
            ax.errorbar(x, y, xerr=100 * c.get("eval_accuracy_std", 0.0) or None, yerr=[[low], [high]], fmt="o",
                        color=f"C{report['defences'].index(c['defence']) % 10}", capsize=2, markersize=5,
                        linewidth=0.8)
            names.setdefault((round(x, 1), round(y, 1)), []).append(c["defence"])
        for (x, y), labels in names.items():
            ax.annotate(", ".join(labels), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        degenerate = [c["defence"] for c in points if c["recipe"] == recipe and c["degenerate"]]
        if degenerate:
            ax.text(0.02, 0.02, f"degenerate, not drawn: {', '.join(degenerate)}", transform=ax.transAxes,
                    fontsize=7, color="dimgray")
        ax.set_xlim(min(xs) - 1.5, max(xs) + 1.5)
        ax.set_xlabel("clean accuracy on dev (%)")
        ax.set_title(recipe)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy under attack (%)")
    axes[0][0].set_ylim(bottom=0)
    fig.suptitle("Clean accuracy vs accuracy under attack\n"
                 "(vertical bars: 95 % interval; horizontal: ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def plot_delta_vs_baseline(report: dict, path: Path) -> str | None:
    """Forest plot: each defence's paired difference with the baseline in accuracy under attack
    (points) with its 95 % interval, one colour per recipe; hollow = not significant."""
    baseline = report.get("baseline")
    if baseline is None:
        return "the grid has no baseline (no vanilla and no bench.baseline)"
    done = [c for c in report["cells"] if c.get("comparison", {}).get("status") == "done"]
    if not done:
        return f"no defence and {baseline} finished under the same recipe yet"
    plt = _pyplot()
    defences = [d for d in report["defences"] if d != baseline]
    recipes = report["recipes"]
    step = 0.7 / max(1, len(recipes))
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.22 * len(defences) * len(recipes)))
    for j, recipe in enumerate(recipes):
        for c in (c for c in done if c["recipe"] == recipe):
            y = defences.index(c["defence"]) - 0.35 + step * (j + 0.5)
            comparison = c["comparison"]
            if comparison["degenerate"]:
                ax.text(0, y, "degenerate", ha="center", va="center", fontsize=7, color="gray")
                continue
            diff = comparison["accuracy_under_attack"]
            x, low, high = (100 * v for v in (diff["delta"], *diff["ci"]))
            ax.errorbar(x, y, xerr=[[x - low], [high - x]], fmt="o", color=f"C{j}", capsize=2, markersize=5,
                        markerfacecolor=f"C{j}" if diff["significant"] else "white", linewidth=1)
    for i, defence in enumerate(defences):
        if not any(c["defence"] == defence for c in done):
            ax.text(0, i, "  no comparison yet", ha="left", va="center", fontsize=7, color="gray")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(defences)), defences)
    ax.set_ylim(len(defences) - 0.5, -0.5)
    ax.set_xlabel(f"accuracy under attack minus {baseline} (points)")
    ax.set_title(f"Paired difference with {baseline} (95 % interval; hollow: not significant)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], marker="o", color=f"C{j}", label=r) for j, r in enumerate(recipes)],
              fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="recipe")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def asa_labels(report: dict) -> list[str]:
    """The defences of the grid that include ASA (``asa``, a composition such as ``asa+freelb``, a
    variant of either, or either on a named backbone)."""
    from asa_plugin.bench.plan import split_label

    params = report.get("defence_params", {})

    def names(label: str) -> list[str]:
        name = params.get(label, {}).get("name")
        if name is None:
            return split_label(label)
        return [name] if isinstance(name, str) else list(name)

    return [d for d in report["defences"] if "asa" in names(d)]


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
    ("delta_vs_baseline", "Paired difference with the baseline"),
    ("asa_mask_ratio", "ASA mask ratio per layer"),
    ("asa_map", "ASA attention and mask map"),
]


def draw_all(report: dict, out_dir: Path) -> list[dict[str, Any]]:
    """Draw every plot into ``out_dir``; a plot whose inputs are missing is listed with the reason."""
    out_dir = Path(out_dir)
    drawers = {
        "accuracy_under_attack": lambda p: plot_accuracy_under_attack(report, p),
        "clean_vs_attack": lambda p: plot_clean_vs_attack(report, p),
        "delta_vs_baseline": lambda p: plot_delta_vs_baseline(report, p),
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
