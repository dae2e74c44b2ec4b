"""Per-example result rows, the summary computed from them, crash-safe JSONL files and merging.

The summary is a pure function of the rows (sorted by example index) and the run manifest, so a
resumed run, or shards merged, give the summary of one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asa_plugin.errors import UserError
from asa_plugin.fileio import read_json  # noqa: F401 - re-exported: the bench and the attacks read JSON from here
from asa_plugin.fileio import write_json_atomic as write_json  # noqa: F401 - the atomic writers, under their old names
from asa_plugin.fileio import write_jsonl_atomic as write_rows  # noqa: F401
from asa_plugin.outputs import portable_text

OUTCOMES = ("successful", "failed", "skipped", "maximized", "unperturbable")
"""TextAttack's four outcomes, and ours for a text with no word an attack may change (empty, whitespace,
emoji only): nothing was attacked, so, as TextAttack leaves skipped examples out of the success rate,
these are left out of every rate (and counted apart) rather than counted as attacks that failed."""
TIMING_KEYS = ("seconds", "timing", "time_breakdown", "execution")
"""Fields that measure time: they differ between any two runs and are left out of comparisons."""


def outcome_name(result) -> str:
    """'successful' | 'failed' | 'skipped' | 'maximized' for a TextAttack ``AttackResult``."""
    name = type(result).__name__
    for outcome in OUTCOMES:
        if name.lower().startswith(outcome[:6]):
            return outcome
    raise ValueError(f"unknown TextAttack result type {name}")


def modifiable_words(text, columns: Sequence[str]) -> int:
    """Words an attack may change: all of a single text's; those of ``columns`` in a text pair."""
    if len(text.column_labels) == 1:
        return len(text.words)
    return sum(len(words) for label, words in zip(text.column_labels, text.words_per_input) if label in columns)


def confidence(goal_result) -> float | None:
    """The probability the model gave its predicted class (TextAttack's ``raw_output`` holds the
    class probabilities of a classification goal), rounded to 4 digits; None where it has none."""
    scores = getattr(goal_result, "raw_output", None)
    try:
        return round(float(scores[int(goal_result.output)]), 4)
    except (TypeError, IndexError, ValueError):
        return None


def result_row(index: int, gold: int, result, seconds: float, query_budget: float,
               modify_columns: Sequence[str] = ("text_pair",)) -> dict[str, Any]:
    """One results.jsonl row from a TextAttack ``AttackResult``.

    A text pair's row holds ``original_text``/``perturbed_text`` (the first text) and
    ``original_text_pair``/``perturbed_text_pair`` (the second); ``num_words`` counts the words of
    the columns the attack may modify, so ``words_perturbed_pct`` is a share of those.
    """
    original = result.original_result.attacked_text
    perturbed = result.perturbed_result.attacked_text
    num_words = modifiable_words(original, modify_columns)
    changed = len(original.all_words_diff(perturbed)) if original.text != perturbed.text else 0
    outcome = outcome_name(result) if num_words else "unperturbable"
    texts = {"original_text": original.text, "perturbed_text": perturbed.text}
    if len(original.column_labels) > 1:
        (first, second), (first_out, second_out) = original.tokenizer_input, perturbed.tokenizer_input
        texts = {"original_text": first, "perturbed_text": first_out,
                 "original_text_pair": second, "perturbed_text_pair": second_out}
    return {
        "index": index,
        "outcome": outcome,
        "gold_label": gold,
        "original_prediction": int(result.original_result.output),
        "perturbed_prediction": int(result.perturbed_result.output),
        # the model's probability of its prediction, before and after (report.html shows them)
        "original_confidence": confidence(result.original_result),
        "perturbed_confidence": confidence(result.perturbed_result),
        **texts,
        "num_words": num_words,
        "words_perturbed": changed,
        "words_perturbed_pct": 100.0 * changed / max(num_words, 1),
        "queries": int(result.perturbed_result.num_queries),
        "query_budget": None if math.isinf(query_budget) else int(query_budget),
        "seconds": round(seconds, 4),
    }


