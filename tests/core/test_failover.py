"""core.failover: the service list and the one failover loop (edges, clients, the testbed)."""

from __future__ import annotations

import pytest

from core.failover import Endpoints, parse_urls


def test_parse_urls_normalises_a_comma_separated_list() -> None:
    assert parse_urls(" http://a:1/ ,http://b:2,,http://a:1") == ("http://a:1", "http://b:2")
    assert parse_urls(["http://a:1", "https://b:2/,http://c:3"]) == (
        "http://a:1",
        "https://b:2",
        "http://c:3",
    )
    with pytest.raises(ValueError, match="http"):
        parse_urls("http://a:1,ftp://b")
    with pytest.raises(ValueError, match="at least one"):
        parse_urls(" , ")


def test_call_moves_on_from_errors_and_rejected_answers_and_sticks_to_the_one_that_answered() -> (
    None
):
    endpoints = Endpoints(["http://a", "http://b", "http://c"])
    calls: list[str] = []

    def send(url: str) -> int:
        calls.append(url)
        if url == "http://a":
            raise ConnectionRefusedError(url)
        return 503 if url == "http://b" else 200

    got = endpoints.call(send, errors=(ConnectionRefusedError,), retry_on=lambda s: s >= 500)
    assert got == 200 and calls == ["http://a", "http://b", "http://c"]
    assert endpoints.current == "http://c"
    calls.clear()
    assert endpoints.call(send, errors=(ConnectionRefusedError,)) == 200
    assert calls == ["http://c"]  # the one that answered last goes first


def test_call_when_every_url_failed() -> None:
    endpoints = Endpoints(["http://a", "http://b"])

    def refused(url: str) -> int:
        raise ConnectionRefusedError(url)

    with pytest.raises(ConnectionRefusedError, match="http://b"):
        endpoints.call(refused, errors=(ConnectionRefusedError,))
    # A rejected answer (a 5xx) is returned when nothing better came: the caller reports it.
    answers = {"http://a": 502, "http://b": 503}
    got = endpoints.call(answers.__getitem__, errors=(), retry_on=lambda s: s >= 500)
    assert got == 503
    unknown: dict[str, int] = {}
    with pytest.raises(KeyError):  # an exception not named in errors is not a failover
        endpoints.call(unknown.__getitem__, errors=(ConnectionRefusedError,))
