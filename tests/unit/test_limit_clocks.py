"""The read-side limits at the session level, byte for byte through the
fake adapter (tests/unit/session_helpers.py), and the per-address count of
condure/net/limits.py. The integration side is tests/integration/test_limits.py."""

from __future__ import annotations

import math
import socket

import pytest

from condure.config import Config
from condure.net.limits import ConnLimits, peer_host
from condure.session import records
from condure.session.contract import Settings
from condure.session.http import HttpSession
from condure.session.limits import BODY_RATE, HEAD_TIMEOUT, NO_REQUEST, ReadLimits
from condure.session.peer import SESSION_TIMEOUT
from condure.session.states import ACTIVE, HEAD
from condure.zhttp.packets import Cancel, Data, HandoffProceed, HandoffStart, KeepAlive
from tests.unit.session_helpers import INSTANCE, START, Driver, IdSource, body_of

GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
R408 = b"HTTP/1.1 408 Request Timeout\r\n"


def driver(head_timeout: float = 10.0, rate: int = 0, window: float = 10.0) -> Driver:
    limits = ReadLimits(head_timeout, rate, window)
    ids = IdSource()
    session = HttpSession(instance_id=INSTANCE, new_id=ids, now=START, read_limits=limits)
    return Driver(session=session, ids=ids)


def counts(d: Driver) -> dict[str, int]:
    return d.session.limits.counts


def open_for_then(d: Driver, seconds: float, more: float) -> None:
    """The connection is still open ``seconds`` on; then ``more`` pass."""
    d.advance(seconds)
    assert not d.closed
    d.advance(more)


# -- head timeout -------------------------------------------------------------

def test_a_new_connection_that_sends_nothing_is_closed_without_a_response():
    d = driver()
    open_for_then(d, 9.9, 0.1)
    assert d.closed and d.close.graceful and d.output == b""
    assert counts(d)[NO_REQUEST] == 1 and counts(d)[HEAD_TIMEOUT] == 0


def test_a_head_trickled_past_the_timeout_gets_408():
    d = driver()
    d.client(b"GET /x HTTP/1.1\r\n")
    for i in range(9):
        d.advance(1.0)
        d.client(b"X-%d: y\r\n" % i)  # every line moves nothing
    assert not d.closed
    d.advance(1.0)
    assert d.output.startswith(R408) and b"Connection: close\r\n" in d.output
    assert d.closed and d.close.graceful
    assert d.packets == []  # the handler never heard of it
    assert counts(d)[HEAD_TIMEOUT] == 1


def test_a_head_complete_in_time_is_not_timed_any_more():
    d = driver()
    d.advance(9.0)
    d.client(GET)
    assert len(d.new_packets()) == 1
    assert d.session.head_deadline is None
    assert d.session.deadline == START + SESSION_TIMEOUT  # the handler's 60 s only
    d.advance(5.0)
    assert not d.closed


def test_an_idle_kept_alive_connection_is_timed_from_its_next_first_byte():
    d = driver()
    d.client(GET)
    d.new_packets()
    d.respond(body=b"ok")
    d.new_output()
    assert d.session.state is HEAD and d.session.head_deadline is None
    d.advance(30.0)  # idle: the session timeout governs (60 s), not the head timeout
    assert not d.closed
    d.client(b"GET /y HTTP/1.1\r\n")
    open_for_then(d, 9.9, 0.1)
    assert d.new_output().startswith(R408) and d.closed


def test_pipelined_bytes_start_the_next_heads_clock_at_once():
    d = driver()
    d.client(GET + b"GET /partial HTTP/1.1\r\n")
    d.new_packets()
    d.advance(5.0)
    d.respond(body=b"ok")
    assert d.new_output().endswith(b"ok")
    assert d.session.head_deadline == START + 5.0 + 10.0
    open_for_then(d, 9.9, 0.1)
    assert d.new_output().startswith(R408) and d.closed


def test_limits_off_by_default():
    d = Driver()
    d.client(b"GET /x HTTP/1.1\r\n")
    assert d.session.deadline == START + SESSION_TIMEOUT
    d.advance(59.0)
    assert not d.closed


# -- body rate ----------------------------------------------------------------

def post(length: int) -> bytes:
    return b"POST /u HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n\r\n" % length


def uploading(length: int, credits: int) -> Driver:
    """A POST of ``length`` bytes at a minimum rate of 100 bytes/s, its head
    sent to the handler, which granted ``credits``."""
    d = driver(rate=100)
    d.client(post(length))
    d.new_packets()
    d.credit(credits)
    return d


def test_a_body_below_the_rate_is_cut_with_408_and_cancel():
    d = driver(rate=100)  # 1000 bytes per 10 s
    d.client(post(100000))
    d.new_packets()
    d.credit(100000)
    for _ in range(9):
        d.client(b"x" * 50)
        d.advance(1.0)
    assert not d.closed
    d.client(b"x" * 50)
    d.advance(1.0)  # 500 bytes in 10 s
    assert d.new_output().startswith(R408)
    assert d.closed and d.close.graceful
    assert isinstance(d.packets[-1], Cancel)
    assert counts(d)[BODY_RATE] == 1


