"""chainmail.keystore: encrypted key files, import, names, passphrases."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chainmail.errors import KeystoreError
from chainmail.keys import Keypair
from chainmail.keystore import (
    ENVELOPE_FORMAT,
    INTERACTIVE,
    KDF_ALG,
    MIN,
    MODERATE,
    KdfLimits,
    Keystore,
    default_home,
    parse_secret_text,
    passphrase_from_env_or_prompt,
    read_secret_file,
    validate_name,
)

PASS = "correct horse battery staple"


@pytest.fixture
def store(tmp_path: Path) -> Keystore:
    # MIN limits: the tests exercise the format, not argon2id's cost.
    return Keystore(tmp_path / "home", limits=MIN)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def ssb_keys_file(keypair: Keypair) -> str:
    """A secret file byte for byte as ssb-keys' storage.js constructKeys writes it."""
    keys = keypair.to_ssb_secret()
    return (
        "# WARNING: Never show this to anyone.\n"
        "# WARNING: Never edit it or use it on multiple devices at once.\n"
        "#\n"
        "# This is your SECRET, it gives you magical powers. With your secret you can\n"
        "# sign your messages so that your friends can verify that the messages came\n"
        "# from you. If anyone learns your secret, they can use it to impersonate you.\n"
        "#\n"
        "# If you use this secret on more than one device you will create a fork and\n"
        "# your friends will stop replicating your content.\n"
        "#\n"
        f"{json.dumps(keys, indent=2)}\n"
        "#\n"
        "# The only part of this file that's safe to share is your public name:\n"
        "#\n"
        f"#   {keys['id']}"
    )


