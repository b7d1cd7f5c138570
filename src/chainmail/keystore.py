"""The keystore: named identities in ``CHAINMAIL_HOME``, encrypted at rest (DESIGN §9).

Layout::

    $CHAINMAIL_HOME/            (default ~/.chainmail)
    └── keys/                   mode 0700
        └── <NAME>.json         mode 0600, one envelope per key

An envelope is JSON::

    {"chainmail": "keystore/1",
     "id": "@….ed25519",
     "kdf": {"alg": "argon2id13", "salt": "<b64 16 bytes>",
             "opslimit": 2, "memlimit": 67108864},
     "nonce": "<b64 24 bytes>",
     "box": "<b64 secretbox ciphertext>"}

The secretbox key is argon2id(passphrase as NFC UTF-8, salt, opslimit,
memlimit); the plaintext is the key's SSB secret JSON exactly as ssb-keys
writes it (``Keypair.to_ssb_secret``). ``id`` sits outside the box so that
``list``/``show`` need no passphrase; it is not authenticated by the box, so
``load`` checks it against the decrypted key and refuses a mismatch.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import errno
import getpass
import json
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

import nacl.exceptions
import nacl.secret
import nacl.utils
from nacl.pwhash import argon2id

from chainmail.errors import InvalidMessage, KeystoreError
from chainmail.ids import FeedId, feed_public_key
from chainmail.keys import Keypair, b64, curve_public_of

__all__ = [
    "ENVELOPE_FORMAT",
    "HOME_ENV",
    "INTERACTIVE",
    "KDF_ALG",
    "MIN",
    "MODERATE",
    "PASSPHRASE_ENV",
    "KdfLimits",
    "KeyInfo",
    "Keystore",
    "default_home",
    "parse_secret_text",
    "passphrase_from_env_or_prompt",
    "read_secret_file",
    "validate_name",
    "write_private_file",
]

#: Value of the envelope's ``chainmail`` field.
ENVELOPE_FORMAT: Final = "keystore/1"
#: Value of ``kdf.alg``: libsodium's argon2id, version 1.3.
KDF_ALG: Final = "argon2id13"
#: Environment variable naming the home directory.
HOME_ENV: Final = "CHAINMAIL_HOME"
#: Environment variable holding the passphrase (for scripts and CI).
PASSPHRASE_ENV: Final = "CHAINMAIL_PASSPHRASE"  # noqa: S105  (a variable name)
#: Home directory when ``CHAINMAIL_HOME`` is unset.
DEFAULT_HOME: Final = Path("~/.chainmail")

_KEYS_DIR: Final = "keys"
_SUFFIX: Final = ".json"
_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
#: No key file (plain or encrypted) comes near this; refuse to slurp anything bigger.
_MAX_FILE_BYTES: Final = 64 * 1024
_SALT_BYTES: Final = argon2id.SALTBYTES
_NONCE_BYTES: Final = nacl.secret.SecretBox.NONCE_SIZE
_KEY_BYTES: Final = nacl.secret.SecretBox.KEY_SIZE
# Upper bounds for limits read from a file: a tampered envelope must not be
# able to make ``load`` burn minutes of CPU or gigabytes of memory.
_MAX_OPSLIMIT: Final = 64
_MAX_MEMLIMIT: Final = argon2id.MEMLIMIT_SENSITIVE


@dataclass(frozen=True)
class KdfLimits:
    """argon2id cost: ``opslimit`` passes over ``memlimit`` bytes of memory.

    Raises ``KeystoreError`` when a limit is outside what libsodium accepts or
    above the keystore's sanity bounds (64 passes, 1 GiB).
    """

    opslimit: int
    memlimit: int

    def __post_init__(self) -> None:
        ops, mem = self.opslimit, self.memlimit
        if not (isinstance(ops, int) and argon2id.OPSLIMIT_MIN <= ops <= _MAX_OPSLIMIT):
            raise KeystoreError(
                f"argon2id opslimit must be {argon2id.OPSLIMIT_MIN}..{_MAX_OPSLIMIT}, got {ops!r}"
            )
        if not (isinstance(mem, int) and argon2id.MEMLIMIT_MIN <= mem <= _MAX_MEMLIMIT):
            raise KeystoreError(
                f"argon2id memlimit must be {argon2id.MEMLIMIT_MIN}..{_MAX_MEMLIMIT}, got {mem!r}"
            )


#: libsodium's INTERACTIVE limits (2 passes, 64 MiB): the default.
INTERACTIVE: Final = KdfLimits(argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)
#: libsodium's MODERATE limits (3 passes, 256 MiB).
MODERATE: Final = KdfLimits(argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE)
#: libsodium's minimum (1 pass, 8 KiB): for tests only, it protects nothing.
MIN: Final = KdfLimits(argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN)


@dataclass(frozen=True)
class KeyInfo:
    """What a key file says without its passphrase."""

    name: str
    id: FeedId
    path: Path
    kdf: KdfLimits

    @property
    def curve_public(self) -> bytes:
        """The identity's curve25519 public key (what channel keys are sealed to)."""
        return curve_public_of(self.id)


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$CHAINMAIL_HOME`` when set and not empty, else ``~/.chainmail``."""
    env = os.environ if environ is None else environ
    home = env.get(HOME_ENV)
    return Path(home).expanduser() if home else DEFAULT_HOME.expanduser()


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid key name (``[A-Za-z0-9._-]{1,64}``).

    Raises ``KeystoreError`` otherwise.
    """
    if not (isinstance(name, str) and _NAME_RE.fullmatch(name)):
        raise KeystoreError(
            f"invalid key name {name!r}: use 1-64 of the characters A-Z a-z 0-9 . _ -"
        )
    return name


