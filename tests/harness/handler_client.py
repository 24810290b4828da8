"""Test-side wrapper around a running ``scripted_handler`` process.

    h = start_handler(condure.base, tmp_path)        # see procs.py
    req = h.recv()                                   # Pkt, first request
    h.reply(req, code=200, reason="OK", headers=[("Content-Type", "text/plain")],
            body=b"hi")

Outgoing packets get ``from`` = the handler identity, the session ``id`` and
the next outgoing ``seq`` for that id (tracked per id; pass ``seq=`` to
override, ``seq=None`` to leave it out). They are published to the address
found in the ``from`` of the last packet condure sent for that id.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import tnet

AUTO = object()


def _ids(pkt: Pkt) -> list[str]:
    value = pkt.fields.get("id")
    if isinstance(value, bytes):
        return [value.decode()]
    if isinstance(value, list):
        return [e.get("id").decode() for e in value if isinstance(e.get("id"), bytes)]
    return []


@dataclass
class Pkt:
    """One packet condure sent to the handler."""

    socket: str  # "pull" or "router"
    raw: bytes  # the payload frame, "T..."
    fields: tnet.OMap
    # keep-alives for this id that recv() skipped before this packet
    skipped: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    @property
    def id(self) -> str:
        value = self.fields.get("id")
        return value.decode() if isinstance(value, bytes) else value

    @property
    def seq(self) -> int | None:
        """The seq as if the skipped keep-alives had never been sent: their
        timing is set by condure's sweep, not by the test."""
        seq = self.fields.get("seq")
        return seq - self.skipped if isinstance(seq, int) else seq

    @property
    def type(self) -> str:
        return (self.fields.get("type") or b"").decode()

    @property
    def sender(self) -> str:
        return (self.fields.get("from") or b"").decode()

    @property
    def body(self) -> bytes:
        return self.fields.get("body", b"")

    def keys(self) -> list[str]:
        return [k.decode() for k, _ in self.fields]

    def __repr__(self) -> str:
        return f"Pkt({self.socket}, {self.raw!r})"


class HandlerError(AssertionError):
    pass