def envelope(store: Keystore, name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(store.path(name).read_text())
    return data


def rewrite(store: Keystore, name: str, data: dict[str, object]) -> None:
    store.path(name).write_text(json.dumps(data))


# -- round trip ---------------------------------------------------------------------------


def test_new_then_load_round_trip(store: Keystore) -> None:
    keypair = store.new("alice", PASS)
    loaded = store.load("alice", PASS)
    assert loaded == keypair
    assert loaded.secret == keypair.secret


def test_envelope_format(store: Keystore) -> None:
    keypair = store.new("alice", PASS)
    data = envelope(store, "alice")
    assert list(data) == ["chainmail", "id", "kdf", "nonce", "box"]
    assert data["chainmail"] == ENVELOPE_FORMAT == "keystore/1"
    assert data["id"] == keypair.id
    kdf = data["kdf"]
    assert isinstance(kdf, dict)
    assert kdf["alg"] == KDF_ALG == "argon2id13"
    assert len(base64.b64decode(kdf["salt"])) == 16
    assert (kdf["opslimit"], kdf["memlimit"]) == (MIN.opslimit, MIN.memlimit)
    assert len(base64.b64decode(str(data["nonce"]))) == 24
    # Nothing secret in the clear.
    text = store.path("alice").read_text()
    private = keypair.to_ssb_secret()["private"].removesuffix(".ed25519")
    assert private not in text
    assert base64.b64encode(keypair.seed).decode()[:16] not in text


def test_each_write_uses_fresh_salt_and_nonce(store: Keystore) -> None:
    keypair = Keypair.generate()
    store.add("a", keypair, PASS)
    store.add("b", keypair, PASS)
    a, b = envelope(store, "a"), envelope(store, "b")
    assert a["nonce"] != b["nonce"]
    assert a["kdf"]["salt"] != b["kdf"]["salt"]  # type: ignore[index]
    assert a["box"] != b["box"]


def test_default_limits_are_interactive_and_work(tmp_path: Path) -> None:
    store = Keystore(tmp_path)
    assert store.limits == INTERACTIVE == KdfLimits(2, 64 * 1024 * 1024)
    keypair = store.new("alice", PASS)
    kdf = envelope(store, "alice")["kdf"]
    assert kdf["opslimit"] == 2  # type: ignore[index]
    assert kdf["memlimit"] == 64 * 1024 * 1024  # type: ignore[index]
    assert store.load("alice", PASS) == keypair
    assert store.show("alice").kdf == INTERACTIVE


def test_moderate_limits_constant() -> None:
    assert KdfLimits(3, 256 * 1024 * 1024) == MODERATE


def test_load_uses_limits_stored_in_file(tmp_path: Path) -> None:
    Keystore(tmp_path, limits=MIN).new("alice", PASS)
    # A store configured for a higher cost still opens a MIN-cost file.
    assert (
        Keystore(tmp_path, limits=MODERATE).load("alice", PASS).id
        == Keystore(tmp_path).show("alice").id
    )


def test_passphrase_is_nfc_normalised(store: Keystore) -> None:
    keypair = store.new("alice", "caf\u00e9")  # composed é
    assert store.load("alice", "cafe\u0301") == keypair  # e + combining accent


# -- files and permissions -----------------------------------------------------------------


def test_file_and_dir_permissions(store: Keystore, permissive_umask: None) -> None:
    store.new("alice", PASS)
    assert stat.S_IMODE(store.path("alice").stat().st_mode) == 0o600
    assert stat.S_IMODE(store.keys_dir.stat().st_mode) == 0o700


def test_existing_keys_dir_is_made_private(store: Keystore) -> None:
    store.keys_dir.mkdir(parents=True)
    store.keys_dir.chmod(0o755)
    store.new("alice", PASS)
    assert stat.S_IMODE(store.keys_dir.stat().st_mode) == 0o700


def test_no_temporary_files_left(store: Keystore) -> None:
    store.new("alice", PASS)
    store.new("alice", PASS, force=True)
    assert sorted(p.name for p in store.keys_dir.iterdir()) == ["alice.json"]


def test_refuses_overwrite_unless_force(store: Keystore) -> None:
    first = store.new("alice", PASS)
    with pytest.raises(KeystoreError, match="key 'alice' already exists"):
        store.new("alice", PASS)
    assert store.load("alice", PASS) == first
    second = store.new("alice", PASS, force=True)
    assert second != first
    assert store.load("alice", PASS) == second


def test_overwrite_refused_even_if_the_early_check_is_raced(
    store: Keystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = store.new("alice", PASS)
    # Pretend the file appeared after the friendly exists() check.
    monkeypatch.setattr(Path, "exists", lambda self: False)
    with pytest.raises(KeystoreError, match="already exists"):
        store.add("alice", Keypair.generate(), PASS)
    monkeypatch.undo()
    assert store.load("alice", PASS) == first
    assert sorted(p.name for p in store.keys_dir.iterdir()) == ["alice.json"]


def test_ensure_available(store: Keystore) -> None:
    assert store.ensure_available("alice") == store.keys_dir / "alice.json"
    store.new("alice", PASS)
    with pytest.raises(KeystoreError, match="key 'alice' already exists"):
        store.ensure_available("alice")
    assert store.ensure_available("alice", force=True) == store.path("alice")


def test_file_system_without_hard_links(store: Keystore, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    first = store.new("alice", PASS)
    assert store.load("alice", PASS) == first
    # Skip the early check so that the fallback's own check is what refuses.
    monkeypatch.setattr(
        Keystore, "ensure_available", lambda self, name, force=False: self.path(name)
    )
    with pytest.raises(KeystoreError, match="already exists"):
        store.new("alice", PASS)
    assert sorted(p.name for p in store.keys_dir.iterdir()) == ["alice.json"]


def test_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_home({"CHAINMAIL_HOME": str(tmp_path)}) == tmp_path
    assert default_home({}) == Path.home() / ".chainmail"
    assert default_home({"CHAINMAIL_HOME": ""}) == Path.home() / ".chainmail"
    monkeypatch.setenv("CHAINMAIL_HOME", str(tmp_path / "x"))
    assert Keystore().home == tmp_path / "x"
    assert Keystore().keys_dir == tmp_path / "x" / "keys"


# -- wrong passphrase and tampering -----------------------------------------------------------


def test_wrong_passphrase(store: Keystore) -> None:
    store.new("alice", PASS)
    with pytest.raises(KeystoreError, match=r"^wrong passphrase for key 'alice'$") as info:
        store.load("alice", "not it")
    assert info.value.code == "keystore"
    assert PASS not in str(info.value)


def test_tampered_box(store: Keystore) -> None:
    store.new("alice", PASS)
    data = envelope(store, "alice")
    box = bytearray(base64.b64decode(str(data["box"])))
    box[-1] ^= 0x01
    data["box"] = base64.b64encode(bytes(box)).decode()
    rewrite(store, "alice", data)
    with pytest.raises(KeystoreError, match="wrong passphrase for key 'alice'"):
        store.load("alice", PASS)


def test_tampered_nonce_or_salt(store: Keystore) -> None:
    store.new("alice", PASS)
    original = envelope(store, "alice")
    data = dict(original)
    data["nonce"] = base64.b64encode(bytes(24)).decode()
    rewrite(store, "alice", data)
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        store.load("alice", PASS)
    data = json.loads(json.dumps(original))
    data["kdf"]["salt"] = base64.b64encode(bytes(16)).decode()
    rewrite(store, "alice", data)
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        store.load("alice", PASS)


def test_swapped_id_is_detected(store: Keystore) -> None:
    store.new("alice", PASS)
    mallory = Keypair.generate()
    data = envelope(store, "alice")
    data["id"] = mallory.id
    rewrite(store, "alice", data)
    # list/show trust the envelope; load must not.
    assert store.show("alice").id == mallory.id
    with pytest.raises(KeystoreError, match=r"claims id .* but holds the key of"):
        store.load("alice", PASS)


def _mutations() -> list[tuple[str, object, str]]:
    return [
        ("chainmail", "keystore/2", "format 'keystore/2'"),
        ("chainmail", None, "no 'chainmail' field"),
        ("id", "@nope", "'id' is not a feed id"),
        ("kdf", "argon2", "'kdf' must be an object"),
        ("kdf.alg", "scrypt", "kdf alg 'scrypt'"),
        ("kdf.opslimit", "2", "must be integers"),
        ("kdf.opslimit", 10**6, "opslimit must be"),
        ("kdf.memlimit", 2**40, "memlimit must be"),
        ("kdf.memlimit", 1, "memlimit must be"),
        ("kdf.salt", "AAAA", "'kdf salt' must be 16 bytes"),
        ("nonce", "not base64!", "'nonce' is not base64"),
        ("nonce", base64.b64encode(bytes(12)).decode(), "'nonce' must be 24 bytes"),
        ("box", 12, "'box' must be a base64 string"),
    ]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [pytest.param(f, v, m, id=f"{f}={v!r}"[:40]) for f, v, m in _mutations()],
)
def test_malformed_envelope(store: Keystore, field: str, value: object, message: str) -> None:
    store.new("alice", PASS)
    data = envelope(store, "alice")
    target: dict[str, object] = data
    key = field
    if field.startswith("kdf."):
        target = data["kdf"]  # type: ignore[assignment]
        key = field[4:]
    if value is None:
        del target[key]
    else:
        target[key] = value
    rewrite(store, "alice", data)
    with pytest.raises(KeystoreError, match="not a chainmail key file") as info:
        store.load("alice", PASS)
    assert message in str(info.value)
    assert str(store.path("alice")) in str(info.value)
    with pytest.raises(KeystoreError, match=message):
        store.show("alice")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no JSON"),
        ("# only a comment\n", "holds no JSON"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object, got list"),
    ],
)
def test_garbage_key_file(store: Keystore, content: str, message: str) -> None:
    store.new("alice", PASS)
    store.path("alice").write_text(content)
    with pytest.raises(KeystoreError, match=message):
        store.load("alice", PASS)


def test_binary_key_file(store: Keystore) -> None:
    store.new("alice", PASS)
    store.path("alice").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(KeystoreError, match="not a text file"):
        store.show("alice")


def test_missing_key(store: Keystore) -> None:
    with pytest.raises(KeystoreError, match=r"no key named 'bob' in .*keys"):
        store.load("bob", PASS)
    with pytest.raises(KeystoreError, match="no key named 'bob'"):
        store.show("bob")
    assert not store.exists("bob")


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "../alice", "/abs", "a" * 65, "naïve", "a b", "al\nice", "a:b", "alice.json/"],
)
def test_bad_names(store: Keystore, name: str) -> None:
    with pytest.raises(KeystoreError, match="invalid key name"):
        validate_name(name)
    with pytest.raises(KeystoreError, match="invalid key name"):
        store.new(name, PASS)
    with pytest.raises(KeystoreError, match="invalid key name"):
        store.load(name, PASS)
    with pytest.raises(KeystoreError, match="invalid key name"):
        store.show(name)
    with pytest.raises(KeystoreError, match="invalid key name"):
        store.import_secret(name, Keypair.generate().to_ssb_secret(), PASS)
    assert not store.keys_dir.exists() or list(store.keys_dir.iterdir()) == []


