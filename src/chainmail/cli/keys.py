"""``chainmail keys``: create, import, list and show identities (DESIGN §9).

Keys live in ``CHAINMAIL_HOME`` (default ``~/.chainmail``), encrypted with a
passphrase taken from ``CHAINMAIL_PASSPHRASE`` or asked for on the terminal.
Errors are ``chainmail.errors.KeystoreError``; ``chainmail.cli.main`` prints
them as one line and exits 1.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from chainmail.cli._app import app
from chainmail.keys import b64
from chainmail.keystore import (
    HOME_ENV,
    INTERACTIVE,
    MODERATE,
    PASSPHRASE_ENV,
    KdfLimits,
    KeyInfo,
    Keystore,
    passphrase_from_env_or_prompt,
    read_secret_file,
)

__all__ = ["keys_app"]

keys_app = typer.Typer(
    name="keys",
    help=(
        "Manage identities: ed25519 key pairs stored as SSB secret files, encrypted with a "
        f"passphrase (argon2id + secretbox). The passphrase comes from {PASSPHRASE_ENV}, or "
        "is asked for when running in a terminal."
    ),
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


class Kdf(enum.StrEnum):
    """argon2id cost presets (libsodium's names)."""

    interactive = "interactive"
    moderate = "moderate"

    @property
    def limits(self) -> KdfLimits:
        return MODERATE if self is Kdf.moderate else INTERACTIVE


HomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar=HOME_ENV,
        help=(
            "chainmail home directory; keys are in HOME/keys. "
            f"(default: ${HOME_ENV} or ~/.chainmail)"
        ),
        show_default=False,
        file_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace an existing key of the same name (it is lost).")
]
KdfOpt = Annotated[
    Kdf,
    typer.Option(
        "--kdf",
        help="argon2id cost: interactive (64 MiB, fast) or moderate (256 MiB, slower, stronger).",
        case_sensitive=False,
    ),
]
NameArg = Annotated[
    str,
    typer.Argument(help="Key name: 1-64 characters from A-Z a-z 0-9 . _ -", show_default=False),
]


def _console() -> Console:
    # soft_wrap: ids and paths must come out whole, never folded at 80 columns.
    return Console(soft_wrap=True, highlight=False)


def _info_json(info: KeyInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "id": info.id,
        "curve_public": b64(info.curve_public),
        "path": str(info.path),
        "kdf": {"opslimit": info.kdf.opslimit, "memlimit": info.kdf.memlimit},
    }


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=None))


def _print_info(console: Console, info: KeyInfo, *, title: str | None = None) -> None:
    if title:
        console.print(Text(title, style="bold green"))
    rows = [
        ("name", info.name),
        ("id", info.id),
        ("curve25519", b64(info.curve_public)),
        ("file", str(info.path)),
        ("kdf", f"argon2id, {info.kdf.opslimit} passes, {info.kdf.memlimit // 1024**2} MiB"),
    ]
    for label, value in rows:
        line = Text(f"{label:<11} ", style="dim")
        line.append(value, style="bold" if label == "id" else "")
        console.print(line)


@keys_app.command("new")
def new(
    name: NameArg,
    *,
    home: HomeOpt = None,
    force: ForceOpt = False,
    kdf: KdfOpt = Kdf.interactive,
    as_json: JsonOpt = False,
) -> None:
    """Create a new identity NAME; prints its feed id, key file and KDF (--json: one object).

    The passphrase is taken from CHAINMAIL_PASSPHRASE, or asked for twice.
    Example: CHAINMAIL_PASSPHRASE=… chainmail keys new alice
    """
    store = Keystore(home, limits=kdf.limits)
    store.ensure_available(name, force=force)  # fail before asking for a passphrase
    passphrase = passphrase_from_env_or_prompt(confirm=True)
    store.new(name, passphrase, force=force)
    info = store.show(name)
    if as_json:
        _print_json(_info_json(info))
    else:
        _print_info(_console(), info, title=f"Created key {name!r}")


@keys_app.command("import")
def import_(
    name: NameArg,
    *,
    file: Annotated[
        Path,
        typer.Option(
            "--file",
            "-f",
            help=(
                "An SSB secret file (as ssb-keys writes ~/.ssb/secret, '#' comments allowed), "
                "or a chainmail key file encrypted with the same passphrase."
            ),
            show_default=False,
            dir_okay=False,
        ),
    ],
    home: HomeOpt = None,
    force: ForceOpt = False,
    kdf: KdfOpt = Kdf.interactive,
    as_json: JsonOpt = False,
) -> None:
    """Import an existing identity as NAME, encrypting it with the passphrase.

    Example: chainmail keys import alice --file ~/.ssb/secret
    """
    store = Keystore(home, limits=kdf.limits)
    store.ensure_available(name, force=force)  # fail before asking for a passphrase
    # Read once: a pipe (``--file <(…)``) holds nothing the second time.
    secret = read_secret_file(file)
    passphrase = passphrase_from_env_or_prompt(confirm=True)
    store.import_secret(name, secret, passphrase, force=force, origin=str(file))
    info = store.show(name)
    if as_json:
        _print_json(_info_json(info))
    else:
        _print_info(_console(), info, title=f"Imported key {name!r}")


@keys_app.command("list")
def list_(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """List stored identities: name and feed id. Needs no passphrase.

    A key file that cannot be read is named on stderr after the others are
    listed, and the exit status is then 1.
    """
    store = Keystore(home)
    infos, bad = store.survey()
    if as_json:
        _print_json([{"name": i.name, "id": i.id} for i in infos])
    elif not infos and not bad:
        # Text: a str is console markup, and a path may hold "[old]".
        _console().print(
            Text(f"No keys in {store.keys_dir}. Create one with: chainmail keys new NAME")
        )
    elif infos:
        console = _console()
        width = max(len(i.name) for i in infos)
        for info in infos:
            line = Text(f"{info.name:<{width}}  ", style="bold")
            line.append(info.id)
            console.print(line)
    for exc in bad:
        typer.echo(f"chainmail: {exc.diagnostics()}", err=True)
    if bad:
        raise typer.Exit(1)


@keys_app.command("show")
def show(name: NameArg, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Show an identity's public facts: feed id, curve25519 key, file. Needs no passphrase."""
    info = Keystore(home).show(name)
    if as_json:
        _print_json(_info_json(info))
    else:
        _print_info(_console(), info)
