"""A node URL is checked when the client is made: one clear error, never a traceback later."""

from __future__ import annotations

import pytest

from chainmail.client import Client
from chainmail.errors import Error


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:8700", "expected http://"),
        ("", "got ''"),  # an empty --node is a mistake, not the default node
        ("/", "got ''"),
        ("http://127.0.0.1:abc", "Invalid port"),
        ("http://[::1", "Invalid port"),
        ("http://127.0.0.1:99999", "port 99999 is not 1 to 65535"),
        ("http://:8700", "no host"),
        # Hosts no resolver takes: httpx's IDNA decoding raised as the client
        # read the host, the idna codec under getaddrinfo at the first request.
        ("http://xn--zz", "Invalid A-label"),
        ("http://a..b:8700", "label empty or too long"),
        ("http://" + "a" * 64 + ".example", "label empty or too long"),
    ],
)
def test_a_bad_node_url_is_refused_at_once(url: str, says: str) -> None:
    with pytest.raises(Error, match=says) as caught:
        Client(url)
    assert caught.value.code == "invalid_format"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8700",
        "http://127.0.0.1:8700/",
        "https://node.example",
        "http://[::1]:8700",
    ],
)
def test_a_good_node_url_is_taken(url: str) -> None:
    with Client(url) as client:
        assert client.node == url.rstrip("/")


def test_an_empty_node_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAINMAIL_NODE", "")
    assert Client().node == "http://127.0.0.1:8700"
    monkeypatch.setenv("CHAINMAIL_NODE", "http://node.example:9000")
    assert Client().node == "http://node.example:9000"