@pytest.mark.parametrize("name", ["a", "alice", "Bob_2", "x.y-z", "a" * 64, "..", "."])
def test_good_names(store: Keystore, name: str) -> None:
    keypair = store.new(name, PASS)
    assert store.path(name).parent == store.keys_dir
    assert store.load(name, PASS) == keypair
    assert store.list() == [(name, keypair.id)]


def test_empty_passphrase_refused(store: Keystore) -> None:
    with pytest.raises(KeystoreError, match="passphrase must not be empty"):
        store.new("alice", "")
    assert not store.exists("alice")


# -- list and show ---------------------------------------------------------------------------


def test_list_and_show(store: Keystore) -> None:
    assert store.list() == []
    bob = store.new("bob", PASS)
    alice = store.new("alice", "another passphrase")
    (store.keys_dir / ".alice.json.abc.tmp").write_text("partial")
    (store.keys_dir / "notes.txt").write_text("ignored")
    assert store.list() == [("alice", alice.id), ("bob", bob.id)]
    info = store.show("alice")
    assert info.name == "alice"
    assert info.id == alice.id
    assert info.path == store.keys_dir / "alice.json"
    assert info.curve_public == alice.curve_public()
    assert info.kdf == MIN
    assert [i.name for i in store.infos()] == ["alice", "bob"]


