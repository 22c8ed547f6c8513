"""The `trimcache` console script: one argparse tree assembled from each package's commands.

Each package owns its subcommands in a `cli` module exposing ``add_parsers(subparsers)``; a
subcommand sets ``func`` (``(args) -> int``) with ``set_defaults``. Heavy imports (FastAPI, torch,
redis) happen inside the handlers, so ``trimcache --help`` and ``trimcache blocks`` stay fast.

Bad flags: every parser of the tree is a :class:`Parser`, whose subcommands reject arguments
they do not know themselves, so ``trimcache cache ls --bogus`` prints the usage of
``trimcache cache ls`` (not of ``trimcache``) and exits 2.

Errors reach the user as one line on stderr and a non-zero exit: ``TrimCacheError`` subclasses
carry their own ``exit_code`` (bad input is 2), ``ValueError`` from input validation exits 2, and
anything unexpected exits 1 with its type and message (the traceback only with
``TRIMCACHE_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from core.errors import TrimCacheError

# Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "core.cli",
    "testbed.zoo_cli",
    "edge_node.cli",
    "controller.cli",
    "client.cli",
    "testbed.launcher_cli",
    "testbed.models_cli",
    "testbed.agents_cli",
    "testbed.experiment_cli",
)


class _StrictSubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands that report their own unrecognized arguments, with their own usage.

    argparse's subparser action hands unknown arguments back to the top-level parser, which
    then prints the top-level usage; here the chosen subcommand's parser reports them.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        extras = vars(namespace).pop(argparse._UNRECOGNIZED_ARGS_ATTR, None)
        if extras:
            self._name_parser_map[values[0]].error(f"unrecognized arguments: {' '.join(extras)}")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subparsers (of any depth) are strict: see the module docstring.

    Subparsers made by ``add_parser`` inherit this class, so the packages' ``cli`` modules need
    nothing special.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _StrictSubParsers)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="trimcache",
        description="TrimCache: deduplicated edge model serving with TrimCaching placement.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module
                raise
            continue  # that package's commands are not built yet
        module.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except TrimCacheError as exc:
        _fail(f"{exc}")
        return exc.exit_code
    except ValueError as exc:
        _fail(f"invalid input: {exc}")
        return 2
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as exc:  # the CLI boundary: one line, never a traceback by default
        if os.environ.get("TRIMCACHE_DEBUG"):
            raise
        _fail(f"{type(exc).__name__}: {exc}")
        return 1


def _fail(message: str) -> None:
    sys.stderr.write(f"trimcache: error: {message}\n")


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
