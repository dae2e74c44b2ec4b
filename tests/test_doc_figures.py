"""The figures the docs quote are the figures the results hold (issue 33).

Three kinds of checks, each naming the doc, its line, what it says and what the JSON holds:

- generated blocks (README.md's grid table): the block is what ``python -m asa_plugin.bench.doc_tables``
  writes from results/sst2-minilm-cpu/report.json, cell for cell;
- tables (benchmarks/README.md's benchmark tables): each numeric cell of a listed column agrees with its
  value in benchmarks/results/*.json to the decimals the doc prints;
- claims (numbers in prose): a sentence template whose ``{}`` are numbers, each checked the same way.

When a result changes, regenerate the block (benchmarks/README.md, *The robustness grid*) or edit the doc;
when a doc is reworded, update its template here. ``advrobust report`` on a copy of the committed grid
rebuilds its report.json identically (the last test).
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from asa_plugin.bench import doc_tables

ROOT = Path(__file__).resolve().parents[1]
GRID = "results/sst2-minilm-cpu/report.json"
BENCH = "benchmarks/results/"
NUMBER = r"[+-]?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?"


def load(source: str) -> Any:
    return json.loads((ROOT / source).read_text(encoding="utf-8"))


def agrees(text: str, value: float | None) -> bool:
    """``text`` is ``value`` rounded to the decimals ``text`` shows (half a unit of its last digit)."""
    if value is None:
        return False
    text = text.replace(",", "")
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2]) - int(exponent or 0)
    return abs(float(text) - value) <= 0.5 * 10**-decimals + 1e-12


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _flat(values: Any) -> list:
    return list(values) if isinstance(values, (tuple, list)) else [values]


# ---------------------------------------------------------------------------------------------------------------
# report.json helpers (accuracies in points, as the docs print them)


def cell(report: dict, defence: str, recipe: str) -> dict:
    return next(c for c in report["cells"] if c["defence"] == defence and c["recipe"] == recipe)


def pts(value: float) -> float:
    return 100 * value


def diff(report: dict, defence: str, recipe: str, key: str = "accuracy_under_attack") -> tuple:
    """(delta, low, high) of a paired comparison with the baseline, in points."""
    found = cell(report, defence, recipe)["comparison"][key]
    return pts(found["delta"]), pts(found["ci"][0]), pts(found["ci"][1])


def p_values(report: dict, defence: str, recipe: str, key: str = "p_value") -> list:
    return [m[key] for m in cell(report, defence, recipe)["comparison"]["mcnemar"]]


def seed_gap(report: dict, defence: str, other: str, recipe: str, seeds=None) -> float:
    """Mean over the shared seeds of the difference in accuracy under attack (points), as `advrobust compare`'s Δ."""
    mine, theirs = (cell(report, d, recipe)["per_seed"] for d in (defence, other))
    shared = [s for s in mine if s in theirs and (seeds is None or s in seeds)]
    return sum(pts(mine[s]["accuracy_under_attack"] - theirs[s]["accuracy_under_attack"]) for s in shared) / len(shared)


def same(values: list[float]) -> float | tuple:
    """The one value a doc quotes for several that agree (to 3 significant digits); all of them where they differ."""
    return values[0] if len({f"{v:.3g}" for v in values}) == 1 else tuple(values)


def compared(report: dict) -> list[dict]:
    return [c for c in report["cells"] if c.get("comparison", {}).get("status") == "done"]


def multi_seed_defences(report: dict) -> str:
    """``vanilla, asa and asa+freelb``: the defences trained with more than the first seed."""
    names = [d for d in report["defences"] if any(len(c["seeds"]) > 1 for c in report["cells"] if c["defence"] == d)]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


# ---------------------------------------------------------------------------------------------------------------
# Claims: a sentence of a doc with its numbers as {}, and where the JSON holds them


@dataclass
class Claim:
    doc: str
    template: str  # the doc's words, {} for each number, {text} for one checked string
    source: str  # JSON file, relative to the repository root
    values: Callable[[Any], Any]  # the numbers, in order, in the doc's units (or the string)

    def pattern(self) -> re.Pattern:
        parts = re.split(r"(\{\}|\{text\})", self.template)
        regex = "".join(
            f"({NUMBER})"
            if p == "{}"
            else "(.+?)"
            if p == "{text}"
            else r"\s+".join(re.escape(w) for w in p.split(" "))
            for p in parts
        )
        return re.compile(regex, re.S)


def check_claim(claim: Claim, text: str, data: Any) -> list[str]:
    """Every disagreement of one claim with its source, as ``doc:line: ...`` messages."""
    match = claim.pattern().search(text)
    if match is None:
        return [f"{claim.doc}: no longer says '{claim.template}'; update tests/test_doc_figures.py"]
    expected = _flat(claim.values(data))
    where = f"{claim.doc}:{line_of(text, match.start())}"
    if len(expected) != len(match.groups()):
        return [f"{where}: {len(match.groups())} numbers in the doc, {len(expected)} in {claim.source}"]
    errors = []
    for got, value in zip(match.groups(), expected):
        ok = " ".join(got.split()) == value if isinstance(value, str) else agrees(got, value)
        if not ok:
            errors.append(
                f"{where}: says {got}, {claim.source} holds {value if isinstance(value, str) else f'{value:.6g}'}"
                f" (in '{claim.template}')"
            )
    return errors


