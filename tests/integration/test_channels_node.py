"""Encrypted channels end to end: members read, others see ciphertext, the node learns nothing."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest

from chainmail.client import Client
from chainmail.errors import DecryptionError, InvalidMessage, NotFound, ProofError
from chainmail.keys import Keypair
from chainmail.keystore import MIN, Keystore
from support.server import CHAINMAIL, Server, running

pytestmark = pytest.mark.integration

MARKER = "PLAINTEXT-MARKER-7f3a9c"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("node")) as server:
        yield server


def test_two_sides_one_regulator_and_nothing_readable_at_the_node(node: Server) -> None:
    people = {n: Keypair.generate() for n in ("buyer", "bbank", "seller", "sbank", "regulator")}
    c = {n: Client(node.url, k) for n, k in people.items()}
    try:
        tx = c["buyer"].open_tx(
            [people[n].id for n in ("seller", "bbank", "sbank")],
            60_000 + int(time.time() * 1000),
            subject="MEGA trade",
        )
        buy = c["buyer"].open_channel([people["bbank"].id], tx=tx, label="buy-side")
        sell = c["seller"].open_channel([people["sbank"].id], tx=tx, label="sell-side")
        c["buyer"].channel_send(buy, {"text": f"{MARKER} pay 12,500 USD from acct 991"})
        c["bbank"].channel_send(buy, {"text": f"{MARKER} funds reserved"})
        c["seller"].channel_send(sell, {"text": f"{MARKER} deliver 1,000 MEGA from DTC 42"})
        c["sbank"].channel_send(sell, {"text": f"{MARKER} stock reserved"})

        assert [o.data["text"] for o in c["bbank"].channel_read(buy)] == [
            f"{MARKER} pay 12,500 USD from acct 991",
            f"{MARKER} funds reserved",
        ]
        assert len(c["sbank"].channel_read(sell)) == 2
        # Each side is blind to the other, and the regulator to both, until shared:
        # told so, not shown an empty channel.
        for who, chan in (("seller", buy), ("bbank", sell), ("regulator", buy)):
            with pytest.raises(DecryptionError, match="not a member, and not shared with you"):
                c[who].channel_read(chan)
        # The bank got the buyer's message delivered to its inbox (as ciphertext).
        inbox = c["bbank"].inbox()
        assert any(e.message["content"].get("type") == "chan/msg" for e in inbox)

        c["buyer"].channel_share(buy, [people["regulator"].id])
        c["seller"].channel_share(sell, [people["regulator"].id])
        seen = [o.data["text"] for ch in (buy, sell) for o in c["regulator"].channel_read(ch)]
        assert len(seen) == 4 and all(MARKER in t for t in seen)
        assert any(e.message["content"].get("type") == "chan/share" for e in c["regulator"].inbox())
    finally:
        for client in c.values():
            client.close()

    firehose = httpx.get(node.url + "/v1/firehose?from=0", timeout=30).content
    assert b"chan/msg" in firehose  # the ciphertext is public…
    assert MARKER.encode() not in firehose  # …the plaintext is not
    for root, _, files in os.walk(node.data):
        for name in files:
            data = (Path(root) / name).read_bytes()
            assert MARKER.encode() not in data, f"plaintext in {name}"


def test_outsider_cannot_post_to_a_channel(node: Server) -> None:
    a, b, eve = Keypair.generate(), Keypair.generate(), Keypair.generate()
    with Client(node.url, a) as alice, Client(node.url, eve) as mallory:
        chan = alice.open_channel([b.id])
        from chainmail import channels
        from chainmail.errors import Rejected

        forged = channels.msg_content(channels.new_key(), {"x": 1}, author=eve.id, channel=chan)
        with pytest.raises(Rejected) as err:
            mallory.publish(forged)
        assert err.value.code == "not_a_party"


def test_a_message_that_is_not_a_channel_is_not_found_as_one(node: Server) -> None:
    from chainmail.errors import NotFound

    a, b = Keypair.generate(), Keypair.generate()
    with Client(node.url, a) as alice:
        post = alice.publish({"type": "post", "text": "not a channel"}).id
        chan = alice.open_channel([b.id])
        for not_a_channel in (post, "%" + "A" * 43 + "=.sha256"):
            with pytest.raises(NotFound, match="no channel"):
                alice.channel_read(not_a_channel)
            with pytest.raises(NotFound, match="no channel"):
                alice.channel_send(not_a_channel, {"x": 1})
        resp = httpx.get(f"{node.url}/v1/channels/{quote(post, safe='')}/messages")
        assert resp.status_code == 404 and "is a post" in resp.json()["detail"]
        # Past the end of a real channel is an empty page, not a 404.
        page = httpx.get(
            f"{node.url}/v1/channels/{quote(chan, safe='')}/messages", params={"after": 99}
        )
        assert page.status_code == 200 and page.json() == {"messages": []}


def test_cli_chan_commands(node: Server, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CHAINMAIL_HOME": str(tmp_path),
        "CHAINMAIL_PASSPHRASE": "pw pw pw",
        "CHAINMAIL_NODE": node.url,
    }
    store = Keystore(tmp_path, limits=MIN)
    ids = {n: store.new(n, "pw pw pw").id for n in ("ann", "ben", "reg")}

    def cm(*args: str) -> str:
        done = subprocess.run(
            [CHAINMAIL, *args], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    chan = cm("chan", "open", "--as", "ann", "--member", ids["ben"], "--label", "desk")
    cm("chan", "send", "--as", "ann", "--chan", chan, "--data", json.dumps({"px": "12.50"}))
    cm("chan", "send", "--as", "ben", "--chan", chan, "--data", '{"ok": true}')
    lines = [
        json.loads(x)
        for x in cm("chan", "read", "--as", "ben", "--chan", chan, "--json").splitlines()
    ]
    assert [x["data"] for x in lines] == [{"px": "12.50"}, {"ok": True}]
    assert set(lines[0]) == {"id", "author", "data"} and lines[0]["author"] == ids["ann"]
    outsider = subprocess.run(
        [CHAINMAIL, "chan", "read", "--as", "reg", "--chan", chan, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert outsider.returncode == 1 and outsider.stdout == ""
    assert outsider.stderr.startswith("chainmail: decryption_failed: cannot decrypt: no key")
    table = cm("chan", "read", "--as", "ben", "--chan", chan)
    assert '{"px": "12.50"}' in table and '{"ok": true}' in table  # JSON, not Python's repr
    cm("chan", "share", "--as", "ben", "--chan", chan, "--with", ids["reg"])
    assert len(cm("chan", "read", "--as", "reg", "--chan", chan, "--json").splitlines()) == 2
    bad = subprocess.run(
        [CHAINMAIL, "chan", "send", "--as", "ann", "--chan", chan, "--data", "{not json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


def _unused() -> bytes:
    return orjson.dumps(None)


def test_cli_chan_read_shows_a_members_text_as_text(node: Server, tmp_path: Path) -> None:
    # What a member wrote is data, not console markup: "[/x]" crashed every other
    # member's `chan read` with a traceback, and "[bold]" restyled the table.
    env = {
        **os.environ,
        "CHAINMAIL_HOME": str(tmp_path),
        "CHAINMAIL_PASSPHRASE": "pw pw pw",
        "CHAINMAIL_NODE": node.url,
    }
    store = Keystore(tmp_path, limits=MIN)
    ben = store.new("ben", "pw pw pw").id
    store.new("ann", "pw pw pw")

    def cm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHAINMAIL, *args], capture_output=True, text=True, env=env, timeout=60
        )

    chan = cm("chan", "open", "--as", "ann", "--member", ben).stdout.strip()
    text = "[/x] [bold]loud[/bold]"
    sent = cm("chan", "send", "--as", "ann", "--chan", chan, "--data", json.dumps({"t": text}))
    assert sent.returncode == 0, sent.stderr
    read = cm("chan", "read", "--as", "ben", "--chan", chan)
    assert read.returncode == 0 and read.stderr == "", read.stderr
    assert json.dumps({"t": text}) in read.stdout

    # JSON escapes C0 controls but not DEL or C1 (\x9b is CSI): they must not
    # reach the reader's terminal either.
    sent = cm("chan", "send", "--as", "ann", "--chan", chan, "--data", '{"t": "\x9b2J\x7f"}')
    assert sent.returncode == 0, sent.stderr
    read = cm("chan", "read", "--as", "ben", "--chan", chan)
    assert read.returncode == 0 and read.stderr == "", read.stderr
    assert "\x9b" not in read.stdout and "\x7f" not in read.stdout
    assert '{"t": "\\x9b2J\\x7f"}' in read.stdout


class _Prepend(httpx.BaseTransport):
    """The real node, except that a channel's history starts with ``forged`` messages."""

    def __init__(self, path: str, forged: list[dict[str, object]]) -> None:
        self._inner = httpx.HTTPTransport()
        self._path = path
        self._forged = forged

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if request.url.raw_path.decode("ascii").split("?")[0] != self._path:
            return response
        page = orjson.loads(response.read())
        return httpx.Response(200, json={"messages": [*self._forged, *page["messages"]]})

    def close(self) -> None:
        self._inner.close()


