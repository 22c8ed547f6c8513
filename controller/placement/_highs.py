"""HiGHS without a byte on stdout: every solver that builds a MILP gets its ``Highs`` here.

HiGHS writes from C++ straight to file descriptor 1. Since highspy 1.16 the ``Highs()``
constructor prints a banner (``Running HiGHS 1.16.0 ... Copyright ...``) *before* any option
can be set, so ``output_flag=False`` cannot stop it, and a CLI whose stdout is JSON
(``trimcache place ... --solver optimal``) is no longer machine-readable. The root fix is at the
descriptor level, whatever the HiGHS version prints: while a solver holds :func:`quiet_highs`,
fd 1 points at fd 2 (stderr), C stdio is flushed before it is restored, and ``output_flag`` is
off. Python's ``sys.stdout`` is flushed first so nothing written before is reordered.

A process-wide lock serialises the redirection (two threads must not interleave ``dup2``); a
Python thread that prints to stdout meanwhile lands on stderr, which is harmless for the
services (they log to stderr) and the CLI (it prints only after the solve).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import highspy

_LOCK = threading.RLock()
_LIBC = ctypes.CDLL(None)


def _flush_all() -> None:
    """Flush Python's and C's stdout buffers (HiGHS may print through C stdio)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced streams
            pass
    _LIBC.fflush(None)


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr for the duration of the block (re-entrant)."""
    with _LOCK:
        _flush_all()
        saved = os.dup(1)
        try:
            os.dup2(2, 1)
            try:
                yield
            finally:
                _flush_all()
                os.dup2(saved, 1)
        finally:
            os.close(saved)


@contextmanager
def quiet_highs() -> Iterator[highspy.Highs]:
    """A fresh ``Highs`` with logging off; build and run the model inside the block."""
    with stdout_to_stderr():
        h = highspy.Highs()  # type: ignore[no-untyped-call]
        h.setOptionValue("output_flag", False)
        h.setOptionValue("log_to_console", False)
        yield h
