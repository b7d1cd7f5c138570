"""The settlement story, end to end against a node (``chainmail demo``).

A buyer and a seller agree a trade (1,000 MEGA at 12.50 USD); their banks
settle it delivery versus payment, the buyer's bank sending its settlement
instructions as a private document; a request for quote times out; an NDA
is notarised. Then the demo waits for the block and verifies every proof
locally, trusting nothing the node says.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final

import httpx
from rich.console import Console
from rich.markup import escape

from chainmail import chandocs
from chainmail.client import Client
from chainmail.errors import DecryptionError, Error, OperationalError
from chainmail.ids import is_feed_id
from chainmail.keys import Keypair
from chainmail.verify import Report

__all__ = ["DemoResult", "embedded_node", "run_demo"]

#: How long the unanswered request for quote stays open.
QUOTE_DEADLINE: Final = timedelta(seconds=2)
NDA: Final = (
    b"MUTUAL NON-DISCLOSURE AGREEMENT\n"
    b"between Acme Asset Management and Northwind Capital, dated 22 November 2026.\n"
    b"1. Each party keeps the other's trading intentions confidential.\n"
)

#: The buyer's bank's standing settlement instructions: a document for the buy side only.
SSI: Final = (
    b"STANDING SETTLEMENT INSTRUCTIONS - First Harbor Bank\n"
    b"Cash: USD to account 0042-7, ABA 021000021.\n"
    b"Securities: receive MEGA free of payment into DTC participant 0901.\n"
)


@dataclass
class DemoResult:
    trade_tx: str
    dvp_tx: str
    quote_tx: str
    nda_message: str
    checks: int


@contextlib.contextmanager
def embedded_node(block_interval: float = 0.5) -> Iterator[str]:
    """Start a throw-away node (``chainmail serve``) in a temp dir; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="chainmail-demo-") as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chainmail",
                "serve",
                "--data",
                str(Path(tmp) / "node"),
                "--port",
                str(port),
                "--block-interval",
                str(block_interval),
                "--quiet",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(os.environ),
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise OperationalError(f"the embedded node exited: {err.strip()[-300:]}")
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise OperationalError("the embedded node did not start within 60 s")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_for(what: str, ready: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise OperationalError(f"timed out waiting for {what}")
        time.sleep(0.1)


def run_demo(node: str, console: Console | None = None, *, verbose: bool = False) -> DemoResult:
    """Run the story against ``node``; raises a chainmail ``Error`` if any step fails."""
    out = console or Console()
    say = out.print
    with Client(node) as probe:
        node_id = probe.health().get("id")
    if not isinstance(node_id, str) or not is_feed_id(node_id):
        raise Error(
            f"{node} is not a chainmail node: its /healthz names no node id", code="invalid_format"
        )
    say(f"[bold]chainmail demo[/] against {node}  (node {node_id[:12]}…)\n")

    names = {
        "buyer": "Acme Asset Management (buyer)",
        "seller": "Northwind Capital (seller)",
        "buyer_bank": "First Harbor Bank (buyer's custodian)",
        "seller_bank": "Meridian Trust (seller's custodian)",
        "regulator": "Financial Conduct Office (regulator)",
    }
    keys = {role: Keypair.generate() for role in names}
    clients = {role: Client(node, keys[role], node_id=node_id) for role in names}
    buyer, seller = clients["buyer"], clients["seller"]
    bbank, sbank = clients["buyer_bank"], clients["seller_bank"]
    regulator = clients["regulator"]
    try:
        say("[bold]1. Identities[/] — each participant signs into its own append-only feed")
        for role, label in names.items():
            receipt = clients[role].publish(
                {"type": "about", "about": keys[role].id, "name": label.split(" (")[0]}
            )
            say(f"   {label:40} {keys[role].id[:14]}…  feed #{receipt.index}")

        say("\n[bold]2. The trade[/] — buyer and seller agree; price and instructions stay private")
        trade = buyer.open_tx(
            [seller.id, bbank.id, sbank.id],
            timedelta(minutes=5),
            subject="MEGA equity trade",
            data={"instrument": "MEGA", "settlement": "T+1"},
        )
        say(f"   buyer opens tx {trade[:16]}… with the seller and both banks (no price in public)")
        buy_side = buyer.open_channel([bbank.id], tx=trade, label="buy-side")
        sell_side = seller.open_channel([sbank.id], tx=trade, label="sell-side")
        say("   two encrypted channels: buy-side (buyer + its bank), sell-side (seller + its bank)")
        private = [
            (
                buyer,
                buy_side,
                {
                    "order": "BUY 1,000 MEGA at 12.50 USD",
                    "pay": "12,500.00 USD from account 0042-7",
                },
            ),
            (bbank, buy_side, {"ack": "12,500.00 USD earmarked"}),
            (
                seller,
                sell_side,
                {
                    "order": "SELL 1,000 MEGA at 12.50 USD",
                    "deliver": "1,000 MEGA from custody account DTC-1138",
                },
            ),
            (sbank, sell_side, {"ack": "1,000 MEGA earmarked"}),
        ]
        for client, chan, data in private:
            client.channel_send(chan, data)
        ssi = bbank.channel_send_document(
            buy_side, SSI, name="ssi-first-harbor.txt", mime="text/plain"
        )
        about, got = buyer.channel_document(buy_side, ssi.message)
        assert got == SSI
        say(
            "   the buyer's bank sends its settlement instructions as a private document:\n"
            f"   the buyer decrypts {about.name} ({about.size} bytes) and checks its SHA-256;"
            f" others see {chandocs.sealed_size(about.size)} bytes of ciphertext, notarised"
        )
        say(
            f"   buy-side:  {len(bbank.channel_read(buy_side))} messages the buyer's bank can read; "
            f"the seller {_blind(seller, buy_side)}"
        )
        say(
            f"   sell-side: {len(sbank.channel_read(sell_side))} messages the seller's bank can "
            f"read; the buyer {_blind(buyer, sell_side)}"
        )
        seller.note(trade, {"text": "Confirmed: we sell 1,000 MEGA at the agreed price."})
        say("   seller (in public): “Confirmed: we sell 1,000 MEGA at the agreed price.”")
        for client in (seller, buyer, bbank, sbank):
            client.finish(trade)
        say(
            f"   all four parties finish → status [green]{escape(str(buyer.tx(trade)['status']))}[/]"
        )

        say("\n[bold]3. Settlement[/] — the banks negotiate delivery versus payment")
        dvp = bbank.open_tx(
            [sbank.id],
            timedelta(minutes=5),
            subject="DvP for trade " + trade[:12],
            data={"trade": trade, "text": "I have 12,500 dollars to trade for 1,000 MEGA."},
        )
        say("   buyer's bank:  “I have 12,500 dollars to trade for 1,000 MEGA.”")
        inbox = sbank.inbox()
        assert any(e.id == dvp for e in inbox)
        say(
            f"   seller's bank finds it in its inbox (signed request) and acknowledges "
            f"{len(inbox)} deliveries"
        )
        sbank.ack([e.id for e in inbox])
        lines = [
            (sbank, "I have the stock. I will transfer it if you confirm the money."),
            (bbank, "OK. I transferred."),
            (sbank, "Transaction finished."),
        ]
        for client, text in lines:
            client.note(dvp, {"text": text})
            who = "seller's bank" if client is sbank else "buyer's bank "
            say(f"   {who}: “{text}”")
        sbank.finish(dvp)
        bbank.finish(dvp)
        say(f"   both banks finish → status [green]{escape(str(bbank.tx(dvp)['status']))}[/]")

        say("\n[bold]4. A request for quote nobody answers[/] — it times out")
        quote = buyer.open_tx(
            [seller.id],
            QUOTE_DEADLINE,
            subject="RFQ: 5,000 MEGA",
            data={"instrument": "MEGA", "quantity": 5000},
        )
        say(f"   buyer opens an RFQ with a {QUOTE_DEADLINE.seconds} s deadline…")
        _wait_for("the RFQ to time out", lambda: buyer.tx(quote)["status"] == "timed_out")
        say("   the node's clock passes the deadline → status [yellow]timed_out[/]")
        try:
            seller.note(quote, {"text": "Sorry, late: 12.60?"})
        except Error as exc:
            say(f"   a late answer is refused: [red]{escape(exc.code)}[/]")

        say("\n[bold]5. Notarising the NDA[/] — a message to the future")
        nda = buyer.notarise(NDA, name="nda-acme-northwind.txt", mime="text/plain")
        say(
            f"   document stored as a blob; its `doc` message {nda.id[:16]}… is at log index {nda.index}"
        )

        say("\n[bold]6. Waiting for the block[/]")
        _wait_for(
            "the block sealing all three transactions",
            lambda: all(buyer.tx(t)["block"] is not None for t in (trade, dvp, quote)),
        )
        _wait_for("a block covering the NDA", lambda: _covered(buyer, nda.id))
        heights = sorted({buyer.tx(t)["block"] for t in (trade, dvp, quote)})
        say(f"   sealed in block(s) {', '.join(map(str, heights))}")

        say("\n[bold]7. The regulator[/] — both sides open their channels to it")
        buyer.channel_share(buy_side, [regulator.id])
        seller.channel_share(sell_side, [regulator.id])
        for label, chan in (("buy-side", buy_side), ("sell-side", sell_side)):
            for opened in regulator.channel_read(chan):
                who = next(r for r, k in keys.items() if k.id == opened.author)
                author = names[who].split(" (")[0]
                if chandocs.read_pointer(opened.data) is not None:
                    doc, content = regulator.channel_document(chan, opened.id)
                    said = f"document {doc.name}, {len(content)} bytes, checked"
                else:
                    said = json.dumps(opened.data, ensure_ascii=False)
                say(f"   regulator reads {label} ({author}): {escape(said)}")

        say("\n[bold]8. Verifying locally[/] — nothing the node says is taken on trust")
        checks = 0
        reports: list[tuple[str, Report]] = [
            ("trade", buyer.verify_tx(trade, node_id=node_id)),
            ("settlement", buyer.verify_tx(dvp, node_id=node_id)),
            ("timed-out RFQ", buyer.verify_tx(quote, node_id=node_id)),
            ("NDA document", buyer.verify_document(NDA, nda.id, node_id=node_id)),
        ]
        reports += [(f"block {h}", buyer.verify_block(h, node_id=node_id)) for h in heights]
        reports.append(("checkpoint", buyer.verify_checkpoint(0, node_id=node_id)))
        for label, report in reports:
            checks += len(report)
            say(f"   [green]✓[/] {label}: {len(report)} checks")
            if verbose:
                for check in report:
                    say(f"       [dim]✓ {escape(check.check)}: {escape(check.detail)}[/]")
        nda_back = buyer.get_blob(nda_blob_id(buyer, nda.id))
        assert nda_back == NDA
        ssi_report = buyer.verify_message(ssi.notarised, node_id=node_id)
        checks += len(ssi_report)
        say(
            f"   [green]✓[/] instructions' notarisation: {len(ssi_report)} checks"
            " (the ciphertext's doc, in a block)"
        )
        say(f"\n[bold green]Settled and proven.[/] {checks} independent checks passed.")
        return DemoResult(trade, dvp, quote, nda.id, checks)
    finally:
        for client in clients.values():
            client.close()


def _covered(client: Client, msg_id: str) -> bool:
    return client.message(msg_id).get("block") is not None


def nda_blob_id(client: Client, msg_id: str) -> str:
    content = client.message(msg_id)["message"]["content"]
    return str(content["blob"])


def _blind(outsider: Client, chan: str) -> str:
    """What an outsider makes of a channel: nothing, and told why."""
    try:
        return f"can read {len(outsider.channel_read(chan))}"
    except DecryptionError:
        return "holds no key to it: cannot read any"
