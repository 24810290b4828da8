"""ZHTTP: packet types, tnetstring framing, and their encoding (no I/O)."""

from .codec import PacketError, UnknownType, encode, split_address
from .packets import (
    TYPE_NAMES,
    Cancel,
    Close,
    Credit,
    Data,
    Error,
    HandoffProceed,
    HandoffStart,
    Header,
    Ident,
    KeepAlive,
    Packet,
    Ping,
    Pong,
)
from .plain import decode

__all__ = [
    "TYPE_NAMES",
    "Cancel",
    "Close",
    "Credit",
    "Data",
    "Error",
    "HandoffProceed",
    "HandoffStart",
    "Header",
    "Ident",
    "KeepAlive",
    "Packet",
    "PacketError",
    "Ping",
    "Pong",
    "UnknownType",
    "decode",
    "encode",
    "split_address",
]
