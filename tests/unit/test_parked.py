"""condure/net/parked.py: handler packets kept for ids a worker does not
have yet (a session on its way during a reload), bounded in time, count
and bytes."""

from __future__ import annotations

from condure.net import parked
from condure.net.parked import Parked
from condure.zhttp.packets import Credit, Data, Ident


def packet(rid: bytes, seq: int | None, body: bytes = b"x") -> tuple[Data, Ident]:
    ident = Ident(rid, seq)
    return Data(from_=b"handler", ids=(ident,), body=body), ident


def test_take_gives_an_ids_packets_in_seq_order_once():
    p = Parked()
    for rid, seq in ((b"a", 3), (b"b", 0), (b"a", 1), (b"a", 2)):
        p.park(*packet(rid, seq), size=10, now=0.0)
    assert [ident.seq for _, ident in p.take(b"a")] == [1, 2, 3]
    assert p.take(b"a") == []
    assert [ident.seq for _, ident in p.take(b"b")] == [0]
    assert p.take(b"unknown") == []


def test_packets_without_seq_are_not_kept():
    p = Parked()
    p.park(*packet(b"a", None), size=10, now=0.0)  # req mode: nothing to resume
    assert len(p) == 0 and p.take(b"a") == []


def test_old_packets_age_out():
    p = Parked()
    p.park(*packet(b"old", 0), size=10, now=0.0)
    p.park(*packet(b"new", 0), size=10, now=parked.KEEP + 1)
    assert p.take(b"old") == [] and len(p.take(b"new")) == 1


def test_count_and_bytes_are_bounded_oldest_first():
    p = Parked()
    for i in range(parked.MAX_PACKETS + 5):
        p.park(*packet(b"%d" % i, 0), size=1, now=0.0)
    assert len(p) == parked.MAX_PACKETS
    assert p.take(b"0") == [] and len(p.take(b"%d" % (parked.MAX_PACKETS + 4))) == 1
    q = Parked()
    half = parked.MAX_BYTES // 2
    for rid in (b"a", b"b", b"c"):
        q.park(*packet(rid, 0), size=half, now=0.0)
    assert q.take(b"a") == [] and len(q.take(b"b")) == 1 and len(q.take(b"c")) == 1
    assert q.size <= parked.MAX_BYTES
    q.park(*packet(b"huge", 0), size=parked.MAX_BYTES + 1, now=0.0)
    assert q.take(b"huge") == []


def test_expiry_of_a_taken_entry_leaves_later_packets_of_that_id():
    """An id can come back (a late packet for a session that ended here):
    the expiry of its first, taken, entry must not drop the later one."""
    p = Parked()
    p.park(*packet(b"a", 0), size=1, now=0.0)
    assert len(p.take(b"a")) == 1
    ident = Ident(b"a", 5)
    p.park(Credit(from_=b"handler", ids=(ident,), credits=3), ident, size=1, now=parked.KEEP)
    p.expire(parked.KEEP + 0.5)  # the first entry is past KEEP, the second is not
    assert [i.seq for _, i in p.take(b"a")] == [5]
