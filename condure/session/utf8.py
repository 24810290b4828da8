"""The UTF-8 check of WebSocket text (RFC 6455 5.6, 8.1), both ways: a
peer's text messages and close reasons (client frames in the server role,
origin frames in the client role, :mod:`condure.session.ws_input`) and a
handler's text messages (:mod:`condure.session.ws_output`).

A message in one piece is checked by :func:`valid`: one pass of the C
decoder, none at all when it is ASCII. A message in pieces (fragments,
packets with ``more``) is checked as it goes by an incremental decoder
(:func:`decoder`, :func:`feed`), which holds back an unfinished sequence at
the end of a piece until the next piece completes it, so a character may
be split at any byte.

Python's decoder holds ``ED A0``..``ED BF`` as an unfinished sequence,
but that is the start of a UTF-16 surrogate, which no continuation makes
valid (every other unfinished sequence it holds can still be completed):
:func:`feed` refuses it at once. A peer that checks each fragment as it
arrives refuses the fragment that ends with it: Chromium does (it failed
the connection on a text fragment ending with ``ED A0``, while it waited
for the rest of one ending with ``E2 82``).
"""

from __future__ import annotations

import codecs

decoder = codecs.getincrementaldecoder("utf-8")


def valid(data: bytes) -> bool:
    """``data`` is a whole UTF-8 text."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def feed(state: codecs.IncrementalDecoder, data: bytes, final: bool = False) -> bool:
    """Add the next piece of a text to the check ``state`` (a :func:`decoder`);
    False when the text can no longer be UTF-8, or, with ``final``, ends
    inside a character."""
    try:
        state.decode(data, final)
    except UnicodeDecodeError:
        return False
    if not final:
        held = state.getstate()[0]
        if len(held) > 1 and held[0] == 0xED and held[1] >= 0xA0:
            return False  # a surrogate (see the module docstring)
    return True

