"""HiGHS may print from C++ on fd 1 (highspy 1.16's banner): none of it reaches stdout."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import ctypes, os, sys
    from controller.placement._highs import quiet_highs, stdout_to_stderr

    print("before", flush=True)
    with stdout_to_stderr():
        os.write(1, b"raw-fd-1\\n")              # what a C++ library does
        ctypes.CDLL(None).printf(b"c-stdio\\n")  # buffered C stdio, flushed before restore
        print("python-print")
    with quiet_highs() as h:
        h.run()
    print("after")
    """
)


def test_native_output_goes_to_stderr_and_stdout_stays_clean():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["before", "after"]
    for line in ("raw-fd-1", "c-stdio", "python-print"):
        assert line in proc.stderr
