"""Run Debian's Pushpin on top of a chosen condure, with a local origin.

``start_pushpin(impl, workdir)`` writes a private Pushpin configuration into
``workdir`` (its own ports, run dir, ipc prefix and routes; never the
system-wide /etc/pushpin config or the default ports), starts ``zurl`` (the
outbound side: Pushpin reaches the origin through it), then the Pushpin
runner, whose ``condure_bin`` is a wrapper script that logs its argv to
``condure.argv`` and runs either Debian's /usr/bin/condure ("reference") or
this repository's ``python -m condure`` ("ours"). It returns once a request
through Pushpin's client port came back from the origin.

The origin is ``tests.harness.origin.Origin`` (HTTP and WebSocket echo);
``routes`` adds route lines before its catch-all (for further origins).

``outbound="condure"`` runs Pushpin with no zurl at all: this repository's
condure in client mode (``--zserver-stream``, no listener) binds the three
endpoints the proxy's ``zurl_out_specs``, ``zurl_out_stream_specs`` and
``zurl_in_specs`` connect to. Pushpin's names ``...zurl-in``,
``...zurl-in-stream`` and ``...zurl-out`` are exactly condure's
``BASE-in``, ``BASE-in-stream`` and ``BASE-out`` for ``BASE=...zurl``.

Everything runs as the test's own processes, each in its own process group;
``PushpinInstance.stop()`` ends them all (the runner first, so it can stop its
services, then whatever is left of its group).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import http_client
from tests.harness.origin import Origin, big_body
from tests.harness.procs import REFERENCE_BIN, REPO_ROOT, Proc, StartupError, _spawn, free_port

PUSHPIN_BIN = "/usr/bin/pushpin"
ZURL_BIN = "/usr/bin/zurl"
PUSHPIN_INTERNAL_CONF = Path("/usr/lib/pushpin/internal.conf")
IPC_PREFIX = "pp-"
CLIENT_BUFFER_SIZE = 8192
CLIENT_MAXCONN = 1000
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def missing() -> str | None:
    """Why Pushpin cannot run here, or None."""
    for path in (PUSHPIN_BIN, ZURL_BIN):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (Debian packages pushpin and zurl)"
    if not PUSHPIN_INTERNAL_CONF.exists():
        return f"{PUSHPIN_INTERNAL_CONF} is missing (Debian package pushpin)"
    return None


def write_condure_wrapper(path: Path, impl: str, argv_log: Path) -> None:
    """The script Pushpin runs as ``condure_bin``: log argv, exec condure."""
    if impl == "reference":
        run = f'exec {REFERENCE_BIN} "$@"'
    elif impl == "ours":
        run = (f'PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}} PYTHONUNBUFFERED=1 '
               f'exec {sys.executable} -m condure "$@"')
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {argv_log}\n{run}\n")
    path.chmod(0o755)


def write_config(workdir: Path, http_port: int, control_port: int, origin_port: int,
                 condure_bin: Path, local_ports: str | None = None, log_level: int = 2,
                 https_port: int | None = None, routes: list[str] | None = None) -> Path:
    """Write pushpin.conf, internal.conf, routes and zurl.conf into ``workdir``."""
    rundir = workdir / "run"
    rundir.mkdir(parents=True, exist_ok=True)
    (workdir / "log").mkdir(exist_ok=True)
    # Debian's internal.conf expects zurl at /var/run/zurl; point it at ours
    internal = PUSHPIN_INTERNAL_CONF.read_text()
    internal, n = re.subn(r"ipc:///var/run/zurl/zurl-", "ipc://{rundir}/{ipc_prefix}zurl-",
                          internal)
    assert n == 3, "unexpected internal.conf layout"
    (workdir / "internal.conf").write_text(internal)
    lines = [*(routes or []), f"* 127.0.0.1:{origin_port}"]
    (workdir / "routes").write_text("".join(f"{line}\n" for line in lines))
    runner_extra = f"local_ports={local_ports}\n" if local_ports else ""
    if https_port:
        runner_extra += f"https_ports=127.0.0.1:{https_port}\n"
    ipc = f"ipc://{rundir}/{IPC_PREFIX}"
    conf = workdir / "pushpin.conf"
    conf.write_text(f"""\
[global]
include={workdir}/internal.conf
rundir={rundir}
ipc_prefix={IPC_PREFIX}
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:{http_port}
{runner_extra}logdir={workdir}/log
log_level={log_level}
client_buffer_size={CLIENT_BUFFER_SIZE}
client_maxconn={CLIENT_MAXCONN}
condure_bin={condure_bin}

[proxy]
routesfile=routes
debug=true
sig_iss=pushpin
sig_key=changeme
updates_check=off

