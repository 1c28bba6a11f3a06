"""Command line: parse arguments, call one function, print. Every user error becomes exit status 2."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from dcsim.errors import guarded

# One module per command under dcsim/commands; each has add_parser(subparsers) that sets func=handler.
COMMANDS = ("run", "trace", "fit", "profiles", "calibrate", "sweep", "plan", "report", "validate")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every command's, or with `only` (one of COMMANDS) that command's alone, so
    that running one command imports no other command's module."""
    parser = argparse.ArgumentParser(prog="dcsim", description=__import__("dcsim").__doc__)
    parser.add_argument("--version", action="version", version=f"dcsim {__import__('dcsim').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (only,) if only in COMMANDS else COMMANDS:
        try:
            mod = importlib.import_module(f"dcsim.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"dcsim.commands.{name}":
                continue  # command not built yet
            raise
        mod.add_parser(sub)
    return parser


def standalone(prog: str, doc: str | None, configure, handler, argv: list[str] | None = None) -> int:
    """Entry for one command run as `python -m dcsim.commands.NAME` (as on a machine where only the measuring
    side is installed): parse, run guarded; the handler finds its own argument list in args.argv to record."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.argv = argv
    return guarded(handler, args)


def command_line(args: argparse.Namespace, name: str) -> str:
    """The command as the user typed it, for a manifest: `dcsim NAME ARGS...`."""
    argv = getattr(args, "argv", None)
    if argv is None:
        argv = sys.argv[sys.argv.index(name) + 1:] if name in sys.argv else []
    return f"dcsim {name} " + shlex.join(argv)


def chosen(argv: list[str]) -> str | None:
    """The command that argv names first, before any option; None when it names none (then help or an error
    lists every command)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    only = chosen(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return guarded(args.func, args)
    except BrokenPipeError:
        # output piped into a reader that closed early (e.g. `| head`): not an error of ours
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


# Commands whose process may end without the interpreter's teardown (see entry): they start no thread or process
# and close every file they write.
QUICK_EXIT = ("run",)


def entry() -> None:
    """The `dcsim` program: main(), then exit. After `dcsim run`, once the atexit hooks have run and the output is
    flushed, the process ends without the interpreter's teardown (freeing every imported module's objects one by
    one, some 0.1 s of a small run's start-up), which would change nothing it wrote."""
    rc = main()
    import threading

    if chosen(sys.argv[1:]) in QUICK_EXIT and threading.active_count() == 1:
        import atexit
        import os

        atexit._run_exitfuncs()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # a closed, broken or absent stream: exit as usual
            sys.exit(rc)
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
