"""The ``chainmail`` console script: the command line (``chainmail.cli``), started so
that Ctrl-C during its imports (most of a short command's time) ends it as Ctrl-C at
any later moment does, with exit 130 and no traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from chainmail.cli import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()
