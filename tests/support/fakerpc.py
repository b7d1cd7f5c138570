"""A Bitcoin JSON-RPC server on a free port that answers what a test says.

For answers a real node cannot be made to give at will (a warming-up node's
-28, a malformed block): ``answer(method)`` gives the HTTP status and the JSON
body (without its ``id``, which is the request's).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: method → (HTTP status, JSON body without ``id``).
Answer = Callable[[str], tuple[int, dict[str, Any]]]


class FakeRPC:
    """Serves ``answer`` at ``url`` (``http://x:KEY@127.0.0.1:PORT``) until ``close``."""

    def __init__(self, answer: Answer, key: str = "k") -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                asked = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status, body = answer(asked["method"])
                data = json.dumps({**body, "id": asked["id"]}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://x:{key}@127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
