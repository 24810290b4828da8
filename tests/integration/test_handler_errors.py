"""Bad handler input against our condure (reference 4.1, 4.5-4.9, 7).

Packets condure cannot use are dropped and the session goes on: a later
correct packet with the same seq is accepted. Packets that break the
session's protocol (wrong seq, unknown or unexpected type, ``from`` over 64
bytes) abort it: the client connection is closed without further bytes and
the handler gets nothing. Condure-side failures caused by the handler's
data (body beyond credits, bad Content-Length, oversized head) close the
client and send ``cancel``. In every case a concurrent client (the
bystander) is still served, and so is a fresh one afterwards.
"""

from __future__ import annotations

import pytest

from tests.harness import flows, tnet

QUIET = 0.2


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("handler-errors")) as server:
        yield server


@pytest.fixture
def srv(shared):
    yield shared.begin()
    shared.end()


class Bystander:
    """A request that waits at the handler while another session misbehaves."""

    def __init__(self, srv) -> None:
        self.srv = srv
        self.conn = srv.conn()
        self.req = srv.get(self.conn, "/bystander")

    def check(self) -> None:
        self.srv.handler.reply(self.req, body=b"still here")
        assert self.conn.read_response().body == b"still here"


def start(srv, path: str = "/"):
    """A bystander, then the request the test works on."""
    other = Bystander(srv)
    c = srv.conn()
    return other, c, srv.get(c, path)


def accepted_afterwards(srv, other, c, req) -> None:
    """The bad packet was ignored: a correct seq-0 reply is still accepted."""
    srv.handler.reply(req, body=b"fine")
    assert c.read_response().body == b"fine"
    other.check()
    srv.probe()


def aborted(srv, other, c, cancel: bool = False, req=None) -> None:
    """The session ended: client closed without bytes; a cancel only if said."""
    if cancel:
        pkt = srv.handler.recv()
        assert (pkt.type, pkt.id) == ("cancel", req.id), pkt
    assert c.read_until_close() == b""
    srv.handler.expect_nothing(QUIET)
    other.check()
    srv.probe()


def good_packet(req) -> tnet.OMap:
    return tnet.OMap([(b"from", b"handler1"), (b"id", req.id.encode()), (b"seq", 0),
                      (b"code", 200), (b"reason", b"OK"), (b"body", b"raw")])


@pytest.mark.parametrize("payload", [
    b"T",
    b"T{}",
    b"Tgarbage",
    b"T12:abc",
    b"T5:hello,",  # not a map
    b"T3:1:a]",  # a list
    b"T30:4:from,8:handler1,2:id,}",  # truncated
    b"T99999999999:x}",
    b"T7:1:\xff,0:~}",  # key not UTF-8
], ids=["empty", "empty-braces", "garbage", "no-tag", "string", "list", "truncated",
        "huge-length", "bad-key"])
def test_malformed_tnetstring_ignored(srv, payload):
    other, c, req = start(srv)
    srv.handler.send_raw(req.sender.encode() + b" " + payload)
    accepted_afterwards(srv, other, c, req)


def test_unreadable_packets_are_logged_but_not_flooded(tmp_path):
    # Condure drops them at debug level only; a session may then wait for a
    # packet that never comes, so the operator gets one warning (a minute).
    with flows.running(tmp_path) as server:
        srv = server.begin()
        other, c, req = start(srv)
        for _ in range(3):
            srv.handler.send_raw(req.sender.encode() + b" T7:1:\xff,0:~}")
        accepted_afterwards(srv, other, c, req)
        warnings = [line for line in srv.condure.output().splitlines()
                    if "not valid ZHTTP" in line]
        assert len(warnings) == 1 and "[WARN]" in warnings[0], warnings
        assert "map key is not UTF-8" in warnings[0]
        server.end()


def test_handler_faults_are_logged_but_not_flooded(tmp_path):
    # The client of a session a handler broke gets an empty reply; the
    # operator gets one warning naming the rule (then one a minute).
    with flows.running(tmp_path) as server:
        srv = server.begin()
        for _ in range(3):
            other, c, req = start(srv)
            srv.handler.reply(req, headers=[("X-A", "a\r\nSet-Cookie: injected=1")], body=b"x")
            aborted(srv, other, c, cancel=True, req=req)
        warnings = [line for line in srv.condure.output().splitlines()
                    if "broke a rule" in line]
        assert len(warnings) == 1 and "[WARN]" in warnings[0], warnings
        assert "X-A value with CR, LF or NUL" in warnings[0]
        server.end()