def test_a_member_sends_under_the_channels_key_not_one_the_node_slips_in(node: Server) -> None:
    # DESIGN §3: non-members, the node included, see only ciphertext. A node (or
    # anyone between it and the member) that put a key of its own, sealed to the
    # member, before the channel's chan/open had the member's next message
    # boxed under that key: the member took the first key sealed to it from the
    # history it was served, signed by anyone (here an outsider's chan/share).
    from chainmail import channels, ssb
    from chainmail.verify import path_id

    a, b, eve = Keypair.generate(), Keypair.generate(), Keypair.generate()
    with Client(node.url, a) as alice:
        chan = alice.open_channel([b.id])
        eve_key = channels.new_key()
        slipped = ssb.create(
            eve, channels.share_content(eve_key, chan, [b.id]), None, int(time.time() * 1000)
        )
        transport = _Prepend(f"/v1/channels/{path_id(chan)}/messages", [slipped])
        with Client(node.url, b, transport=transport) as bob:
            sent = bob.channel_send(chan, {"text": MARKER}).id
        box = alice.message(sent)["message"]["content"]["box"]
        with pytest.raises(DecryptionError):
            channels.open_message(eve_key, box, author=b.id, channel=chan)
        assert [o.id for o in alice.channel_read(chan)] == [sent]


