"""``condure ctl``'s client side: where it looks for the socket, its
parser, its output for a person, and what it does when the socket does not
answer as condure's would (a socket served by the test: the I/O seam).
The server side runs in tests/integration/test_ctl.py."""

from __future__ import annotations

import json
import socket
import tempfile
import threading

import pytest

from condure import ctl, runtime
from condure.cli import main as cli_main


def test_default_path_follows_the_runtime_directory_rule(tmp_path):
    other = tmp_path / "xdg"
    other.mkdir()
    env = {"RUNTIME_DIRECTORY": str(tmp_path), "XDG_RUNTIME_DIR": str(other)}
    assert runtime.control_socket_path("web", environ=env) == str(tmp_path / "condure-web.ctl")
    # systemd may list several directories: the first one
    env["RUNTIME_DIRECTORY"] = f"{tmp_path}:{other}"
    assert runtime.control_socket_path("web", environ=env) == str(tmp_path / "condure-web.ctl")
    del env["RUNTIME_DIRECTORY"]
    assert runtime.control_socket_path("web", environ=env) == str(other / "condure-web.ctl")
    missing = {"RUNTIME_DIRECTORY": str(tmp_path / "gone")}
    assert runtime.control_socket_path("c", environ=missing) == \
        f"{tempfile.gettempdir()}/condure-c.ctl"


def test_given_path_and_none():
    assert runtime.control_socket_path("x", "/run/a.ctl") == "/run/a.ctl"
    assert runtime.control_socket_path("x", "") is None


@pytest.mark.parametrize("argv", [["--json", "status"], ["status", "--json"]])
def test_json_before_or_after_the_command(argv):
    args = ctl.build_parser().parse_args(argv)
    assert args.json is True and args.command == "status"


def test_requests_built_from_the_arguments():
    parse = ctl.build_parser().parse_args
    assert ctl.payload_of(parse(["connections"])) == {
        "command": "connections", "worker": None, "kind": None, "limit": 100}
    assert ctl.payload_of(parse(["connections", "--worker", "1", "--kind", "websocket",
                                 "--limit", "5"])) == {
        "command": "connections", "worker": 1, "kind": "websocket", "limit": 5}
    assert ctl.payload_of(parse(["log-level", "4"])) == {"command": "log-level", "level": 4}
    assert ctl.payload_of(parse(["--id", "web", "reload"])) == {"command": "reload"}
    # --wait: the supervisor bounds the wait (80 s unless --timeout, given
    # before or after the command, says otherwise)
    assert ctl.payload_of(parse(["reload", "--wait"])) == {
        "command": "reload", "wait": True, "timeout": 80.0}
    assert ctl.payload_of(parse(["--timeout", "7", "reload", "--wait"]))["timeout"] == 7.0
    assert ctl.payload_of(parse(["reload", "--wait", "--timeout", "9"]))["timeout"] == 9.0
    assert ctl.timeout_of(parse(["reload"])) == ctl.timeout_of(parse(["status"])) == 10.0
    assert not parse(["status"]).json


@pytest.mark.parametrize("argv", [[], ["nonsense"], ["log-level"], ["log-level", "x"],
                                  ["connections", "--kind", "tcp"],
                                  ["--socket", "/a", "--id", "b", "status"]])
def test_usage_errors_exit_2(argv, capsys):
    assert cli_main(["ctl", *argv]) == 2
    assert "usage: condure ctl" in capsys.readouterr().err


@pytest.mark.parametrize("argv, prog, says", [
    (["--timeout", "0", "status"], "condure ctl", "--timeout: must be more than 0"),
    (["--timeout", "-1", "status"], "condure ctl", "--timeout: must be more than 0"),
    (["--timeout", "x", "status"], "condure ctl", "--timeout: not a number"),
    (["connections", "--worker", "-1"], "condure ctl connections",
     "--worker: slots are numbered from 0"),
    (["log-level", "x"], "condure ctl log-level", "invalid int value"),
    (["reload", "--wait", "--timeout", "0"], "condure ctl reload",
     "--timeout: must be more than 0"),
    (["reload", "--fallback-pid", "1"], "condure ctl reload",
     "--fallback-pid: not a process id to signal"),
    (["reload", "--fallback-pid", "-1"], "condure ctl reload",
     "--fallback-pid: not a process id to signal"),
])
def test_usage_errors_name_the_command_and_the_argument(argv, prog, says, capsys):
    """A usage error is exit 2 and one argparse line, "PROG: error: ...",
    PROG being the (sub)command, not its whole usage string."""
    assert cli_main(["ctl", "--socket", "/nonexistent.ctl", *argv]) == 2
    last = capsys.readouterr().err.rstrip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: ") and says in last, last


def test_a_waited_for_reload_that_fails_exits_1_and_says_why(tmp_path, capsys):
    path = str(tmp_path / "s.ctl")
    server = OneAnswer(path, b'{"ok": false, "error": "reload failed: new workers cannot '
                             b'start (3 failures in a row)"}\n')
    assert cli_main(["ctl", "--socket", path, "reload", "--wait"]) == 1
    server.join(5)
    assert json.loads(server.got) == {"command": "reload", "wait": True, "timeout": 80.0}
    assert "condure ctl: reload failed: new workers cannot start" in capsys.readouterr().err