def test_list_reports_a_broken_file(store: Keystore) -> None:
    store.new("alice", PASS)
    (store.keys_dir / "broken.json").write_text("{}")
    with pytest.raises(KeystoreError, match=r"broken\.json: not a chainmail key file"):
        store.list()


# -- import ----------------------------------------------------------------------------------


def test_import_ssb_keys_file_with_comments(store: Keystore, tmp_path: Path) -> None:
    keypair = Keypair.generate()
    secret = tmp_path / "secret"
    secret.write_text(ssb_keys_file(keypair))
    info = store.import_secret("alice", secret, PASS)
    assert info.id == keypair.id
    assert store.load("alice", PASS) == keypair
    assert stat.S_IMODE(store.path("alice").stat().st_mode) == 0o600


def test_import_path_as_str_and_dict(store: Keystore, tmp_path: Path) -> None:
    keypair = Keypair.generate()
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(keypair.to_ssb_secret()))
    store.import_secret("a", str(secret), PASS)
    store.import_secret("b", keypair.to_ssb_secret(), PASS)
    assert store.load("a", PASS) == store.load("b", PASS) == keypair


def test_import_presigil_legacy_file(store: Keystore, tmp_path: Path) -> None:
    # ssb-keys test/fs.js: an old file whose id lacks the "@".
    keypair = Keypair.generate()
    secret = keypair.to_ssb_secret()
    secret["id"] = secret["id"][1:]
    path = tmp_path / "secret"
    path.write_text(json.dumps(secret))
    assert store.import_secret("alice", path, PASS).id == keypair.id


def test_import_encrypted_chainmail_file(store: Keystore, tmp_path: Path) -> None:
    other = Keystore(tmp_path / "other", limits=MIN)
    keypair = other.new("alice", "old passphrase")
    path = other.path("alice")
    with pytest.raises(KeystoreError, match=f"^wrong passphrase for {re.escape(str(path))}$"):
        store.import_secret("alice", path, PASS)
    assert not store.exists("alice")
    store.import_secret("alice", path, PASS, source_passphrase="old passphrase")
    assert store.load("alice", PASS) == keypair
    # Re-encrypted, not copied.
    assert envelope(store, "alice")["box"] != json.loads(path.read_text())["box"]
    store.import_secret("same", path, "old passphrase")
    assert store.load("same", "old passphrase") == keypair


