"""The `--base` option of the example handlers: where condure's sockets are.

Condure in stream mode (`--zclient-stream BASE`) binds three endpoints made
from BASE: `ipc://X` gives `ipc://X-out` (PUSH: new requests),
`ipc://X-out-stream` (ROUTER: later packets of a session) and `ipc://X-in`
(SUB: packets from handlers); `tcp://HOST:P` gives ports P, P+1 and P+2.

The default, `ipc://client`, is a path relative to the working directory,
so a handler started with it must run in the directory condure was started
in. condure run by the shipped systemd unit binds
`ipc:///run/condure/client`; pass that as `--base`.

Used by the example handlers in this folder; not part of condure itself.
"""

DEFAULT_BASE = "ipc://client"


def add_base_option(parser):
    """Add `--base` (condure's `--zclient-stream` base) to an argparse parser."""
    parser.add_argument(
        "--base",
        default=DEFAULT_BASE,
        help="condure's --zclient-stream base: BASE-out, BASE-out-stream and BASE-in "
        "for ipc, ports P, P+1, P+2 for tcp://HOST:P (default: %(default)s, "
        "relative to the working directory)",
    )


def stream_endpoints(base):
    """(out, out-stream, in): condure's three stream endpoints for `base`."""
    if base.startswith("tcp://"):
        host, _, port = base[len("tcp://"):].rpartition(":")
        return tuple(f"tcp://{host}:{int(port) + i}" for i in range(3))
    return (base + "-out", base + "-out-stream", base + "-in")