GRID_CLAIMS = [
    Claim(
        "README.md",
        "fine-tuned on {} SST-2 examples (one epoch of {} steps)",
        GRID,
        lambda r: (r["settings"]["data"]["max_train_examples"], max(t["steps"] for t in r["training"])),
    ),
    Claim(
        "README.md",
        "attacked on the same {} SST-2 dev examples",
        GRID,
        lambda r: r["settings"]["attack"]["num_examples"],
    ),
    Claim(
        "README.md",
        "Every defence trained with seed {}; {text} also with seeds {} and {},",
        GRID,
        lambda r: (r["seeds"][0], multi_seed_defences(r), *r["seeds"][1:]),
    ),
    Claim(
        "README.md",
        "The report lists {text} missing cell.",
        GRID,
        lambda r: "no" if not r["missing"] else str(len(r["missing"])),
    ),
    Claim(
        "README.md", "under pwws**: {} points [{}, {}] over three seeds", GRID, lambda r: diff(r, "asa+freelb", "pwws")
    ),
    Claim(
        "README.md",
        "({} ± {} % vs {} ± {} % under attack)",
        GRID,
        lambda r: [
            pts(cell(r, d, "pwws")[k])
            for d in ("asa+freelb", "vanilla")
            for k in ("accuracy_under_attack", "accuracy_under_attack_std")
        ],
    ),
    Claim(
        "README.md",
        "every seed points the same way ({}, {}, {} points; McNemar p {}, {}, {})",
        GRID,
        lambda r: (
            [seed_gap(r, "asa+freelb", "vanilla", "pwws", [s]) for s in ("42", "43", "44")]
            + p_values(r, "asa+freelb", "pwws")
        ),
    ),
    Claim("README.md", "asa+freelb --against asa`: {} [", GRID, lambda r: seed_gap(r, "asa+freelb", "asa", "pwws")),
    Claim(
        "README.md",
        "but not against freelb alone at seed {} ({} [",
        GRID,
        lambda r: (42, seed_gap(r, "asa+freelb", "freelb", "pwws", ["42"])),
    ),
    Claim(
        "README.md",
        "freelb's single seed itself reads {} [{}, {}] against vanilla",
        GRID,
        lambda r: diff(r, "freelb", "pwws"),
    ),
    Claim(
        "README.md",
        "under textfooler asa+freelb matches vanilla ({} [{}, {}])",
        GRID,
        lambda r: diff(r, "asa+freelb", "textfooler"),
    ),
    Claim("README.md", "grid's {} defence x recipe comparisons", GRID, lambda r: len(compared(r))),
    Claim(
        "README.md",
        "its best McNemar p, {}, does not pass a Bonferroni correction at 0.05/{};",
        GRID,
        lambda r: (min(p_values(r, "asa+freelb", "pwws")), len(compared(r))),
    ),
    Claim(
        "README.md",
        "Holm p over all {} McNemar tests of the grid, one per defence x recipe x seed, is {} for it",
        GRID,
        lambda r: (r["statistics"]["holm_family"], min(p_values(r, "asa+freelb", "pwws", "p_holm"))),
    ),
    Claim(
        "README.md",
        "asa+freelb costs no clean accuracy ({} ± {} % vs {} ± {} % dev)",
        GRID,
        lambda r: [
            pts(cell(r, d, "pwws")[k])
            for d in ("asa+freelb", "vanilla")
            for k in ("eval_accuracy", "eval_accuracy_std")
        ],
    ),
    Claim(
        "README.md",
        "touch it: {} [{}, {}] and {} [{}, {}], McNemar p {})",
        GRID,
        lambda r: (
            *diff(r, "fgm", "textfooler"),
            *diff(r, "freelb", "textfooler"),
            same([p for d in ("fgm", "freelb") for p in p_values(r, d, "textfooler")]),
        ),
    ),
    Claim(
        "README.md",
        "matches vanilla under pwws ({} [{}, {}]) and textfooler ({} [{}, {}]); no seed's McNemar p is below {}",
        GRID,
        lambda r: (
            *diff(r, "asa", "pwws"),
            *diff(r, "asa", "textfooler"),
            min(p_values(r, "asa", "pwws") + p_values(r, "asa", "textfooler")),
        ),
    ),
    Claim(
        "README.md",
        "(std {} vs {} points under pwws, {} vs {} under textfooler)",
        GRID,
        lambda r: [
            pts(cell(r, d, rec)["accuracy_under_attack_std"])
            for rec in ("pwws", "textfooler")
            for d in ("asa", "vanilla")
        ],
    ),
    Claim(
        "README.md",
        "it costs about {} points of clean dev accuracy ({} ± {} % vs {} ± {} %)",
        GRID,
        lambda r: (
            pts(cell(r, "vanilla", "pwws")["eval_accuracy"] - cell(r, "asa", "pwws")["eval_accuracy"]),
            *[pts(cell(r, d, "pwws")[k]) for d in ("asa", "vanilla") for k in ("eval_accuracy", "eval_accuracy_std")],
        ),
    ),
    Claim(
        "README.md",
        "(every interval covers 0, every McNemar p >= {})",
        GRID,
        lambda r: min(p for d in ("asa-tau0.3", "asa-tau1.0") for rec in r["recipes"] for p in p_values(r, d, rec)),
    ),
    Claim(
        "README.md",
        "asa-tau0.3 --against asa`: {}, {}, {} points under deepwordbug, pwws, textfooler; tau 1.0: {}, {}, {};",
        GRID,
        lambda r: [seed_gap(r, d, "asa", rec, ["42"]) for d in ("asa-tau0.3", "asa-tau1.0") for rec in r["recipes"]],
    ),
    Claim(
        "README.md",
        "Both cost clean accuracy like asa ({} [{}, {}] and {} [{}, {}] points on the attacked examples",
        GRID,
        lambda r: (*diff(r, "asa-tau0.3", "pwws", "clean_accuracy"), *diff(r, "asa-tau1.0", "pwws", "clean_accuracy")),
    ),
    Claim(
        "README.md",
        "Vanilla's own seed-to-seed spread ({} points under pwws)",
        GRID,
        lambda r: pts(cell(r, "vanilla", "pwws")["accuracy_under_attack_std"]),
    ),
    Claim(
        "README.md",
        "under deepwordbug**: {} points lower [{}, {}], {} examples that only vanilla survives against {} that only "
        "uscal survives, McNemar p = {} (below 0.05/{},",
        GRID,
        lambda r: (
            -diff(r, "uscal", "deepwordbug")[0],
            *diff(r, "uscal", "deepwordbug")[1:],
            cell(r, "uscal", "deepwordbug")["comparison"]["mcnemar"][0]["baseline_only_correct"],
            cell(r, "uscal", "deepwordbug")["comparison"]["mcnemar"][0]["defence_only_correct"],
            *p_values(r, "uscal", "deepwordbug"),
            len(compared(r)),
        ),
    ),
    Claim(
        "README.md",
        "its Holm p over the grid's {} tests is {};",
        GRID,
        lambda r: (r["statistics"]["holm_family"], *p_values(r, "uscal", "deepwordbug", "p_holm")),
    ),
    Claim(
        "README.md",
        "its interval just excludes 0 ({} [{}, {}]) but McNemar's p is {};",
        GRID,
        lambda r: (*diff(r, "uscal", "textfooler"), *p_values(r, "uscal", "textfooler")),
    ),
    Claim(
        "README.md",
        "Its clean accuracy is vanilla's ({} [{}, {}] on the attacked examples)",
        GRID,
        lambda r: diff(r, "uscal", "deepwordbug", "clean_accuracy"),
    ),
    Claim(
        "README.md",
        "(balanced accuracy {}-{} % on the attacked examples)",
        GRID,
        lambda r: (
            min(v := [pts(s["balanced_accuracy_attacked"]) for c in r["cells"] for s in c["per_seed"].values()]),
            max(v),
        ),
    ),
    Claim(
        "README.md",
        "vanilla under TextFooler, {} ± {} % over three seeds",
        GRID,
        lambda r: [
            pts(cell(r, "vanilla", "textfooler")[k]) for k in ("accuracy_under_attack", "accuracy_under_attack_std")
        ],
    ),
    Claim(
        "README.md",
        "from {} points under textfooler, where few examples survive either model, to {} under deepwordbug",
        GRID,
        lambda r: (
            min(
                pts(c["comparison"]["detectable_difference"]["difference"])
                for c in compared(r)
                if c["recipe"] == "textfooler"
            ),
            max(
                pts(c["comparison"]["detectable_difference"]["difference"])
                for c in compared(r)
                if c["recipe"] == "deepwordbug"
            ),
        ),
    ),
]