class HandlerClient:
    def __init__(self, name: str, popen: subprocess.Popen, stderr_path: Path, identity: str,
                 sub_prefix: str, timeout: float = 15.0, wait: bool = True) -> None:
        self.name = name
        self.popen = popen
        self.stderr_path = stderr_path
        self.identity = identity
        self.sub_prefix = sub_prefix
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.received: list[Pkt] = []
        # Condure's keep-alives reach a session at a time set by its 45 s
        # sweep, not by the test: recorded in ``received`` but not returned,
        # unless a test asks for them.
        self.skip_keep_alives = True
        self.skipped_keep_alives: dict[str, int] = {}
        self.out_seq: dict[str, int] = {}
        self.address: dict[str, str] = {}
        self.returncode: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.subscriptions: list[str] = []
        self.ready_timeout = timeout
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the handler printed its ready line (see scripted_handler)."""
        timeout = self.ready_timeout if timeout is None else timeout
        try:
            ready = self._answer(timeout + 5)
        except HandlerError:
            self.close()
            raise
        if not ready.get("ready"):
            self.close()
            raise HandlerError(f"{self.name}: unexpected first line {ready!r}")
        self.subscriptions = ready.get("subscriptions", [])

    # -- process plumbing -------------------------------------------------

    def _read(self) -> None:
        for line in iter(self.popen.stdout.readline, b""):
            self.lines.put(line.decode())
        self.lines.put(None)

    def _stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _answer(self, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise HandlerError(f"{self.name}: no answer within {timeout}s") from None
        if line is None:
            self.popen.wait(5)
            raise HandlerError(f"{self.name} exited ({self.popen.returncode}):\n{self._stderr()}")
        return json.loads(line)

    def command(self, cmd: dict, timeout: float) -> dict:
        if self.popen.poll() is not None:
            raise HandlerError(f"{self.name} is not running:\n{self._stderr()}")
        self.popen.stdin.write((json.dumps(cmd) + "\n").encode())
        self.popen.stdin.flush()
        return self._answer(timeout + 5)

    def close(self, timeout: float = 5.0) -> int:
        if self.returncode is not None:
            return self.returncode
        if self.popen.poll() is None:
            try:
                self.popen.stdin.write(b'{"cmd": "quit"}\n')
                self.popen.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self.popen.stdin.close()
        self._reader.join(timeout)
        self.popen.stdout.close()
        self.returncode = self.popen.returncode
        return self.returncode

    # -- receiving --------------------------------------------------------

    def recv_or_none(self, timeout: float = 3.0) -> Pkt | None:
        deadline = time.monotonic() + timeout
        while True:
            pkt = self._recv_one(max(deadline - time.monotonic(), 0.0))
            if pkt is None:
                return None
            ids = _ids(pkt)
            if not (self.skip_keep_alives and pkt.type == "keep-alive"):
                if len(ids) == 1:
                    pkt.skipped = self.skipped_keep_alives.get(ids[0], 0)
                return pkt
            for ident in ids:
                self.skipped_keep_alives[ident] = self.skipped_keep_alives.get(ident, 0) + 1

    def _recv_one(self, timeout: float) -> Pkt | None:
        answer = self.command({"cmd": "recv", "timeout": timeout}, timeout)
        if not answer.get("ok"):
            if answer.get("error") == "timeout":
                return None
            raise HandlerError(f"{self.name}: {answer}")
        raw = bytes.fromhex(answer["hex"])
        pkt = Pkt(answer["socket"], raw, tnet.decode_packet(raw))
        self.received.append(pkt)
        ident = pkt.fields.get("id")
        if isinstance(ident, bytes) and pkt.sender:
            self.address[ident.decode()] = pkt.sender
        elif isinstance(ident, list) and pkt.sender:
            for entry in ident:
                self.address[entry.get("id").decode()] = pkt.sender
        return pkt

    def recv(self, timeout: float = 3.0) -> Pkt:
        pkt = self.recv_or_none(timeout)
        if pkt is None:
            raise HandlerError(f"{self.name}: no packet from condure within {timeout}s")
        return pkt

    def expect_nothing(self, duration: float = 0.3) -> None:
        """Assert that condure sends nothing for ``duration`` seconds."""
        pkt = self.recv_or_none(duration)
        if pkt is not None:
            raise HandlerError(f"{self.name}: unexpected packet {pkt!r}")

    # -- sending ----------------------------------------------------------

    def send_fields(self, fields, address: str | None = None, timeout: float = 5.0) -> None:
        """Publish a packet given as an ordered dict / list of pairs."""
        omap = tnet.OMap(
            (k.encode() if isinstance(k, str) else k, v)
            for k, v in (fields.items() if isinstance(fields, dict) else fields)
        )
        if address is None:
            ident = omap.get("id")
            key = ident.decode() if isinstance(ident, bytes) else ident
            address = self.address.get(key, self.sub_prefix) if isinstance(key, str) \
                else self.sub_prefix
        answer = self.command({"cmd": "send", "address": address,
                               "packet": tnet.to_json(omap), "timeout": timeout}, timeout)
        if not answer.get("ok"):
            raise HandlerError(f"{self.name}: send failed: {answer}")

    def send_raw(self, data: bytes, *more: bytes) -> None:
        """Publish ``data`` as one frame (``more``: frames after it, in the
        same message)."""
        answer = self.command({"cmd": "send_raw", "hex": data.hex(),
                               "more": [m.hex() for m in more]}, 5.0)
        if not answer.get("ok"):
            raise HandlerError(f"{self.name}: send_raw failed: {answer}")

    def next_seq(self, sid: str) -> int:
        seq = self.out_seq.get(sid, 0)
        self.out_seq[sid] = seq + 1
        return seq

    def send(self, target, type: str | None = None, seq: Any = AUTO, sender: Any = AUTO,
             address: str | None = None, fields=()) -> None:
        """Send a packet for one session (``target`` is a Pkt or an id).

        Fields are written as: from, id, seq, type, then ``fields`` (pairs
        or dict) in order.
        """
        sid = target.id if isinstance(target, Pkt) else target
        out: list[tuple[str, Any]] = []
        if sender is AUTO:
            sender = self.identity
        if sender is not None:
            out.append(("from", sender))
        out.append(("id", sid))
        if seq is AUTO:
            seq = self.next_seq(sid)
        if seq is not None:
            out.append(("seq", seq))
        if type is not None:
            out.append(("type", type))
        out.extend(fields.items() if isinstance(fields, dict) else fields)
        self.send_fields(out, address=address)

    def reply(self, target, code: int = 200, reason: str = "OK", headers=(), body: bytes = b"",
              more: bool = False, credits: int | None = None, **kw) -> None:
        fields: list[tuple[str, Any]] = [("code", code), ("reason", reason)]
        if headers is not None:
            fields.append(("headers", [[n, v] for n, v in headers]))
        fields.append(("body", body))
        if credits is not None:
            fields.append(("credits", credits))
        if more:
            fields.append(("more", True))
        self.send(target, fields=fields, **kw)

    def body(self, target, data: bytes, more: bool = False, **kw) -> None:
        fields: list[tuple[str, Any]] = []
        if data:
            fields.append(("body", data))
        if more:
            fields.append(("more", True))
        self.send(target, fields=fields, **kw)

    def credit(self, target, credits: int, **kw) -> None:
        self.send(target, type="credit", fields=[("credits", credits)], **kw)

    def cancel(self, target, **kw) -> None:
        self.send(target, type="cancel", **kw)

    def keep_alive(self, target, **kw) -> None:
        self.send(target, type="keep-alive", **kw)

    def handoff_start(self, target, **kw) -> None:
        self.send(target, type="handoff-start", **kw)
