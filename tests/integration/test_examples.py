"""The handler programs in examples/ against a real condure process.

Each test starts condure (ours, or Debian's /usr/bin/condure as the
reference) with its ipc:// sockets in the test's temporary directory, runs
example handlers as separate processes with that directory as their working
directory (the examples use relative ipc://client-* endpoints), and checks
what an HTTP client receives.

No handler readiness is awaited: condure's PUSH socket keeps a request until
a handler connects, so a request sent before the handler is up still gets
its answer.
"""

import base64
import http.client
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness.procs import free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
REFERENCE_BINARY = "/usr/bin/condure"
STARTUP_TIMEOUT = 15.0
IO_TIMEOUT = 10.0


class LineReader:
    """Collects the lines a child process writes to a pipe, in a thread."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.lines = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for line in iter(self.pipe.readline, b""):
            self.lines.put(line.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, predicate, timeout=IO_TIMEOUT):
        """Return the first line for which `predicate` holds; fail on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0))
            except queue.Empty:
                pytest.fail(f"no matching output line within {timeout} s")
            if line is None:
                pytest.fail("process closed its output before the expected line")
            if predicate(line):
                return line

    def close(self):
        self.thread.join(timeout=5)
        self.pipe.close()


def stop(proc, reader=None):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if reader is not None:
        reader.close()


def wait_ready_notify(notify, proc):
    """Wait for READY=1 on our notify socket, failing early if condure exits."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    notify.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            datagram = notify.recv(4096)
        except TimeoutError:
            if proc.poll() is not None:
                pytest.fail(f"condure exited with status {proc.returncode} before READY=1")
            continue
        if b"READY=1" in datagram.split(b"\n"):
            return
    pytest.fail(f"condure sent no READY=1 within {STARTUP_TIMEOUT} s")


class Condure:
    def __init__(self, port, workdir, impl):
        self.port = port
        self.workdir = workdir
        self.impl = impl

    @property
    def address(self):
        """The ZHTTP address of condure's packets: the instance id, or the
        id of one worker (``condure.<n>``) when there are several."""
        if self.impl in ("ours-1", "reference"):
            return re.compile(r"condure")
        return re.compile(r"condure\.[0-9]+")


def broker(request, tmp_path):
    """Handler-side endpoints for condure in --zclient-connect mode.

    The examples connect to ipc://client-* as they would to a condure in
    bind mode; here the bound side is the supervisor's relay (ZmqProxy), run
    in the test, and condure's workers connect to its internal endpoints.
    Its later-packets endpoint is a PULL, which a ROUTER cannot talk to, so
    in this mode handlers get no packets on their ROUTER (the examples only
    print those). Returns the base condure connects to.
    """
    from condure.config import Config
    from condure.supervisor.zmqproxy import ZmqProxy

    proxy = ZmqProxy(Config(zclient_stream=("ipc://{}".format(tmp_path / "client"),)))
    spec = proxy.start()
    request.addfinalizer(proxy.close)
    return spec["stream"][0]


@pytest.fixture(
    params=[
        "ours-1",
        "ours-4",
        "ours-4-connect",
        pytest.param("reference", marks=pytest.mark.reference),
    ]
)
def condure(request, tmp_path):
    """A running condure listening on 127.0.0.1 with ipc sockets in tmp_path.

    Ours runs with one worker, with 4 workers (the supervisor binds the
    endpoints), and with 4 workers each connecting (``--zclient-connect``).
    """
    port = free_port()
    args = [
        "--listen",
        f"127.0.0.1:{port}",
        "--zclient-stream",
        "ipc://{}".format(tmp_path / "client"),
    ]
    if request.param == "ours-1":
        args += ["--workers", "1"]
    elif request.param == "ours-4":
        args += ["--workers", "4"]
    elif request.param == "ours-4-connect":
        args[3] = broker(request, tmp_path)
        args += ["--workers", "4", "--zclient-connect"]
    if request.param == "reference":
        if not os.access(REFERENCE_BINARY, os.X_OK):
            pytest.skip(f"{REFERENCE_BINARY} is not installed")
        proc = subprocess.Popen(
            [REFERENCE_BINARY, *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        reader = LineReader(proc.stdout)
        request.addfinalizer(lambda: stop(proc, reader))
        reader.wait_for(lambda line: line.endswith("] started"), STARTUP_TIMEOUT)
    else:
        if not (REPO / "condure" / "cli.py").exists():
            pytest.skip("condure.cli is not written yet")
        notify_path = tmp_path / "notify"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        request.addfinalizer(notify.close)
        notify.bind(str(notify_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONPATH=str(REPO))
        proc = subprocess.Popen(
            [sys.executable, "-m", "condure", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # Drain the log so that a chatty condure never blocks on a full pipe.
        reader = LineReader(proc.stdout)
        request.addfinalizer(lambda: stop(proc, reader))
        wait_ready_notify(notify, proc)
    return Condure(port, tmp_path, request.param)


@pytest.fixture
def run_example(request, condure):
    """Start examples/<name>.py in condure's directory; stopped at teardown."""

    def start(name, *args, stdout=subprocess.DEVNULL):
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
            cwd=condure.workdir,
            stdout=stdout,
            stderr=None,
        )
        reader = LineReader(proc.stdout) if stdout == subprocess.PIPE else None
        request.addfinalizer(lambda: stop(proc, reader))
        return proc, reader

    return start


