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


@pytest.mark.parametrize("argv, flag", [
    (["--sizes"], "--sizes"),
])
def test_not_supported_yet(argv: list[str], flag: str, tmp_path: Path) -> None:
    proc = ours(argv, tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"{flag} is not supported yet" in proc.stderr
    assert list(tmp_path.iterdir()) == []


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
def test_version_format_as_reference(tmp_path: Path) -> None:
    ref = theirs(["--version"], tmp_path)
    assert ref.returncode == 0
    assert re.fullmatch(r"condure \d+\.\d+\.\d+\n", ref.stdout)
    assert re.fullmatch(r"condure \d+\.\d+\.\d+\n", ours(["--version"], tmp_path).stdout)
