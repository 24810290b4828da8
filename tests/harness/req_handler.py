"""Req-mode test helpers: condure with a req listener, and a scripted
req handler (``tests/handlers/scripted_handler.py --req``) facing its
DEALER as a ROUTER or a REP socket.

    condure = start_req_condure("ours", tmp_path)
    h = start_req_handler(condure, tmp_path, kind="rep")
    req = h.recv()                      # Pkt with socket "req"
    h.req_reply(req, body=b"hi")        # id only: no from, no seq
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness import procs, tnet
from tests.harness.handler_client import HandlerClient, HandlerError, Pkt


def req_endpoint(condure: procs.CondureProcess) -> str:
    return condure.args[condure.args.index("--zclient-req") + 1]


def start_req_condure(impl: str, workdir: Path, extra_args=(), stream: bool = False,
                      req_endpoint: str | None = None, **kw) -> procs.CondureProcess:
    """Condure with one req listener on a free port (``port``), plus a
    stream listener (``ports[1]``) when ``stream``; the DEALER binds
    ``req_endpoint`` (default ``ipc://<workdir>/req``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    listen = ["127.0.0.1:{port},req"] + (["127.0.0.1:{port1}"] if stream else [])
    args = ["--zclient-req", req_endpoint or f"ipc://{workdir}/req", *extra_args]
    return procs.start_condure(impl, workdir, extra_args=args, listen=listen, **kw)


class ReqHandlerClient(HandlerClient):
    """A HandlerClient whose replies go out on the req socket."""

    envelopes: dict[str, list[bytes]]

    def recv_or_none(self, timeout: float = 3.0) -> Pkt | None:
        """The next packet; the envelope frames of req packets are kept
        in ``envelopes`` by id."""
        answer = self.command({"cmd": "recv", "timeout": timeout}, timeout)
        if not answer.get("ok"):
            if answer.get("error") == "timeout":
                return None
            raise HandlerError(f"{self.name}: {answer}")
        raw = bytes.fromhex(answer["hex"])
        pkt = Pkt(answer["socket"], raw, tnet.decode_packet(raw))
        self.received.append(pkt)
        if not hasattr(self, "envelopes"):
            self.envelopes = {}
        self.envelopes[pkt.id] = [bytes.fromhex(f) for f in answer.get("envelope", [])]
        return pkt

    def req_send_fields(self, fields, envelope: list[bytes] | None = None) -> None:
        omap = tnet.OMap((k.encode() if isinstance(k, str) else k, v)
                         for k, v in (fields.items() if isinstance(fields, dict) else fields))
        cmd: dict[str, Any] = {"cmd": "req_send", "packet": tnet.to_json(omap)}
        if envelope is not None:
            cmd["envelope"] = [f.hex() for f in envelope]
        answer = self.command(cmd, 5.0)
        if not answer.get("ok"):
            raise HandlerError(f"{self.name}: req_send failed: {answer}")

    def req_send(self, target, type: str | None = None, fields=()) -> None:
        sid = target.id if isinstance(target, Pkt) else target
        out: list[tuple[str, Any]] = [("id", sid)]
        if type is not None:
            out.append(("type", type))
        out.extend(fields.items() if isinstance(fields, dict) else fields)
        self.req_send_fields(out)

    def req_reply(self, target, code: int = 200, reason: str = "OK", headers=(),
                  body: bytes = b"", extra=()) -> None:
        fields: list[tuple[str, Any]] = [("code", code), ("reason", reason)]
        if headers is not None:
            fields.append(("headers", [[n, v] for n, v in headers]))
        fields.append(("body", body))
        fields.extend(extra)
        self.req_send(target, fields=fields)

    def req_send_raw(self, frames: list[bytes]) -> None:
        answer = self.command({"cmd": "req_send_raw", "frames": [f.hex() for f in frames]}, 5.0)
        if not answer.get("ok"):
            raise HandlerError(f"{self.name}: req_send_raw failed: {answer}")


def start_req_handler(condure_or_endpoint, tmp_path: Path, kind: str = "router",
                      name: str | None = None, bind: bool = False,
                      wait: bool = True) -> ReqHandlerClient:
    """Start the scripted handler with only a req socket (``kind`` router
    or rep), connected to condure's DEALER (or bound, with ``bind``)."""
    if isinstance(condure_or_endpoint, procs.CondureProcess):
        endpoint = req_endpoint(condure_or_endpoint)
    else:
        endpoint = condure_or_endpoint
    name = name or f"req-{kind}"
    cmd = [sys.executable, "-m", "tests.handlers.scripted_handler", "--no-stream",
           "--req", endpoint, "--req-type", kind, "--ready-timeout", str(procs.READY_TIMEOUT)]
    if bind:
        cmd.append("--bind")
    stderr_path = tmp_path / f"{name}.stderr"
    with open(stderr_path, "wb") as errf:
        popen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errf, env=procs.python_env(), cwd=str(procs.REPO_ROOT),
                                 start_new_session=True)
    return ReqHandlerClient(name, popen, stderr_path, "", "condure",
                            timeout=procs.READY_TIMEOUT, wait=wait)
