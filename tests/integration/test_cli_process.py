"""The command line as a real process: ``python -m condure`` with argv that
stop before any socket is opened, compared where cheap with Debian's
condure 1.9.1 (``/usr/bin/condure``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from condure import __version__

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path("/usr/bin/condure")
ERR_LINE = re.compile(r"^\[ERR\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[condure\] (.*)$")

reference = pytest.mark.skipif(not REFERENCE.exists(), reason="needs /usr/bin/condure")


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd is a temp dir so that a run that got further than expected could
    # not leave an ipc socket in the checkout; subprocess.run kills the
    # process if the timeout expires.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=20)


def ours(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "condure", *argv], cwd)


def theirs(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([str(REFERENCE), *argv], cwd)


def err_messages(stdout: str) -> list[str]:
    return [m.group(1) for line in stdout.splitlines() if (m := ERR_LINE.match(line))]


def test_version(tmp_path: Path) -> None:
    for flag in ("-V", "--version"):
        proc = ours([flag], tmp_path)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"condure {__version__}\n", "")


def test_help(tmp_path: Path) -> None:
    proc = ours(["--help"], tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: condure [OPTIONS]")
    for flag in ("--listen", "--zclient-stream", "--ipc-file-mode", "--compression"):
        assert flag in proc.stdout


@pytest.mark.parametrize("argv", [["--bogus"], ["--log-level"], ["--id", "a", "--id", "b"]])
def test_syntax_error(argv: list[str], tmp_path: Path) -> None:
    proc = ours(argv, tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "usage: condure [OPTIONS]" in proc.stderr


def test_semantic_error(tmp_path: Path) -> None:
    proc = ours(["--listen", "127.0.0.1:0,bogus"], tmp_path)
    assert proc.returncode == 1 and proc.stderr == ""
    assert err_messages(proc.stdout) == ["failed to parse listen: invalid param: bogus"]
    assert len(proc.stdout.splitlines()) == 1


SIZE_LINE = re.compile(r"^([a-z_]+): (\d+) bytes$")
# Plausible bounds per figure: the Python heap of one connection (the
# measured PSS per idle connection is 2-4 KiB, docs/performance.md), and
# zlib's window and tables for deflate (about 190 KB).
SIZE_BOUNDS = {
    "req_connection": (200, 64 << 10),
    "stream_connection": (500, 64 << 10),
    "websocket_connection": (500, 64 << 10),
    "deflate_codec_state": (100_000, 1 << 20),
}


@pytest.mark.parametrize("argv", [
    ["--sizes"],
    ["--sizes", "--workers", "4", "--listen", "127.0.0.1:0,req", "--compression",
     "--zclient-stream", "ipc://here", "--pid-file", "here.pid"],
    # as Condure: once the syntax is right, the values are not checked
    ["--workers", "x", "--listen", "foo", "--sizes"],
], ids=["alone", "with-options", "with-bad-values"])
def test_sizes(argv: list[str], tmp_path: Path) -> None:
    proc = ours(argv, tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    matches = [SIZE_LINE.match(line) for line in proc.stdout.splitlines()]
    assert all(matches), proc.stdout
    figures = {m.group(1): int(m.group(2)) for m in matches if m}
    assert list(figures) == list(SIZE_BOUNDS) and len(matches) == 4
    for name, (low, high) in SIZE_BOUNDS.items():
        assert low < figures[name] < high, (name, figures[name])
    assert list(tmp_path.iterdir()) == []  # no socket, pid file or ipc file


def test_sizes_after_a_syntax_error(tmp_path: Path) -> None:
    proc = ours(["--sizes", "--bogus"], tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "usage: condure [OPTIONS]" in proc.stderr


# ------------------------------------------------------------- against 1.9.1


@pytest.mark.reference
@reference
@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "x"],
        ["--log-level="],
        ["--log-level", "99999999999999999999"],
        ["--id", ""],
        ["--id=a b"],
        ["--workers", "x"],
        ["--workers", "1025"],
        ["--workers", "101"],
        ["--stream-maxconn", "1"],
        ["--stream-maxconn", "9999901"],
        ["--buffer-size", "1.5"],
        ["--stream-timeout", "+x"],
        ["--ipc-file-mode", "x"],
        ["--listen", "foo"],
        ["--listen", ""],
        ["--listen", "1.2.3.4:99999"],
        ["--listen", "abc:80"],
        ["--listen", "[::1]"],
        ["--listen", "01.2.3.4:0"],
        ["--listen=127.0.0.1:0,bogus"],
        ["--listen", "80,req,bogus"],
        ["--zclient-stream", "foo"],
        ["--zclient-stream", "tcp://1.2.3.4"],
        ["--zclient-stream", "tcp://:70000"],
        ["--id", "", "--log-level", "x"],
        ["--listen", "x", "--workers", "x"],
        ["--stream-maxconn", "1", "--listen", "x"],
    ],
)
def test_same_error_as_reference(argv: list[str], tmp_path: Path) -> None:
    mine, ref = ours(argv, tmp_path), theirs(argv, tmp_path)
    assert ref.returncode == 1, ref.stdout + ref.stderr
    assert mine.returncode == 1
    assert err_messages(mine.stdout) == err_messages(ref.stdout)
    assert len(err_messages(mine.stdout)) == 1


@pytest.mark.reference
@reference
@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["--list", "80"],
        ["--log-level"],
        ["--id", "a", "--id", "b"],
        ["--zclient-connect", "--zclient-connect"],
        ["--zclient-connect=yes"],
        ["extra"],
    ],
)
def test_same_syntax_exit_as_reference(argv: list[str], tmp_path: Path) -> None:
    mine, ref = ours(argv, tmp_path), theirs(argv, tmp_path)
    assert ref.returncode == mine.returncode == 2
    assert ref.stdout == mine.stdout == ""
    assert ref.stderr and mine.stderr


@pytest.mark.reference
@reference
@pytest.mark.parametrize("argv, code", [
    (["--sizes"], 0),
    (["--sizes", "--workers", "x", "--listen", "foo"], 0),
    (["--sizes", "--stream-maxconn", "1"], 0),
    (["--sizes", "--sizes"], 2),
    (["--sizes", "--bogus"], 2),
])
def test_sizes_exit_as_reference(argv: list[str], code: int, tmp_path: Path) -> None:
    mine, ref = ours(argv, tmp_path), theirs(argv, tmp_path)
    assert ref.returncode == mine.returncode == code
    # Both print one "name: N bytes" line per figure, or nothing on stdout.
    for proc in (mine, ref):
        lines = proc.stdout.splitlines()
        assert bool(lines) is (code == 0)
        assert all(SIZE_LINE.match(line) for line in lines), proc.stdout


@pytest.mark.reference
@reference
def test_version_format_as_reference(tmp_path: Path) -> None:
    ref = theirs(["--version"], tmp_path)
    assert ref.returncode == 0
    assert re.fullmatch(r"condure \d+\.\d+\.\d+\n", ref.stdout)
    assert re.fullmatch(r"condure \d+\.\d+\.\d+\n", ours(["--version"], tmp_path).stdout)