def parse_secret_text(text: str) -> dict[str, object]:
    """The JSON object in a key file, after stripping ``#`` comments as ssb-keys does.

    ssb-keys writes its secret file with ``#`` comment lines around the JSON
    and reads it back by deleting every ``#`` to end of line. Raises
    ``KeystoreError`` when what remains is not one JSON object.
    """
    # Same rule as ssb-keys' reconstructKeys: /\s*#[^\n]*/g, then drop empty lines.
    stripped = re.sub(r"\s*#[^\n]*", "", text)
    body = "".join(line for line in stripped.split("\n") if line)
    if not body.strip():
        raise KeystoreError("key file holds no JSON (only comments or blank lines)")
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        # Never echo the body: it may be a (malformed) secret.
        raise KeystoreError(
            f"key file is not valid JSON ({exc.msg} at column {exc.colno})"
        ) from exc
    except (ValueError, RecursionError) as exc:
        # A number past Python's digit limit; nesting past its recursion limit.
        why = "nested too deeply" if isinstance(exc, RecursionError) else "a number too long"
        raise KeystoreError(f"key file is not valid JSON ({why})") from exc
    if not isinstance(value, dict):
        raise KeystoreError(f"key file must hold a JSON object, got {type(value).__name__}")
    return value


def read_secret_file(path: Path | str) -> dict[str, object]:
    """The JSON object in the key file at ``path`` (SSB secret or chainmail envelope).

    Only reads and parses; nothing is validated beyond "one JSON object".
    Raises ``KeystoreError`` when the file is missing, unreadable, too large,
    not UTF-8, or not one JSON object once ``#`` comments are stripped.
    """
    src = Path(path).expanduser()
    text = _read_text(src)
    try:
        return parse_secret_text(text)
    except KeystoreError as exc:
        raise KeystoreError(f"{src}: {exc.detail}") from exc


def passphrase_from_env_or_prompt(
    confirm: bool = False,
    *,
    prompt: str = "Passphrase: ",
    environ: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
    ask: Callable[[str], str] = getpass.getpass,
) -> str:
    """The passphrase: ``$CHAINMAIL_PASSPHRASE``, else a prompt when stdin is a terminal.

    With ``confirm`` (new keys) the prompt asks twice. ``environ``, ``stdin``
    and ``ask`` default to the process's own and exist for tests.

    Raises ``KeystoreError`` when the variable is set but empty, when there is
    no variable and no terminal to ask on, when the answer is empty, or when
    the two answers differ.
    """
    env = os.environ if environ is None else environ
    if PASSPHRASE_ENV in env:
        value = env[PASSPHRASE_ENV]
        if not value:
            raise KeystoreError(f"{PASSPHRASE_ENV} is set but empty")
        return _text_passphrase(value, PASSPHRASE_ENV)
    # sys.stdin is None under some launchers (pythonw, detached services).
    stream: TextIO | None = sys.stdin if stdin is None else stdin
    if stream is None or not _isatty(stream):
        raise KeystoreError(
            f"no passphrase: set {PASSPHRASE_ENV}, or run in a terminal to be asked for it"
        )
    try:
        value = ask(prompt)
        if not value:
            raise KeystoreError("empty passphrase")
        if confirm and ask("Repeat passphrase: ") != value:
            raise KeystoreError("the two passphrases do not match")
    except EOFError:  # Ctrl-D at the prompt
        raise KeystoreError("no passphrase: the input ended at the prompt") from None
    except UnicodeDecodeError:  # bytes the terminal's encoding cannot read
        raise KeystoreError("the passphrase typed is not text in the terminal's encoding") from None
    return _text_passphrase(value, "the passphrase typed")


