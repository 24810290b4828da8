"""Run the request corpus (tests/corpus, format in its README.md) through
one real condure with the scripted handler behind it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.harness import flows, tnet
from tests.harness.flows import assert_refused

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
_ESCAPE = re.compile(rb"\\(?:x([0-9a-fA-F]{2})|\{(\d+)\*([^}]*)\}|(.))", re.S)
_SIMPLE = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"\\": b"\\"}
MISSING = object()


def _unescape(line: bytes) -> bytes:
    def sub(m: re.Match) -> bytes:
        if m.group(1):
            return bytes.fromhex(m.group(1).decode())
        if m.group(2):
            return m.group(3) * int(m.group(2))
        if m.group(4) in _SIMPLE:
            return _SIMPLE[m.group(4)]
        raise ValueError(f"unknown escape \\{m.group(4)!r} in {line!r}")

    return _ESCAPE.sub(sub, line)


def load_http(path: Path) -> bytes:
    """The bytes a ``.http`` corpus file stands for (see the README)."""
    out = bytearray()
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        line = line.removesuffix(b"\r")
        if i == len(lines) - 1:
            out += _unescape(line)  # text after the last line break
            break
        trailing = len(line) - len(line.rstrip(b"\\"))
        if trailing % 2:  # an odd number of backslashes: continuation
            out += _unescape(line[:-1])
        else:
            out += _unescape(line) + b"\r\n"
    return bytes(out)


def cases(kind: str, sidecar: str) -> list:
    files = sorted((CORPUS / kind).glob("*.http"))
    assert files, f"no corpus files in {CORPUS / kind}"
    return [pytest.param(f, f.with_suffix(sidecar), id=f.stem) for f in files]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("corpus")) as server:
        yield server


@pytest.fixture
def srv(shared):
    yield shared.begin()
    shared.end()


def test_loader_escapes(tmp_path):
    f = tmp_path / "x.http"
    f.write_bytes(b"A \\x41\\{3*ab}\\\\\nB\\n\\\nC\r\n")
    assert load_http(f) == b"A Aababab\\\r\nB\nC\r\n"


@pytest.mark.parametrize("http, expect", cases("invalid", ".expect"))
def test_invalid(srv, http: Path, expect: Path):
    status = int(expect.read_text().split()[0])
    assert_refused(srv, load_http(http), status)
    # the probe's request must be the handler's next packet: nothing was
    # sent for the refused request before condure answered it
    srv.probe()


@pytest.mark.parametrize("http, expected", cases("valid", ".json"))
def test_valid(srv, http: Path, expected: Path):
    exp = json.loads(expected.read_text())
    h, c = srv.handler, srv.conn()
    c.send(load_http(http))
    req = h.recv()
    assert req.socket == "pull" and req.seq == 0
    for name, value in exp.get("fields", {}).items():
        got = req.get(name, MISSING)
        assert got is not MISSING, f"field {name!r} missing from {req!r}"
        assert tnet.to_json(got) == value, f"field {name!r}: {tnet.to_json(got)!r}"
    for name in exp.get("absent", []):
        assert name not in req, f"field {name!r} present in {req!r}"
    if "body" in exp:
        want = tnet.from_json(exp["body"])
        got = b""
        if req.get("more"):
            h.credit(req, 1 << 20)
            while True:
                part = h.recv()
                assert part.type == "" and part.id == req.id, part
                got += part.body
                if "more" not in part:
                    break
        assert got == want
    h.reply(req, body=b"corpus")
    resp = c.read_response()
    assert resp.code == 200 and resp.body == b"corpus"
