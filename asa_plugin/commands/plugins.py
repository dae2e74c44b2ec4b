"""``advrobust plugins [--json]``: every registered defence, adapter, recipe, dataset and bench executor."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list registered defences, adapters, recipes, datasets and bench executors")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from asa_plugin.plugins import get_plugin_manager

    listing = get_plugin_manager().listing()
    if args.json:
        print(json.dumps(listing, indent=2, sort_keys=True))
        return 0
    for kind, entries in listing.items():
        print(f"{kind}:")
        for name, info in entries.items():
            print(f"  {name:<20} {info['plugin']}")
    return 0
