"""The ``advrobust`` command line. Each subcommand lives in its own module under
``asa_plugin.commands`` exposing ``add_parser(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

from asa_plugin import __version__, interrupts
from asa_plugin.errors import UserError, is_main_rank, set_command, write_failure

COMMANDS = [
    "asa_plugin.commands.train",
    "asa_plugin.commands.pretrain",
    "asa_plugin.commands.plugins",
    "asa_plugin.commands.config",
    "asa_plugin.commands.attack",
    "asa_plugin.commands.evaluate",
    "asa_plugin.commands.merge",
    "asa_plugin.commands.asa_maps",
    "asa_plugin.commands.bench",
    "asa_plugin.commands.report",
    "asa_plugin.commands.compare",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advrobust",
                                     description="Adversarial-robustness toolkit for text classifiers.")
    parser.add_argument("--version", action="version", version=f"advrobust {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


VALUE_FLAGS = ("--shard",)
"""Options whose value may start with '-' (``--shard -1/2``): joined as ``--shard=-1/2`` so the
command's own check reports it, not argparse's "expected one argument"."""


def _join_dash_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in VALUE_FLAGS:
            value = next(it, None)
            if value is not None and value.startswith("-"):
                out.append(f"{arg}={value}")
                continue
            out += [arg] if value is None else [arg, value]
        else:
            out.append(arg)
    return out


def _blamed(exc: UserError, args) -> str:
    """The message, naming the ``--set`` that gave a bad value rather than the config file that did not."""
    overrides = getattr(args, "overrides", None)
    if not overrides or str(exc).startswith("--set "):
        return str(exc)
    from asa_plugin.config import blame_override

    return blame_override(str(exc), str(getattr(args, "config", None)), overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_join_dash_values(sys.argv[1:] if argv is None else list(argv)))
    interrupts.reset()
    previous_sigterm = interrupts.sigterm_as_interrupt()
    set_command(args.command)
    try:
        return _run(args)
    finally:  # the process-wide state a command set is not left to whoever called main() in-process
        interrupts.restore_sigterm(previous_sigterm)
        set_command(None)


def _run(args) -> int:
    """Run the parsed command; a user error, a broken pipe, an interruption or a failed write is its one line."""
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        if is_main_rank() or getattr(exc, "every_rank", False):  # e.g. a rank that cannot see the run directory
            print(f"advrobust {args.command}: error: {_blamed(exc, args)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt:
        print(f"advrobust {args.command}: {interrupts.message()}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - only a failed write is answered here; the rest is re-raised
        line = write_failure(exc, args.command)
        if line is None:
            raise
        if is_main_rank():
            print(f"advrobust {args.command}: error: {line}", file=sys.stderr)
        return UserError.exit_code


if __name__ == "__main__":
    sys.exit(main())
