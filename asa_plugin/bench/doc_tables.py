"""Tables the docs quote, generated from a bench's report.json (issue 33: figures come from one source).

A doc marks a generated block with two HTML comments; the opening one names the block's kind and its
source, relative to the doc's own folder (as a Markdown link would)::

    <!-- BEGIN generated grid-table: results/sst2-minilm-cpu/report.json -->
    ... (written by this module; do not edit by hand) ...
    <!-- END generated grid-table -->

``python -m asa_plugin.bench.doc_tables README.md`` rewrites every marked block of the docs it is given
from its source; ``--check`` only says which blocks differ (exit 1) and writes nothing.
``tests/test_doc_figures.py`` runs the same check on the committed docs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asa_plugin.bench.markdown import delta_text, verdict

BEGIN = re.compile(r"^<!-- BEGIN generated (?P<kind>[\w-]+): (?P<source>\S+) -->$")
END = "<!-- END generated {kind} -->"


def _pct(mean: float, std: float | None = None) -> str:
    """``88.6 ± 1.0 %`` (std only where the value is a mean over seeds)."""
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}") + " %"


def p_text(p: float) -> str:
    """A p-value as the README prints it: 2 decimals from 0.1, 2 significant digits below, 1 below 0.01."""
    if p >= 0.1:
        return f"{p:.2f}"
    if p >= 0.01:
        return f"{p:#.2g}"
    if p >= 1e-4:
        return f"{p:#.1g}"
    return "< 0.0001"


def _seed_note(seeds: list) -> str:
    return f" ({len(seeds)} seeds)" if len(seeds) > 1 else ""


def _single_seed(cells: list[dict]) -> int | None:
    """The one seed every finished cell of a recipe column has, else None (then cells name their seeds)."""
    seeds = {tuple(c["seeds_done"]) for c in cells if c["seeds_done"]}
    return seeds.pop()[0] if len(seeds) == 1 and len(next(iter(seeds))) == 1 else None


def _clean_dev(cells: list[dict]) -> str:
    """Clean dev accuracy of a defence, from its cell with the most seeds."""
    trained = [c for c in cells if c.get("eval_accuracy") is not None]
    if not trained:
        return "missing"
    best = max(trained, key=lambda c: len(c["seeds_done"]))
    return _pct(best["eval_accuracy"], best.get("eval_accuracy_std")) + _seed_note(best["seeds_done"])


def _baseline_cell(cell: dict, note: bool) -> str:
    """The baseline's own accuracy under attack."""
    if cell["status"] == "missing" or cell.get("accuracy_under_attack") is None:
        return "missing"
    text = _pct(cell["accuracy_under_attack"], cell.get("accuracy_under_attack_std"))
    return text + (_seed_note(cell["seeds_done"]) if note else "")


def _compared_cell(cell: dict, note: bool) -> str:
    """``+4.0 [+1.0, +7.0], p 0.12 / 0.058 / 0.006 (3 seeds)``, bold where the bench's verdict is significant."""
    comparison = cell.get("comparison") or {}
    if cell["status"] == "missing":
        return "missing"
    if comparison.get("status") != "done":
        return "n/a"
    if comparison.get("degenerate"):
        return "degenerate"
    ps = " / ".join(p_text(m["p_value"]) for m in comparison["mcnemar"])
    text = f"{delta_text(comparison['accuracy_under_attack'])}, p {ps}" + (
        _seed_note(comparison["seeds"]) if note else ""
    )
    absent = [str(s) for s in cell["seeds"] if s not in cell["seeds_done"]]
    if absent:  # a partial cell: say which seeds it still lacks
        text += f" (seed {', '.join(absent)} missing)"
    said = verdict(comparison)
    return f"**{text}**" if said in ("significantly higher", "significantly lower") else text


