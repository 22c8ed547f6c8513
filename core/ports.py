"""Loopback ports: the one free-port helper (tests, benchmarks, the testbed launcher).

Prefer handing a bound socket to the server (tests/helpers.py ``serve`` does); a port number is
for servers started as separate processes, which must bind it themselves a moment later.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the OS picked it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
