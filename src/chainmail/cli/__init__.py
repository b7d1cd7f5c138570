"""The ``chainmail`` command line (DESIGN §9).

Each command group lives in its own module and registers itself on ``app``.
Errors from chainmail become one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import os
import sys

import click
import httpx
import typer

from chainmail.cli import audit as _audit  # noqa: F401  (registers `audit`)
from chainmail.cli import bench as _bench  # noqa: F401  (registers `bench`)
from chainmail.cli import chan as _chan  # noqa: F401  (registers `chan`)
from chainmail.cli import commands as _commands  # noqa: F401  (registers node commands)
from chainmail.cli import demo as _demo  # noqa: F401  (registers `demo`)
from chainmail.cli import doc as _doc  # noqa: F401  (registers `doc`)
from chainmail.cli import keys as _keys  # noqa: F401  (registers `keys`)
from chainmail.cli import serve as _serve  # noqa: F401  (registers `serve`)
from chainmail.cli import witness as _witness  # noqa: F401  (registers `witness`)
from chainmail.cli._app import app
from chainmail.cli.commands import _printable
from chainmail.errors import Error

__all__ = ["app", "main", "spread_ids"]

#: Options that take identities and may be repeated; DESIGN §9 writes them
#: ``--member @ID...``: several ids after one of them mean one each.
_MANY_IDS = frozenset({"--party", "--to", "--member", "--with", "--registrar", "--witness"})


def spread_ids(args: list[str]) -> list[str]:
    """``args`` with the ids after one of ``_MANY_IDS`` given that option each.

    ``--member @B @C`` is ``--member @B --member @C`` (Click takes one value
    an option); only words that look like ids (``@…``) are taken, and
    nothing after ``--``.
    """
    out: list[str] = []
    taking: str | None = None
    words = iter(args)
    for word in words:
        if word == "--":
            out.append(word)
            out.extend(words)
            break
        if taking is not None and word.startswith("@"):
            out += [taking, word]
            continue
        taking = None
        out.append(word)
        name, eq, _ = word.partition("=")
        if name in _MANY_IDS:
            if not eq:
                value = next(words, None)
                if value is None:
                    break
                out.append(value)
            taking = name
    return out


def main() -> None:
    """Entry point of the ``chainmail`` console script."""
    try:
        # Not standalone: a usage error comes here as an exception, to be said in
        # one line (standalone, it was a boxed panel of several).
        code = app(args=spread_ids(sys.argv[1:]), standalone_mode=False)
    except click.exceptions.Abort as exc:
        # Click's word for Ctrl-C or Ctrl-D at a prompt or in a command.
        if isinstance(exc.__context__, KeyboardInterrupt):
            sys.exit(130)
        print("chainmail: aborted: the input ended", file=sys.stderr)
        sys.exit(1)
    except typer.TyperException as exc:
        _usage_error(exc)
    except Error as exc:
        # Printable: the detail may be a node's, with a newline or ESC sequences.
        print(f"chainmail: {_printable(exc.diagnostics())}", file=sys.stderr)
        sys.exit(1)
    except httpx.TransportError as exc:
        print(f"chainmail: cannot reach the node: {_printable(exc)}", file=sys.stderr)
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
        where = f": {exc.filename}" if exc.filename else ""
        print(f"chainmail: storage: {_printable(f'{exc.strerror or exc}{where}')}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # as standalone mode ends, success too


def _usage_error(exc: typer.TyperException) -> None:
    """A bad command line: one line and exit 2; no arguments at all: the help, as asked."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":
        sys.exit(2)  # the help is printed already
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    print(f"chainmail: usage: {' '.join(str(message).split())}{see}", file=sys.stderr)
    code = getattr(exc, "exit_code", 2)
    sys.exit(code if isinstance(code, int) else 2)
