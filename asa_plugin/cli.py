"""The ``advrobust`` command line. Each subcommand lives in its own module under
``asa_plugin.commands`` exposing ``add_parser(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

from asa_plugin import __version__
from asa_plugin.errors import UserError

COMMANDS = [
    "asa_plugin.commands.train",
    "asa_plugin.commands.plugins",
    "asa_plugin.commands.config",
    "asa_plugin.commands.attack",
    "asa_plugin.commands.evaluate",
    "asa_plugin.commands.merge",
    "asa_plugin.commands.asa_maps",
    "asa_plugin.commands.bench",
    "asa_plugin.commands.report",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advrobust",
                                     description="Adversarial-robustness toolkit for text classifiers.")
    parser.add_argument("--version", action="version", version=f"advrobust {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"advrobust {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt:
        print(f"advrobust {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
