"""``advrobust compare DIR DEFENCE --against LABEL``: one label of a bench against any other, paired.

The report compares every defence with the bench's baseline (vanilla). An ablation asks another
question: does a variant differ from its defence at the default setting (``asa-tau0.3`` against
``asa``), or one defence from another? This prints the same paired table (difference in accuracy under
attack with its bootstrap interval, McNemar's exact p per seed) for DEFENCE against LABEL, from the
stored results only; report.md and report.json are left as they are.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare one label of a bench with another, paired on the same examples "
                                       "(stored results only)")
    p.add_argument("dir", help="bench directory written by `advrobust bench` (its [bench] out_dir)")
    p.add_argument("defence", metavar="DEFENCE", help="label of the grid to compare (e.g. asa-tau0.3)")
    p.add_argument("--against", metavar="LABEL", default=None,
                   help="label to compare it with (e.g. asa); default: the bench's baseline")
    p.add_argument("--json", action="store_true", help="print the comparisons as JSON instead of a table")
    p.set_defaults(run=run)


def compare_labels(out_dir, defence: str, against: str | None = None) -> dict:
    """The cells of ``defence`` in bench directory ``out_dir``, each with its paired comparison against
    ``against`` (default: the bench's baseline). Unknown or identical labels are a UserError."""
    from pathlib import Path

    from asa_plugin.bench.plan import read_bench_file
    from asa_plugin.bench.report import collect
    from asa_plugin.errors import UserError

    labels = read_bench_file(Path(out_dir))["defences"]
    for role, label in (("DEFENCE", defence), ("--against", against)):
        if label is not None and label not in labels:
            raise UserError(f"{role} '{label}' is not a label of the bench in {out_dir}; its labels: "
                            f"{', '.join(labels)}")
    report = collect(out_dir, baseline=against)
    if report["baseline"] is None:
        raise UserError(f"the bench in {out_dir} has no baseline (no vanilla, no bench.baseline): name one "
                        f"with --against LABEL")
    if report["baseline"] == defence:
        raise UserError(f"'{defence}' is the label it would be compared with: name another with --against LABEL")
    cells = [c for c in report["cells"] if c["defence"] == defence]  # each with a comparison, after this loop
    for cell in cells:
        if cell["status"] == "missing":  # the report leaves it out of its paired table; here it is said
            cell["comparison"] = {"baseline": report["baseline"], "status": "unavailable",
                                  "reason": f"{defence} has no finished attack under this recipe"}
    return {**report, "cells": cells}


def run(args) -> int:
    import json

    from asa_plugin.bench.markdown import paired_table

    report = compare_labels(args.dir, args.defence, args.against)
    if args.json:
        print(json.dumps({"defence": args.defence, "baseline": report["baseline"], "statistics": report["statistics"],
                          "cells": [{"recipe": c["recipe"], **c["comparison"]} for c in report["cells"]]}, indent=2))
    else:
        print("\n".join(paired_table(report)).strip())
    return 0
