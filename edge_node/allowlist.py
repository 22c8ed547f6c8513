"""Which hosts a plan may point this edge at (issue 13 item 9).

A plan's ``origin_url`` and every peer URL must name an allowed ``host:port``: the configured
origin (``EDGE_ORIGIN_URL``), the configured controller (``EDGE_CONTROLLER_URL``), or an entry
of ``EDGE_ALLOWED_HOSTS`` (comma-separated ``host:port``, or a bare ``host`` for any port of
it). Peers follow the same rule: the deployment lists the peer edges (the testbed lists every
edge). Anything else is refused with :class:`HostNotAllowedError` (400 ``host_not_allowed``)
before the plan touches anything, so it is neither applied nor kept for repairs.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from core.errors import HostNotAllowedError
from edge_node.settings import Settings

_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_port(url: str) -> tuple[str, int | None]:
    """``(host, port)`` of an http(s) URL, the port defaulted by scheme (None: unparseable)."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return "", None
    return (parts.hostname or "").lower(), port


def _entry(text: str) -> tuple[str, int | None]:
    host, sep, port = text.strip().lower().rpartition(":")
    if not sep or not port.isdigit():  # a bare host (or a bare IPv6 address): any port
        return text.strip().lower().strip("[]"), None
    return host.strip("[]"), int(port)


def check_allowed(settings: Settings, urls: Iterable[str]) -> None:
    """Raise :class:`HostNotAllowedError` on the first of ``urls`` not on the allow-list."""
    exact = {host_port(u) for u in (settings.origin_url, *settings.controller_urls) if u}
    any_port: set[str] = set()
    for text in filter(str.strip, settings.allowed_hosts.split(",")):
        host, port = _entry(text)
        if port is None:
            any_port.add(host)
        else:
            exact.add((host, port))
    for url in urls:
        host, port = host_port(url)
        if port is None or not host or ((host, port) not in exact and host not in any_port):
            shown = f"{host}:{port}" if host and port else repr(url[:200])
            raise HostNotAllowedError(
                f"{shown} is not an allowed host for this edge "
                "(EDGE_ORIGIN_URL, EDGE_CONTROLLER_URL or EDGE_ALLOWED_HOSTS)"
            )