def _text_passphrase(value: str, where: str) -> str:
    """``value``, once it is text that encodes (an environment's undecodable bytes are not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise KeystoreError(f"{where} is not valid UTF-8 text") from None
    return value


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class Keystore:
    """Named, passphrase-encrypted identities under ``home/keys/``.

    ``limits`` is the argon2id cost for keys this instance writes (default
    ``INTERACTIVE``); reading always uses the cost stored in each file.
    """

    def __init__(self, home: Path | str | None = None, *, limits: KdfLimits = INTERACTIVE) -> None:
        self.home = default_home() if home is None else Path(home).expanduser()
        self.limits = limits

    def __repr__(self) -> str:
        return f"Keystore(home={str(self.home)!r})"

    @property
    def keys_dir(self) -> Path:
        """The directory holding one ``<NAME>.json`` per key."""
        return self.home / _KEYS_DIR

    def path(self, name: str) -> Path:
        """The file of key ``name``; raises ``KeystoreError`` for an invalid name."""
        return self.keys_dir / (validate_name(name) + _SUFFIX)

    # -- writing --------------------------------------------------------------------

    def new(self, name: str, passphrase: str, *, force: bool = False) -> Keypair:
        """Generate an identity, store it as ``name`` and return it.

        Raises ``KeystoreError`` for an invalid name, an empty passphrase, an
        existing key of that name (unless ``force``) or a file-system failure.
        """
        keypair = Keypair.generate()
        self.add(name, keypair, passphrase, force=force)
        return keypair

    def ensure_available(self, name: str, *, force: bool = False) -> Path:
        """The file for a new key ``name``, checking first that writing it is allowed.

        Lets a caller fail before asking for a passphrase. Raises
        ``KeystoreError`` for an invalid name, or an existing key unless ``force``.
        """
        path = self.path(name)
        if not force and path.exists():
            raise KeystoreError(_exists_message(name, path))
        return path

    def add(self, name: str, keypair: Keypair, passphrase: str, *, force: bool = False) -> KeyInfo:
        """Encrypt ``keypair`` with ``passphrase`` and store it as ``name``.

        Raises ``KeystoreError`` like ``new``.
        """
        path = self.ensure_available(name, force=force)
        envelope = _seal(keypair, passphrase, self.limits)
        self._write(path, envelope, force=force)
        return KeyInfo(name=name, id=keypair.id, path=path, kdf=self.limits)

    def import_secret(
        self,
        name: str,
        source: Path | str | Mapping[str, object],
        passphrase: str,
        *,
        source_passphrase: str | None = None,
        force: bool = False,
        origin: str | None = None,
    ) -> KeyInfo:
        """Store an existing identity as ``name``, encrypted with ``passphrase``.

        ``source`` is a path, or the parsed object, of either an SSB secret
        (as ssb-keys writes it, ``#`` comment lines allowed) or a chainmail
        envelope; an envelope is opened with ``source_passphrase`` (default:
        ``passphrase``) and re-encrypted with a fresh salt and nonce. ``origin``
        names a parsed ``source`` in errors (the file it was read from).

        Raises ``KeystoreError`` for an unreadable or malformed source, an
        inconsistent key, a wrong source passphrase, and as ``add`` does.
        """
        self.path(name)  # name errors first, before touching the source
        if isinstance(source, Mapping):
            data: Mapping[str, object] = source
            origin = "the given secret" if origin is None else origin
        else:
            src = Path(source).expanduser()
            data = read_secret_file(src)
            origin = str(src)
        if data.get("chainmail") is not None:
            env = _parse_envelope(data, where=origin)
            keypair = _open(env, source_passphrase or passphrase, label=origin, where=origin)
        else:
            try:
                keypair = Keypair.from_ssb_secret(data)
            except KeystoreError as exc:
                raise KeystoreError(f"{origin}: {exc.detail}") from exc
        return self.add(name, keypair, passphrase, force=force)

    # -- reading --------------------------------------------------------------------

    def load(self, name: str, passphrase: str) -> Keypair:
        """The identity stored as ``name``.

        Raises ``KeystoreError`` when there is no such key, its file is
        malformed, the passphrase is wrong (indistinguishable from a damaged
        ``box``), or the decrypted key is not the id the file claims.
        """
        path, env = self._envelope(name)
        return _open(env, passphrase, label=f"key {name!r}", where=str(path))

    def show(self, name: str) -> KeyInfo:
        """Public facts about key ``name``, read without its passphrase.

        Raises ``KeystoreError`` when there is no such key or its file is malformed.
        """
        path, env = self._envelope(name)
        return KeyInfo(name=name, id=env.id, path=path, kdf=env.limits)

    def exists(self, name: str) -> bool:
        """True when a key named ``name`` is stored; raises ``KeystoreError`` for a bad name."""
        return self.path(name).is_file()

    def export_secret(self, name: str, passphrase: str) -> str:
        """Key ``name`` as an unencrypted ssb-keys secret file (text, comments included).

        The result is the secret key: handle it like one. Raises ``KeystoreError``
        as ``load`` does.
        """
        keypair = self.load(name, passphrase)
        body = json.dumps(keypair.to_ssb_secret(), indent=2)
        return (
            "# WARNING: Never show this to anyone.\n"
            "# WARNING: Never edit it or use it on multiple devices at once.\n"
            "#\n"
            f"{body}\n"
            "#\n"
            "# The only part of this file that's safe to share is your public name:\n"
            "#\n"
            f"#   {keypair.id}"
        )

    def list(self) -> builtins.list[tuple[str, FeedId]]:
        """``(name, id)`` of every stored key, sorted by name; no passphrase needed.

        Raises ``KeystoreError`` when a key file is unreadable or malformed.
        """
        return [(info.name, info.id) for info in self.infos()]

    def infos(self) -> builtins.list[KeyInfo]:
        """``show`` of every stored key, sorted by name.

        Raises ``KeystoreError`` when a key file is unreadable or malformed.
        """
        return [self.show(name) for name in self._names()]

    def survey(self) -> tuple[builtins.list[KeyInfo], builtins.list[KeystoreError]]:
        """``infos`` that a bad key file does not stop: the good keys, and an error per bad file."""
        good: builtins.list[KeyInfo] = []
        bad: builtins.list[KeystoreError] = []
        for name in self._names():
            try:
                good.append(self.show(name))
            except KeystoreError as exc:
                bad.append(exc)
        return good, bad

    def _names(self) -> builtins.list[str]:
        if not self.keys_dir.is_dir():
            return []
        return sorted(
            p.name[: -len(_SUFFIX)]
            for p in self.keys_dir.iterdir()
            if p.name.endswith(_SUFFIX) and _NAME_RE.fullmatch(p.name[: -len(_SUFFIX)])
        )

    # -- files ----------------------------------------------------------------------

    def _envelope(self, name: str) -> tuple[Path, _Envelope]:
        path = self.path(name)
        if not path.is_file():
            raise KeystoreError(f"no key named {name!r} in {self.keys_dir}")
        return path, _parse_envelope(read_secret_file(path), where=str(path))

    def _write(self, path: Path, envelope: dict[str, object], *, force: bool) -> None:
        data = (json.dumps(envelope, indent=2) + "\n").encode("utf-8")
        try:
            self.home.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            self.keys_dir.mkdir(mode=_DIR_MODE, exist_ok=True)
            # mkdir's mode is filtered by the umask and ignored for an existing
            # directory; the keys directory must end up private either way.
            self.keys_dir.chmod(_DIR_MODE)
        except OSError as exc:
            raise KeystoreError(f"cannot write to {self.keys_dir}: {exc.strerror or exc}") from exc
        try:
            # Without force, two concurrent `new` calls cannot both win (exists()
            # above is only the friendly check).
            write_private_file(path, data, replace=force)
        except FileExistsError as exc:
            raise KeystoreError(_exists_message(path.name[: -len(_SUFFIX)], path)) from exc
        except OSError as exc:
            raise KeystoreError(f"cannot write {path}: {exc.strerror or exc}") from exc


# -- envelopes ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Envelope:
    id: FeedId
    limits: KdfLimits
    salt: bytes
    nonce: bytes
    box: bytes

    def __repr__(self) -> str:
        return f"_Envelope(id={self.id!r})"


def _derive_key(passphrase: str, salt: bytes, limits: KdfLimits) -> bytes:
    # NFC so that the same passphrase typed through different input methods
    # (composed vs decomposed accents) opens the same key.
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    return bytes(argon2id.kdf(_KEY_BYTES, secret, salt, limits.opslimit, limits.memlimit))


def _seal(keypair: Keypair, passphrase: str, limits: KdfLimits) -> dict[str, object]:
    if not isinstance(passphrase, str) or not passphrase:
        raise KeystoreError("passphrase must not be empty")
    salt = nacl.utils.random(_SALT_BYTES)
    nonce = nacl.utils.random(_NONCE_BYTES)
    plaintext = json.dumps(keypair.to_ssb_secret(), indent=2).encode("utf-8")
    box = nacl.secret.SecretBox(_derive_key(passphrase, salt, limits))
    sealed = box.encrypt(plaintext, nonce)
    return {
        "chainmail": ENVELOPE_FORMAT,
        "id": str(keypair.id),
        "kdf": {
            "alg": KDF_ALG,
            "salt": b64(salt),
            "opslimit": limits.opslimit,
            "memlimit": limits.memlimit,
        },
        "nonce": b64(nonce),
        "box": b64(sealed.ciphertext),
    }


def _open(env: _Envelope, passphrase: str, *, label: str, where: str) -> Keypair:
    box = nacl.secret.SecretBox(_derive_key(passphrase, env.salt, env.limits))
    try:
        plaintext = box.decrypt(env.box, env.nonce)
    except nacl.exceptions.CryptoError as exc:
        raise KeystoreError(f"wrong passphrase for {label}") from exc
    try:
        secret = json.loads(plaintext.decode("utf-8"))
        keypair = Keypair.from_ssb_secret(secret)
    except (UnicodeDecodeError, json.JSONDecodeError, KeystoreError) as exc:
        # Authenticated but unusable: written by something other than chainmail.
        raise KeystoreError(f"{where}: the decrypted key is not an SSB secret") from exc
    if keypair.id != env.id:
        raise KeystoreError(f"{where}: file claims id {env.id} but holds the key of {keypair.id}")
    return keypair


def _parse_envelope(data: Mapping[str, object], *, where: str) -> _Envelope:
    def bad(why: str) -> KeystoreError:
        return KeystoreError(f"{where}: not a chainmail key file ({why})")

    fmt = data.get("chainmail")
    if fmt is None:
        raise bad("no 'chainmail' field; a plain SSB secret must be imported first")
    if fmt != ENVELOPE_FORMAT:
        raise bad(f"format {fmt!r}, expected {ENVELOPE_FORMAT!r}")
    fid = data.get("id")
    try:
        feed_public_key(fid)  # type: ignore[arg-type]
    except InvalidMessage as exc:
        raise bad(f"'id' is not a feed id: {exc.detail}") from exc
    kdf = data.get("kdf")
    if not isinstance(kdf, Mapping):
        raise bad("'kdf' must be an object")
    if kdf.get("alg") != KDF_ALG:
        raise bad(f"kdf alg {kdf.get('alg')!r}, expected {KDF_ALG!r}")
    ops, mem = kdf.get("opslimit"), kdf.get("memlimit")
    if type(ops) is not int or type(mem) is not int:
        raise bad("kdf opslimit and memlimit must be integers")
    try:
        limits = KdfLimits(ops, mem)
    except KeystoreError as exc:
        raise bad(exc.detail) from exc
    return _Envelope(
        id=FeedId(str(fid)),
        limits=limits,
        salt=_field_bytes(kdf.get("salt"), "kdf salt", _SALT_BYTES, bad),
        nonce=_field_bytes(data.get("nonce"), "nonce", _NONCE_BYTES, bad),
        box=_field_bytes(data.get("box"), "box", None, bad),
    )


def _field_bytes(
    value: object, what: str, size: int | None, bad: Callable[[str], KeystoreError]
) -> bytes:
    if not isinstance(value, str):
        raise bad(f"{what!r} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad(f"{what!r} is not base64") from exc
    if size is not None and len(raw) != size:
        raise bad(f"{what!r} must be {size} bytes, got {len(raw)}")
    return raw


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise KeystoreError(f"no such file: {path}") from exc
    except OSError as exc:
        raise KeystoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(raw) > _MAX_FILE_BYTES:
        raise KeystoreError(f"{path}: too large for a key file (over {_MAX_FILE_BYTES} bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeystoreError(f"{path}: not a text file") from exc


def _exists_message(name: str, path: Path) -> str:
    return f"key {name!r} already exists ({path}); use --force to replace it"


def write_private_file(path: Path, data: bytes, *, replace: bool = False) -> None:
    """``data`` as the file ``path`` (mode 0600), whole or not at all, durably: written
    to a temporary file beside it, synced, then named ``path`` and the directory synced.

    Without ``replace`` an existing ``path`` stays and ``FileExistsError`` is raised
    (the name is taken by a link, so two writers cannot both win). Raises ``OSError``.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless ``path`` exists; raises ``FileExistsError``."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        # Some file systems have no hard links; fall back to check-then-rename,
        # which only loses the race-freedom, not atomicity of the content.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from exc
        os.replace(tmp, path)
        return
    tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    """Make a rename (or link) into ``directory`` durable, where the platform can."""
    # Not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
