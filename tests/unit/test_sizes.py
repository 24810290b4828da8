"""The figures of ``condure --sizes`` (condure/sizes.py), measured for real."""

from __future__ import annotations

import re
import tracemalloc

import pytest

from condure import sizes
from tests.conftest import collect_earlier_garbage


@pytest.fixture(autouse=True)
def _collected(earlier_garbage: None) -> None:
    """(sizes collects garbage: earlier tests' first, see tests/conftest.py)"""


@pytest.fixture(scope="module")
def first() -> dict[str, int]:
    collect_earlier_garbage()  # (a module fixture runs before _collected)
    return sizes.measure()


def test_names_and_format(first: dict[str, int]) -> None:
    assert tuple(first) == sizes.NAMES
    lines = sizes.lines(count=20)
    assert [line.split(":")[0] for line in lines] == list(sizes.NAMES)
    assert all(re.fullmatch(r"[a-z_]+: [1-9]\d* bytes", line) for line in lines), lines


def test_every_connection_costs_something(first: dict[str, int]) -> None:
    assert all(size > 0 for size in first.values()), first
    # A WebSocket holds its session, input and output state and the adapter's Conn.
    assert first["websocket_connection"] > 500, first


def test_figures_are_stable(first: dict[str, int]) -> None:
    again = sizes.measure()
    for name in sizes.NAMES:
        assert abs(again[name] - first[name]) <= first[name] / 10, (name, first, again)


def test_figures_are_per_connection(first: dict[str, int]) -> None:
    # Shared things (the options, the worker) counted by mistake would show
    # as a figure that shrinks as the count grows.
    few = sizes.measure(count=25)
    for name in sizes.NAMES:
        assert abs(few[name] - first[name]) <= first[name] / 10, (name, first, few)


def test_deflate_includes_zlibs_own_allocations(first: dict[str, int]) -> None:
    # zlib's compressor window and tables (its documented formula) are the
    # bulk; the Python objects around them and zlib's small state add a few
    # KiB. By default (--compression-context server) the client compresses
    # each message on its own, so no inflate window is kept between
    # messages (ZLIB_INFLATE, 32 KiB, was counted with Condure's answer).
    floor = sizes.ZLIB_DEFLATE
    assert floor < first["deflate_codec_state"] < floor + (32 << 10), first


def test_tracing_is_left_as_found() -> None:
    assert not tracemalloc.is_tracing()
    sizes.measure(count=5)
    assert not tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        sizes.measure(count=5)
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()
