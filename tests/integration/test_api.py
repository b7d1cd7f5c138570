"""The HTTP API against a real node process: shapes, every bad input class, auth."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from chainmail import httpsig, ssb
from chainmail.keys import Keypair
from support.feeds import Writer, raw, sign_unchecked
from support.server import Server, running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("node")) as server:
        yield server


@pytest.fixture
def http(node: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=node.url, timeout=10) as client:
        yield client


def enc(ident: str) -> str:
    return quote(ident, safe="")


def post(http: httpx.Client, msg: dict[str, Any] | bytes) -> httpx.Response:
    body = msg if isinstance(msg, bytes) else raw(msg)
    return http.post("/v1/messages", content=body)


def problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    assert body["code"] == code and body["status"] == status and body["detail"]
    return body


def now_ms() -> int:
    return int(time.time() * 1000)


def sizes(http: httpx.Client) -> int:
    """Log entries by anyone but the node (whose blocks arrive on their own schedule)."""
    node_id = http.get("/healthz").json()["id"]
    lines = http.get("/v1/firehose?from=0").content.splitlines()
    return sum(1 for line in lines if orjson.loads(line)["message"]["author"] != node_id)


def test_submit_then_again(http: httpx.Client) -> None:
    w = Writer()
    msg = w.sign({"type": "post", "text": "héllo €"})
    first = post(http, msg)
    assert first.status_code == 201
    body = first.json()
    assert set(body) == {"id", "pipeline", "index"} and body["id"] == ssb.message_id(msg)
    again = post(http, msg)
    assert again.status_code == 200 and again.json() == body
    got = http.get(f"/v1/messages/{enc(body['id'])}").json()
    assert got["message"] == msg and got["index"] == body["index"]
    assert set(got) == {"message", "pipeline", "index", "received", "tx", "block"}
    assert http.get(f"/v1/feeds/{enc(w.id)}/head").json() == {"sequence": 1, "id": body["id"]}
    assert http.get(f"/v1/feeds/{enc(w.id)}").json()["messages"] == [msg]


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda w: b"garbage", 400, "invalid_format"),
        (lambda w: b'{"previous": null, "previous": null}', 400, "invalid_format"),
        (lambda w: b"[]", 400, "invalid_format"),
        (
            lambda w: {
                **w.sign({"type": "post"}),
                "signature": ssb.create(Keypair.generate(), {"type": "post"}, None, 1)["signature"],
            },
            400,
            "invalid_signature",
        ),
        (lambda w: (w.sign({"type": "post"}), w.sign({"type": "post"}))[1], 409, "out_of_order"),
        (lambda w: sign_unchecked(w.keys, {"type": "post", "pad": "x" * 9000}), 413, "too_large"),
        (lambda w: b"x" * 70_000, 413, "too_large"),
        (
            lambda w: w.sign({"type": "tx/note", "tx": "%" + "A" * 43 + "=.sha256", "data": {}}),
            422,
            "unknown_tx",
        ),
        (
            lambda w: w.sign({"type": "tx/open", "parties": [w.id], "deadline": -1}),
            400,
            "invalid_format",
        ),
    ],
    ids=[
        "garbage",
        "duplicate-key",
        "not-object",
        "bad-signature",
        "gap",
        "oversize",
        "huge-body",
        "unknown-tx",
        "bad-schema",
    ],
)
def test_bad_input_gets_its_code_and_changes_nothing(
    http: httpx.Client, make: Any, status: int, code: str
) -> None:
    w = Writer()
    before = sizes(http)
    problem(post(http, make(w)), status, code)
    assert sizes(http) == before
    assert http.get(f"/v1/feeds/{enc(w.id)}/head").status_code == 404


def test_fork_outsider_and_closed(http: httpx.Client) -> None:
    a, b, eve = Writer(), Writer(), Writer()
    opened = post(
        http,
        a.sign(
            {
                "type": "tx/open",
                "parties": [a.id, b.id],
                "deadline": now_ms() + 60_000,
                "finish": "any",
            }
        ),
    )
    tx = opened.json()["id"]
    problem(post(http, eve.sign({"type": "tx/note", "tx": tx, "data": {}})), 403, "not_a_party")
    twin = ssb.create(a.keys, {"type": "post"}, None, 5)
    problem(post(http, twin), 409, "fork")
    assert http.get(f"/v1/feeds/{enc(a.id)}/head").json()["id"] == tx
    assert post(http, b.sign({"type": "tx/finish", "tx": tx})).status_code == 201
    before = sizes(http)
    problem(post(http, a.sign({"type": "tx/note", "tx": tx, "data": {}})), 409, "tx_closed")
    assert sizes(http) == before
    got = http.get(f"/v1/transactions/{enc(tx)}").json()
    assert got["status"] == "finished" and got["parties"] == [a.id, b.id]


def test_batch_results_line_by_line(http: httpx.Client) -> None:
    w = Writer()
    good1, good2 = w.sign({"type": "post"}), w.sign({"type": "post"})
    body = b"\n".join([raw(good1), b"nonsense", raw(good2), raw(good1)]) + b"\n"
    resp = http.post(
        "/v1/messages/batch", content=body, headers={"content-type": "application/x-ndjson"}
    )
    lines = [orjson.loads(x) for x in resp.content.splitlines()]
    assert [x["status"] for x in lines] == [201, 400, 201, 200]
    assert lines[1]["code"] == "invalid_format"
    assert lines[3]["id"] == lines[0]["id"]
    # A blank line within has a result of its own, so results pair with lines by
    # position; newlines after the last message add none.
    good3 = w.sign({"type": "post"})
    body = b"\n".join([raw(good3), b"", b"  ", raw(good1)]) + b"\n\n"
    resp = http.post(
        "/v1/messages/batch", content=body, headers={"content-type": "application/x-ndjson"}
    )
    lines = [orjson.loads(x) for x in resp.content.splitlines()]
    assert [x["status"] for x in lines] == [201, 400, 400, 200]
    assert lines[1]["detail"] == "a blank line, not a message"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/messages", "application/x-www-form-urlencoded"),
        ("/v1/messages", "text/plain"),
        ("/v1/messages", "multipart/form-data; boundary=x"),
        ("/v1/messages/batch", "application/x-www-form-urlencoded"),
        ("/v1/messages/batch", "application/octet-stream"),
    ],
)
def test_a_body_of_another_media_type_is_refused_and_changes_nothing(
    http: httpx.Client, path: str, content_type: str
) -> None:
    w = Writer()
    before = sizes(http)
    resp = http.post(
        path, content=raw(w.sign({"type": "post"})), headers={"content-type": content_type}
    )
    body = problem(resp, 415, "unsupported_media_type")
    assert content_type.split(";")[0] in body["detail"]
    if content_type == "application/x-www-form-urlencoded":
        assert "curl -d" in body["detail"]
    assert sizes(http) == before
    assert http.get(f"/v1/feeds/{enc(w.id)}/head").status_code == 404


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/messages", None),
        ("/v1/messages", "application/json; charset=utf-8"),
        ("/v1/messages", "Application/JSON"),
        ("/v1/messages", "application/vnd.chainmail+json"),
        ("/v1/messages/batch", None),
        ("/v1/messages/batch", "application/jsonl"),
        ("/v1/messages/batch", "application/json"),
    ],
)
def test_json_under_its_usual_names_or_none_is_taken(
    http: httpx.Client, path: str, content_type: str | None
) -> None:
    w = Writer()
    headers = {} if content_type is None else {"content-type": content_type}
    resp = http.post(path, content=raw(w.sign({"type": "post"})), headers=headers)
    assert resp.status_code in (200, 201), resp.text
    assert http.get(f"/v1/feeds/{enc(w.id)}/head").json()["sequence"] == 1


def open_tx_msg(a: Writer, b: Writer) -> dict[str, Any]:
    return a.sign({"type": "tx/open", "parties": [a.id, b.id], "deadline": now_ms() + 60_000})


def test_paging_transactions_by_id_skips_none_opened_in_one_batch(http: httpx.Client) -> None:
    a, b = Writer(), Writer()
    opens = [open_tx_msg(a, b) for _ in range(7)]
    resp = http.post(
        "/v1/messages/batch",
        content=b"\n".join(raw(m) for m in opens),
        headers={"content-type": "application/x-ndjson"},
    )
    assert [orjson.loads(x)["status"] for x in resp.content.splitlines()] == [201] * 7
    everything = http.get(f"/v1/transactions?party={enc(a.id)}").json()["transactions"]
    assert len({t["opened"] for t in everything}) == 1  # one batch: one node time
    pages: list[str] = []
    cursor: str | None = None
    while True:
        query = f"party={enc(a.id)}&limit=3" + ("" if cursor is None else f"&before={enc(cursor)}")
        page = http.get(f"/v1/transactions?{query}").json()["transactions"]
        if not page:
            break
        pages.extend(t["tx"] for t in page)
        cursor = page[-1]["tx"]
    assert pages == [t["tx"] for t in everything] and len(set(pages)) == 7
    # A time still works as before; an unknown cursor is a clear 404.
    assert http.get(f"/v1/transactions?party={enc(a.id)}&before=1").json() == {"transactions": []}
    unknown = "%" + "A" * 43 + "=.sha256"
    problem(http.get(f"/v1/transactions?before={enc(unknown)}"), 404, "not_found")
    problem(http.get("/v1/transactions?before=%25nope"), 400, "invalid_format")


def test_a_name_search_too_long_is_refused_not_a_500(http: httpx.Client) -> None:
    body = problem(http.get("/v1/identities", params={"name": "a" * 60_000}), 413, "too_large")
    assert "at most 1000" in body["detail"]
    assert http.get("/v1/identities", params={"name": "a" * 1000}).status_code == 200


def test_not_found_is_a_problem(http: httpx.Client) -> None:
    problem(http.get(f"/v1/messages/{enc('%' + 'A' * 43 + '=.sha256')}"), 404, "not_found")
    problem(http.get("/v1/blocks/999999"), 404, "not_found")
    problem(http.get("/v1/nowhere"), 404, "not_found")
    problem(http.get("/v1/log/7/checkpoint"), 404, "not_found")
    problem(http.get("/v1/blocks?limit=abc"), 400, "invalid_format")
    for query in ("from=0&to=1", "to=1", "from=2&to=1", "from=1&to=99999", "from=x"):
        problem(http.get(f"/v1/log/0/consistency?{query}"), 400, "invalid_format")
    problem(http.get("/v1/log/7/consistency?from=1"), 404, "not_found")
    missing = problem(http.get("/v1/log/0/consistency?to=1"), 400, "invalid_format")
    assert missing["detail"] == "missing query parameter from (the older tree size)"


def test_a_number_past_what_sqlite_holds_is_a_400_not_a_500(http: httpx.Client) -> None:
    huge = str(2**63)
    for path in (
        f"/v1/blocks?after={huge}",
        f"/v1/blocks/{huge}",
        f"/v1/transactions?before={huge}",
        f"/v1/firehose?from={huge}",
    ):
        problem(http.get(path), 400, "invalid_format")
    assert http.get(f"/v1/blocks?after={2**63 - 1}").json() == {"blocks": []}
    # Past the 4,300 digits Python's int() takes, and zeros before a fine number.
    long = "1" * 5000
    for path in (f"/v1/blocks?after={long}", f"/v1/firehose?from={long}", f"/v1/blocks/{long}"):
        problem(http.get(path), 400, "invalid_format")
    assert http.get("/v1/blocks?after=" + "0" * 30 + "1").status_code == 200
    assert http.get("/healthz").status_code == 200  # the connection is still good


def test_a_websocket_firehose_from_a_huge_index_is_a_problem(node: Server) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = node.url.replace("http://", "ws://") + "/v1/firehose?from=" + "9" * 5000
    with pytest.raises(InvalidStatus) as refused, connect(url):
        pass
    response = refused.value.response
    assert response.status_code == 400
    assert orjson.loads(response.body)["code"] == "invalid_format"


def test_long_listings_stream_every_item_in_order(http: httpx.Client) -> None:
    """Past one page (256 rows) an answer is streamed page by page: the same
    JSON, every item once, in order, up to the limit."""
    w = Writer()
    body = b"\n".join(raw(w.sign({"type": "post", "n": n})) for n in range(600))
    resp = http.post(
        "/v1/messages/batch", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert resp.status_code == 200 and resp.text.count('"status":201') == 600
    for after, limit, want in (
        (0, 600, range(600)),
        (10, 300, range(10, 310)),
        (0, 10_000, range(600)),
    ):
        got = http.get(f"/v1/feeds/{enc(w.id)}?after={after}&limit={limit}").json()["messages"]
        assert [m["content"]["n"] for m in got] == list(want)
        assert [m["sequence"] for m in got] == [n + 1 for n in want]
    lines = http.get(f"/v1/firehose?from={sizes(http) - 600}&follow=false").content.splitlines()
    assert len(lines) >= 600 and all(orjson.loads(x)["index"] >= 0 for x in lines)

    # An inbox of 300 deliveries, read whole and then from the middle by limit.
    a, b = Writer(), Writer()
    deadline = now_ms() + 600_000
    opens = [
        a.sign({"type": "tx/open", "parties": [a.id, b.id], "deadline": deadline})
        for _ in range(300)
    ]
    resp = http.post(
        "/v1/messages/batch",
        content=b"\n".join(raw(m) for m in opens),
        headers={"content-type": "application/x-ndjson"},
    )
    assert resp.text.count('"status":201') == 300
    entries = signed_get(http, b.keys, "/v1/inbox", "limit=1000").json()["entries"]
    assert [e["id"] for e in entries] == [ssb.message_id(m) for m in opens]
    deliveries = [e["delivery"] for e in entries]
    assert deliveries == sorted(set(deliveries))
    assert len(signed_get(http, b.keys, "/v1/inbox", "limit=257").json()["entries"]) == 257


@pytest.mark.parametrize(
    "path",
    [
        "/v1/messages/garbage",
        "/v1/messages/garbage/proof",
        f"/v1/messages/{enc('%' + 'A' * 43 + '=.sha512')}",
        "/v1/transactions/garbage",
        "/v1/transactions?party=bogus",
        "/v1/feeds/garbage/head",
        "/v1/blocks/1/records/garbage/proof",
    ],
)
def test_a_malformed_id_is_a_400_not_a_404(http: httpx.Client, path: str) -> None:
    body = problem(http.get(path), 400, "invalid_format")
    assert body["title"] == "Invalid request"


@pytest.mark.parametrize("value", ["1_0", "+3", enc("\u0663"), "1e3", " 1"])
def test_a_number_is_plain_ascii_digits(http: httpx.Client, value: str) -> None:
    body = problem(http.get(f"/v1/blocks?after={value}"), 400, "invalid_format")
    assert body["detail"].startswith("after: expected an integer")


def test_follow_is_true_or_false(http: httpx.Client) -> None:
    problem(http.get("/v1/firehose?follow=maybe"), 400, "invalid_format")
    assert http.get("/v1/firehose?follow=false").status_code == 200


def test_websocket_paths_over_plain_http_say_so(http: httpx.Client) -> None:
    for path in ("/v1/ingest", "/v1/inbox/stream"):
        assert "WebSocket" in problem(http.get(path), 400, "invalid_format")["detail"]
    resp = http.get("/v1/messages/batch")
    problem(resp, 405, "invalid_format")
    assert resp.headers["Allow"] == "POST"


def test_a_long_bad_id_is_not_echoed_whole(http: httpx.Client) -> None:
    body = problem(http.get("/v1/messages/" + "x" * 30_000), 400, "invalid_format")
    assert len(body["detail"]) < 200


def test_healthz_answers_head_for_load_balancers(http: httpx.Client) -> None:
    resp = http.head("/healthz")
    assert resp.status_code == 200 and resp.content == b""


def test_a_wrong_method_is_a_405_problem_with_allow(http: httpx.Client) -> None:
    body = problem(http.post("/v1/blocks"), 405, "invalid_format")
    assert body["title"] == "Method Not Allowed"
    assert http.post("/v1/blocks").headers["Allow"] == "GET"


def test_consistency_runs_to_the_log_size_when_to_is_left_out(http: httpx.Client) -> None:
    w = Writer()
    for n in range(2):
        assert post(http, w.sign({"type": "post", "n": n})).status_code == 201
    size = int(http.get("/v1/log/0/checkpoint").text.splitlines()[1])
    # The node's blocks grow the log meanwhile: the answer names the size it ran
    # to, at least the one read before, and is the proof to that size.
    got = http.get("/v1/log/0/consistency?from=1").json()
    assert got["from"] == 1 and got["to"] >= size
    assert http.get(f"/v1/log/0/consistency?from=1&to={got['to']}").json() == got
    # Past the log: the request is wrong, not a proof.
    body = problem(http.get("/v1/log/0/consistency?from=999999999"), 400, "invalid_format")
    assert body["detail"].startswith("from: expected between 1 and")


def signed_get(
    http: httpx.Client,
    keys: Keypair,
    path: str,
    query: str = "",
    created: int | None = None,
    nonce: str | None = None,
) -> httpx.Response:
    headers = httpsig.sign_request(
        keys, "GET", path, query, created=created or int(time.time()), nonce=nonce
    )
    return http.get(path + (f"?{query}" if query else ""), headers=headers)


def test_inbox_authentication(http: httpx.Client) -> None:
    a, b = Writer(), Writer()
    post(http, a.sign({"type": "tx/open", "parties": [a.id, b.id], "deadline": now_ms() + 60_000}))
    problem(http.get("/v1/inbox"), 401, "unauthorized")
    problem(
        http.get("/v1/inbox", headers={"Signature-Input": "junk", "Signature": "junk"}),
        401,
        "unauthorized",
    )
    problem(
        signed_get(http, b.keys, "/v1/inbox", "limit=5", created=int(time.time()) - 300),
        401,
        "unauthorized",
    )
    deadline = time.monotonic() + 5
    while not signed_get(http, b.keys, "/v1/inbox", "limit=5").json()["entries"]:
        assert time.monotonic() < deadline, "delivery never arrived"
        time.sleep(0.02)
    ok = signed_get(http, b.keys, "/v1/inbox", "limit=5", nonce="n-1")
    assert ok.status_code == 200, ok.text
    (entry,) = ok.json()["entries"]
    assert entry["message"]["author"] == a.id and entry["delivery"] > 0
    problem(signed_get(http, b.keys, "/v1/inbox", "limit=5", nonce="n-1"), 401, "unauthorized")
    # Signed for another query than the one sent.
    headers = httpsig.sign_request(b.keys, "GET", "/v1/inbox", "limit=5", created=int(time.time()))
    problem(http.get("/v1/inbox?limit=500", headers=headers), 401, "unauthorized")
    # Ack with a signed POST, then the entry is gone; the other party's inbox is untouched.
    path = "/v1/inbox/ack"
    headers = httpsig.sign_request(b.keys, "POST", path, "", created=int(time.time()))
    form = {**headers, "content-type": "application/x-www-form-urlencoded"}
    refused = http.post(path, content=orjson.dumps({"ids": [entry["id"]]}), headers=form)
    problem(refused, 415, "unsupported_media_type")
    assert len(signed_get(http, b.keys, "/v1/inbox").json()["entries"]) == 1
    headers = httpsig.sign_request(b.keys, "POST", path, "", created=int(time.time()))
    acked = http.post(path, content=orjson.dumps({"ids": [entry["id"]]}), headers=headers)
    assert acked.json() == {"acked": 1}
    assert signed_get(http, b.keys, "/v1/inbox").json()["entries"] == []
    headers = httpsig.sign_request(b.keys, "POST", path, "", created=int(time.time()))
    bad = http.post(path, content=orjson.dumps({"ids": ["garbage"]}), headers=headers)
    assert "not a message id" in problem(bad, 400, "invalid_format")["detail"]


def test_an_unsigned_ack_is_refused_before_its_body_is_read(http: httpx.Client) -> None:
    """The signature (a covered Content-Digest included) needs only the headers: an ack
    nobody signed is a 401 whatever its body, not a read of up to 4 MiB first."""
    big = b'{"ids": []}' + b" " * (5 * 1024 * 1024)
    problem(http.post("/v1/inbox/ack", content=big), 401, "unauthorized")
    junk = {"Signature-Input": "junk", "Signature": "junk", "content-type": "text/plain"}
    problem(http.post("/v1/inbox/ack", content=big, headers=junk), 401, "unauthorized")
    # Signed, the body is read and held to its limit, and then to the digest it signed.
    keys = Writer().keys
    path = "/v1/inbox/ack"
    headers = httpsig.sign_request(keys, "POST", path, "", created=int(time.time()), body=big)
    problem(http.post(path, content=big, headers=headers), 413, "too_large")
    body = orjson.dumps({"ids": []})
    headers = httpsig.sign_request(keys, "POST", path, "", created=int(time.time()), body=body)
    changed = orjson.dumps({"ids": [], "x": 1})
    refused = problem(http.post(path, content=changed, headers=headers), 401, "unauthorized")
    assert "not the digest of the body" in refused["detail"]


def test_blob_round_trip(http: httpx.Client) -> None:
    data = b"%PDF-1.7 NDA between A and B"
    put = http.put("/v1/blobs", content=data)
    assert put.status_code in (200, 201)
    bid = put.json()["id"]
    assert http.get(f"/v1/blobs/{enc(bid)}").content == data
    problem(http.get("/v1/blobs/notablob"), 400, "invalid_format")


def test_firehose_from_index(http: httpx.Client) -> None:
    w = Writer()
    ids = [post(http, w.sign({"type": "post", "n": i})).json()["id"] for i in range(3)]
    start = http.get(f"/v1/messages/{enc(ids[0])}").json()["index"]
    lines = [orjson.loads(x) for x in http.get(f"/v1/firehose?from={start}").content.splitlines()]
    mine = [x for x in lines if x["message"]["author"] == w.id]
    assert [x["id"] for x in mine] == ids  # blocks by the node may interleave
    assert lines[0]["id"] == ids[0] and lines[0]["message"]["content"]["n"] == 0
    assert set(lines[0]) == {"pipeline", "index", "id", "message"}


def test_openapi_and_metrics(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    for path in ("/v1/messages", "/v1/messages/batch", "/v1/inbox", "/v1/firehose", "/v1/blobs"):
        assert path in spec["paths"], path
    post(http, Writer().sign({"type": "post", "text": "counted"}))
    text = http.get("/metrics").text
    assert "chainmail_messages_accepted_total" in text
    # Ingest stage histograms: every accepted or refused message was timed.
    accepted = float(text.split("\nchainmail_messages_accepted_total ", 1)[1].split("\n", 1)[0])
    total = float(
        text.split('\nchainmail_ingest_stage_seconds_count{stage="total"} ', 1)[1].split("\n")[0]
    )
    assert total >= accepted > 0
    assert 'chainmail_ingest_stage_seconds_bucket{stage="verify",le="+Inf"}' in text
    assert http.get("/docs").status_code == 200


def test_checkpoint_is_signed(http: httpx.Client) -> None:
    from chainmail import checkpoint

    health = http.get("/healthz").json()
    text = http.get("/v1/log/0/checkpoint").text
    cp = checkpoint.verify_checkpoint(text, health["verifier_key"])
    assert cp.origin == health["origin"] + "/0" and cp.size >= 0


def test_node_data_dir_has_key_with_safe_mode(node: Server) -> None:
    mode = (node.data / "node-secret.json").stat().st_mode & 0o777
    assert mode == 0o600


def test_percent_encoded_ids_with_slash_and_plus(http: httpx.Client) -> None:
    # Find a message whose id holds "/" or "+", which must be encoded in paths.
    w = Writer()
    for i in range(50):
        msg = w.sign({"type": "post", "n": i})
        body = post(http, msg).json()
        if "/" in body["id"] or "+" in body["id"]:
            assert http.get(f"/v1/messages/{enc(body['id'])}").status_code == 200
            return
    pytest.fail("no id with / or + in 50 messages")


def _unused(_: Path) -> None:
    return None


def test_several_pipelines(tmp_path: Path) -> None:
    with (
        running(tmp_path / "p2", extra=("--pipelines", "2")) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        # Feeds land in pipelines by a hash of their id: write until both have
        # some (8 fixed writers all hashed to one pipeline 1 run in 128).
        placed: dict[str, int] = {}
        for _ in range(64):
            body = post(http, Writer().sign({"type": "post"})).json()
            placed[body["id"]] = body["pipeline"]
            if len(placed) >= 8 and set(placed.values()) == {0, 1}:
                break
        assert set(placed.values()) == {0, 1}
        problem(http.get("/v1/firehose?from=0"), 400, "invalid_format")
        seen = {}
        for p in (0, 1):
            for line in http.get(f"/v1/firehose?from=0&pipeline={p}").content.splitlines():
                entry = orjson.loads(line)
                seen[entry["id"]] = entry["pipeline"]
        assert all(seen[mid] == p for mid, p in placed.items())
        # Past the end is past the end, however far: not a pipeline's first entries again.
        for p in (0, 1):
            for start in (2**40, 2**40 + 1, 2**41):
                past = http.get(f"/v1/firehose?from={start}&pipeline={p}")
                assert past.status_code == 200 and past.content == b"", (p, start, past.text[:200])
        assert http.get("/v1/log/1/checkpoint").status_code == 200


def test_a_node_that_requires_the_body_digest_refuses_an_ack_without_it(
    tmp_path: Path,
) -> None:
    """``serve --require-content-digest``: the SDK's acks (which sign the body's
    Content-Digest) pass; one signed by DESIGN §8's components alone, or whose
    body was changed on the way, is refused and acks nothing."""
    from chainmail.client import Client

    a, b = Writer(), Writer()
    with (
        running(tmp_path / "node", extra=("--require-content-digest",)) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        post(
            http,
            a.sign({"type": "tx/open", "parties": [a.id, b.id], "deadline": now_ms() + 60_000}),
        )
        deadline = time.monotonic() + 5
        while not (entries := signed_get(http, b.keys, "/v1/inbox").json()["entries"]):
            assert time.monotonic() < deadline, "delivery never arrived"
            time.sleep(0.02)
        ids = [entries[0]["id"]]
        path = "/v1/inbox/ack"
        body = orjson.dumps({"ids": ids})
        plain = httpsig.sign_request(b.keys, "POST", path, "", created=int(time.time()))
        refused = problem(http.post(path, content=body, headers=plain), 401, "unauthorized")
        assert "content-digest" in refused["detail"]
        signed = httpsig.sign_request(b.keys, "POST", path, "", created=int(time.time()), body=body)
        changed = orjson.dumps({"ids": [*ids, ids[0]]})
        refused = problem(http.post(path, content=changed, headers=signed), 401, "unauthorized")
        assert "not the digest of the body" in refused["detail"]
        assert len(signed_get(http, b.keys, "/v1/inbox").json()["entries"]) == 1
        # GETs have no body: the plain profile is still enough for them.
        assert signed_get(http, b.keys, "/v1/inbox").status_code == 200
        with Client(server.url, keys=b.keys) as client:
            assert client.ack(ids) == 1
        assert signed_get(http, b.keys, "/v1/inbox").json()["entries"] == []


def test_one_identity_filling_the_replay_cache_locks_out_itself_alone(tmp_path: Path) -> None:
    """``serve --replay-cache``: when the signed requests seen in the replay
    window fill it, the identity that sent most of them is refused (429 with
    Retry-After), others still get in, and none of its requests replays."""
    flooder, other = Keypair.generate(), Keypair.generate()
    with (
        running(tmp_path / "node", extra=("--replay-cache", "8")) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        sent = []
        for i in range(8):
            created = int(time.time())
            sent.append((created, f"flood-{i}"))
            ok = signed_get(http, flooder, "/v1/inbox", created=created, nonce=f"flood-{i}")
            assert ok.status_code == 200, ok.text
        # Full: the other identity still gets in, as the flooder's older half makes room.
        ok = signed_get(http, other, "/v1/inbox", nonce="other-0")
        assert ok.status_code == 200, ok.text
        # The flooder's dropped requests do not become replayable: refused, as is a new one.
        created, nonce = sent[0]
        refused = problem(
            signed_get(http, flooder, "/v1/inbox", created=created, nonce=nonce),
            429,
            "rate_limited",
        )
        assert "largest share of the signed requests" in refused["detail"]
        refused_new = signed_get(http, flooder, "/v1/inbox", nonce="flood-new")
        assert refused_new.status_code == 429 and int(refused_new.headers["retry-after"]) >= 1
        problem(signed_get(http, other, "/v1/inbox", nonce="other-0"), 401, "unauthorized")
        assert signed_get(http, other, "/v1/inbox", nonce="other-1").status_code == 200
        # An inbox stream's signed opening is refused the same way, before the upgrade.
        path = "/v1/inbox/stream"
        opening = httpsig.sign_request(flooder, "GET", path, "", created=int(time.time()))
        denied = _ws_denial(server.url.replace("http://", "ws://") + path, opening)
        assert denied.status_code == 429
        assert orjson.loads(denied.body)["code"] == "rate_limited"


def test_many_identities_from_one_address_cannot_fill_the_replay_cache(tmp_path: Path) -> None:
    """Past half of ``--replay-cache``, an address whose identities hold a hundredth
    of it is refused (429) for another signed request; other addresses, and this
    machine's own clients, still get in. The address is the one a proxy on the
    node's machine forwards for (``X-Forwarded-For``, trusted from loopback)."""

    def from_(address: str, keys: Keypair) -> httpx.Response:
        headers = httpsig.sign_request(keys, "GET", "/v1/inbox", "", created=int(time.time()))
        return client.get("/v1/inbox", headers={**headers, "X-Forwarded-For": address})

    with (
        running(tmp_path / "node", extra=("--replay-cache", "200")) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        for i in range(98):  # one each from 98 addresses: 98 of the 100 under pressure
            ok = from_(f"198.51.100.{i}", Keypair.generate())
            assert ok.status_code == 200, ok.text
        flood = [Keypair.generate() for _ in range(3)]
        for keys in flood[:2]:  # its share is 2: taken before the cache is half full
            assert from_("192.0.2.7", keys).status_code == 200
        refused = problem(from_("192.0.2.7", flood[2]), 429, "rate_limited")
        assert "from this address" in refused["detail"]
        # Its IPv6 neighbours on the same /64 are the same source; another is not.
        assert from_("2001:db8::1", Keypair.generate()).status_code == 200
        assert from_("2001:db8::2", Keypair.generate()).status_code == 200
        problem(from_("2001:db8::3", Keypair.generate()), 429, "rate_limited")
        assert from_("2001:db8:0:1::3", Keypair.generate()).status_code == 200
        assert from_("198.51.100.200", Keypair.generate()).status_code == 200
        assert signed_get(client, Keypair.generate(), "/v1/inbox").status_code == 200


def _ws_denial(url: str, headers: dict[str, str]) -> Any:
    """The HTTP response refusing a WebSocket opening (``websockets``' ``Response``)."""
    import asyncio

    import websockets
    import websockets.exceptions

    async def run() -> Any:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(url, additional_headers=headers):
                pass
        return refused.value.response

    return asyncio.run(run())


def test_serve_refuses_an_empty_replay_cache(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chainmail",
            "serve",
            "--data",
            str(tmp_path),
            "--replay-cache",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].endswith("expected 1 or more requests, got 0")


def test_connections_that_announce_bodies_and_send_none_lock_nobody_out(tmp_path: Path) -> None:
    """Headers declaring the largest batch, then silence, on enough connections to
    cover the whole body budget: others still submit; the silent ones are answered
    408 ``request_timeout`` after ``serve --body-idle-timeout``."""
    import socket

    with (
        running(tmp_path / "node", extra=("--body-idle-timeout", "2")) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        port = int(server.url.rsplit(":", 1)[1])
        silent = []
        for _ in range(40):  # 40 × 16 MiB > the 512 MiB default budget
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            conn.sendall(
                b"POST /v1/messages/batch HTTP/1.1\r\nHost: node\r\n"
                b"Content-Type: application/x-ndjson\r\nContent-Length: 16777216\r\n\r\n"
            )
            silent.append(conn)
        try:
            time.sleep(0.3)  # the node has their headers
            w = Writer()
            for i in range(3):
                ok = post(http, w.sign({"type": "post", "text": f"still open {i}"}))
                assert ok.status_code == 201, ok.text
            started = time.monotonic()
            answer = silent[0].recv(65536)
            waited = time.monotonic() - started
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            head, _, body = answer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:  # the head and the body may come apart
                more = silent[0].recv(65536)
                assert more, "the connection closed before the whole problem document"
                body += more
            assert b"application/problem+json" in head
            assert orjson.loads(body)["code"] == "request_timeout"
            assert waited < 5, waited
        finally:
            for conn in silent:
                conn.close()


@pytest.mark.parametrize("option", ["--body-idle-timeout", "--block-interval"])
def test_serve_refuses_a_period_that_is_not_a_positive_number(tmp_path: Path, option: str) -> None:
    import subprocess
    import sys

    for value in ("0", "-1", "nan") + (("inf",) if option == "--block-interval" else ()):
        args = ["serve", "--data", str(tmp_path), option, value]
        done = subprocess.run(
            [sys.executable, "-m", "chainmail", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        last = done.stderr.strip().splitlines()[-1]
        assert f"{option}: expected a positive number" in last, last