def _cost(d: dict, name: str, key: str = "step_ratio_vs_vanilla") -> float:
    return next(r[key] for r in d["results"] if r["defence"] == name)


def _mem(d: dict, shape: str, name: str, key: str = "peak_ratio") -> float:
    return next(r[key] for r in d["rows"] if r["shape"] == shape and r["defence"] == name)


def _attack(d: dict, recipe: str) -> dict:
    return next(r for r in d["recipes"] if r["recipe"] == recipe)


MEMORY, AUTO = BENCH + "defence_memory_cpu.json", BENCH + "defence_memory_auto_cpu.json"


def html_size(report: dict) -> tuple:
    """(attacks, trained runs, report.html in MB) of the committed grid."""
    attacks = sum(len(c["seeds_done"]) for c in report["cells"])
    return attacks, len(report["training"]), (ROOT / GRID).with_name("report.html").stat().st_size / 1e6


GRID_CLAIMS.append(
    Claim(
        "docs/bench.md",
        "grid ({} attacks of {} examples, {} trained runs) gives a report.html of about {} MB",
        GRID,
        lambda r: (html_size(r)[0], r["settings"]["attack"]["num_examples"], *html_size(r)[1:]),
    )
)


def mask_means(_: dict) -> list[float]:
    """ASA's mask ratio over training, mean over the layers, of the tau study's seed-42 runs (tau 0.3, 0.5, 1.0)."""
    ratios = [
        load(f"results/sst2-minilm-cpu/runs/{run}/metrics.json")["asa_mask_ratio_per_layer"]
        for run in ("asa-tau0.3", "asa", "asa-tau1.0")
    ]
    return [pts(sum(r) / len(r)) for r in ratios]


GRID_CLAIMS.append(
    Claim(
        "README.md",
        "the adversary masks {} % of the attention links over its one epoch of training, against {} % at "
        "tau 0.5 and {} % at tau 1.0, seed 42, means over the 6 layers",
        "results/sst2-minilm-cpu/runs/asa/metrics.json",
        mask_means,
    )
)