def http_get(port, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    conn.request("GET", path)
    resp = conn.getresponse()
    return conn, resp, resp.read()


def test_basichandler_says_hello_world(condure, run_example):
    run_example("basichandler")
    conn, resp, body = http_get(condure.port)
    try:
        assert resp.status == 200
        assert resp.reason == "OK"
        assert resp.getheader("Content-Type") == "text/plain"
        assert resp.getheader("Content-Length") == "12"
        assert body == b"hello world\n"
        # The connection stays usable for a second request.
        conn.request("GET", "/again")
        again = conn.getresponse()
        assert (again.status, again.read()) == (200, b"hello world\n")
    finally:
        conn.close()


def test_printreq_and_sendresp_answer_from_another_process(condure, run_example):
    _, printed = run_example("printreq", stdout=subprocess.PIPE)
    conn = http.client.HTTPConnection("127.0.0.1", condure.port, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", "/held")
        address, request_id = printed.wait_for(lambda line: True).split(" ")
        assert condure.address.fullmatch(address), address
        sender = subprocess.run(
            [
                sys.executable,
                str(EXAMPLES / "sendresp.py"),
                "responding from another process",
                address,
                request_id,
            ],
            cwd=condure.workdir,
            timeout=IO_TIMEOUT,
        )
        assert sender.returncode == 0
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "text/plain"
        assert resp.read() == b"responding from another process\n"
    finally:
        conn.close()


def test_streamhandler_streams_hello_world(condure, run_example):
    run_example("streamhandler")
    conn, resp, body = http_get(condure.port)
    try:
        assert resp.status == 200
        assert resp.getheader("Transfer-Encoding") == "chunked"
        assert resp.getheader("Content-Length") is None
        assert body == b"hello world\n"
    finally:
        conn.close()


def read_until(sock, predicate):
    """Read until `predicate(data)` holds, EOF or timeout; return what arrived."""
    data = b""
    while not predicate(data):
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_streamhandler_websocket_sends_hello_and_closes(condure, run_example):
    run_example("streamhandler")
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", condure.port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(handshake.encode())
        # Read until the close frame (opcode 8, FIN set) follows the message.
        data = read_until(sock, lambda d: b"\r\n\r\n\x81\x0bhello world\x88" in d)
    head, _, frames = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert frames.startswith(b"\x81\x0bhello world\x88")


# -- --base: the examples find condure from any directory ------------------

def start_elsewhere(request, tmp_path, name, *args, stdout=subprocess.DEVNULL):
    """examples/<name>.py run from a directory that is not condure's."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / f"{name}.py"), *args],
                            cwd=elsewhere, stdout=stdout)
    reader = LineReader(proc.stdout) if stdout == subprocess.PIPE else None
    request.addfinalizer(lambda: stop(proc, reader))
    return proc, reader


def test_handlers_take_base(condure, request, tmp_path):
    """basichandler, streamhandler and holdhandler serve condure's endpoints
    named by --base, one after the other, from another directory."""
    base = f"ipc://{condure.workdir}/client"
    for name in ("basichandler", "streamhandler", "holdhandler"):
        proc, _ = start_elsewhere(request, tmp_path, name, "--base", base)
        conn = http.client.HTTPConnection("127.0.0.1", condure.port, timeout=IO_TIMEOUT)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert resp.status == 200, name
            if name != "holdhandler":  # that one never ends its response
                assert resp.read() == b"hello world\n", name
        finally:
            conn.close()
        stop(proc)


def test_printreq_and_sendresp_take_base(condure, request, tmp_path):
    base = f"ipc://{condure.workdir}/client"
    _, printed = start_elsewhere(request, tmp_path, "printreq", "--base", base,
                                 stdout=subprocess.PIPE)
    conn = http.client.HTTPConnection("127.0.0.1", condure.port, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", "/held")
        address, request_id = printed.wait_for(lambda line: True).split(" ")
        sender = subprocess.run(
            [sys.executable, str(EXAMPLES / "sendresp.py"), "--base", base, "from elsewhere",
             address, request_id],
            cwd=tmp_path / "elsewhere", timeout=IO_TIMEOUT)
        assert sender.returncode == 0
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"from elsewhere\n")
    finally:
        conn.close()

