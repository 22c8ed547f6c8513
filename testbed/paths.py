"""The testbed's well-known folders on this machine: the shared zoo cache and the last testbed.

On disk (``$XDG_CACHE_HOME`` defaults to ``~/.cache``)::

    $XDG_CACHE_HOME/trimcache-testbed/zoo/<profile>-<key>/  built zoos, one per input hash
                                                        (``$TRIMCACHE_ZOO_CACHE`` moves them)
    $XDG_CACHE_HOME/trimcache-testbed/state/             the default ``testbed up`` state dir
    $XDG_CACHE_HOME/trimcache-testbed/last               state dir of the last ``testbed up``
    $XDG_CACHE_HOME/trimcache-testbed/manifests/         the testbed controllers' manifest cache

``trimcache testbed up`` (without ``--zoo``), ``make demo`` and the test suite all find their zoo
here, so a machine builds each zoo once. The pointer lets ``trimcache models ...`` and
``trimcache testbed status`` find the running testbed without a flag. The client's device cache
(``TRIMCACHE_CACHE_DIR``, default ``~/.cache/trimcache``) is a separate folder, so what
``trimcache cache ls`` counts is the device's own data only.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.fsutil import atomic_write_text

ZOO_CACHE_ENV = "TRIMCACHE_ZOO_CACHE"


def cache_home() -> Path:
    """``$XDG_CACHE_HOME/trimcache-testbed``, or ``~/.cache/trimcache-testbed``."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "trimcache-testbed"


def zoo_cache_dir() -> Path:
    """Where built zoos live: ``$TRIMCACHE_ZOO_CACHE``, else ``cache_home()/zoo``."""
    override = os.environ.get(ZOO_CACHE_ENV)
    return Path(override).expanduser() if override else cache_home() / "zoo"


def manifest_cache_dir() -> Path:
    """The testbed controllers' ``CONTROLLER_MANIFEST_CACHE_DIR``."""
    return cache_home() / "manifests"


def last_testbed_file() -> Path:
    """The file naming the state dir of the last started testbed."""
    return cache_home() / "last"


def remember_testbed(state_dir: Path) -> None:
    """Record ``state_dir`` as the last started testbed (atomic; best effort)."""
    path = last_testbed_file()
    try:
        atomic_write_text(path, f"{Path(state_dir).resolve()}\n")
    except OSError:
        pass  # a read-only home must not stop the testbed


def last_testbed() -> Path | None:
    """The state dir of the last started testbed, if one was recorded."""
    try:
        text = last_testbed_file().read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def forget_testbed(state_dir: Path) -> None:
    """Drop the pointer if it names ``state_dir`` (after ``testbed down``)."""
    current = last_testbed()
    if current is not None and current == Path(state_dir).resolve():
        last_testbed_file().unlink(missing_ok=True)