def test_a_body_at_the_rate_goes_on_window_after_window():
    d = uploading(5000, credits=100000)
    for _ in range(40):
        d.client(b"x" * 120)
        d.advance(1.0)
    assert not d.closed and d.session.state is ACTIVE
    d.client(b"x" * 200)
    assert len(body_of(d.packets)) == 5000
    d.respond(body=b"done")
    assert d.output.endswith(b"done") and not d.closed
    assert counts(d)[BODY_RATE] == 0


def test_time_without_credits_does_not_count():
    d = uploading(100000, credits=500)
    d.client(b"x" * 600)  # 500 go to the handler, 100 wait: condure stops reading
    assert not d.session.wants_read
    d.advance(50.0)  # the handler takes its time: not the client's fault
    d.handler(KeepAlive)  # (and stays within its own 60 s session timeout)
    d.advance(50.0)
    assert not d.closed
    d.credit(100000)  # reading again: a new stretch of the window's clock
    assert d.session.wants_read
    for _ in range(9):
        d.client(b"x" * 150)
        d.advance(1.0)
    assert not d.closed  # 600 + 1350 bytes while wanted
    d.advance(1.0)
    assert not d.closed
    for _ in range(10):
        d.advance(1.0)
    assert d.closed and R408 in d.output  # then a window with nothing


def test_a_whole_body_waiting_for_the_handlers_first_credits_is_not_timed():
    """The body came with the head; the handler answers with a keep-alive
    and grants credits much later: the client sent everything, it gets
    its response, not a 408."""
    d = driver(rate=100)
    d.client(post(100) + b"x" * 100)
    d.new_packets()
    d.handler(KeepAlive)
    d.advance(25.0)
    d.handler(KeepAlive)
    d.advance(25.0)
    assert not d.closed and counts(d)[BODY_RATE] == 0
    d.credit(1000)
    assert body_of(d.packets) == b"x" * 100
    d.respond(body=b"done")
    assert d.output.endswith(b"done") and R408 not in d.output

def test_a_handoff_pause_stops_the_clock():
    d = uploading(100000, credits=100000)
    d.advance(5.0)
    d.handler(HandoffStart)
    assert isinstance(d.packets[-1], HandoffProceed)
    d.advance(30.0)
    assert not d.closed
    d.handler(KeepAlive)  # the handler is back: the clock runs again
    open_for_then(d, 4.9, 0.2)
    assert d.closed and R408 in d.output


def test_reads_held_by_the_worker_stop_the_body_clock():
    """Backpressure towards the handlers (the worker stops reading from
    every client) is not the client's slowness: the clock stands still."""
    d = uploading(100000, credits=100000)
    d.advance(5.0)  # half a window, nothing sent
    d.session.reads_held(True, d.now)
    d.advance(30.0)  # the worker reads nothing meanwhile
    d.handler(KeepAlive)  # (the handler stays within its 60 s)
    assert not d.closed
    d.session.reads_held(False, d.now)
    open_for_then(d, 4.9, 0.2)  # the rest of the window, still nothing: cut
    assert d.closed and R408 in d.output


def test_reads_held_by_the_worker_move_the_head_deadline():
    d = driver()
    d.client(b"GET /x HTTP/1.1\r\n")
    d.advance(4.0)
    d.session.reads_held(True, d.now)
    assert d.session.deadline == START + SESSION_TIMEOUT  # no head clock while held
    d.advance(20.0)
    assert not d.closed
    d.session.reads_held(False, d.now)
    assert d.session.head_deadline == START + 30.0  # 10 s, less the 20 s held
    open_for_then(d, 5.9, 0.1)
    assert d.closed and R408 in d.output


def test_the_rate_does_not_apply_once_the_body_is_read():
    d = uploading(10, credits=100)
    d.client(b"x" * 10)
    assert isinstance(d.packets[-1], Data) and not d.packets[-1].more
    assert d.session.rate is None or d.session.rate.deadline is None
    d.advance(50.0)
    assert not d.closed


# -- the head clock across a move (reload, restart) ---------------------------

def moved(d: Driver, *, now: float = 500.0, fields: dict | None = None) -> Driver:
    """``d``'s connection exported, its record through the wire form, and
    adopted by another process whose clock reads ``now``."""
    record = records.decode(records.encode(d.session.export_record(d.now)))
    if fields is not None:
        record = records.from_fields({**records.to_fields(record), **fields})
    ids = IdSource(b"9-0-")
    session = HttpSession.from_record(
        record, settings=Settings(read_limits=d.session.limits), instance_id=INSTANCE,
        new_id=ids, now=now)
    return Driver(session=session, ids=ids, now=now)


