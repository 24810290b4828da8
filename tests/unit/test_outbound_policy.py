"""Client mode's pure parts, no network: the --deny-out-internal ranges,
what a Target connects to and verifies, resolution of literals and bad
names, the pool size.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from condure.net import outbound
from condure.net.outbound import OutboundError, Target
from condure.net.pool import capacity_for
from condure.session.outbound import denied

DENIED = [
    # 127.0.0.0/8
    "127.0.0.0", "127.0.0.1", "127.255.255.255",
    # 10.0.0.0/8
    "10.0.0.0", "10.1.2.3", "10.255.255.255",
    # 172.16.0.0/12
    "172.16.0.0", "172.20.1.1", "172.31.255.255",
    # 192.168.0.0/16
    "192.168.0.0", "192.168.1.1", "192.168.255.255",
    # 169.254.0.0/16
    "169.254.0.1", "169.254.169.254", "169.254.255.255",
    # ::1/128
    "::1",
    # fc00::/7
    "fc00::", "fc00::1", "fd12:3456:789a::1", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    # fe80::/10, with and without a zone
    "fe80::", "fe80::1", "fe80::1%1", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    # unspecified (reaches this host)
    "0.0.0.0", "::",
    # IPv4-mapped IPv6 forms
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:172.16.0.1", "::ffff:192.168.0.1",
    "::ffff:169.254.0.1", "::ffff:0.0.0.0",
]

ALLOWED = [
    "126.255.255.255", "128.0.0.0", "9.255.255.255", "11.0.0.0",
    "172.15.255.255", "172.32.0.0", "192.167.255.255", "192.169.0.0",
    "169.253.255.255", "169.255.0.0", "8.8.8.8", "1.1.1.1",
    # not in Condure's list
    "100.64.0.1", "192.0.2.1", "198.18.0.1", "224.0.0.1", "255.255.255.255",
    "::2", "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe00::1", "fec0::1",
    "2001:db8::1", "2606:4700::1111", "::ffff:8.8.8.8", "ff02::1",
]


@pytest.mark.parametrize("ip", DENIED)
def test_internal_addresses_are_denied(ip: str) -> None:
    assert denied(ip)


@pytest.mark.parametrize("ip", ALLOWED)
def test_other_addresses_are_allowed(ip: str) -> None:
    assert not denied(ip)


def test_permitted_keeps_order_and_refuses_when_none_left() -> None:
    v4, v6 = socket.AF_INET, socket.AF_INET6
    addresses = [(v4, ("127.0.0.1", 80)), (v4, ("8.8.8.8", 80)),
                 (v6, ("::1", 80, 0, 0)), (v6, ("2001:db8::1", 80, 0, 0))]
    assert outbound._permitted(addresses) == [addresses[1], addresses[3]]
    with pytest.raises(OutboundError) as info:
        outbound._permitted([addresses[0], addresses[2]])
    assert info.value.condition == "policy-violation"


def test_target_endpoint_and_tls_name() -> None:
    plain = Target("example.com", 8080, tls=False)
    assert plain.endpoint == ("example.com", 8080)
    assert plain.tls_name is None
    # connect-host: connect-port as is, even when left out (0)
    assert Target("example.com", 80, False, connect_host="10.0.0.5").endpoint == ("10.0.0.5", 0)
    assert Target("example.com", 80, False, connect_host="h", connect_port=81).endpoint \
        == ("h", 81)
    # connect-port without connect-host is not used
    assert Target("example.com", 80, False, connect_port=81).endpoint == ("example.com", 80)
    # TLS name: the URL host unless trust-connect-host
    t = Target("www.example.com", 443, tls=True, connect_host="backend.test")
    assert t.tls_name == "www.example.com"
    t = Target("www.example.com", 443, tls=True, connect_host="backend.test",
               trust_connect_host=True)
    assert t.tls_name == "backend.test"
    assert Target("[::1]", 443, tls=True).tls_name == "::1"
    assert Target("[::1]", 443, tls=True).endpoint == ("::1", 443)


def test_pool_keys_separate_what_must_not_mix() -> None:
    addr = ("127.0.0.1", 443)
    verified = Target("a.test", 443, True).key(addr)
    unverified = Target("a.test", 443, True, ignore_tls_errors=True).key(addr)
    other_host = Target("b.test", 443, True).key(addr)
    plain = Target("a.test", 443, False).key(addr)
    trusted = Target("a.test", 443, True, connect_host="c.test", trust_connect_host=True).key(addr)
    keys = [verified, unverified, other_host, plain, trusted]
    assert len(set(keys)) == len(keys)
    assert Target("a.test", 443, True, connect_host="c.test").key(addr) == verified


class NoDns:
    """A loop whose resolver must not be called."""

    async def getaddrinfo(self, *args, **kw):
        raise AssertionError("DNS was used for a literal address")


def run(coro):
    return asyncio.run(coro)


def test_literals_skip_dns() -> None:
    loop = NoDns()
    assert run(outbound.resolve(loop, "192.0.2.7", 80)) == [(socket.AF_INET, ("192.0.2.7", 80))]
    family, sockaddr = run(outbound.resolve(loop, "[2001:db8::7]", 443))[0]
    assert family == socket.AF_INET6 and sockaddr[:2] == ("2001:db8::7", 443)


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(OutboundError) as info:
        run(outbound.resolve(NoDns(), "192.0.2.7", port))
    assert info.value.condition == "bad-request"


@pytest.mark.parametrize("host", ["", "a" * 64 + ".test", "bad\x00host"])
def test_unresolvable_names_are_undefined_condition(host: str) -> None:
    # every one fails before a query leaves the host
    async def attempt():
        return await outbound.resolve(asyncio.get_running_loop(), host, 80)

    with pytest.raises(OutboundError) as info:
        run(attempt())
    assert info.value.condition == "undefined-condition"


def test_collect_drops_duplicates_and_keeps_sixteen() -> None:
    tcp = (socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
    infos = [(socket.AF_INET, *tcp, (f"192.0.2.{i}", 80)) for i in range(20)]
    infos.insert(1, infos[0])
    infos.insert(0, (socket.AF_UNIX, *tcp, "/x"))
    got = outbound._collect(infos)
    assert len(got) == 16
    assert [a[1][0] for a in got] == [f"192.0.2.{i}" for i in range(16)]


def test_pool_capacity() -> None:
    assert capacity_for(100, 10000) == 1010
    assert capacity_for(100, 10000, workers=2) == 505
    assert capacity_for(1, 1) == 0
