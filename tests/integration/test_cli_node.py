"""The ``chainmail`` commands that talk to a node, run as subprocesses against a real node."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chainmail import ssb
from chainmail.client import FEEDS_DIR, Client, NodeUnavailable, feed_path
from chainmail.keys import Keypair
from chainmail.verify import path_id
from support.lying import Rewrite, lying
from support.server import CHAINMAIL, interrupted, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

UNKNOWN_TX = "%" + "A" * 43 + "=.sha256"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass(frozen=True)
class Cli:
    env: dict[str, str]

    def __call__(self, *args: str, check: bool = True) -> Run:
        proc = subprocess.run(
            [CHAINMAIL, *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        run = Run(proc.returncode, proc.stdout, proc.stderr)
        if check:
            assert run.code == 0, f"chainmail {' '.join(args)} exited {run.code}: {run.err}"
        return run

    def key(self, name: str) -> str:
        self("keys", "new", name)
        return str(self("keys", "show", name, "--json").json()["id"])


@pytest.fixture(scope="module")
def cli(node_url: str, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    home = tmp_path_factory.mktemp("home")
    env = {
        **os.environ,
        "CHAINMAIL_HOME": str(home),
        "CHAINMAIL_PASSPHRASE": "correct horse battery staple",
        "CHAINMAIL_NODE": node_url,
        "COLUMNS": "200",
    }
    return Cli(env)


def assert_one_line_error(run: Run, code: str) -> None:
    assert run.code != 0
    assert "Traceback" not in run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith(f"chainmail: {code}: "), lines[0]


def test_tx_between_two_parties_verifies(cli: Cli) -> None:
    alice, bob = cli.key("alice"), cli.key("bob")
    tx = cli(
        "tx",
        "open",
        "--as",
        "alice",
        "--party",
        bob,
        "--deadline",
        "10m",
        "--subject",
        "trade 42",
        "--data",
        '{"qty": 10}',
    ).out.strip()
    assert tx.startswith("%") and tx.endswith(".sha256")

    note = cli("tx", "note", "--as", "alice", tx, "--data", '{"px": 101}', "--json").json()
    assert note["created"] is True

    inbox = [
        json.loads(line) for line in cli("inbox", "--as", "bob", "--json", "--ack").out.splitlines()
    ]
    assert [e["id"] for e in inbox] == [tx, note["id"]]
    assert inbox[0]["message"]["author"] == alice
    assert cli("inbox", "--as", "bob", "--json").out == ""  # acknowledged

    cli("tx", "finish", "--as", "alice", tx)
    cli("tx", "finish", "--as", "bob", tx, "--data", '{"settled": true}')

    deadline = time.monotonic() + 10
    while (shown := cli("tx", "show", tx, "--json").json())["block"] is None:
        assert time.monotonic() < deadline, "tx never sealed"
        time.sleep(0.1)
    assert shown["status"] == "finished"
    assert cli("tx", "show", tx).out.count("finished") == 1

    verified = cli("verify", "tx", tx)
    lines = verified.out.strip().splitlines()
    assert lines and all(line.startswith("✓ ") for line in lines), verified.out
    assert any("tx record" in line for line in lines)
    assert "✗" not in verified.out

    block = str(shown["block"])
    assert cli("verify", "block", block).out.count("✓") >= 5
    report = cli("verify", "message", note["id"], "--json").json()
    assert report["ok"] is True and report["checks"][0]["check"] == "node identity"

    heights = [json.loads(line)["height"] for line in cli("blocks", "--json").out.splitlines()]
    assert int(block) in heights
    firehose = [json.loads(line) for line in cli("firehose", "--json").out.splitlines()]
    assert [e["index"] for e in firehose] == list(range(len(firehose)))
    assert tx in [e["id"] for e in firehose]
    later = cli("firehose", "--from", str(firehose[-1]["index"]), "--json").out.splitlines()
    assert json.loads(later[0])["id"] == firehose[-1]["id"]


def test_send_and_its_input_errors(cli: Cli) -> None:
    cli.key("carol")
    sent = cli("send", "--as", "carol", "--type", "post", "--data", '{"text": "hi"}', "--json")
    assert sent.json()["created"] is True
    cli("send", "--as", "carol", "--content", '{"type": "post", "text": "again"}')

    assert_one_line_error(
        cli("send", "--as", "carol", "--type", "post", "--data", "{bad", check=False),
        "invalid_format",
    )
    assert_one_line_error(
        cli("tx", "note", "--as", "carol", UNKNOWN_TX, "--data", "[1]", check=False),
        "invalid_format",
    )
    assert_one_line_error(
        cli("tx", "finish", "--as", "carol", UNKNOWN_TX, check=False), "unknown_tx"
    )
    assert_one_line_error(cli("tx", "show", UNKNOWN_TX, check=False), "not_found")
    assert_one_line_error(
        cli("tx", "open", "--as", "carol", "--party", "@nobody", check=False), "invalid_format"
    )
    for deadline in ("soon", "1000", "0s", "2001-01-01T00:00:00+00:00"):
        assert_one_line_error(
            cli(
                "tx", "open", "--as", "carol", "--party", "@x", "--deadline", deadline, check=False
            ),
            "invalid_format",
        )
    assert_one_line_error(cli("send", "--as", "nobody", "--type", "post", check=False), "keystore")
    assert_one_line_error(cli("blocks", "--node", "http://127.0.0.1:9", check=False), "unavailable")
    # The refused messages left nothing behind: carol's next message is her third.
    third = cli("send", "--as", "carol", "--type", "post", "--json").json()
    shown = cli("firehose", "--json").out.splitlines()
    message = next(json.loads(x)["message"] for x in shown if json.loads(x)["id"] == third["id"])
    assert message["sequence"] == 3


def test_a_message_signed_while_the_node_was_down_goes_first_and_is_announced(cli: Cli) -> None:
    cli.key("dave")
    home, passphrase = cli.env["CHAINMAIL_HOME"], cli.env["CHAINMAIL_PASSPHRASE"]
    with Client.from_keystore("dave", passphrase, home, node="http://127.0.0.1:9") as offline:
        signed = offline.sign({"type": "post", "text": "signed offline"})  # no network
        with pytest.raises(NodeUnavailable):
            offline.sync()
    dave = cli("keys", "show", "dave", "--json").json()["id"]
    kept = feed_path(Path(home) / FEEDS_DIR, dave)
    offline_id = ssb.message_id(signed)

    # The node down: the CLI says so, and signs nothing more.
    down = cli(
        "send", "--as", "dave", "--type", "post", "--node", "http://127.0.0.1:9", check=False
    )
    assert_one_line_error(down, "unavailable")
    assert "nothing was signed" in down.err
    assert len(kept.read_text().splitlines()) == 1

    # Up again: the message signed offline goes first, and the CLI says it did.
    sent = cli("send", "--as", "dave", "--type", "post", "--data", '{"text": "now"}', "--json")
    assert f"sent {offline_id} first" in sent.err
    shown = [json.loads(x)["message"] for x in cli("firehose", "--json").out.splitlines()]
    assert [(m["sequence"], m["content"].get("text")) for m in shown if m["author"] == dave] == [
        (1, "signed offline"),
        (2, "now"),
    ]
    # Nothing more was pending: the next send announces nothing.
    assert "first" not in cli("send", "--as", "dave", "--type", "post").err


def test_a_node_that_hangs_up_on_a_send_leaves_the_message_kept_and_says_so(
    cli: Cli, node_url: str
) -> None:
    cli.key("erin")

    def hang_up(status: int, ctype: str, body: bytes) -> tuple[int, str, bytes]:
        raise ConnectionResetError("the proxy hangs up")

    with lying(node_url, {"/v1/messages": hang_up}) as proxy:
        run = cli("send", "--as", "erin", "--type", "post", "--node", proxy, check=False)
    assert_one_line_error(run, "unavailable")
    assert "1 new message(s) signed and kept in the local feed copy" in run.err
    assert "the next command that publishes as erin sends them first" in run.err
    # The node had logged it before the answer was lost: the next send continues the feed.
    after = cli("send", "--as", "erin", "--type", "post", "--json").json()
    shown = [json.loads(x) for x in cli("firehose", "--json").out.splitlines()]
    assert next(x["message"]["sequence"] for x in shown if x["id"] == after["id"]) == 2


def test_a_feed_a_node_accepted_is_not_replayed_to_another_node_unasked(
    cli: Cli, tmp_path: Path
) -> None:
    """A key used on a second node: its history is not pushed there behind the user's
    back (closed txs would refuse it and the key could post nothing more there)."""
    frank = cli.key("frank")
    cli("send", "--as", "frank", "--type", "post", "--data", '{"text": "on the first node"}')
    with running(tmp_path / "other") as other:
        run = cli("send", "--as", "frank", "--type", "post", "--node", other.url, check=False)
        assert_one_line_error(run, "out_of_order")
        assert "but a node accepted it up to 1: this is another node" in run.err
        shown = cli("firehose", "--node", other.url, "--json").out.splitlines()
        assert not [x for x in shown if json.loads(x)["message"]["author"] == frank]
        assert "chainmail send --replay" in run.err
        # On purpose: the history goes first (and is announced), then what follows.
        replayed = cli(
            "send", "--as", "frank", "--type", "post", "--data", '{"text": "on the second node"}',
            "--node", other.url, "--replay",
        )  # fmt: skip
        assert "replayed to this node (logged at 0:0)" in replayed.err
        shown = cli("firehose", "--node", other.url, "--json").out.splitlines()
        mine = [json.loads(x)["message"] for x in shown]
        texts = [m["content"].get("text") for m in mine if m["author"] == frank]
        assert texts == ["on the first node", "on the second node"]


def test_verify_failure_exits_1(cli: Cli) -> None:
    missing = cli("verify", "block", "999999", check=False)
    assert_one_line_error(missing, "not_found")
    impostor = cli.key("impostor")  # pinning the wrong node id: the first check fails
    failed = cli("verify", "block", "1", "--node-id", impostor, check=False)
    assert failed.code == 1
    assert failed.out.startswith("✗ node identity: expected node " + impostor)
    assert "✓" not in failed.out
    assert "Traceback" not in failed.err
    assert failed.err.strip().splitlines()[-1].startswith("chainmail: invalid_proof: node identity")


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["send"],
        ["tx"],
        ["tx", "open"],
        ["tx", "note"],
        ["tx", "finish"],
        ["tx", "show"],
        ["inbox"],
        ["firehose"],
        ["blocks"],
        ["verify"],
        ["verify", "message"],
        ["verify", "tx"],
        ["verify", "block"],
        ["audit"],
        ["doc"],
        ["doc", "notarise"],
        ["doc", "get"],
        ["doc", "check"],
    ],
)
def test_every_command_has_help(cli: Cli, command: list[str]) -> None:
    run = cli(*command, "--help")
    assert "Usage:" in run.out


def test_tx_show_prints_a_subject_as_text(cli: Cli) -> None:
    # A subject is what the opener wrote, not console markup: "[/x]" crashed
    # every party's `tx show` with a MarkupError traceback, "[bold]" restyled it.
    bob = cli.key("subject-bob")
    cli.key("subject-ann")
    subject = "[/x] [bold]loud[/bold] [link=https://evil.example]x[/link]"
    tx = cli("tx", "open", "--as", "subject-ann", "--party", bob, "--subject", subject).out.strip()
    shown = cli("tx", "show", tx, check=False)
    assert shown.code == 0 and shown.err == "", shown.err
    assert subject in shown.out


@pytest.mark.parametrize("command", ["message", "tx"])
def test_verify_a_bad_id_with_brackets_is_one_line(cli: Cli, command: str) -> None:
    # The id went into the progress line as console markup: "[/x]" was a
    # MarkupError traceback before the id was even checked.
    assert_one_line_error(cli("verify", command, "[/x]", check=False), "invalid_format")


@pytest.mark.parametrize("option", ["--data", "--content"])
def test_json_nested_too_deeply_is_one_line(cli: Cli, option: str) -> None:
    # json.loads raises RecursionError, not JSONDecodeError, past Python's limit.
    name = f"deep{option}"
    cli.key(name)
    deep = "[" * 60_000 + "]" * 60_000
    args = ["--type", "post", "--data", deep] if option == "--data" else ["--content", deep]
    run = cli("send", "--as", name, *args, check=False)
    assert_one_line_error(run, "invalid_format")
    assert f"{option}: not JSON" in run.err


@pytest.mark.parametrize("url", ["http://xn--zz", "http://a..b"])
@pytest.mark.parametrize("command", [["blocks"], ["firehose", "--follow"], ["audit"]])
def test_a_node_url_no_resolver_takes_is_one_line(cli: Cli, url: str, command: list[str]) -> None:
    assert_one_line_error(cli(*command, "--node", url, check=False), "invalid_format")


#: What a user or a node may write to drive a terminal: clear the screen, set the
#: window title, a C1 CSI, and a newline that fakes a line of the output.
CONTROLS = "\x1b[2J\x1b]0;owned\x07\x9b31m\nstatus    finished"


def assert_no_controls(text: str) -> None:
    assert not [c for c in text.replace("\n", "") if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0], text


def test_user_text_cannot_drive_the_terminal(cli: Cli) -> None:
    # A subject or a content type is anyone's text: printed raw, its ESC
    # sequences reached every reader's terminal, and a newline faked a line.
    bob = cli.key("ctl-bob")
    cli.key("ctl-ann")
    tx = cli("tx", "open", "--as", "ctl-ann", "--party", bob, "--subject", CONTROLS).out.strip()
    shown = cli("tx", "show", tx).out
    assert_no_controls(shown)
    assert "\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\x0astatus    finished" in shown
    assert [line.split()[0] for line in shown.splitlines()].count("status") == 1

    sent = cli("send", "--as", "ctl-ann", "--type", "po\x1b[2Jst", "--json").json()
    hose = cli("firehose").out
    assert_no_controls(hose)
    assert f"po\\x1b[2Jst {sent['id']}" in " ".join(hose.split())


def test_json_output_keeps_unicode_line_breaks_within_their_line(cli: Cli, node_url: str) -> None:
    # U+2028, U+2029 and U+0085 are valid unescaped in JSON, but str.splitlines (and
    # editors) break lines at them: --json output escapes them.
    with Client(node_url, Keypair.generate()) as client:
        sent = [client.publish({"type": "post", "text": f"a{c}b"}) for c in "\u2028\u2029\x85"]
    out = cli("firehose", "--from", str(sent[0].index), "--json").out
    entries = [json.loads(line) for line in out.splitlines()]
    texts = {e["id"]: e["message"]["content"].get("text") for e in entries}
    assert [texts[r.id] for r in sent] == ["a\u2028b", "a\u2029b", "a\x85b"]
    assert "\\u2028" in out and "\u2028" not in out


def edit_json(edit: Callable[[Any], None]) -> Rewrite:
    def rewrite(status: int, ctype: str, body: bytes) -> tuple[int, str, bytes]:
        value = json.loads(body)
        edit(value)
        return status, ctype, json.dumps(value).encode()

    return rewrite


def test_a_lying_node_cannot_drive_the_terminal(cli: Cli, node_url: str) -> None:
    # What the node says is printed too (inbox, blocks, the verify report):
    # a node that lies must not reach the terminal with it either.
    bob = cli.key("lied-to-bob")
    cli.key("lied-to-ann")
    cli("tx", "open", "--as", "lied-to-ann", "--party", bob)
    pinned = cli.key("lied-to-pin")
    rewrites = {
        "/v1/inbox": edit_json(lambda v: v["entries"][0]["message"].update(author=CONTROLS)),
        "/v1/blocks": edit_json(lambda v: v["blocks"][0].update(id=CONTROLS)),
        "/healthz": edit_json(lambda v: v.update(id=CONTROLS)),
    }
    with lying(node_url, rewrites) as url:
        inbox = cli("inbox", "--as", "lied-to-bob", "--node", url)
        blocks = cli("blocks", "--node", url)
        verify = cli("verify", "block", "1", "--node", url, "--node-id", pinned, check=False)
    for run in (inbox, blocks):
        assert_no_controls(run.out)
        assert "\\x1b[2J" in run.out
        assert not [line for line in run.out.splitlines() if line.startswith("status")]
    assert verify.code == 1
    assert_no_controls(verify.out + verify.err)
    assert verify.out.startswith("✗ node identity: expected node " + pinned), verify.out
    assert len(verify.out.splitlines()) == 1 and len(verify.err.splitlines()) == 1, verify


def test_a_node_s_error_detail_is_one_printable_line(cli: Cli, node_url: str) -> None:
    # The problem's detail went to stderr as it came: its newline made the
    # error two lines, its ESC sequences reached the terminal.
    def problem(status: int, ctype: str, body: bytes) -> tuple[int, str, bytes]:
        detail = {"code": "invalid_format", "title": "Bad", "detail": f"bad{CONTROLS}"}
        return 400, "application/problem+json", json.dumps(detail).encode()

    with lying(node_url, {"/v1/blocks": problem}) as url:
        run = cli("blocks", "--node", url, check=False)
    assert_one_line_error(run, "invalid_format")
    assert_no_controls(run.err)
    assert "bad\\x1b[2J" in run.err


def test_audit_of_a_node_that_names_no_valid_id_says_so_in_one_printable_line(
    cli: Cli, node_url: str
) -> None:
    # The node's id went into the summary as console markup ("[/x]": a
    # MarkupError traceback), and into the findings raw (ESC sequences, a
    # newline faking a line), one finding for every message. It is no feed id,
    # so nothing the node signed could match it: one error says so.
    cli.key("audited-ann")
    cli("send", "--as", "audited-ann", "--type", "post")
    lie = "[/x]" + CONTROLS
    with lying(node_url, {"/healthz": edit_json(lambda v: v.update(id=lie))}) as url:
        run = cli("audit", "--grace", "0", "--node", url, check=False)
    assert_one_line_error(run, "invalid_proof")
    assert_no_controls(run.out + run.err)
    assert run.out == ""
    assert "expected the node's id (@….ed25519), got '[/x]\\x1b[2J" in run.err, run.err


@pytest.mark.parametrize(
    "blocks",
    [
        "abc",
        [1],
        [{"id": "%x", "message": {"content": {}}}],
        [{"height": "1", "id": "%x", "message": {"content": {}}}],
        [{"height": 1, "message": {"content": {}}}],
        [{"height": 1, "id": 7, "message": {"content": {}}}],
        [{"height": 1, "id": "%x"}],
    ],
)
def test_blocks_of_the_wrong_shape_are_one_line(cli: Cli, node_url: str, blocks: Any) -> None:
    # A "blocks" that was no list of blocks with heights was an AttributeError
    # or TypeError traceback.
    with lying(node_url, {"/v1/blocks": edit_json(lambda v: v.update(blocks=blocks))}) as url:
        run = cli("blocks", "--node", url, check=False)
    assert_one_line_error(run, "internal")


@pytest.mark.parametrize(
    "block",
    [
        {"height": 1, "id": "%x", "message": "not a message"},
        {"height": 1, "id": "%x", "message": {"content": "boxed"}},
        {"height": 1, "id": "%x", "message": {"content": {"txs": 3, "logs": [5], "time": "x"}}},
    ],
)
def test_a_block_missing_its_fields_still_prints(cli: Cli, node_url: str, block: Any) -> None:
    # `blocks` is the node's word, unverified: what it lacks prints as such.
    with lying(node_url, {"/v1/blocks": edit_json(lambda v: v.update(blocks=[block]))}) as url:
        run = cli("blocks", "--node", url, check=False)
    assert run.code == 0 and run.err == "", run.err
    assert run.out.split() == ["1", "%x", "—", "txs", "None", "logs"]


@pytest.mark.parametrize(
    "line",
    [
        '"str"',
        "[1]",
        "{}",
        '{"type": "post"}',
        '{"base": {"id": "%x", "sequence": "2"}}',
        # Not the next message of the feed: an edit, or a second writer's fork.
        '{"sequence": 7, "author": "@someone"}',
        '{"sequence": -5}',
    ],
)
def test_a_local_feed_copy_that_is_not_one_is_one_line(cli: Cli, line: str) -> None:
    # A line of the feed copy that is JSON but no message (nor base) was a
    # TypeError or KeyError traceback, not the StorageError FileFeed promises.
    name = "feed-" + hashlib.sha256(line.encode()).hexdigest()[:12]
    fid = cli.key(name)
    cli("send", "--as", name, "--type", "post")
    path = feed_path(Path(cli.env["CHAINMAIL_HOME"]) / FEEDS_DIR, fid)
    good = path.read_bytes()
    path.write_bytes(good + line.encode() + b"\n")
    run = cli("send", "--as", name, "--type", "post", check=False)
    assert_one_line_error(run, "storage")
    assert f"{path} line 2" in run.err
    path.write_bytes(good)  # nothing was lost: with the line gone, the feed goes on
    assert cli("send", "--as", name, "--type", "post", "--json").json()["created"] is True


@pytest.mark.parametrize("field", ["parties", "messages"])
def test_tx_show_of_a_tx_with_a_field_of_the_wrong_shape_still_prints(
    cli: Cli, node_url: str, field: str
) -> None:
    # `tx show` is the node's word, unverified: parties or messages that are no
    # list print as they are, where they were a TypeError traceback.
    bob = cli.key(f"shape-{field}-bob")
    cli.key(f"shape-{field}-ann")
    tx = cli("tx", "open", "--as", f"shape-{field}-ann", "--party", bob).out.strip()
    path = "/v1/transactions/" + path_id(tx)
    with lying(node_url, {path: edit_json(lambda v: v.update({field: 5}))}) as url:
        run = cli("tx", "show", tx, "--node", url, check=False)
    assert run.code == 0 and run.err == "", run.err
    assert [field, "5"] in [line.split() for line in run.out.splitlines()]


def test_inbox_ack_answered_with_no_count_is_one_line(cli: Cli, node_url: str) -> None:
    # {"acked": "x"} was a ValueError traceback after the entries were printed.
    bob = cli.key("ack-bob")
    cli.key("ack-ann")
    tx = cli("tx", "open", "--as", "ack-ann", "--party", bob).out.strip()
    with lying(node_url, {"/v1/inbox/ack": edit_json(lambda v: v.update(acked="x"))}) as url:
        run = cli("inbox", "--as", "ack-bob", "--ack", "--node", url, check=False)
    assert tx in run.out
    assert_one_line_error(run, "internal")


def test_audit_of_a_healthz_without_an_id_is_one_line(cli: Cli, node_url: str) -> None:
    # A URL of something else that answers /healthz, or a node that does not
    # say who it is: a KeyError traceback; with --node-id it needs no id.
    with lying(node_url, {"/healthz": edit_json(lambda v: v.pop("id"))}) as url:
        run = cli("audit", "--grace", "0", "--node", url, check=False)
        node_id = httpx.get(node_url + "/healthz").json()["id"]
        pinned = cli("audit", "--grace", "0", "--node", url, "--node-id", node_id, check=False)
    assert_one_line_error(run, "invalid_proof")
    assert "Traceback" not in pinned.err and pinned.err.strip().splitlines()[-1].startswith(
        "audited "
    ), pinned.err


def test_audit_follow_interrupted_in_its_first_read_still_sums_up(cli: Cli, node_url: str) -> None:
    # --help: "with it [--follow], Ctrl-C ends it with the same summary and exit
    # status"; during the first read (a long one on a big node) Ctrl-C ended it
    # with 130 and no summary.
    reading = threading.Event()

    def slow(status: int, ctype: str, body: bytes) -> tuple[int, str, bytes]:
        reading.set()
        time.sleep(5)
        return status, ctype, body

    with lying(node_url, {"/v1/blocks": slow}) as url:
        proc = subprocess.Popen(
            [CHAINMAIL, "audit", "--follow", "--node", url],
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert reading.wait(60), "the audit never read the blocks"
        _, err = interrupted(proc)
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("audited "), err
    assert proc.returncode == (0 if summary.endswith(": no findings") else 1), err


def test_tx_show_prints_ids_whole_on_a_narrow_terminal(cli: Cli) -> None:
    # The table cut every id to the terminal's width with "…" (a 60-column
    # pane): ids that could not be copied, or worse, copied cut.
    bob = cli.key("narrow-bob")
    ann = cli.key("narrow-ann")
    tx = cli("tx", "open", "--as", "narrow-ann", "--party", bob).out.strip()
    narrow = Cli({**cli.env, "COLUMNS": "40"})
    lines = [line.split() for line in narrow("tx", "show", tx).out.splitlines()]
    assert ["tx", tx] in lines and ["opener", ann] in lines
    assert ["parties", ann] in lines and [bob] in lines


def test_a_document_is_notarised_fetched_and_checked(cli: Cli, tmp_path: Path) -> None:
    cli.key("counsel")
    nda = tmp_path / "nda.txt"
    nda.write_bytes(b"Mutual NDA between Acme and Northwind, signed 2026-12-03.\n")
    receipt = cli("doc", "notarise", str(nda), "--as", "counsel", "--json").json()
    doc_id = receipt["id"]
    assert receipt["created"] is True
    blob = "&" + base64.b64encode(hashlib.sha256(nda.read_bytes()).digest()).decode() + ".sha256"
    # Fetched, to a file and to a pipe: the bytes, checked against their id.
    out = tmp_path / "fetched.txt"
    cli("doc", "get", blob, "--out", str(out))
    assert out.read_bytes() == nda.read_bytes()
    piped = subprocess.run(
        [CHAINMAIL, "doc", "get", blob], env=cli.env, capture_output=True, timeout=60
    )
    assert piped.returncode == 0 and piped.stdout == nda.read_bytes()
    dashed = subprocess.run(
        [CHAINMAIL, "doc", "get", blob, "--out", "-"],
        env=cli.env,
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert dashed.returncode == 0 and dashed.stdout == nda.read_bytes()
    assert not (tmp_path / "-").exists()
    # Checked once a block covers the doc message: the file is what was signed.
    deadline = time.monotonic() + 30
    while True:
        run = cli("doc", "check", str(nda), doc_id, "--json", check=False)
        if run.code == 0 or time.monotonic() > deadline:
            break
        assert "not_found" in run.err, run.err  # no block covers it yet
        time.sleep(0.2)
    report = run.json()
    assert report["ok"], report
    checks = {c["check"]: c for c in report["checks"]}
    assert "nda.txt" in checks["document"]["detail"] and checks["log inclusion"]["ok"]
    # And when: the time its author signed, and the signed block's, by which it existed.
    assert re.search(
        r"dated 20\d\d-\d\d-\d\dT[\d:.]+Z by its author", checks["doc message"]["detail"]
    )
    assert re.search(
        r"sealed 20\d\d-\d\d-\d\dT[\d:.]+Z: it existed then", checks["log inclusion"]["detail"]
    )
    # One byte changed: the check fails, and says which.
    forged = tmp_path / "forged.txt"
    forged.write_bytes(nda.read_bytes().replace(b"Acme", b"Acne"))
    failed = cli("doc", "check", str(forged), doc_id, check=False)
    assert failed.code == 1
    assert "✗ document: the document hashes to" in failed.out
    assert failed.err.strip().splitlines()[-1].startswith("chainmail: invalid_proof: document")
    # A message that is not a doc.
    other = cli("send", "--as", "counsel", "--type", "post", "--data", '{"text": "hi"}').out
    deadline = time.monotonic() + 30
    while (run := cli("doc", "check", str(nda), other.strip(), check=False)).code != 1:
        assert time.monotonic() < deadline, run.err
        time.sleep(0.2)
    assert "is a 'post' message, not a doc" in run.out


def test_doc_input_errors_are_one_line(cli: Cli, tmp_path: Path) -> None:
    assert_one_line_error(cli("doc", "get", "&nope.sha256", check=False), "invalid_format")
    missing = str(tmp_path / "no-such-file")
    assert_one_line_error(cli("doc", "check", missing, UNKNOWN_TX, check=False), "invalid_format")
    cli.key("clerk")
    run = cli("doc", "notarise", missing, "--as", "clerk", check=False)
    assert run.code != 0 and "Traceback" not in run.err


def test_doc_get_to_a_terminal_is_refused_as_bad_usage(cli: Cli) -> None:
    """Refused before the node is asked, as the caller's mistake (not an internal error)."""
    blob = "&" + base64.b64encode(hashlib.sha256(b"x").digest()).decode() + ".sha256"
    main, tty = os.openpty()
    try:
        proc = subprocess.run(
            [CHAINMAIL, "doc", "get", blob],
            env=cli.env,
            stdout=tty,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(tty)
        os.close(main)
    assert_one_line_error(Run(proc.returncode, "", proc.stderr), "invalid_format")
    assert "would go to the terminal" in proc.stderr


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["verify", "block", "1", "--witness", "bad"], "invalid_format"),
        (["chan", "get-doc", "bad", "--as", "nobody", "--chan", "x"], "invalid_format"),
        (["blocks", "--follow", "--interval", "inf"], "usage"),
        (["audit", "--grace", "inf"], "usage"),
        (["blocks", "--limit", "5000"], "usage"),
        (["witness", "--as", "nobody", "--interval", "inf"], "usage"),
        (["verify", "block", "1", "--bitcoin", "http://\u2603\u2603.invalid"], "invalid_format"),
        (["audit", "--grace", "1", "--bitcoin", "http://\u2603\u2603.invalid"], "invalid_format"),
        (["doc", "notarise", "/dev/zero", "--as", "nobody"], "too_large"),
    ],
)
def test_a_bad_option_value_is_one_line(cli: Cli, command: list[str], code: str) -> None:
    run = cli(*command, check=False)
    assert run.code != 0 and "Traceback" not in run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"chainmail: {code}"), run.err


def test_several_ids_after_one_option_are_one_each_as_design_writes_them(cli: Cli) -> None:
    # DESIGN §9: `chan open --member @ID...`; Click took one value an option
    # ("Got unexpected extra argument").
    ann, ben, cal = cli.key("many-ann"), cli.key("many-ben"), cli.key("many-cal")
    tx = cli("tx", "open", "--as", "many-ann", "--party", ben, cal).out.strip()
    assert cli("tx", "show", tx, "--json").json()["parties"] == [ann, ben, cal]
    chan = cli("chan", "open", "--as", "many-ann", "--member", ben, cal, "--tx", tx).out.strip()
    cli("chan", "send", "--as", "many-ann", "--chan", chan, "--data", '{"px": 1}')
    for reader in ("many-ben", "many-cal"):
        (line,) = cli("chan", "read", "--as", reader, "--chan", chan, "--json").out.splitlines()
        assert json.loads(line)["data"] == {"px": 1}
