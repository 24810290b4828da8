"""Differential test of the client role: our condure against Debian's
zurl 1.11 (the only other runnable implementation of it).

The same handler (tests/harness/zurl_diff.py, pyzmq) sends the same
requests through zurl (private config, ipc endpoints in a tmp dir) and
through condure (``--zserver-stream``, ``--zserver-req``, no listener), each
to its own instance of the same loopback origin. Per case three things are
compared:

- what the origin read (method, path, body, headers; the Host port and the
  headers only one side adds are masked);
- the meaning of what the handler got: status, reason, headers, whole body,
  error condition, whether the response ended;
- the packets themselves as field sets (zurl's field order varies from run
  to run), with ids, the ``from`` address, ``ext`` and ``Date``/``Server``
  masked.

Where zurl and Condure 1.10 differ, condure follows 1.10 and the case is
listed in ``DIFFERENCES`` (packets differ, meaning equal) or
``MEANING_DIFFERENCES``, each with its reason; a listed case that starts
matching fails, so the lists stay true.
"""

from __future__ import annotations

import os

import pytest

from tests.harness import procs, tnet
from tests.harness.normalize import Normalizer
from tests.harness.zurl_diff import (
    CONDURE_ID,
    ZURL_BIN,
    ZURL_ID,
    Handler,
    Session,
    run_cases,
    stream,
)


def zurl_available() -> bool:
    return os.access(ZURL_BIN, os.X_OK)


pytestmark = pytest.mark.skipif(not zurl_available(), reason=f"{ZURL_BIN} missing")

TEXT = [(b"Content-Type", b"text/plain")]


def get(path: str, method: bytes = b"GET", quiet: float = 10.0):
    """``quiet``: how long to wait for a packet that may never come."""
    def case(h: Handler, url: str, rid: bytes):
        s = Session(rid)
        fields = [(b"method", method), (b"uri", (url + path).encode()), (b"credits", 100000)]
        end = stream(h, s, fields, quiet=quiet)
        return s.packets, end
    return case


def post_one(h: Handler, url: str, rid: bytes):
    s = Session(rid)
    end = stream(h, s, [(b"method", b"POST"), (b"uri", (url + "/post").encode()),
                        (b"headers", TEXT), (b"body", b"the whole body"),
                        (b"credits", 100000)])
    return s.packets, end


def post_two(h: Handler, url: str, rid: bytes):
    s = Session(rid)
    end = stream(h, s, [(b"method", b"POST"), (b"uri", (url + "/post").encode()),
                        (b"headers", TEXT), (b"body", b"part one, "), (b"more", True),
                        (b"credits", 100000)], second=b"part two")
    return s.packets, end


def refused(h: Handler, url: str, rid: bytes):
    s = Session(rid)
    port = procs.free_port()  # nothing listens there
    end = stream(h, s, [(b"method", b"GET"), (b"uri", b"http://127.0.0.1:%d/x" % port),
                        (b"credits", 100000)])
    return s.packets, end


def req_get(h: Handler, url: str, rid: bytes):
    reply = h.req([(b"id", rid), (b"method", b"GET"), (b"uri", (url + "/req").encode())])
    return ([] if reply is None else [reply]), ("no reply" if reply is None else "done")


CASES = {
    "get_content_length": get("/cl?x=1"),
    "get_chunked": get("/chunked"),
    "post_one_packet": post_one,
    "post_two_packets": post_two,
    "not_found": get("/missing"),
    "connection_refused": refused,
    "req_get": req_get,
    "head": get("/head", method=b"HEAD"),
}

# case -> why the packets differ (condure follows Condure 1.10, reference
# section 6); the meaning is still compared
SPLIT = ("zurl puts the body in the response-head packet and leaves `more` out when "
         "the body is complete; Condure 1.10 publishes the head alone with `more: true` "
         "and the body in later packets, the last without `more` (reference 6.2 steps 6-7)")
DIFFERENCES: dict[str, str] = {
    "get_content_length": SPLIT,
    "get_chunked": SPLIT,
    "post_one_packet": SPLIT,
    "not_found": SPLIT,
    "post_two_packets": (
        "zurl sends no keep-alive when the first packet has `more`: it opens with a "
        "credit of its buffer size (seq 0) and grants again what it wrote; Condure 1.10 "
        "always sends the keep-alive with seq 0 first, then a credit of --buffer-size "
        "(reference 6.2 step 2, 6.4); and " + SPLIT),
    "req_get": "zurl's req-mode reply carries `seq: 0`; Condure 1.10's has no seq "
               "(reference 6.7)",
    # Condure 1.10 read a HEAD response's Content-Length as a body to come, so
    # its handler never saw the end; condure ends it at the head, as zurl does
    # (RFC 9110 9.3.2; docs/differences-from-condure.md)
    "head": SPLIT,
}

