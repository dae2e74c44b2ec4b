"""``advrobust report DIR``: rebuild a bench's report.md, report.json and plots from stored results."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild a bench directory's report and plots (no training or attacks)")
    p.add_argument("dir", help="bench directory written by `advrobust bench` (its [bench] out_dir)")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from asa_plugin.bench.report import write_report
    from asa_plugin.plugins import get_plugin_manager

    report = write_report(Path(args.dir), get_plugin_manager())
    print(f"{Path(args.dir) / 'report.md'} ({len(report['missing'])} cells missing)")
    return 0
