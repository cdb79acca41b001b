"""`replaylab ...`: one entry point; each subcommand lives in `replaylab.commands.<name>`.

A command module defines `HELP` (one line), `add_arguments(parser)` and `main(args) -> int`.
User mistakes raise `ReplaylabError`, and the file system's refusals are `OSError`s: either is printed as
one line, exit status 2, no traceback (`replaylab --debug ...` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from replaylab import __version__
from replaylab.errors import ReplaylabError

# Order shown in `replaylab --help`: the path of an experiment, data -> train -> sweep -> analysis.
COMMANDS = [
    "demo",
    "data",
    "tokenizer",
    "train",
    "export",
    "plan",
    "sweep",
    "results",
    "analyze",
    "report",
    "finetune",
    "advise",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="replaylab", description="Replay generic pre-training data while fine-tuning.")
    parser.add_argument("--version", action="version", version=f"replaylab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"replaylab.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # Building the parser imports every command (scipy, pandas: a second or more), so a Ctrl-C often lands here.
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        _exiting_on_interrupt()
        command = next((a for a in argv if a in COMMANDS), None)
        print(f"replaylab{' ' + command if command else ''}: interrupted", file=sys.stderr)
        return 130
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.main(args) or 0)
    except ReplaylabError as e:
        if args.debug:
            raise
        message = " ".join(str(e).split())  # one line, whatever the message holds
        print(f"replaylab {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (permissions, a full disk, a path through a file)
        if args.debug:
            raise
        where = f" {e.filename!r}" if e.filename else ""
        print(
            f"replaylab {args.command}: error: cannot use{where}: {e.strerror or e}; check the path and its "
            "permissions",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        _exiting_on_interrupt()
        print(f"replaylab {args.command}: interrupted", file=sys.stderr)
        return 130


def _exiting_on_interrupt() -> None:
    """Ignore further Ctrl-C while the one-line message is printed and the interpreter exits (a second
    KeyboardInterrupt there would print a traceback after all)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
