"""``advrobust merge RUN [--recipe NAME]``: combine ``--shard`` runs into one summary."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge the shards of `advrobust attack --shard I/N` runs",
                       description="Combine RUN/attack/<recipe>/shards/*-of-N into RUN/attack/<recipe>/"
                                   "{results.jsonl,summary.json}, identical to an unsharded run.")
    p.add_argument("run_dir", help="run dir, its attack/ dir, or one attack/<recipe> dir")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME", help="only these recipes")
    p.set_defaults(run=run)


def run(args) -> int:
    from asa_plugin.attacks.merge import merge_run
    from asa_plugin.plugins import get_plugin_manager

    pm = get_plugin_manager()
    merged = merge_run(Path(args.run_dir), args.recipe or None)
    for recipe_dir, summary in merged.items():
        pm.on_report(recipe_dir, summary)
        keys = ("recipe", "num_examples", "clean_accuracy", "accuracy_under_attack", "attack_success_rate")
        print(json.dumps({k: summary[k] for k in keys}))
    return 0
