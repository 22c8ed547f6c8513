"""The ``trimcache`` dispatcher: a bad flag prints the usage of the subcommand it was given to.

The cases are every parser of the real tree (``testbed.cli.build_parser``), so a subcommand added
later is covered without touching this file.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from testbed.cli import build_parser, main
from tests.helpers import run_cli

BAD_FLAG = "--no-such-flag"


def _subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


def _is_group(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    """One plausible value per positional, so only the bad flag is wrong."""
    values = []
    for action in parser._actions:
        if action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        values.append(str(next(iter(action.choices))) if action.choices else "1")
    return values


def _has_required_option(parser: argparse.ArgumentParser) -> bool:
    return any(a.option_strings and a.required for a in parser._actions)


SUBCOMMANDS = dict(_subcommands(build_parser()))


def test_the_tree_is_walked() -> None:
    # the walk really reaches nested subcommands of several packages
    assert {("fetch",), ("cache", "ls"), ("blocks", "split"), ("testbed", "up")} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("path", sorted(SUBCOMMANDS), ids=" ".join)
def test_bad_flag_prints_the_subcommands_usage(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    parser = SUBCOMMANDS[path]
    argv = [*path, *([] if _is_group(parser) else _positionals(parser)), BAD_FLAG]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out = capsys.readouterr()
    prog = "trimcache " + " ".join(path)
    assert out.out == ""
    lines = out.err.splitlines()
    assert lines[0].startswith(f"usage: {prog} ") or lines[0] == f"usage: {prog}"
    assert lines[-1].startswith(f"{prog}: error: ")
    if not _is_group(parser) and not _has_required_option(parser):
        assert lines[-1] == f"{prog}: error: unrecognized arguments: {BAD_FLAG}"
    assert "Traceback" not in out.err


def test_bad_flag_in_a_subprocess() -> None:
    result = run_cli("cache", "ls", BAD_FLAG)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: trimcache cache ls ")
    assert result.stderr.splitlines()[-1] == (
        f"trimcache cache ls: error: unrecognized arguments: {BAD_FLAG}"
    )
