"""The ``chainmail`` command line (DESIGN §9).

Each command group lives in its own module and registers itself on ``app``.
Errors from chainmail become one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import sys

import httpx

from chainmail.cli import bench as _bench  # noqa: F401  (registers `bench`)
from chainmail.cli import chan as _chan  # noqa: F401  (registers `chan`)
from chainmail.cli import commands as _commands  # noqa: F401  (registers node commands)
from chainmail.cli import demo as _demo  # noqa: F401  (registers `demo`)
from chainmail.cli import keys as _keys  # noqa: F401  (registers `keys`)
from chainmail.cli import serve as _serve  # noqa: F401  (registers `serve`)
from chainmail.cli._app import app
from chainmail.errors import Error

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``chainmail`` console script."""
    try:
        app()
    except Error as exc:
        print(f"chainmail: {exc.diagnostics()}", file=sys.stderr)
        sys.exit(1)
    except httpx.TransportError as exc:
        print(f"chainmail: cannot reach the node: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
