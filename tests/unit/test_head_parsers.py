"""The two request-head parsers agree: the fast path
(``httpwire.parse_simple_head``) takes a strict subset of what h11 takes,
and for every head it takes it reads the same method, target, version and
headers as the h11 path (h11's event plus ``httpwire.raw_headers`` for the
verbatim header fields). Where the fast path declines, h11 decides:
it accepts or refuses the head, and nothing else happens."""

from __future__ import annotations

import h11
from hypothesis import event, given, settings
from hypothesis import strategies as st

from condure.session.httpwire import parse_simple_head, raw_headers

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
ODD = [b"", b" ", b"\t", b":", b"\x00", b"\x7f", b"\xff", b"\r", b"\n", b"(", b"\"", b"@"]

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=8).map(str.encode)
odd_bytes = st.sampled_from(ODD)



def spoiled(base: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A piece that is usually well formed, one time in ten with an odd
    byte somewhere in it."""
    odd = st.tuples(base, odd_bytes, st.integers(0, 8)).map(
        lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:])
    return st.integers(0, 9).flatmap(lambda i: odd if i == 0 else base)


def rarely(common: st.SearchStrategy[bytes], rare: st.SearchStrategy[bytes]
           ) -> st.SearchStrategy[bytes]:
    return st.integers(0, 5).flatmap(lambda i: rare if i == 0 else common)


methods = spoiled(rarely(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS"]),
                         tokens))
targets = spoiled(rarely(st.sampled_from([b"/", b"/a?b=c", b"*", b"http://e/x", b"/%20x",
                                          b"e:80", b"/~x/%7e"]),
                         st.binary(min_size=1, max_size=10)))
versions = rarely(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
                  st.sampled_from([b"HTTP/2.0", b"HTTP/1.10", b"http/1.1", b"HTTP/1",
                                   b"HTTP/0.9", b"HTTP/1.1 "]))
names = spoiled(rarely(st.sampled_from([b"Accept", b"X-A", b"user-agent", b"Connection",
                                        b"Upgrade", b"Cookie"]),
                       st.sampled_from([b"Host", b"host", b"Content-Length",
                                        b"Transfer-Encoding"]) | tokens))
values = spoiled(rarely(st.sampled_from([b"e", b"", b"a b", b" padded\t", b"1", b"chunked",
                                         b"close", b"keep-alive", b"a\tb", b"*/*"]),
                        st.binary(max_size=8)))
separators = rarely(st.sampled_from([b":", b": ", b":\t", b":  "]), st.just(b" :"))
fields = st.tuples(names, separators, values).map(lambda t: t[0] + t[1] + t[2])
line_ends = rarely(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r\n "]))


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    line = draw(methods) + draw(rarely(st.just(b" "), st.sampled_from([b"  ", b"\t"]))) \
        + draw(targets) + b" " + draw(versions)
    lines = [line]
    hosts = draw(st.integers(0, 5).map(lambda i: 0 if i == 0 else 2 if i == 1 else 1))
    for _ in range(hosts):
        lines.append(b"Host: " + draw(rarely(st.just(b"e"), values)))
    for more in draw(st.lists(fields, max_size=5)):
        lines.insert(draw(st.integers(1, len(lines))), more)
    out = lines[0]
    for more in lines[1:]:
        out += draw(line_ends) + more
    return out


def h11_reading(head: bytes) -> tuple[bytes, bytes, bool, list[tuple[bytes, bytes]]] | None:
    """What the h11 path makes of a head (None: refused)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head + b"\r\n\r\n")
    try:
        ev = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if type(ev) is not h11.Request or ev.http_version not in (b"1.1", b"1.0"):
        return None
    headers = raw_headers(head + b"\r\n\r\n")
    if headers is None:
        return None
    return ev.method, ev.target, ev.http_version == b"1.1", list(headers)


@settings(max_examples=2000, deadline=None)
@given(heads())
def test_fast_path_agrees_with_h11(head):
    if b"\r\n\r\n" in head:
        return  # the session splits heads there; not a head on its own
    fast = parse_simple_head(head)
    slow = h11_reading(head)
    event("fast" if fast is not None else "h11 accepts" if slow is not None else "refused")
    if fast is not None:
        assert slow is not None, head
        method, target, http11, headers = fast
        assert (method, target, http11, list(headers)) == slow, head


@given(st.lists(st.tuples(tokens, st.text("abc xyz", max_size=6).map(str.encode)),
                max_size=6), st.booleans())
def test_plain_heads_take_the_fast_path(fields_, http11):
    head = b"GET /p HTTP/1.%d\r\nHost: e" % http11
    for name, value in fields_:
        if name.lower() in (b"host", b"content-length", b"transfer-encoding"):
            continue
        head += b"\r\n" + name + b": " + value
    fast = parse_simple_head(head)
    assert fast is not None
    assert (fast[0], fast[1], fast[2], list(fast[3])) == h11_reading(head)