# --- private documents ----------------------------------------------------------------


def test_a_private_document_reaches_members_only_is_kept_and_checked(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Sealed with the channel key, stored and notarised as ciphertext (so the
    sweeper keeps it while an unnamed blob goes), read back and checked by a
    member and a reader shared with, refused to an outsider."""
    with running(tmp_path_factory.mktemp("docs"), extra=("--blob-grace", "1")) as server:
        ann, ben, reg, eve = (Client(server.url, Keypair.generate()) for _ in range(4))
        try:
            tx = ann.open_tx([ben.id], 60_000 + int(time.time() * 1000), subject="DvP")
            chan = ann.open_channel([ben.id], tx=tx)
            data = f"{MARKER} settlement instruction: acct 991, DTC 42".encode() * 50
            sent = ann.channel_send_document(chan, data, name="dvp.pdf", mime="application/pdf")
            loose = ann.put_blob(b"uploaded, never named")

            about, got = ben.channel_document(chan, sent.message)
            assert got == data
            assert about == sent
            assert (about.author, about.name, about.size) == (ann.id, "dvp.pdf", len(data))
            with pytest.raises(DecryptionError, match="not a member"):
                eve.channel_document(chan, sent.message)
            ann.channel_share(chan, [reg.id])
            assert reg.channel_document(chan, sent.message)[1] == data

            # What everyone else sees: a doc naming ciphertext of that size, in the tx.
            public = httpx.get(
                f"{server.url}/v1/messages/{quote(sent.notarised, safe='')}", timeout=30
            ).json()["message"]["content"]
            assert public == {
                "type": "doc",
                "blob": sent.blob,
                "size": len(data) + 40,
                "tx": tx,
            }
            ciphertext = ann.get_blob(sent.blob)
            assert MARKER.encode() not in ciphertext and b"dvp.pdf" not in ciphertext

            # A channel message that is no document, and one the channel lacks.
            note = ann.channel_send(chan, {"text": "see attached"})
            with pytest.raises(InvalidMessage, match="carrying no document"):
                ben.channel_document(chan, note.id)
            with pytest.raises(NotFound):
                ben.channel_document(chan, sent.notarised)

            # The sweeper (grace 1 s) takes the unnamed blob and keeps the document.
            deadline = time.monotonic() + 20
            while _present(server, loose):
                assert time.monotonic() < deadline, "the unnamed blob was never swept"
                time.sleep(0.2)
            assert ben.channel_document(chan, sent.message)[1] == data
        finally:
            for client in (ann, ben, reg, eve):
                client.close()
    for root, _, files in os.walk(server.data):
        for name in files:
            assert MARKER.encode() not in (Path(root) / name).read_bytes(), f"plaintext in {name}"


def _present(server: Server, blob: str) -> bool:
    got = httpx.get(f"{server.url}/v1/blobs/{quote(blob, safe='')}", timeout=30)
    return got.status_code == 200


def test_a_document_whose_bytes_differ_from_its_pointer_is_refused(node: Server) -> None:
    """A member who announces one document and stores another is caught by the
    reader's check: the pointer's SHA-256 is what the author signed."""
    from chainmail import chandocs, channels

    with Client(node.url, Keypair.generate()) as ann, Client(node.url, Keypair.generate()) as ben:
        chan = ann.open_channel([ben.id])
        key, _ = ann._run(ann._channel_key_flow(chan))
        sealed = chandocs.seal_document(key, b"the real contract", author=ann.id, channel=chan)
        blob = ann.put_blob(sealed)
        doc = ann.publish({"type": "doc", "blob": blob, "size": len(sealed)})
        inner = chandocs.pointer_content(b"a forged contract", blob=blob, notarised=doc.id)
        content = channels.msg_content(key, inner, author=ann.id, channel=chan)
        announced = ann.publish(content)
        with pytest.raises(ProofError, match="SHA-256 differs"):
            ben.channel_document(chan, announced.id)

        # Announced as notarised by another member's doc of that blob: refused,
        # though the bytes are right (the date would be borrowed).
        honest = chandocs.pointer_content(b"the real contract", blob=blob, notarised=doc.id)
        own = ben.publish({"type": "doc", "blob": blob, "size": len(sealed)})
        borrowed = {**honest, "notarised": own.id}
        lent = ann.publish(channels.msg_content(key, borrowed, author=ann.id, channel=chan))
        with pytest.raises(ProofError, match="not the announcing member's"):
            ben.channel_document(chan, lent.id)
        fine = ann.publish(channels.msg_content(key, honest, author=ann.id, channel=chan))
        assert ben.channel_document(chan, fine.id)[1] == b"the real contract"


def test_cli_chan_send_doc_and_get_doc(node: Server, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CHAINMAIL_HOME": str(tmp_path / "home"),
        "CHAINMAIL_PASSPHRASE": "pw pw pw",
        "CHAINMAIL_NODE": node.url,
    }
    store = Keystore(tmp_path / "home", limits=MIN)
    ids = {n: store.new(n, "pw pw pw").id for n in ("ann", "ben", "eve")}

    def cm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHAINMAIL, *args], capture_output=True, text=True, env=env, timeout=60
        )

    opened = cm("chan", "open", "--as", "ann", "--member", ids["ben"])
    assert opened.returncode == 0, opened.stderr
    chan = opened.stdout.strip()
    contract = tmp_path / "nda.txt"
    contract.write_bytes(b"Mutual NDA between ann and ben.\n" * 20)
    sent = cm("chan", "send-doc", str(contract), "--as", "ann", "--chan", chan, "--json")
    assert sent.returncode == 0, sent.stderr
    about = json.loads(sent.stdout)
    assert about["name"] == "nda.txt" and about["mime"] == "text/plain"
    assert about["size"] == contract.stat().st_size

    out = tmp_path / "got.txt"
    got = cm("chan", "get-doc", about["message"], "--as", "ben", "--chan", chan, "--out", str(out))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == contract.read_bytes()
    assert "nda.txt" in got.stderr and "SHA-256" in got.stderr
    piped = cm("chan", "get-doc", about["message"], "--as", "ben", "--chan", chan)
    assert piped.returncode == 0 and piped.stdout.encode() == contract.read_bytes()

    refused = cm("chan", "get-doc", about["message"], "--as", "eve", "--chan", chan, "--out", "x")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("chainmail: decryption_failed:")
    assert len(refused.stderr.strip().splitlines()) == 1
    missing = cm("chan", "send-doc", str(tmp_path / "nope"), "--as", "ann", "--chan", chan)
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1


def test_a_channel_longer_than_a_page_reads_whole(node: Server) -> None:
    """The node streams a listing past 256 rows; the client pages by 1,000 and
    stops at a short page: every message comes back once, in order."""
    with Client(node.url, Keypair.generate()) as ann, Client(node.url, Keypair.generate()) as ben:
        chan = ann.open_channel([ben.id])
        for n in range(300):
            ann.channel_send(chan, {"n": n})
        assert [o.data["n"] for o in ben.channel_read(chan)] == list(range(300))
        page = httpx.get(
            f"{node.url}/v1/channels/{quote(chan, safe='')}/messages?after=290&limit=1000",
            timeout=30,
        ).json()["messages"]
        assert len(page) == 11  # the chan/open and 300 messages, from the 291st on