def summarize(rows: list[dict], manifest: dict[str, Any], assets: list[dict],
              execution: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary.json of a finished run (or of merged shards); ``execution`` records how it ran
    (workers, threads per worker, device)."""
    from asa_plugin.attacks.profiling import breakdown

    from asa_plugin.degenerate import judge_rows

    verdict = judge_rows(rows)  # every example the model predicted, unperturbable ones included
    counts = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
    every = rows
    rows = [r for r in rows if r["outcome"] != "unperturbable"]  # nothing to attack: out of every rate
    n = len(rows)
    attacked = [r for r in rows if r["outcome"] != "skipped"]
    successful = [r for r in rows if r["outcome"] == "successful"]
    decided = counts["successful"] + counts["failed"]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return {
        "recipe": manifest["recipe"],
        "profile": manifest["profile"],
        "num_examples": len(every),
        "unperturbable": counts["unperturbable"],
        "clean_accuracy": (n - counts["skipped"]) / n if n else None,
        "accuracy_under_attack": (counts["failed"] + counts["maximized"]) / n if n else None,
        "attack_success_rate": counts["successful"] / decided if decided else None,
        "avg_words_perturbed_pct": mean([r["words_perturbed_pct"] for r in successful]),
        "avg_queries": mean([r["queries"] for r in attacked]),
        "seconds": round(sum(r["seconds"] for r in every), 3),
        "time_breakdown": breakdown(every),
        "execution": execution,
        "outcomes": counts,
        # judged from these rows' gold labels and original predictions (asa_plugin/degenerate.py)
        "degenerate": verdict.degenerate if verdict else None,
        "degenerate_reason": verdict.reason if verdict else None,
        "balanced_accuracy": verdict.balanced_accuracy if verdict else None,
        "assets": assets,
        "substitutes": [a for a in assets if a.get("substitute_for")],
        "seed": manifest["seed"],
        "split": manifest["split"],
        "model": portable_text(manifest["model"]),  # no machine paths in results
        "data": portable_text(manifest["data"]),
        "selection_size": manifest["selection_size"],
    }


ROW_KEYS = ("index", "outcome")
"""Fields every results.jsonl row must have for resume, merge and the summary."""


def read_rows(path: Path, repair: bool = False, dedupe: bool = True) -> list[dict]:
    """Complete rows of a results.jsonl. ``repair`` cuts a torn last line left by a kill.

    ``dedupe``: an example with several rows (two runs appended to one file) counts once, by its
    first row, with a warning; ``repair`` also rewrites the file without the repeats.

    A damaged complete line (not JSON, not an object, no ``index``/``outcome``) is one
    :class:`UserError` naming the file and line; the file is left untouched.
    """
    if path.exists() and not path.is_file():
        raise UserError(f"{path}: is a directory, not a results file; move it away (or rerun with --overwrite)")
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    try:
        text = data[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}: line {line}: not UTF-8; {_damaged(path)}") from None
    rows = [_parse_row(path, number, line) for number, line in enumerate(text.splitlines(), start=1)
            if line.strip()]
    rows, repeated = _first_per_index(rows) if dedupe else (rows, [])
    if repeated:
        shown = ", ".join(map(str, repeated[:5])) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        print(f"advrobust: warning: {path}: example(s) {shown} have more than one row (two runs appended to one "
              f"file?); each example is counted once, by its first row" + ("; the others are removed" if repair
                                                                          else ""), file=sys.stderr, flush=True)
    if repair and (end < len(data) or repeated):
        write_rows(path, rows)  # without a torn last line or repeated examples
    return rows


def _first_per_index(rows: list[dict]) -> tuple[list[dict], list[int]]:
    """``rows`` with only the first row of each example index, and the indices that had several."""
    seen: set[int] = set()
    kept, repeated = [], []
    for row in rows:
        if row["index"] in seen:
            if row["index"] not in repeated:
                repeated.append(row["index"])
            continue
        seen.add(row["index"])
        kept.append(row)
    return kept, sorted(repeated)


def _damaged(path: Path) -> str:
    """What to do about a damaged line of ``path`` (only ``advrobust attack`` has --overwrite)."""
    from asa_plugin.errors import start_over_hint

    return f"the file was left untouched: remove or fix that line (it is attacked again), or {start_over_hint(path)}"


def _parse_row(path: Path, number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {number}: not valid JSON ({exc.msg}); {_damaged(path)}") from None
    if not isinstance(row, dict):
        raise UserError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}; {_damaged(path)}")
    missing = [k for k in ROW_KEYS if k not in row]
    if missing or row.get("outcome") not in OUTCOMES:
        what = f"no '{missing[0]}'" if missing else f"unknown outcome {row.get('outcome')!r}"
        raise UserError(f"{path}: line {number}: a result row with {what}; {_damaged(path)}")
    index = row["index"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise UserError(f"{path}: line {number}: index {index!r} is not an example number (0, 1, 2, ...); "
                        f"{_damaged(path)}")
    return row


def check_indices(path: Path, rows: list[dict], count: int) -> None:
    """Every row of ``path`` is one of the ``count`` examples attacked: a row beyond them (another run's,
    or edited) would be counted in the summary (7 of 6)."""
    beyond = next((row["index"] for row in rows if row["index"] >= count), None)
    if beyond is None:
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    number = next((n for n, line in enumerate(lines, start=1) if _row_index(line) == beyond), "?")
    raise UserError(f"{path}: line {number}: index {beyond} is beyond the {count} examples attacked "
                    f"(0..{count - 1}); {_damaged(path)}")


def _row_index(line: str) -> Any:
    """The ``index`` of one results.jsonl line, None where the line is not a JSON object."""
    try:
        return json.loads(line).get("index")
    except (ValueError, AttributeError):
        return None


class RowWriter:
    """Appends rows to results.jsonl, one write + flush + fsync per row."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across rows

    def write(self, row: dict) -> None:
        try:
            self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as exc:  # disk full: name the file (a torn last line is cut on --resume)
            raise OSError(exc.errno, exc.strerror, self.file.name) from None

    def close(self) -> None:
        self.file.close()


def without_timing(obj: Any) -> Any:
    """``obj`` with timing fields removed (recursively), for equality checks."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj
