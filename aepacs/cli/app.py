"""The parser assembled from the command groups, and the one place commands' errors become exit statuses."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from aepacs import __version__
from aepacs.cli import archive, keys, models, net, ops, recipients
from aepacs.cli.common import common_options
from aepacs.config import Config, load_config
from aepacs.errors import AepacsError, ConfigError, KeyringError
from aepacs.logs import configure as configure_logging

#: the command groups, in the order ``aepacs --help`` lists them
GROUPS = (keys, recipients, archive, net, models, ops)


def build_parser() -> argparse.ArgumentParser:
    """The ``aepacs`` parser: every group's commands under one set of common options."""
    common = common_options()
    parser = argparse.ArgumentParser(prog="aepacs", parents=[common],
                                     description="Encrypted, learned-compression DICOM archive.")
    parser.add_argument("--version", action="version", version=f"aepacs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub, common)
    return parser


def run(argv: Sequence[str] | None, config: Config | None = None) -> int:
    """Parse `argv`, run its command and return the exit status (one line per error; ``--debug``: tracebacks).

    Parameters
    ----------
    argv : sequence of str, optional
    config : Config, optional
        The configuration the command line names, when already loaded.
    """
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        config = config or load_config(getattr(args, "config", None))
        configure_logging(logging.DEBUG if debug else config.log.level, config.log.format)
        func: Callable[[argparse.Namespace, Config], int] = args.func
        return func(args, config)
    except (ConfigError, KeyringError) as exc:
        if debug:
            raise
        print(f"aepacs: error: {exc}", file=sys.stderr)
        return 2
    except AepacsError as exc:
        if debug:
            raise
        print(f"aepacs: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aepacs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # 'aepacs models list | head': the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except OSError as exc:
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"aepacs: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, the traceback under --debug
        if debug:
            raise
        print(f"aepacs: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