[handler]
push_in_spec={ipc}push-in
push_in_sub_specs={ipc}push-in-sub
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port={control_port}
stats_spec={ipc}stats
command_spec={ipc}command
""")
    (workdir / "zurl.conf").write_text(f"""\
[General]
instance_id=zurl-test
in_spec={ipc}zurl-in
in_stream_spec={ipc}zurl-in-stream
out_spec={ipc}zurl-out
defpolicy=allow
allow=
deny=
max_open_requests=200
buffer_size=200000
timeout=60
""")
    return conf


@dataclass
class PushpinInstance:
    impl: str
    workdir: Path
    port: int
    origin: Origin
    zurl: Proc  # the outbound side: zurl, or our condure in client mode
    runner: Proc | None
    argv_log: Path
    control_port: int = 0  # pushpin-handler's HTTP API (publish)
    outbound: str = "zurl"  # "zurl" or "condure"
    local_path: Path | None = None
    https_port: int | None = None
    tls_ca: Path | None = None  # CA certificate that verifies the TLS listener
    pgids: list[int] = field(default_factory=list)
    failed_probes: list[str] = field(default_factory=list)  # readiness tries that failed

    def condure_argv(self) -> list[str]:
        """The arguments Pushpin passed to condure."""
        return self.argv_log.read_text().splitlines()

    def output(self) -> str:
        return self.runner.output()

    def stop(self) -> None:
        """Stop the runner (it stops its services), zurl, then kill leftovers."""
        for proc in (self.runner, self.zurl):
            if proc is not None:
                proc.stop(signal.SIGTERM, STOP_TIMEOUT)
        for pgid in self.pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.origin.close()

    def leftovers(self) -> list[str]:
        """Live (non-zombie) processes still in the instance's process groups."""
        return [cmd for pgid in self.pgids for cmd in group_members(pgid)]


def group_members(pgid: int) -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(f"{entry.name}: {cmdline}")
    return out


def zurl_base(workdir: Path) -> str:
    """The endpoint base of Pushpin's zurl sockets in ``workdir``'s config."""
    return f"ipc://{workdir / 'run'}/{IPC_PREFIX}zurl"


def outbound_condure_args(workdir: Path) -> list[str]:
    """Condure's options for zurl's role: client mode on zurl's endpoints,
    zurl's instance id (``zurl.conf``'s ``instance_id``), no listener."""
    return ["--zserver-stream", zurl_base(workdir), "--id", "zurl-test"]


def start_outbound_condure(workdir: Path, timeout: float = READY_TIMEOUT) -> Proc:
    """Our condure in client mode (``outbound_condure_args``): it binds
    ``BASE-in`` (PULL), ``BASE-in-stream`` (ROUTER) and ``BASE-out`` (PUB).
    Ready once it says so on ``NOTIFY_SOCKET`` (its sockets are bound)."""
    from tests.harness.procs import _wait_notify, python_env

    notify_path = workdir / "outbound.notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = python_env()
    env["NOTIFY_SOCKET"] = str(notify_path)
    proc = _spawn("outbound-condure",
                  [sys.executable, "-m", "condure", *outbound_condure_args(workdir),
                   "--drain-timeout", "2"],
                  workdir / "outbound-condure.log", None, env=env, cwd=str(REPO_ROOT))
    try:
        _wait_notify(notify, proc, timeout)
    except BaseException:
        proc.stop(signal.SIGTERM, STOP_TIMEOUT)
        raise
    finally:
        notify.close()
    return proc