@pytest.mark.parametrize("prefix", [b"X", b"J", b""], ids=["X", "J", "none"])
def test_wrong_leading_byte_ignored(srv, prefix):
    other, c, req = start(srv)
    srv.handler.send_raw(req.sender.encode() + b" " + prefix
                         + tnet.encode(good_packet(req)))
    accepted_afterwards(srv, other, c, req)


def test_other_address_ignored(srv):
    other, c, req = start(srv)
    srv.handler.send_raw(b"someone-else " + tnet.encode_packet(good_packet(req)))
    accepted_afterwards(srv, other, c, req)


def test_trailing_bytes_after_map_accepted(srv):
    other, c, req = start(srv)
    srv.handler.send_raw(req.sender.encode() + b" " + tnet.encode_packet(good_packet(req))
                         + b"trailing junk")
    assert c.read_response().body == b"raw"
    other.check()
    srv.probe()


def test_frames_after_the_first_ignored(srv):
    """Reference 3.2: only a message's first frame is a packet; a packet in
    a second frame is not delivered."""
    other, c, req = start(srv)
    address = req.sender.encode() + b" "
    head = tnet.OMap([(b"from", b"handler1"), (b"id", req.id.encode()), (b"seq", 0),
                      (b"code", 200), (b"reason", b"OK"), (b"more", True)])
    body = tnet.OMap([(b"from", b"handler1"), (b"id", req.id.encode()), (b"seq", 1),
                      (b"body", b"second frame")])
    srv.handler.send_raw(address + tnet.encode_packet(head), address + tnet.encode_packet(body),
                         b"junk")
    assert c.read_head().startswith(b"HTTP/1.1 200 OK\r\n")
    c.expect_silence(QUIET)
    srv.handler.body(req, b"", seq=1)
    assert c.read_exact(5) == b"0\r\n\r\n"
    other.check()
    srv.probe()


@pytest.mark.parametrize("kind", ["bogus", "data", "handoff-proceed", "close", "ping", "pong"])
def test_unexpected_type_aborts(srv, kind):
    other, c, req = start(srv)
    srv.handler.send(req, type=kind, fields=[("code", 200), ("reason", "OK"), ("body", b"x")])
    aborted(srv, other, c)


@pytest.mark.parametrize("seqs", [[5], [0, 0], [0, 2]], ids=["first-5", "repeat", "skip"])
def test_wrong_seq_aborts(srv, seqs):
    other, c, req = start(srv)
    h = srv.handler
    h.reply(req, more=True, seq=seqs[0])
    if len(seqs) > 1:
        c.read_head()
        h.body(req, b"x", more=True, seq=seqs[1])
    aborted(srv, other, c)


def test_missing_seq_accepted_without_advancing(srv):
    other, c, req = start(srv)
    h = srv.handler
    h.keep_alive(req, seq=None)
    h.reply(req, more=True, seq=None)
    c.read_head()
    h.body(req, b"", seq=0)  # the expectation is still 0
    assert c.read_exact(5) == b"0\r\n\r\n"
    other.check()
    srv.probe()


def test_unknown_and_stale_ids_ignored(srv):
    other, c, req = start(srv)
    h = srv.handler
    for bogus in ("9-9-9", "0-9999-0", "abc", "0-0", ""):
        h.reply(bogus, body=b"wrong", seq=0, address=req.sender)
    h.reply(req, body=b"first")
    assert c.read_response().body == b"first"
    req2 = srv.get(c, "/second")
    h.reply(req.id, body=b"stale", seq=1, address=req.sender)  # finished request's id
    h.reply(req2, body=b"second")
    assert c.read_response().body == b"second"
    other.check()
    srv.probe()


def test_from_over_64_bytes_aborts(srv):
    other, c, req = start(srv)
    srv.handler.reply(req, body=b"x", sender="h" * 65)
    aborted(srv, other, c)


def test_from_of_64_bytes_accepted(srv):
    other, c, req = start(srv)
    srv.handler.reply(req, body=b"x64", sender="h" * 64)
    assert c.read_response().body == b"x64"
    other.check()
    srv.probe()


def test_more_than_64_response_headers_ignored(srv):
    other, c, req = start(srv)
    many = [[f"X-{i}", "v"] for i in range(65)]
    srv.handler.send(req, seq=0, fields=[("code", 200), ("reason", "OK"), ("headers", many)])
    c.expect_silence(QUIET)
    srv.handler.reply(req, headers=[(n, v) for n, v in many[:64]], body=b"64")
    resp = c.read_response()
    assert len(resp.headers) == 65 and resp.body == b"64"  # 64 + Content-Length
    other.check()
    srv.probe()