BENCH_CLAIMS = [
    Claim(
        "README.md",
        "MiniLM ({} M parameters)",
        BENCH + "defence_cost_cpu.json",
        lambda d: _cost(d, "vanilla", "exported_parameters") / 1e6,
    ),
    Claim(
        "README.md",
        "(training-loop throughput {}x a raw PyTorch loop;",
        BENCH + "train_throughput_cpu.json",
        lambda d: d["ratio"],
    ),
    Claim("README.md", "ASA {}x vanilla per step;", BENCH + "defence_cost_cpu.json", lambda d: _cost(d, "asa")),
    Claim(
        "README.md",
        "the attack wrapper {}x the queries/s of TextAttack's",
        BENCH + "query_throughput_cpu.json",
        lambda d: d["speedup"],
    ),
    Claim(
        "docs/bench.md",
        "`benchmarks/results/defence_cost_cpu.json`: pgd {}x vanilla, asa {}x,",
        BENCH + "defence_cost_cpu.json",
        lambda d: (_cost(d, "pgd-k3"), _cost(d, "asa")),
    ),
    Claim(
        "docs/scale.md", "costs {}x vanilla's peak at 8 x 512 on", MEMORY, lambda d: _mem(d, "8x512", "asa-keep-clean")
    ),
    Claim(
        "docs/scale.md",
        "and {}x vanilla's peak at 8 x 512 ({}x at 32 x 128)",
        MEMORY,
        lambda d: (_mem(d, "8x512", "asa"), _mem(d, "32x128", "asa")),
    ),
    Claim(
        "docs/scale.md",
        "recomputing saves half a vanilla peak ({}x instead of {}x), at 64 tokens it saves {}x ({}x instead of {}x)",
        AUTO,
        lambda d: (
            _mem(d, "8x512", "asa"),
            _mem(d, "8x512", "asa-keep-clean"),
            _mem(d, "32x64", "asa-keep-clean") - _mem(d, "32x64", "asa"),
            _mem(d, "32x64", "asa"),
            _mem(d, "32x64", "asa-keep-clean"),
        ),
    ),
    Claim(
        "docs/asa.md",
        "({}x vanilla's peak memory instead of {}x at 8 x 512) and keeps the pass below (at 32 x 64 "
        "recomputing saves only {}x vanilla's peak",
        AUTO,
        lambda d: (
            _mem(d, "8x512", "asa"),
            _mem(d, "8x512", "asa-keep-clean"),
            _mem(d, "32x64", "asa-keep-clean") - _mem(d, "32x64", "asa"),
        ),
    ),
    Claim(
        "docs/baselines.md",
        "seed 42 (vanilla {} % dev)",
        BENCH + "defaults_sanity_cpu.json",
        lambda d: pts(d["rows"][0]["eval_accuracy"]),
    ),
    Claim(
        "docs/baselines.md",
        "| fgm, epsilon 0.1 | {} % |",
        BENCH + "defaults_sanity_cpu.json",
        lambda d: pts(next(r["eval_accuracy"] for r in d["rows"] if r["defence"] == "fgm")),
    ),
    Claim(
        "docs/baselines.md",
        "| pgd, epsilon 0.1, step 0.03 | {} % |",
        BENCH + "defaults_sanity_cpu.json",
        lambda d: pts(next(r["eval_accuracy"] for r in d["rows"] if r["defence"] == "pgd")),
    ),
    Claim(
        "benchmarks/README.md",
        "raw PyTorch loop {} examples/s, `advrobust train` {} examples/s (medians) → **ratio {}**",
        BENCH + "train_throughput_cpu.json",
        lambda d: (d["raw_examples_per_second"], d["ours_examples_per_second"], d["ratio"]),
    ),
    Claim(
        "benchmarks/README.md",
        "Per repeat: {}/{}, {}/{}, {}/{} (raw/ours)",
        BENCH + "train_throughput_cpu.json",
        lambda d: [x for pair in zip(d["raw_all"], d["ours_all"]) for x in pair],
    ),
    Claim(
        "benchmarks/README.md",
        "(per run: vanilla {}/{}, {}/{}, {}/{}; asa {}/{}, {}/{}, {}/{})",
        BENCH + "multiprocess_throughput.json",
        lambda d: [x for name in ("vanilla", "asa") for runs in d["runs"][name].values() for x in runs],
    ),
    Claim(
        "benchmarks/README.md",
        "(2.08x with the default projection, 1.98x with 64), adversary <= 5 % of the step ({} % default, {} % with 64)",
        BENCH + "defence_cost_cpu.json",
        lambda d: (
            pts(_cost(d, "asa", "adversary_share_of_step")),
            pts(_cost(d, "asa-proj64", "adversary_share_of_step")),
        ),
    ),
    Claim(
        "benchmarks/README.md",
        "inference 1.00 +- 0.05 ({};",
        BENCH + "defence_cost_cpu.json",
        lambda d: _cost(d, "asa", "inference_ratio_vs_vanilla"),
    ),
    Claim(
        "benchmarks/README.md",
        "before → after: deepwordbug {} → {} s, pwws {} → {} s, textfooler {} → {} s.",
        BENCH + "attack_throughput_cpu.json",
        lambda d: [r[k] for r in d["recipes"] for k in ("before_seconds_per_example", "worker_seconds_per_example")],
    ),
    Claim(
        "benchmarks/README.md",
        "The encoder's share fell from 53 % (the issue's profile) to {}-{} %,",
        BENCH + "attack_throughput_cpu.json",
        lambda d: (
            min(
                v := [
                    pts(r["time_breakdown_after"]["fraction"]["constraint:TransformerSentenceEncoder"])
                    for r in d["recipes"]
                ]
            ),
            max(v),
        ),
    ),
    Claim(
        "benchmarks/README.md",
        "{} % of its time are WordNet look-ups",
        BENCH + "attack_throughput_cpu.json",
        lambda d: _wordnet(_attack(d, "textfooler")),
    ),
    Claim(
        "benchmarks/README.md",
        "Floors in that run: {} s per model text, {} s per encoder text",
        BENCH + "attack_throughput_cpu.json",
        lambda d: (d["floor_seconds_per_model_text"], d["floor_seconds_per_encoder_text"]),
    ),
    Claim(
        "benchmarks/README.md",
        "TextAttack `HuggingFaceModelWrapper` {} queries/s (one pass), ours {}, the floor (bare "
        "`model(**batch)` over the same batches) {} → wrapper/floor **{}**",
        BENCH + "query_throughput_cpu.json",
        lambda d: (d["stock_queries_per_s"], d["ours_queries_per_s"], d["floor_queries_per_s"], d["ours_over_floor"]),
    ),
    Claim(
        "benchmarks/README.md",
        "Probabilities agree with TextAttack's wrapper to {}.",
        BENCH + "query_throughput_cpu.json",
        lambda d: d["max_abs_prob_diff"],
    ),
    Claim(
        "benchmarks/README.md",
        "1 thread median **{}** examples/s (worst {}, best {}), 2 threads median **{}** (worst {}, best {})",
        BENCH + "train_threads_cpu.json",
        lambda d: [d["threads"][t][k] for t in ("1", "2") for k in ("median", "worst", "best")],
    ),
    Claim(
        "benchmarks/README.md",
        "ASA at 512 tokens: **{}x vanilla's peak** at its defaults",
        MEMORY,
        lambda d: _mem(d, "8x512", "asa"),
    ),
    Claim(
        "benchmarks/README.md",
        "uscal holds {}x vanilla's peak at 512 tokens and scal {}x",
        MEMORY,
        lambda d: (_mem(d, "8x512", "uscal"), _mem(d, "8x512", "scal")),
    ),
    Claim(
        "benchmarks/README.md", "at 8 x 512 ({}x vanilla's peak, <= 1.5x)", AUTO, lambda d: _mem(d, "8x512", "asa-auto")
    ),
    Claim(
        "benchmarks/README.md",
        "their {} MiB apart",
        AUTO,
        lambda d: _mem(d, "8x512", "asa-auto", "peak_mib") - _mem(d, "8x512", "asa", "peak_mib"),
    ),
    Claim(
        "benchmarks/README.md",
        "recomputing would save {}x vanilla's peak",
        AUTO,
        lambda d: _mem(d, "32x64", "asa-auto") - _mem(d, "32x64", "asa"),
    ),
    Claim(
        "benchmarks/README.md",
        "all SST-2 training sentences without labels, {} for training and {} held out",
        BENCH + "pretrain_compare_cpu.json",
        lambda d: (d["pretraining"]["asa"]["train_texts"], d["pretraining"]["asa"]["eval_texts"]),
    ),
    Claim(
        "benchmarks/README.md",
        "ASA's pre-training took {}x the naive arm's seconds",
        BENCH + "pretrain_compare_cpu.json",
        lambda d: d["pretraining"]["asa"]["train_seconds"] / d["pretraining"]["naive"]["train_seconds"],
    ),
]