def start_pushpin(impl: str, workdir: Path, local: bool = False, tls: bool = False,
                  log_level: int = 2, timeout: float = READY_TIMEOUT,
                  outbound: str = "zurl", routes: list[str] | None = None) -> PushpinInstance:
    """Start an origin, the outbound side (``zurl``, or our condure in client
    mode for ``outbound="condure"``) and Pushpin (condure = ``impl``); wait
    until a request through Pushpin's port reaches the origin and comes back."""
    if outbound not in ("zurl", "condure"):
        raise ValueError(f"unknown outbound side {outbound!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    origin = Origin()
    argv_log = workdir / "condure.argv"
    wrapper = workdir / "condure-wrapper"
    write_condure_wrapper(wrapper, impl, argv_log)
    port = free_port()
    local_path = workdir / "run" / f"{IPC_PREFIX}server" if local else None
    https_port = free_port() if tls else None
    tls_ca = None
    if https_port:
        # the runner passes --tls-identities-dir=<config dir>/runner/certs and
        # default-cert=default_<port> for each of its https_ports
        tls_ca = make_cert(workdir / "runner" / "certs", f"default_{https_port}")
    control_port = free_port()
    conf = write_config(workdir, port, control_port, origin.port, wrapper,
                        str(local_path) if local_path else None, log_level, https_port,
                        routes)
    try:
        if outbound == "zurl":
            zurl = _spawn("zurl", [ZURL_BIN, f"--config={workdir / 'zurl.conf'}"],
                          workdir / "zurl.log", "started")
        else:  # ready once started (sd_notify): its sockets are bound
            zurl = start_outbound_condure(workdir, timeout)
    except BaseException:
        origin.close()
        raise
    inst = PushpinInstance(impl, workdir, port, origin, zurl, None, argv_log,
                           control_port, outbound, local_path, https_port, tls_ca,
                           pgids=[zurl.pid])
    try:
        if outbound == "zurl":
            _wait_marker(zurl, "zurl", timeout)
        inst.runner = _spawn("pushpin", [PUSHPIN_BIN, f"--config={conf}", "--merge-output"],
                             workdir / "pushpin.log", None)
        inst.pgids.append(inst.runner.pid)
        _wait_first_response(inst, time.monotonic() + timeout)
    except BaseException:
        inst.stop()
        raise
    return inst


def make_cert(certs: Path, name: str) -> Path:
    """A certificate for ``localhost`` from a throwaway CA: ``certs/name.crt``
    (chain) and ``.key`` (PEM). Returns the CA certificate for clients."""
    import trustme  # test extra; only TLS tests need it

    certs.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    (certs / f"{name}.crt").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(certs / f"{name}.key"))
    ca_path = certs.parent / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return ca_path


def fetch(port: int | Path, method: str, path: str, headers=(), body: bytes = b"",
          timeout: float = http_client.DEFAULT_TIMEOUT,
          tls_ca: Path | None = None) -> http_client.Response:
    """One request on a new connection: TCP port (TLS when ``tls_ca`` names
    the CA certificate; server name ``localhost``), or Unix socket path."""
    if tls_ca is not None:
        ctx = ssl.create_default_context(cafile=str(tls_ca))
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        conn = object.__new__(http_client.Conn)
        conn.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        conn.timeout, conn.buf, conn.received, conn.end = timeout, b"", b"", None
    elif isinstance(port, Path):
        conn = object.__new__(http_client.Conn)
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.settimeout(timeout)
        conn.sock.connect(str(port))
        conn.timeout, conn.buf, conn.received, conn.end = timeout, b"", b"", None
    else:
        conn = http_client.Conn(port, timeout=timeout)
    try:
        all_headers = [("Host", "example.com"), *headers]
        if body:
            all_headers.append(("Content-Length", str(len(body))))
        conn.send(http_client.request(method, path, all_headers, body))
        return conn.read_response(timeout)
    finally:
        conn.close()


def _wait_marker(proc: Proc, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not proc.pump.seen.wait(0.1):
        if not proc.alive() or time.monotonic() > deadline:
            raise StartupError(f"{what} did not start:\n{proc.pump.tail()}")


def _wait_first_response(inst: PushpinInstance, deadline: float) -> None:
    """Readiness: the port accepts and a GET comes back whole from the origin.

    The runner starts condure, pushpin-proxy and pushpin-handler at once; the
    proxy's ZeroMQ sockets connect to condure's binds on their own reconnect
    timers, so its PULL (new requests) can be connected while its ROUTER
    (later packets from condure, such as credits) is not yet. Condure drops
    a packet to an unconnected ROUTER peer, so the probe asks for a body
    several times condure's buffer: it only completes once credits flow
    back, i.e. every socket of the path is connected. Each try waits for an
    event (connection refused, a response, or a per-try timeout)."""
    probe = 4 * CLIENT_BUFFER_SIZE
    last = "no attempt"
    while time.monotonic() < deadline:
        if not inst.runner.alive():
            raise StartupError(f"pushpin ({inst.impl} condure) exited "
                               f"({inst.runner.popen.returncode}):\n{inst.runner.pump.tail(40)}")
        try:
            resp = fetch(inst.port, "GET", f"/big/{probe}", timeout=2.0)
            if resp.code == 200 and resp.body == big_body(probe):
                return
            last = f"{resp.code} {resp.body[:200]!r}"
        except (OSError, AssertionError) as e:
            last = repr(e)[:300]
        inst.failed_probes.append(last)
        try:  # back off briefly, or notice the runner exiting
            inst.runner.popen.wait(0.05)
        except subprocess.TimeoutExpired:
            pass
    raise StartupError(f"pushpin ({inst.impl} condure) not ready: {last}\n"
                       f"{inst.runner.pump.tail(40)}")