@pytest.mark.parametrize("field, value", [
    ("code", "200"),
    ("reason", 7),
    ("headers", "X-A: 1"),
    ("headers", [["X-A"]]),
    ("body", 12),
    ("more", "yes"),
    ("credits", -5),
    ("credits", "10"),
    ("seq", "0"),
    ("seq", -1),
    ("type", 3),
    ("from", ["handler1"]),
    ("ext", "multi"),
    ("id", 7),
], ids=lambda v: repr(v)[:12])
def test_wrong_field_type_ignored(srv, field, value):
    other, c, req = start(srv)
    fields = {"from": "handler1", "id": req.id, "seq": 0, "code": 200, "reason": "OK",
              "body": b"bad"}
    fields[field] = value
    srv.handler.send_fields(fields, address=req.sender)
    accepted_afterwards(srv, other, c, req)


def test_multi_id_wrong_seq_aborts_only_that_session(srv):
    h = srv.handler
    c1, c2 = srv.conn(), srv.conn()
    r1, r2 = srv.get(c1, "/1"), srv.get(c2, "/2")
    entries = [{"id": r1.id, "seq": 0}, {"id": r2.id, "seq": 3}]
    h.send_fields([("from", h.identity), ("id", entries), ("code", 200), ("reason", "OK"),
                   ("body", b"both")], address=r1.sender)
    assert c1.read_response().body == b"both"
    assert c2.read_until_close() == b""
    h.expect_nothing(QUIET)
    srv.probe()


def test_body_beyond_credits_cancels(srv):
    other, c, req = start(srv)
    assert req["credits"] == 8192
    srv.handler.reply(req, body=b"b" * 9000)
    aborted(srv, other, c, cancel=True, req=req)


def test_body_at_credits_served(srv):
    other, c, req = start(srv)
    srv.handler.reply(req, body=b"b" * 8192)
    assert c.read_response().body == b"b" * 8192
    other.check()
    srv.probe()


def test_streamed_body_beyond_credits_cancels(srv):
    other, c, req = start(srv)
    srv.handler.reply(req, more=True, body=b"a" * 8000)
    srv.handler.body(req, b"b" * 9000, more=True)  # over the 8192 granted, whatever returned
    pkt = srv.handler.recv()
    if pkt.type == "credit":  # the first part may have been written and credited first
        pkt = srv.handler.recv()
    assert (pkt.type, pkt.id) == ("cancel", req.id)
    c.read_until_close()
    srv.handler.expect_nothing(QUIET)
    other.check()
    srv.probe()


def test_bad_response_content_length_cancels(srv):
    other, c, req = start(srv)
    srv.handler.reply(req, headers=[("Content-Length", "abc")], body=b"x")
    aborted(srv, other, c, cancel=True, req=req)


@pytest.mark.parametrize("fields", [
    dict(headers=[("X-A", "a\r\nSet-Cookie: injected=1")]),
    dict(reason="OK\r\nSet-Cookie: injected=1"),
    dict(headers=[("X A", "1")]),
    dict(code=100),
], ids=["crlf-value", "crlf-reason", "bad-name", "status-100"])
def test_response_a_gateway_must_not_pass_on_cancels(srv, fields):
    # RFC 9110 5.5: nothing of it reaches the client (Condure wrote it as it came)
    other, c, req = start(srv)
    srv.handler.reply(req, body=b"x", **fields)
    aborted(srv, other, c, cancel=True, req=req)


@pytest.mark.parametrize("length", ["2", "10"], ids=["body-over", "body-short"])
def test_body_against_its_content_length_cancels(srv, length):
    # RFC 9112 6.3: "hello" under Content-Length: 2 would leave "llo" to be
    # read as the next response on this keep-alive connection (Condure wrote it)
    other, c, req = start(srv)
    srv.handler.reply(req, headers=[("Content-Length", length)], body=b"hello")
    aborted(srv, other, c, cancel=True, req=req)


def test_response_head_over_buffer_cancels(srv):
    other, c, req = start(srv)
    srv.handler.reply(req, headers=[("X-Big", "v" * 9000)], body=b"x")
    aborted(srv, other, c, cancel=True, req=req)


@pytest.mark.parametrize("condition", ["bad-request", ""])
def test_error_packet_closes(srv, condition):
    other, c, req = start(srv)
    srv.handler.send(req, type="error", fields=[("condition", condition)])
    aborted(srv, other, c)


def test_credit_before_response_on_get_is_harmless(srv):
    other, c, req = start(srv)
    srv.handler.credit(req, 100)
    srv.handler.credit(req, 0)
    srv.handler.reply(req, body=b"ok")
    assert c.read_response().body == b"ok"
    other.check()
    srv.probe()