# case -> why even the meaning (status, headers, whole body, condition) differs
MEANING_DIFFERENCES: dict[str, str] = {}

# Headers that differ by run: masked in the handler's packets.
MASKED_HEADERS = {b"date", b"server"}
# Request headers that only zurl's libcurl adds (Accept, Accept-Encoding) or
# only Condure 1.10 adds for a chunked request body (Connection:
# Transfer-Encoding, reference 6.3); the rest of what the origin read is
# compared.
ORIGIN_ONLY = {b"accept", b"accept-encoding", b"connection"}

_results: dict[str, dict] = {}


def results(impl: str, tmp_path_factory) -> dict:
    if impl not in _results:
        _results[impl] = run_cases(impl, tmp_path_factory.mktemp(f"zdiff-{impl}"), CASES)
    return _results[impl]


def frozen(value):
    if isinstance(value, list):
        return tuple(frozen(v) for v in value)
    return value


def packet_view(raw: bytes, norm: Normalizer) -> tuple:
    """One packet as a sorted field set: `from` and ids masked, `ext` (which
    Condure 1.10 adds, zurl not) left out, run-specific headers dropped."""
    fields = norm.fields(tnet.decode_packet(raw))
    out = []
    for key, value in fields:
        if key == b"ext":
            continue
        if key == b"headers" and isinstance(value, list):
            value = [hv for hv in value if hv[0].lower() not in MASKED_HEADERS]
        out.append((key, frozen(value)))
    return tuple(sorted(out))


def view(impl: str, record: dict) -> list[tuple]:
    norm = Normalizer(ZURL_ID if impl == "zurl" else CONDURE_ID)
    return [packet_view(raw, norm) for raw in record["packets"]]


def meaning(record: dict) -> dict:
    """Status, reason, headers (masked), whole body, condition, how it ended."""
    out: dict = {"end": record["end"], "body": b"", "condition": None}
    for raw in record["packets"]:
        f = tnet.decode_packet(raw)
        if f.get("type") == b"error":
            out["condition"] = f.get("condition")
        if f.get("type") is None:
            if f.get("code") is not None:
                out["code"] = f.get("code")
                out["reason"] = f.get("reason")
                out["headers"] = [tuple(hv) for hv in f.get("headers") or []
                                  if hv[0].lower() not in MASKED_HEADERS]
            out["body"] += f.get("body") or b""
    return out


def origin_view(record: dict) -> list[tuple]:
    return [(r.method, r.path, r.body,
             sorted((k, b"<host>" if k == b"host" else v) for k, v in r.headers.items()
                    if k not in ORIGIN_ONLY))
            for r in record["origin"]]


@pytest.mark.parametrize("case", list(CASES))
def test_zurl_differential(case, tmp_path_factory):
    zurl = results("zurl", tmp_path_factory)
    ours = results("ours", tmp_path_factory)
    z, o = zurl[case], ours[case]
    assert z["packets"], f"zurl sent nothing for {case}"
    assert origin_view(o) == origin_view(z), "the origin read different requests"
    if case in MEANING_DIFFERENCES:
        # the same head; only how the response ends differs
        zm, om = meaning(z), meaning(o)
        assert (zm.pop("end"), om.pop("end")) == ("done", "no end")
        assert om == zm
    else:
        assert meaning(o) == meaning(z)
    zv, ov = view("zurl", z), view("ours", o)
    if case in DIFFERENCES or case in MEANING_DIFFERENCES:
        assert ov != zv, f"{case} now matches zurl: drop it from DIFFERENCES"
    else:
        assert ov == zv, "\n".join(["zurl:", *map(repr, zv), "ours:", *map(repr, ov)])


def test_exit_status(tmp_path_factory):
    """Both stop cleanly on SIGTERM after the cases."""
    assert results("zurl", tmp_path_factory)["<status>"]["status"] == 0
    assert results("ours", tmp_path_factory)["<status>"]["status"] == 0