def test_import_refuses_overwrite(store: Keystore) -> None:
    store.new("alice", PASS)
    with pytest.raises(KeystoreError, match="already exists"):
        store.import_secret("alice", Keypair.generate().to_ssb_secret(), PASS)
    replacement = Keypair.generate()
    store.import_secret("alice", replacement.to_ssb_secret(), PASS, force=True)
    assert store.load("alice", PASS) == replacement


def test_import_errors(store: Keystore, tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match=r"no such file: .*missing"):
        store.import_secret("alice", tmp_path / "missing", PASS)
    with pytest.raises(KeystoreError, match="cannot read"):
        store.import_secret("alice", tmp_path, PASS)  # a directory
    big = tmp_path / "big"
    big.write_text("#" * 70_000)
    with pytest.raises(KeystoreError, match="too large"):
        store.import_secret("alice", big, PASS)
    keypair, other = Keypair.generate(), Keypair.generate()
    spliced = {**keypair.to_ssb_secret(), "public": other.to_ssb_secret()["public"]}
    path = tmp_path / "spliced"
    path.write_text(json.dumps(spliced))
    with pytest.raises(KeystoreError, match=r"spliced: SSB secret: 'public' does not match") as e:
        store.import_secret("alice", path, PASS)
    assert keypair.to_ssb_secret()["private"][:20] not in str(e.value)
    legacy = tmp_path / "legacy"
    legacy.write_text("# old\n" + keypair.to_ssb_secret()["private"] + "\n")
    with pytest.raises(KeystoreError, match="not valid JSON") as e:
        store.import_secret("alice", legacy, PASS)
    assert keypair.to_ssb_secret()["private"][:20] not in str(e.value)
    assert not store.exists("alice")


def test_read_secret_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("# comment only\n")
    with pytest.raises(KeystoreError, match=r"secret: key file holds no JSON"):
        read_secret_file(path)
    with pytest.raises(KeystoreError, match=r"^no such file: "):
        read_secret_file(tmp_path / "nope")
    path.write_text('{"curve": "ed25519"}')
    assert read_secret_file(str(path)) == {"curve": "ed25519"}


def test_parse_secret_text_strips_comments_like_ssb_keys() -> None:
    keypair = Keypair.generate()
    assert parse_secret_text(ssb_keys_file(keypair)) == keypair.to_ssb_secret()
    # ssb-keys deletes from any "#" to end of line, even after content.
    assert parse_secret_text('{"a": 1} # trailing\n  # indented\n') == {"a": 1}


def test_export_secret_is_an_ssb_keys_file(store: Keystore) -> None:
    keypair = store.new("alice", PASS)
    text = store.export_secret("alice", PASS)
    assert text.startswith("# WARNING: Never show this to anyone.\n")
    assert text.endswith(f"#   {keypair.id}")
    assert Keypair.from_ssb_secret(parse_secret_text(text)) == keypair
    store.import_secret("copy", parse_secret_text(text), PASS)
    assert store.load("copy", PASS) == keypair


def test_repr_leaks_nothing(store: Keystore) -> None:
    store.new("alice", PASS)
    assert repr(store) == f"Keystore(home={str(store.home)!r})"
    assert PASS not in repr(store.show("alice"))


# -- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ops", "mem"), [(0, MIN.memlimit), (1, 100), (65, MIN.memlimit)])
def test_kdf_limits_bounds(ops: int, mem: int) -> None:
    with pytest.raises(KeystoreError, match="argon2id"):
        KdfLimits(ops, mem)


# -- passphrase resolution --------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _asker(*answers: str) -> tuple[list[str], Callable[[str], str]]:
    prompts: list[str] = []
    queue = list(answers)

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return queue.pop(0)

    return prompts, ask


def test_passphrase_from_env() -> None:
    assert passphrase_from_env_or_prompt(environ={"CHAINMAIL_PASSPHRASE": "s3cret"}) == "s3cret"
    assert (
        passphrase_from_env_or_prompt(True, environ={"CHAINMAIL_PASSPHRASE": "s3cret"}) == "s3cret"
    )


