"""Publish ZHTTP packets to condure without losing the first ones.

Condure reads handler packets on a SUB socket that subscribes to the prefix
"<condure id> ". A plain PUB socket drops every message sent before that
subscription has reached it (ZeroMQ's "slow joiner"), so a handler that
answers quickly after connecting, or a one-shot program like sendresp.py,
could lose its packet. This helper uses an XPUB socket instead: XPUB
reports each subscription as a message ("\\x01" + prefix, "\\x00" + prefix
when withdrawn), so we can wait until condure listens for an address before
publishing to it.

Used by the example handlers in this folder; not part of condure itself.
"""

import sys
import time

import tnetstring
import zmq

# How long to wait for condure's subscription before publishing anyway.
SUBSCRIPTION_WAIT = 5.0


class Publisher:
    """An XPUB socket that sends a packet only once its address is subscribed."""

    def __init__(self, ctx, endpoint, linger_ms=1000):
        self.sock = ctx.socket(zmq.XPUB)
        # Keep unsent packets for a while on close, so that one-shot
        # programs still deliver what they published just before exiting.
        self.sock.linger = linger_ms
        self.sock.connect(endpoint)
        self.prefixes = set()
        self.gave_up = set()

    def _read_subscription(self):
        msg = self.sock.recv()
        if msg[:1] == b"\x01":
            self.prefixes.add(msg[1:])
        elif msg[:1] == b"\x00":
            self.prefixes.discard(msg[1:])

    def _is_subscribed(self, topic):
        return any(topic.startswith(prefix) for prefix in self.prefixes)

    def wait_for(self, address, timeout=SUBSCRIPTION_WAIT):
        """Wait until messages for `address` would reach a subscriber.

        Returns True if a subscriber is there, False after `timeout` seconds.
        """
        topic = address + b" T"
        while self.sock.poll(0):
            self._read_subscription()
        deadline = time.monotonic() + timeout
        while not self._is_subscribed(topic):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000) + 1):
                return False
            self._read_subscription()
        return True

    def send(self, address, packet):
        """Publish `packet` (a dict) to the condure instance named `address`."""
        if address not in self.gave_up and not self.wait_for(address):
            # Send anyway, as a PUB would; warn only once per address.
            self.gave_up.add(address)
            print(
                "warning: no subscriber for {!r}; is condure running with that --id?".format(
                    address.decode(errors="replace")
                ),
                file=sys.stderr,
            )
        self.sock.send(address + b" T" + tnetstring.dumps(packet))

    def close(self):
        self.sock.close()
