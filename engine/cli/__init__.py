"""`engine` command line: a thin front end over the SDK.

Each subcommand lives in its own module under `engine.cli` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Modules are imported when the parser is built; heavy imports stay inside `func`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.cli.signals import Terminated, exit_status, terminate_like_interrupt
from engine.errors import EngineError

# Order is the order shown in `engine --help`.
SUBCOMMAND_MODULES = (
    "run",
    "batch",
    "build",
    "export",
    "bench",
    "eval",
    "avatar",
    "serve",
    "avatar_worker",
    "demo",
    "convert",
    "doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine",
        description="latentsync-engine: fast, faithful LatentSync lip-sync inference.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        module_name = f"engine.cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # subcommand not built yet
            if exc.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from engine.cli.logs import configure

    configure(verbose=args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from engine.weights.fetch import offline_mode

    try:
        # --offline means no network for anything (hub, face models, evaluators); SIGTERM cleans up like Ctrl-C
        with offline_mode(getattr(args, "offline", False)), terminate_like_interrupt():
            return int(args.func(args) or 0)
    except EngineError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:  # a lazy import no `require` guarded: still name the extra, no traceback
        from engine.extras import missing_module_error

        error = missing_module_error(exc, what=f"engine {args.command}")
        if error is None:
            raise
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as exc:
        print("terminated" if isinstance(exc, Terminated) else "interrupted", file=sys.stderr)
        status = exit_status(exc)
        if argv is None:  # the `engine` process itself (tests pass argv and keep their interpreter)
            exit_now(status)
        return status


def exit_now(status: int) -> None:
    """End the process at once after a signal, once every cleanup (`finally` blocks: partial outputs removed,
    jobs cancelled) has run: the interpreter's own shutdown (its last garbage collection over loaded models,
    face-model runtimes and their thread pools) took seconds, and a stop must take under 2 s."""
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