def test_passphrase_env_empty_is_an_error() -> None:
    with pytest.raises(KeystoreError, match="CHAINMAIL_PASSPHRASE is set but empty"):
        passphrase_from_env_or_prompt(environ={"CHAINMAIL_PASSPHRASE": ""})


def test_no_passphrase_and_no_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAINMAIL_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))

    def never(prompt: str) -> str:
        raise AssertionError("must not prompt without a terminal")

    with pytest.raises(KeystoreError, match="no passphrase: set CHAINMAIL_PASSPHRASE"):
        passphrase_from_env_or_prompt(ask=never)
    monkeypatch.setattr("sys.stdin", None)
    with pytest.raises(KeystoreError, match="no passphrase"):
        passphrase_from_env_or_prompt(ask=never)


def test_prompt_on_tty() -> None:
    prompts, ask = _asker("s3cret")
    value = passphrase_from_env_or_prompt(environ={}, stdin=FakeTTY(), ask=ask)
    assert value == "s3cret"
    assert prompts == ["Passphrase: "]


def test_prompt_with_confirm() -> None:
    prompts, ask = _asker("s3cret", "s3cret")
    value = passphrase_from_env_or_prompt(True, environ={}, stdin=FakeTTY(), ask=ask)
    assert value == "s3cret"
    assert prompts == ["Passphrase: ", "Repeat passphrase: "]
    _, ask = _asker("s3cret", "typo")
    with pytest.raises(KeystoreError, match="do not match"):
        passphrase_from_env_or_prompt(True, environ={}, stdin=FakeTTY(), ask=ask)
    _, ask = _asker("")
    with pytest.raises(KeystoreError, match="empty passphrase"):
        passphrase_from_env_or_prompt(environ={}, stdin=FakeTTY(), ask=ask)


def test_ctrl_d_at_the_prompt_is_a_keystore_error() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    def ended(prompt: str) -> str:
        raise EOFError

    with pytest.raises(KeystoreError, match="the input ended at the prompt"):
        passphrase_from_env_or_prompt(environ={}, stdin=Tty(), ask=ended)


@pytest.mark.parametrize(
    ("text", "why"),
    [('{"a": ' + "1" * 5000 + "}", "a number too long"), ("[" * 20_000, "nested too deeply")],
)
def test_json_past_pythons_limits_is_a_keystore_error(text: str, why: str) -> None:
    # Both within the file size limit: a ValueError and a RecursionError escaped.
    with pytest.raises(KeystoreError, match=f"not valid JSON \\({why}\\)"):
        parse_secret_text(text)


def test_the_nodes_key_file_is_made_whole_and_read_as_ssb_keys_writes_it(tmp_path: Path) -> None:
    from chainmail.errors import StorageError
    from chainmail.node import load_identity

    path = tmp_path / "node-secret.json"
    made = load_identity(path, log=tmp_path / "log.sqlite")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-secret.json"]
    assert load_identity(path) == made
    path.write_text(ssb_keys_file(made))  # with ssb-keys' comment lines
    assert load_identity(path) == made
    for bad in (b"", b"\xff\xfe", b'{"curve": "ed25519"}'):
        path.write_bytes(bad)
        with pytest.raises(StorageError, match=f"the node's key {re.escape(str(path))}"):
            load_identity(path)
    # Lost, beside a log it signed: no new identity over that log.
    path.unlink()
    (tmp_path / "log.sqlite").write_bytes(b"SQLite format 3\x00")
    with pytest.raises(StorageError, match=r"is missing, but .* holds a log"):
        load_identity(path, log=tmp_path / "log.sqlite")
    assert not path.exists()


def test_a_passphrase_that_is_not_utf8_text_is_a_keystore_error() -> None:
    # Undecodable bytes in the environment arrive as surrogate escapes.
    with pytest.raises(KeystoreError, match="CHAINMAIL_PASSPHRASE is not valid UTF-8"):
        passphrase_from_env_or_prompt(environ={"CHAINMAIL_PASSPHRASE": "\udcff\udcfe"})

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    def undecodable(prompt: str) -> str:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    with pytest.raises(KeystoreError, match="not text in the terminal's encoding"):
        passphrase_from_env_or_prompt(environ={}, stdin=Tty(), ask=undecodable)
