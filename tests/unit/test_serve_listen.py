"""``chainmail serve`` binds its port before the node opens, and holds it for the server."""

from __future__ import annotations

import re
import socket

import pytest

from chainmail.cli.serve import _listen
from chainmail.errors import Error


def test_the_socket_listens_from_the_check_on() -> None:
    with _listen("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        # The kernel queues a connection before any server accepts on it.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        # Nobody else can take the port while the node starts.
        with pytest.raises(Error, match=re.escape(f"cannot listen on 127.0.0.1:{port}")) as caught:
            _listen("127.0.0.1", port)
        assert caught.value.code == "unavailable"
        assert not sock.get_inheritable()


def test_an_address_that_does_not_resolve_is_a_bad_host() -> None:
    with pytest.raises(
        Error, match=re.escape("--host: cannot listen on no-such-host.invalid")
    ) as caught:
        _listen("no-such-host.invalid", 8700)
    assert caught.value.code == "invalid_format"
