"""What a session asks its I/O adapter to do.

A session never touches a socket, the event loop or the clock. Each call
that feeds it (bytes, EOF, a packet, a timer) appends actions to a list the
adapter drains with ``session.take_actions()``; the adapter executes them in
order. Reading is not an action but a property (``session.wants_read``)
that the adapter re-checks after every drain, and so is the next deadline
(``session.deadline``).

The action classes live in :mod:`condure.session.contract`, with the
session protocol they belong to; this module names them for its users.
"""

from __future__ import annotations

from condure.session.contract import Action, Close, Send, SwitchSession, Write

__all__ = ["Action", "Close", "Send", "SwitchSession", "Write"]