def test_no_socket_exits_1(tmp_path, capsys):
    assert cli_main(["ctl", "--socket", str(tmp_path / "none.ctl"), "status"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to" in err and "none.ctl" in err


def test_the_main_help_points_to_ctl(capsys):
    assert cli_main(["--help"]) == 0
    assert "condure ctl" in capsys.readouterr().out


class OneAnswer(threading.Thread):
    """A Unix socket that reads one line and answers ``reply`` (bytes), then
    closes: the seam between the client and condure."""

    def __init__(self, path: str, reply: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.reply = reply
        self.got = b""
        self.start()

    def run(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while not self.got.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                self.got += chunk
            conn.sendall(self.reply)
        self.sock.close()


def test_one_line_each_way(tmp_path, capsys):
    path = str(tmp_path / "s.ctl")
    server = OneAnswer(path, b'{"ok": true, "reload": "started"}\n')
    assert cli_main(["ctl", "--socket", path, "reload"]) == 0
    server.join(5)
    assert json.loads(server.got) == {"command": "reload"}
    assert capsys.readouterr().out == "reload started\n"


def test_a_refusal_exits_1_and_says_why(tmp_path, capsys):
    path = str(tmp_path / "s.ctl")
    OneAnswer(path, b'{"ok": false, "error": "condure is stopping"}\n')
    assert cli_main(["ctl", "--socket", path, "reload"]) == 1
    assert "condure is stopping" in capsys.readouterr().err


def test_closed_without_an_answer(tmp_path, capsys):
    path = str(tmp_path / "s.ctl")
    OneAnswer(path, b"")
    assert cli_main(["ctl", "--socket", path, "status"]) == 1
    assert "without an answer" in capsys.readouterr().err


STATUS = {
    "ok": True, "pid": 10, "id": "condure", "state": "reloading", "log_level": 2, "slots": 1,
    "reload": {"pending": [0], "starting": []}, "respawn_due": [], "moved": 3, "lost": 1,
    "workers": [
        {"slot": 0, "pid": 11, "generation": 5, "role": "retiring", "state": "handing over",
         "up": 61.2, "heard": 0.3, "connections": {"http": 2, "websocket": 7, "req": 0,
                                                   "outgoing": 0},
         "total": 9, "waiting": 1, "lag_ms": 0.8, "queues": {"router": 4, "push": 0},
         "requests": 40, "handover": {"moved": 3, "closed": 0, "lost": 1}, "respawns": 2},
        {"slot": 0, "pid": 12, "generation": 6, "role": "current", "state": "ready",
         "up": 1.0, "heard": 0.1, "connections": {"http": 0, "websocket": 0, "req": 0,
                                                  "outgoing": 0},
         "total": 0, "waiting": 0, "lag_ms": None, "queues": {"router": 0, "push": 0},
         "requests": 0, "handover": None, "respawns": 2},
    ],
}


def test_status_for_a_person():
    text = ctl.show("status", STATUS)
    lines = text.splitlines()
    assert lines[0] == "condure condure (pid 10): reloading, log level 2, 1 slots"
    assert "slots to replace [0]" in lines[1]
    assert "moved between processes so far: 3 (lost 1)" in text
    head = lines.index(next(line for line in lines if line.startswith("SLOT")))
    row = lines[head + 1].split()
    assert row[:4] == ["0", "11", "retiring", "handing"]
    assert "3/0/1" in lines[head + 1] and lines[head + 2].split()[3] == "ready"
    assert lines[head + 2].split()[-2] == "-"  # no handover yet: a dash


def test_connections_and_stacks_for_a_person():
    text = ctl.show("connections", {
        "ok": True, "total": 3, "connections": [
            {"worker": 1, "pid": 5, "slot": 4, "id": "1-4-a", "peer": "127.0.0.1:4000",
             "age": 2.5, "kind": "http", "bytes_in": 30, "bytes_out": None, "state": "head"}],
        "unanswered": [{"slot": 0, "pid": 4, "error": "no answer within 2 s"}]})
    lines = text.splitlines()
    assert lines[1].split() == ["1", "4", "1-4-a", "127.0.0.1:4000", "2.5s", "http", "30", "-",
                                "head"]
    assert "1 listed of 3" in text and "worker 0 (pid 4): no answer within 2 s" in text
    stacks = ctl.show("stacks", {"ok": True, "supervisor": {"pid": 1, "stacks": "S\n"},
                                 "workers": [{"slot": 0, "pid": 2, "role": "current",
                                              "error": "no answer within 2 s"}]})
    assert stacks.splitlines() == ["=== supervisor (pid 1)", "S",
                                   "=== worker 0 (pid 2, current)", "no answer within 2 s"]


def test_ctl_finds_the_service_socket_when_the_default_has_none(tmp_path, monkeypatch):
    from condure import runtime
    env = {"RUNTIME_DIRECTORY": str(tmp_path)}
    default = str(tmp_path / "condure-x.ctl")
    service = tmp_path / "service"
    service.mkdir()
    monkeypatch.setattr(runtime, "SERVICE_RUNTIME_DIR", str(service))
    assert runtime.find_control_socket("x", env) == default  # nothing anywhere: the default
    (service / "condure-x.ctl").touch()
    assert runtime.find_control_socket("x", env) == str(service / "condure-x.ctl")
    (tmp_path / "condure-x.ctl").touch()
    assert runtime.find_control_socket("x", env) == default  # the default wins when it exists
