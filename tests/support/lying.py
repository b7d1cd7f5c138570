"""A lying node: a real HTTP server in front of a real node that rewrites chosen answers.

What a command prints from a node must hold up when the node lies; the real
node never does, so this proxy forwards every request to it and lets a test
replace the answer of the paths it names (the path without its query).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

#: A real answer (status, content type, body) in, the answer to give out.
Rewrite = Callable[[int, str, bytes], tuple[int, str, bytes]]

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "host", "content-length"})


@contextlib.contextmanager
def lying(node: str, rewrites: Mapping[str, Rewrite]) -> Iterator[str]:
    """Serve ``node`` on a free local port, ``rewrites`` applied; yield the proxy's URL."""
    upstream = httpx.Client(base_url=node, timeout=30)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            resp = upstream.request(self.command, self.path, content=body, headers=headers)
            status, ctype, out = (
                resp.status_code,
                resp.headers.get("content-type", ""),
                resp.content,
            )
            rewrite = rewrites.get(self.path.split("?")[0])
            if rewrite is not None:
                status, ctype, out = rewrite(status, ctype, out)
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_GET(self) -> None:
            self._forward()

        def do_POST(self) -> None:
            self._forward()

        def do_PUT(self) -> None:
            self._forward()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        upstream.close()