def grid_table(report: dict[str, Any]) -> list[str]:
    """The README's defence x recipe table of a bench report: the baseline's accuracy under attack, then
    each defence's paired difference from it (points, with the bootstrap interval) and McNemar's p per seed."""
    baseline = report["baseline"]
    recipes = report["recipes"]
    by_key = {(c["defence"], c["recipe"]): c for c in report["cells"]}
    single = {r: _single_seed([c for c in report["cells"] if c["recipe"] == r]) for r in recipes}
    head = [f"{r} (seed {single[r]})" if single[r] is not None else r for r in recipes]
    lines = ["| defence | clean dev | " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(recipes)]
    for label in report["defences"]:
        cells = [by_key[(label, r)] for r in recipes]
        render = _baseline_cell if label == baseline else _compared_cell
        name = f"{label} (under attack)" if label == baseline else label
        row = [name, _clean_dev(cells)] + [render(c, single[c["recipe"]] is None) for c in cells]
        lines.append("| " + " | ".join(row) + " |")
    return lines + _footnote(report, by_key)


def _footnote(report: dict, by_key: dict) -> list[str]:
    """Which baseline model the single-seed rows are paired with (where the baseline has several seeds), and
    what bold means."""
    baseline, first = report["baseline"], str(report["seeds"][0])
    several = [r for r in report["recipes"] if len(by_key[(baseline, r)]["seeds_done"]) > 1]
    mine = [by_key[(baseline, r)]["per_seed"].get(first, {}) for r in several]
    bold = (
        "Bold: report.md's verdict is *significantly higher* or *significantly lower* (the interval excludes 0"
        " and, with one seed, McNemar's p is below 0.05)."
    )
    if not several or not all("accuracy_under_attack" in m for m in mine):
        return ["", bold]
    dev = _pct(mine[0]["eval_accuracy"])
    under = ", ".join(f"{_pct(m['accuracy_under_attack'])} under {r}" for r, m in zip(several, mine))
    return ["", f"(Single-seed rows are compared with {baseline}'s seed-{first} model: {dev} dev, {under}.) {bold}"]


GENERATORS: dict[str, Callable[[dict], list[str]]] = {"grid-table": grid_table}


def blocks(text: str) -> list[tuple[str, str, int, int]]:
    """Every generated block of a doc: (kind, source, index of its first line, index of its END line)."""
    lines = text.split("\n")
    found = []
    for i, line in enumerate(lines):
        match = BEGIN.match(line)
        if not match:
            continue
        end = END.format(kind=match["kind"])
        if end not in lines[i + 1 :]:
            raise ValueError(f"line {i + 1}: '{line}' has no '{end}' after it")
        found.append((match["kind"], match["source"], i + 1, lines.index(end, i + 1)))
    return found


def generate(kind: str, source: Path) -> list[str]:
    """The lines of a block of ``kind`` from its ``source`` JSON."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown generated block '{kind}'; known: {', '.join(sorted(GENERATORS))}")
    return GENERATORS[kind](json.loads(source.read_text(encoding="utf-8")))


def regenerate(doc: Path) -> tuple[str, list[tuple[str, int]]]:
    """The doc's text with every block regenerated, and the (kind, first line number) of those that changed."""
    lines = doc.read_text(encoding="utf-8").split("\n")
    changed = []
    for kind, source, start, end in reversed(blocks("\n".join(lines))):
        fresh = generate(kind, doc.parent / source)
        if lines[start:end] != fresh:
            changed.append((kind, start + 1))
            lines[start:end] = fresh
    return "\n".join(lines), sorted(changed, key=lambda c: c[1])


def main(argv: list[str] | None = None) -> int:
    """``python -m asa_plugin.bench.doc_tables [--check] DOC ...``: rewrite (or check) the docs' generated blocks."""
    parser = argparse.ArgumentParser(prog="python -m asa_plugin.bench.doc_tables", description=__doc__.split("\n")[0])
    parser.add_argument("docs", nargs="+", type=Path, help="Markdown files with generated blocks (e.g. README.md)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block is out of date")
    args = parser.parse_args(argv)
    stale = 0
    for doc in args.docs:
        try:
            text, changed = regenerate(doc)
        except (OSError, ValueError, KeyError) as exc:
            print(f"{parser.prog}: error: {doc}: {exc}", file=sys.stderr)
            return 2
        for kind, line in changed:
            print(f"{doc}:{line}: {kind} {'is out of date' if args.check else 'regenerated'}")
        stale += len(changed)
        if changed and not args.check:
            doc.write_text(text, encoding="utf-8")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