# ---------------------------------------------------------------------------------------------------------------
# Tables: a doc table found by its header, each row matched to a JSON record, listed columns checked


@dataclass
class Table:
    doc: str
    header: str  # the table's header line, as in the doc (a prefix suffices)
    source: str
    rows: Callable[[Any, list[str]], Any]  # (json, the row's cells) -> the row's record
    columns: dict[int, Callable[[Any], Any]] = field(default_factory=dict)  # column index -> numbers in doc units


def doc_table(text: str, header: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each body row of the table whose header line starts with ``header``."""
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    if start is None:
        return []
    rows = []
    for i in range(start + 2, len(lines)):
        if not lines[i].startswith("|"):
            break
        rows.append((i + 1, [c.strip() for c in lines[i].strip().strip("|").split("|")]))
    return rows


def check_table(table: Table, text: str, data: Any) -> list[str]:
    rows = doc_table(text, table.header)
    if not rows:
        return [f"{table.doc}: no table headed '{table.header}'; update tests/test_doc_figures.py"]
    errors = []
    for number, cells in rows:
        try:
            record = table.rows(data, cells)
        except (StopIteration, KeyError):
            errors.append(f"{table.doc}:{number}: row '{cells[0]}' has no record in {table.source}")
            continue
        for column, values in table.columns.items():
            got = re.findall(NUMBER, cells[column].replace("**", ""))
            expected = [v for v in _flat(values(record)) if v is not None]
            if len(got) != len(expected) or not all(agrees(g, v) for g, v in zip(got, expected)):
                shown = ", ".join(f"{v:.6g}" for v in expected) or "nothing"
                errors.append(
                    f"{table.doc}:{number}: '{cells[0]}', column {column + 1} says '{cells[column]}', "
                    f"{table.source} holds {shown}"
                )
    return errors


def by_name(names: dict[str, str], key: str = "defence", records: str = "results") -> Callable:
    """A row's record: the one whose ``key`` is ``names[first cell]`` (or the first cell itself)."""
    return lambda d, cells: next(r for r in d[records] if r[key] == names.get(cells[0], cells[0]))


def shaped(names: dict[str, str]) -> Callable:
    """A memory row's record, by its batch shape (``8 x 512``) and defence."""
    return lambda d, cells: next(
        r
        for r in d["rows"]
        if r["shape"] == cells[0].replace(" ", "") and r["defence"] == names.get(cells[1], cells[1])
    )


COST_NAMES = {
    "asa (tau 0.5, projection = hidden 384)": "asa",
    "asa, projection 64": "asa-proj64",
    "pgd K=3": "pgd-k3",
    "freelb K=3": "freelb-k3",
    "freelb K=5": "freelb-k5",
    "asa + freelb K=3": "asa+freelb-k3",
}
MEMORY_NAMES = {
    "asa (default: `recompute_clean = true`)": "asa",
    "asa, `recompute_clean = false`": "asa-keep-clean",
    "asa+freelb, `recompute_clean = false`": "asa-keep-clean+freelb",
}
AUTO_NAMES = {
    "recomputed (`true`)": "asa",
    "kept (`false`)": "asa-keep-clean",
    '`"auto"` (recomputes)': "asa-auto",
    '`"auto"` (keeps)': "asa-auto",
}
GRID_MODES = {
    "sequential (`--max-parallel 1`)": "sequential",
    "local, 2 processes (`--max-parallel 2`)": "local",
    "local, 2 processes, idle cores lent (`--max-parallel 2 --lend-idle-cores`)": "lend",
    "Ray, local cluster of 2 CPUs (`--executor ray`)": "ray",
}
SLURM_MODES = {
    "local, 2 processes (`--max-parallel 2`)": "local",
    "SLURM jobs through submitit's local executor (`--executor slurm`)": "slurm",
}
ONE_THREAD_ROWS = {
    "asa (default), run 1: 10 steps": ("defence_cost_asa_1thread_cpu.json", "asa"),
    "asa (default), run 2: 5 steps": ("defence_cost_issue35_cpu.json", "asa"),
    **{name: ("defence_cost_issue35_cpu.json", name) for name in ("freelb++", "creat", "infobert", "tavat")},
}
ARMS = {"ASA": "asa", "naive": "naive", "naive, 2N": "naive2x"}
PAIRED = {"naive, N steps": "vanilla@naive", "naive, 2N steps": "vanilla@naive2x"}
ALLREDUCE_NAMES = {"pgd (K = 3, clean term)": "pgd", "freelb (K = 5)": "freelb"}


MEMORY_COLUMNS = {
    2: lambda r: r["peak_mib"],
    3: lambda r: r["peak_ratio"],
    4: lambda r: r["step_mib"],
    5: lambda r: r["step_ratio"],
}


def _arm(d: dict, cells: list[str]) -> dict:
    arm = ARMS[cells[0]]
    find = lambda rows: next(r for r in rows if r["defence"] == f"vanilla@{arm}")  # noqa: E731
    return {**d["pretraining"][arm], "fine": find(d["fine_tuning"]), "attack": find(d["attack"])}


def _allreduce(d: dict, cells: list[str]) -> tuple[dict, dict]:
    name = ALLREDUCE_NAMES.get(cells[0], cells[0])
    return load(BENCH + "allreduce_counts_before.json")["counts"][name], d["counts"][name]


def _other(r: dict) -> float:
    return pts(
        sum(
            v
            for k, v in r["time_breakdown_after"]["fraction"].items()
            if k.startswith("constraint:") and k != "constraint:TransformerSentenceEncoder"
        )
    )


def _wordnet(r: dict) -> list[float]:
    """The WordNet POS constraint's share, where the recipe has one (textfooler)."""
    share = r["time_breakdown_after"]["fraction"].get("constraint:WordNetPOSMatch")
    return [] if share is None else [pts(share)]


def _points3(found: dict) -> tuple:
    return pts(found["delta"]), pts(found["ci"][0]), pts(found["ci"][1])


TABLES = [
    Table(
        "benchmarks/README.md",
        "| defence | 1 proc x 1 thread |",
        BENCH + "multiprocess_throughput.json",
        lambda d, cells: d["median_examples_per_second"][cells[0]],
        {
            1: lambda r: r["1 proc x 1 thread"],
            2: lambda r: r["1 proc x 2 threads"],
            3: lambda r: r["2 procs x 1 thread"],
        },
    ),
    Table(
        "benchmarks/README.md",
        "| defence | s/step | x vanilla | adversary share |",
        BENCH + "defence_cost_cpu.json",
        by_name(COST_NAMES),
        {
            1: lambda r: r["seconds_per_step"],
            2: lambda r: r["step_ratio_vs_vanilla"],
            3: lambda r: None if r["adversary_share_of_step"] is None else pts(r["adversary_share_of_step"]),
            4: lambda r: r["exported_parameters"],
            5: lambda r: r["inference_ratio_vs_vanilla"],
        },
    ),
    Table(
        "benchmarks/README.md",
        "| recipe | examples | before | after | speedup |",
        BENCH + "attack_throughput_cpu.json",
        by_name({}, "recipe", "recipes"),
        {
            1: lambda r: r["examples"],
            2: lambda r: r["before_examples_per_min"],
            3: lambda r: r["after_examples_per_min"],
            4: lambda r: r["speedup"],
            5: lambda r: (r["examples"] - r["outcome_mismatches"], r["examples"]) if r["rows_identical"] else None,
            6: lambda r: (r["stock_examples_per_min"], r["stock_examples"]) if r.get("stock_examples") else None,
        },
    ),
    Table(
        "benchmarks/README.md",
        "| recipe | model queries | constraints: sentence encoder / other |",
        BENCH + "attack_throughput_cpu.json",
        by_name({}, "recipe", "recipes"),
        {
            1: lambda r: pts(r["time_breakdown_after"]["fraction"]["model_queries"]),
            2: lambda r: (
                pts(r["time_breakdown_after"]["fraction"]["constraint:TransformerSentenceEncoder"]),
                _other(r),
                *_wordnet(r),
            ),
            3: lambda r: pts(r["time_breakdown_after"]["fraction"]["transformation"]),
            4: lambda r: pts(r["time_breakdown_after"]["fraction"]["search_and_other"]),
            5: lambda r: (
                r["time_breakdown_after"]["model_forwards_per_example"],
                r["time_breakdown_after"]["model_texts_per_example"],
            ),
            6: lambda r: (
                r["time_breakdown_after"]["encoder_forwards_per_example"],
                r["time_breakdown_after"]["encoder_texts_per_example"],
            ),
            7: lambda r: r["limit_seconds_per_example"],
            8: lambda r: r["worker_seconds_per_example"],
            9: lambda r: r["measured_over_limit"],
        },
    ),
    Table(
        "benchmarks/README.md",
        "| mode | wall s | speedup vs sequential |",
        BENCH + "grid_throughput_cpu.json",
        by_name(GRID_MODES, "mode"),
        {
            1: lambda r: r["seconds"],
            2: lambda r: (
                r["speedup_vs_sequential"]
                if r["mode"] != "ray"
                else (r["speedup_vs_sequential"], pts(r["seconds"] / _mode("local")["seconds"] - 1))
            ),
        },
    ),
    Table(
        "benchmarks/README.md",
        "| batch | defence | peak MiB |",
        MEMORY,
        shaped(MEMORY_NAMES),
        MEMORY_COLUMNS,
    ),
    Table(
        "benchmarks/README.md",
        "| batch | ASA's clean pass | peak MiB |",
        AUTO,
        shaped(AUTO_NAMES),
        MEMORY_COLUMNS,
    ),
    Table(
        "benchmarks/README.md",
        "| defence | gradient all-reduces / step, before |",
        BENCH + "allreduce_counts_after.json",
        _allreduce,
        {
            1: lambda r: r[0]["gradient_all_reduces_per_step"],
            2: lambda r: r[1]["gradient_all_reduces_per_step"],
            3: lambda r: r[0]["other_all_reduces_per_step"],
            4: lambda r: r[1]["other_all_reduces_per_step"],
        },
    ),
    Table(
        "benchmarks/README.md",
        "| defence | dev accuracy % | vs vanilla (points) |",
        BENCH + "defaults_sanity_cpu.json",
        by_name({}, records="rows"),
        {
            1: lambda r: pts(r["eval_accuracy"]),
            2: lambda r: r["delta_vs_vanilla_points"] or None,
            4: lambda r: r["asa_mask_ratio_per_layer"],
        },
    ),
    Table(
        "benchmarks/README.md",
        "| arm | pre-training steps |",
        BENCH + "pretrain_compare_cpu.json",
        _arm,
        {
            1: lambda r: r["steps"],
            2: lambda r: r["eval_mlm_loss"],
            3: lambda r: pts(r["eval_accuracy"]),
            4: lambda r: r["eval_perplexity"],
            5: lambda r: pts(r["fine"]["eval_accuracy"]),
            6: lambda r: (
                pts(r["attack"]["accuracy_under_attack"]),
                *map(pts, r["attack"]["accuracy_under_attack_ci"]),
            ),
        },
    ),
    Table(
        "benchmarks/README.md",
        "| ASA-pre-trained vs |",
        BENCH + "pretrain_compare_cpu.json",
        lambda d, cells: next(p for p in d["paired"] if p["baseline"] == PAIRED[cells[0]]),
        {
            1: lambda r: _points3(r["accuracy_under_attack"]),
            2: lambda r: (r["mcnemar"][0]["defence_only_correct"], r["mcnemar"][0]["baseline_only_correct"]),
            3: lambda r: r["mcnemar"][0]["p_value"],
            4: lambda r: _points3(r["clean_accuracy"]),
        },
    ),
]


TABLES += [
    Table(
        "benchmarks/README.md",
        "| batch (issue 35) | defence | peak MiB |",
        BENCH + "defence_memory_issue35_cpu.json",
        shaped({}),
        MEMORY_COLUMNS,
    ),
    Table(
        "benchmarks/README.md",
        "| defence | GFLOP per step | x vanilla |",
        BENCH + "defence_flops_cpu.json",
        by_name({}),
        {1: lambda r: r["gflops_per_step"], 2: lambda r: r["flops_ratio_vs_vanilla"]},
    ),
    Table(
        "benchmarks/README.md",
        "| mode (2026-12-07) | wall s | x local | rows as local |",
        BENCH + "grid_throughput_slurm_cpu.json",
        by_name(SLURM_MODES, "mode"),
        {1: lambda r: r["seconds"], 2: lambda r: r["seconds_vs_local"]},
    ),
    Table(
        "benchmarks/README.md",
        "| run and defence | vanilla s/step | s/step | x vanilla | paired |",
        BENCH + "defence_flops_cpu.json",
        lambda flops, cells: _one_thread_row(flops, cells[0]),
        {
            1: lambda r: r["vanilla"]["seconds_per_step"],
            2: lambda r: r["row"]["seconds_per_step"],
            3: lambda r: r["row"]["step_ratio_vs_vanilla"],
            4: lambda r: r["paired"],
            5: lambda r: _share(r["row"]),
            6: lambda r: r["flops"],
        },
    ),
]


def _share(record: dict) -> float | None:
    share = record["adversary_share_of_step"]
    return None if share is None else pts(share)


def _one_thread_row(flops: dict, label: str) -> dict:
    """A row of the 1-thread cost table: its run's JSON record, vanilla's, the paired median and the FLOPs."""
    source, name = ONE_THREAD_ROWS[label]
    steps = {r["defence"]: r for r in load(BENCH + source)["results"]}
    ratios = [a / v for a, v in zip(steps[name]["step_seconds"], steps["vanilla"]["step_seconds"])]
    floor = next(r for r in flops["results"] if r["defence"] == name)["flops_ratio_vs_vanilla"]
    return {"row": steps[name], "vanilla": steps["vanilla"], "paired": statistics.median(ratios), "flops": floor}


def _mode(name: str) -> dict:
    return next(r for r in load(BENCH + "grid_throughput_cpu.json")["results"] if r["mode"] == name)


# ---------------------------------------------------------------------------------------------------------------
# The tests


def generated_block_errors(doc: str, text: str) -> list[str]:
    """Each line of a generated block that differs from what its source gives, cell by cell."""
    errors = []
    for kind, source, start, end in doc_tables.blocks(text):
        fresh = doc_tables.generate(kind, (ROOT / doc).parent / source)
        have = text.split("\n")[start:end]
        for i in range(max(len(have), len(fresh))):
            old, new = (have[i] if i < len(have) else ""), (fresh[i] if i < len(fresh) else "")
            if old == new:
                continue
            olds, news = old.strip("|").split("|"), new.strip("|").split("|")
            cells = [f"'{o.strip()}' (JSON: '{n.strip()}')" for o, n in zip(olds, news) if o != n]
            what = "; ".join(cells) if len(olds) == len(news) > 1 else f"'{old}' (JSON: '{new}')"
            errors.append(f"{doc}:{start + i + 1}: {kind} from {source} differs: {what}")
    if errors:
        errors.append(f"regenerate: python -m asa_plugin.bench.doc_tables {doc}")
    return errors


@pytest.mark.parametrize("doc", ["README.md"])
def test_generated_blocks_match_their_source(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert doc_tables.blocks(text), f"{doc} has no generated block"
    errors = generated_block_errors(doc, text)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("claim", GRID_CLAIMS + BENCH_CLAIMS, ids=lambda c: f"{c.doc}:{c.template[:40]}")
def test_prose_figures_match_their_source(claim):
    errors = check_claim(claim, (ROOT / claim.doc).read_text(encoding="utf-8"), load(claim.source))
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("table", TABLES, ids=lambda t: f"{t.doc}:{t.header[:40]}")
def test_benchmark_tables_match_their_json(table):
    errors = check_table(table, (ROOT / table.doc).read_text(encoding="utf-8"), load(table.source))
    assert not errors, "\n".join(errors)


# The checks themselves: each catches a figure the JSON no longer holds, and says where.


def test_a_changed_grid_cell_is_named_with_the_json_value(tmp_path):
    report = load(GRID)
    cell(report, "uscal", "pwws")["comparison"]["accuracy_under_attack"]["delta"] = 0.05
    (tmp_path / "results" / "sst2-minilm-cpu").mkdir(parents=True)
    (tmp_path / GRID).write_text(json.dumps(report))
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    errors = [e for e in generated_block_errors("README.md", text.replace(GRID, str(tmp_path / GRID)))]
    line = next(n for n, row in enumerate(text.split("\n"), 1) if row.startswith("| uscal |"))
    assert errors[0].startswith(f"README.md:{line}: grid-table")
    assert "'-0.3 [-4.0, +3.3], p 1.00' (JSON: '+5.0 [-4.0, +3.3], p 1.00')" in errors[0]
    assert errors[-1] == "regenerate: python -m asa_plugin.bench.doc_tables README.md"


def test_a_changed_prose_figure_is_named_with_the_json_value():
    claim = Claim("README.md", "Vanilla's own seed-to-seed spread ({} points under pwws)", GRID, lambda r: 2.3)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    line = line_of(text, text.index("Vanilla's own seed-to-seed spread"))
    assert check_claim(claim, text, {}) == [f"README.md:{line}: says 1.8, {GRID} holds 2.3 (in '{claim.template}')"]
    gone = Claim("README.md", "a sentence the README never had {}", GRID, lambda r: 1.0)
    assert "no longer says" in check_claim(gone, text, {})[0]


def test_a_changed_benchmark_cell_is_named_with_the_json_value():
    data = load(BENCH + "defence_cost_cpu.json")
    next(r for r in data["results"] if r["defence"] == "pgd-k3")["step_ratio_vs_vanilla"] = 3.5
    text = (ROOT / "benchmarks/README.md").read_text(encoding="utf-8")
    table = next(t for t in TABLES if t.source.endswith("defence_cost_cpu.json"))
    line = next(n for n, row in enumerate(text.split("\n"), 1) if row.startswith("| pgd K=3 |"))
    assert check_table(table, text, data) == [
        f"benchmarks/README.md:{line}: 'pgd K=3', column 3 says '3.36', {table.source} holds 3.5"
    ]


@pytest.mark.parametrize(
    "text, value, ok",
    [
        ("2.08", 2.075, True),
        ("2.08", 2.0849, True),
        ("2.08", 2.0851, False),
        ("0.006", 0.00592, True),
        ("32,000", 32000, True),
        ("1986", 1986.5, True),
        ("3.0e-07", 2.98e-07, True),
        ("3.0e-07", 3.1e-07, False),
        ("+4.0", 0.04, False),
        ("0.10", 0.0963, True),
        ("0.09", 0.0963, False),
    ],
)
def test_agreement_is_to_the_decimals_the_doc_prints(text, value, ok):
    assert agrees(text, value) is ok


def test_the_generator_rewrites_a_stale_block_and_keeps_the_rest(tmp_path):
    (tmp_path / "report.json").write_text((ROOT / GRID).read_text(encoding="utf-8"))
    doc = tmp_path / "doc.md"
    doc.write_text(
        "before\n<!-- BEGIN generated grid-table: report.json -->\n| stale |\n"
        "<!-- END generated grid-table -->\nafter\n",
        encoding="utf-8",
    )
    assert doc_tables.main(["--check", str(doc)]) == 1 and "stale" in doc.read_text()
    assert doc_tables.main([str(doc)]) == 0
    lines = doc.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "before" and lines[-2:] == ["after", ""]
    assert lines[2:-3] == doc_tables.grid_table(load(GRID))
    assert doc_tables.main(["--check", str(doc)]) == 0


@pytest.mark.parametrize(
    "p, text",
    [
        (1.0, "1.00"),
        (0.7709, "0.77"),
        (0.1, "0.10"),
        (0.0963, "0.096"),
        (0.05, "0.050"),
        (0.00592, "0.006"),
        (0.000182, "0.0002"),
        (3e-6, "< 0.0001"),
    ],
)
def test_p_values_are_printed_with_the_readmes_precision(p, text):
    assert doc_tables.p_text(p) == text


# ---------------------------------------------------------------------------------------------------------------
# The committed grid's report rebuilds identically from its runs


@pytest.mark.slow  # 36 s on the 2-core machine at load 4.7 (the report's bootstrap over 42 attacks)
def test_the_committed_grid_report_rebuilds_identically(tmp_path):
    """`advrobust report` on a copy of results/sst2-minilm-cpu without its report and plots rebuilds report.json
    and report.md byte for byte. No field is ignored: `bench_dir` is written relative to the working directory
    (so the report runs from the copy's parent, as the committed one ran from the repository root), machines,
    settings and assets come from bench.json and the runs' own files, and the bootstrap has a fixed seed.
    (report.html and the PNGs came out identical too when this was written, 2026-12-07, but they hold
    matplotlib's rendering, which depends on its version and fonts, so they are not compared.)"""
    bench = ROOT / "results" / "sst2-minilm-cpu"
    copy = tmp_path / "results" / "sst2-minilm-cpu"
    shutil.copytree(bench, copy, ignore=shutil.ignore_patterns("report.*", "*.png"))
    done = subprocess.run(
        [sys.executable, "-m", "asa_plugin.cli", "report", "results/sst2-minilm-cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((copy / "report.json").read_text()) == json.loads((bench / "report.json").read_text())
    assert (copy / "report.json").read_bytes() == (bench / "report.json").read_bytes()
    assert (copy / "report.md").read_text() == (bench / "report.md").read_text()


def test_a_defence_added_to_the_grid_gets_its_row_and_unfinished_cells_say_so():
    """What the lead's next grid brings: a new defence not yet attacked, and freelb with a seed still missing."""
    report = load(GRID)
    report["defences"].append("creat")
    for recipe in report["recipes"]:
        report["cells"].append(
            {"defence": "creat", "recipe": recipe, "status": "missing", "seeds": [42], "seeds_done": [], "per_seed": {}}
        )
    partial = cell(report, "freelb", "pwws")
    partial.update(seeds=[42, 43], status="partial")
    lines = doc_tables.grid_table(report)
    assert lines[-3] == "| creat | missing | missing | missing | missing |"
    freelb = next(line for line in lines if line.startswith("| freelb |")).split(" | ")
    assert freelb[3] == "+3.0 [-0.3, +6.3], p 0.12 (seed 43 missing)"