def test_a_partial_head_keeps_its_clock_when_moved():
    d = driver()
    d.client(b"GET /x HTTP/1.1\r\n")
    d.advance(6.0)
    d2 = moved(d)
    assert d2.session.head_deadline == 504.0
    open_for_then(d2, 3.9, 0.1)
    assert d2.output.startswith(R408) and d2.close.graceful
    assert d2.packets == []


def test_a_silent_new_connection_keeps_its_clock_when_moved():
    d = driver()
    d.advance(7.5)
    d2 = moved(d)
    open_for_then(d2, 2.4, 0.1)
    assert d2.output == b"" and counts(d2)[NO_REQUEST] == 1


def test_a_held_head_clock_moves_with_what_was_left_at_the_hold():
    d = driver()
    d.client(b"GET /x HTTP/1.1\r\n")
    d.advance(2.0)
    d.session.reads_held(True, d.now)
    d.advance(50.0)  # held: the client is not the one who is slow
    assert moved(d).session.head_deadline == 508.0


def test_an_idle_kept_alive_connection_moves_without_a_head_clock():
    d = driver()
    d.client(GET)
    d.new_packets()
    d.respond(body=b"ok")
    assert "head_left" not in records.to_fields(d.session.export_record(d.now))
    d2 = moved(d)
    assert d2.session.head_deadline is None
    d2.client(b"GET /y HTT")  # the next request's first bytes start its clock
    assert d2.session.head_deadline == 510.0


def test_records_without_head_left_load_and_bad_ones_do_not():
    d = driver()
    d.client(b"GET /x HTTP/1.1\r\n")
    fields = records.to_fields(d.session.export_record(d.now))
    assert fields["head_left"] == 10.0
    del fields["head_left"]  # as written before the field existed
    assert records.from_fields(fields).head_left is None
    assert records.from_fields({**fields, "head_left": 3}).head_left == 3.0
    for bad in (-1.0, math.nan, math.inf, b"1", None):
        with pytest.raises(records.RecordError):
            records.from_fields({**fields, "head_left": bad})


# -- connections per address ---------------------------------------------------

def test_connections_per_address_are_capped_and_given_back():
    limits = ConnLimits(Config(max_conns_per_ip=2))
    assert limits.admit(0, "127.0.0.2") and limits.admit(1, "127.0.0.2")
    assert not limits.admit(2, "127.0.0.2")
    assert limits.admit(2, "127.0.0.3")
    assert limits.admit(3, None)  # Unix-socket clients are not counted
    limits.release(0)
    limits.release(3)  # (not counted: nothing to give back)
    assert limits.admit(4, "127.0.0.2")
    assert not limits.admit(5, "127.0.0.2")
    stats = limits.stats()
    assert stats["per_ip_refused"] == 2 and stats[HEAD_TIMEOUT] == 0
    for slot in (1, 2, 4):
        limits.release(slot)
    assert limits.per_address == {} and limits.by_slot == {}


def test_adopted_connections_count_but_are_never_refused():
    """A reload or restart hands a worker connections accepted elsewhere:
    they all stay, even over the limit, and new ones from their address
    are refused until enough of them are gone."""
    limits = ConnLimits(Config(max_conns_per_ip=2))
    for slot in range(3):  # (more than the limit: say it was lowered)
        limits.adopted(slot, "127.0.0.2")
    limits.adopted(3, None)  # a Unix-socket client
    assert limits.per_address == {"127.0.0.2": 3}
    assert not limits.admit(4, "127.0.0.2")
    limits.release(0)
    assert not limits.admit(4, "127.0.0.2")  # 2 held: still at the limit
    limits.release(1)
    assert limits.admit(4, "127.0.0.2")
    assert limits.admit(5, "127.0.0.3")  # other addresses were never held back
    for slot in (2, 3, 4, 5):
        limits.release(slot)
    assert limits.per_address == {} and limits.by_slot == {}
    assert limits.stats()["per_ip_refused"] == 2


def test_an_adopted_connection_is_counted_by_its_peer_address():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.socket() as client:
            client.bind(("127.0.0.2", 0))
            client.connect(listener.getsockname())
            server, _ = listener.accept()
            with server:
                assert peer_host(server, b"127.0.0.9") == "127.0.0.2"
    with socket.socket() as unconnected:  # the peer gone: the record says
        assert peer_host(unconnected, b"127.0.0.9") == "127.0.0.9"
        assert peer_host(unconnected, None) is None
    a, b = socket.socketpair()
    with a, b:
        assert peer_host(a, b"127.0.0.9") is None  # Unix sockets are not counted


def test_no_per_address_limit_by_default():
    limits = ConnLimits(Config())
    assert all(limits.admit(n, "127.0.0.2") for n in range(1000))
    limits.adopted(1000, "127.0.0.2")
    assert limits.per_address == {}
