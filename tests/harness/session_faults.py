"""Deliberate bugs in condure's sessions, for the tests that a session
which raises costs its own connection and nothing else
(tests/integration/test_session_faults.py).

:func:`install` wraps a few session methods so that they raise
:class:`InjectedFault` for input carrying the marker ``boom!`` only; all
other traffic is served as usual by the same process:

- client bytes containing ``boom!`` (a request line, a request body):
  ``HttpSession.receive_data`` raises before looking at them;
- a handler data packet whose body is ``boom!``: ``receive_packet`` of the
  HTTP and the WebSocket session raises before looking at it;
- a WebSocket message ``boom!`` from the client: the session raises as it
  forwards it to the handler;
- a request for ``/boom-timer``: its session timer is brought forward to
  0.3 s and ``handle_timer`` raises when it fires;
- a request for ``/boom-stop``: ``going_away`` raises (a graceful stop).

The faults reach condure's worker processes through the environment
(:func:`fault_env` and ``fault_site/sitecustomize.py``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

MARKER = b"boom!"
TIMER_PATH = b"/boom-timer"
STOP_PATH = b"/boom-stop"
TIMER_DELAY = 0.3
SITE_DIR = Path(__file__).resolve().parent / "fault_site"


class InjectedFault(RuntimeError):
    """Raised on purpose inside a session."""


# Sessions marked for a later fault, by session id (a session keeps its
# attributes in slots: it cannot carry a mark of its own).
_ON_TIMER: set[bytes] = set()
_ON_STOP: set[bytes] = set()


def install() -> None:
    from condure.session.http import HttpSession
    from condure.session.websocket import WebSocketSession
    from condure.zhttp.packets import Data

    http_receive_data = HttpSession.receive_data

    def receive_data(self, data, now):
        if MARKER in data:
            raise InjectedFault("client bytes carry the marker")
        http_receive_data(self, data, now)
        if TIMER_PATH + b" " in data:
            _ON_TIMER.add(self.rid)
            self.session_deadline = now + TIMER_DELAY
        if STOP_PATH + b" " in data:
            _ON_STOP.add(self.rid)

    http_handle_timer = HttpSession.handle_timer

    def handle_timer(self, now):
        if self.rid in _ON_TIMER:
            raise InjectedFault("timer of a /boom-timer request")
        http_handle_timer(self, now)

    http_going_away = HttpSession.going_away

    def going_away(self, now=None, code=None):
        if self.rid in _ON_STOP:
            raise InjectedFault("graceful stop of a /boom-stop request")
        http_going_away(self, now, code)

    def packet_fault(original):
        def receive_packet(self, packet, ident, now):
            if type(packet) is Data and packet.body == MARKER:
                raise InjectedFault("handler packet carries the marker")
            original(self, packet, ident, now)
        return receive_packet

    ws_send = WebSocketSession._send
    ws_send_message = WebSocketSession._send_message

    def send(self, kind, **fields):
        if kind is Data and fields.get("body") == MARKER:
            raise InjectedFault("client message carries the marker")
        ws_send(self, kind, **fields)

    def send_message(self, content_type, body):  # (a whole message, in one step)
        if body == MARKER:
            raise InjectedFault("client message carries the marker")
        ws_send_message(self, content_type, body)

    HttpSession.receive_data = receive_data
    HttpSession.handle_timer = handle_timer
    HttpSession.going_away = going_away
    HttpSession.receive_packet = packet_fault(HttpSession.receive_packet)
    WebSocketSession.receive_packet = packet_fault(WebSocketSession.receive_packet)
    WebSocketSession._send = send
    WebSocketSession._send_message = send_message


@contextlib.contextmanager
def fault_env() -> Iterator[None]:
    """While in the block, processes started from here get the faults
    (start condure inside it, nothing else)."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "CONDURE_TEST_FAULTS")}
    old = saved["PYTHONPATH"]
    os.environ["PYTHONPATH"] = str(SITE_DIR) + (os.pathsep + old if old else "")
    os.environ["CONDURE_TEST_FAULTS"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
