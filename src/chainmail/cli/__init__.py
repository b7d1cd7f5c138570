"""The ``chainmail`` command line (DESIGN §9).

Each command group lives in its own module and registers itself on ``app``.
Errors from chainmail become one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import os
import sys

import httpx

from chainmail.cli import audit as _audit  # noqa: F401  (registers `audit`)
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
    except BrokenPipeError:
        # The reader went away (``chainmail firehose | head``): stop without a
        # word, exit 1 as rich's console does when it notices first (the
        # convention Python's documentation gives for EPIPE).
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so exit's flush cannot fail again
        sys.exit(1)
    except OSError as exc:
        # A file or stream the command was given failed (a full disk, a path it cannot write).
        print(
            f"chainmail: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
            file=sys.stderr,
        )
        sys.exit(1)
