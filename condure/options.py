"""The table of command-line options.

One row per option, in Condure 1.10's order. The table drives the argparse
parser (:mod:`condure.cli`), ``docs/options.md`` (:mod:`condure.optionsdoc`:
``python -m condure.optionsdoc --markdown``) and the man page. To add an
option, add a row (and, if it carries a value into
:class:`condure.config.Config`, a field of the same name there).

Defaults are written as command-line text and go through the same parser as
a given value, as Condure does, so a default can never disagree with the
validation of the option.
"""

from __future__ import annotations

from dataclasses import dataclass

# Value kinds. Each one names how cli.py turns the text into a value.
UINT = "uint"  # unsigned decimal, parsed with Rust's rules (error texts included)
OCTAL = "octal"  # unsigned octal (file modes)
TEXT = "text"
PATH = "path"
LISTEN = "listen"  # see LISTEN_PARAMS and condure.config.parse_listen
ZMQ_SPEC = "zmq-spec"  # a full ZeroMQ endpoint
ZMQ_BASE = "zmq-base"  # an endpoint base expanded into three endpoints
FLAG = "flag"  # no value
ACTION = "action"  # no value, does something and exits (help, version, sizes)

# The listener used when neither --listen nor a client-role spec is given.
DEFAULT_LISTEN = "0.0.0.0:8000,stream"


@dataclass(frozen=True, slots=True)
class Option:
    flag: str
    kind: str
    help: str
    doc: str
    metavar: str | None = None
    default: str | tuple[str, ...] | bool | None = None
    repeatable: bool = False
    short: str | None = None
    shown_default: str | None = None  # for help/docs when the default is conditional

    @property
    def name(self) -> str:
        """The flag without dashes, as used in Condure's error messages."""
        return self.flag[2:]

    @property
    def dest(self) -> str:
        """The argparse destination, also the Config field name."""
        return self.name.replace("-", "_")

    def default_text(self) -> str:
        """The default as shown in help and docs ("" when there is none)."""
        if self.default is None or self.default is False:
            return self.shown_default or ""
        if isinstance(self.default, tuple):
            return " ".join(self.default)
        return str(self.default)


OPTIONS: tuple[Option, ...] = (
    Option(
        "--log-level", UINT, "Log level (0 error .. 4 trace)",
        "Verbosity of the log on standard output: 0 errors only, 1 adds "
        "warnings, 2 adds informational lines (start, binds, listeners, stop), "
        "3 adds debug lines, 4 or more adds trace lines including every ZHTTP "
        "packet sent and received.",
        metavar="N", default="2",
    ),
    Option(
        "--id", TEXT, "Instance ID",
        "Identifies this instance to handlers: it is the `from` field of every "
        "packet sent, the prefix of the subscription on the SUB socket, and "
        "the ROUTER identity in client mode. It must be non-empty and must not "
        "contain a space.",
        metavar="ID", default="condure",
    ),
    Option(
        "--workers", UINT, "Number of workers",
        "Number of worker processes sharing the connections (at most 1024, at "
        "least 1). Each is one event loop; a supervisor process starts them, "
        "restarts one that dies (with a growing delay) and replaces them one "
        "by one on SIGHUP. The connection limits are checked against this "
        "value as Condure does.",
        metavar="N", default="2",
    ),
    Option(
        "--accept-mode", TEXT,
        "How workers get connections: auto, reuseport, shared or dispatch "
        "(auto: reuseport, or shared under socket activation)",
        "`reuseport`: one SO_REUSEPORT listening socket per worker, bound and "
        "kept by the supervisor (Unix sockets and inherited sockets are shared "
        "instead); `shared`: every worker accepts on one socket, a few "
        "connections per wakeup; `dispatch`: the supervisor accepts and passes "
        "each connection to the least-loaded worker. `auto`: reuseport when "
        "condure binds its listeners, shared under socket activation. See "
        "docs/accept-modes.md. Not a Condure option.",
        metavar="MODE", default="auto",
    ),
    Option(
        "--drain-timeout", UINT, "Seconds a graceful stop waits for requests in flight",
        "On SIGTERM (and for each worker replaced on SIGHUP) a worker stops "
        "accepting, closes idle connections (WebSocket: close frame 1001), "
        "and gives requests in flight this many seconds to finish before "
        "cancelling them. SIGINT stops at once. Not a Condure option.",
        metavar="SECONDS", default="30",
    ),
    Option(
        "--handoff-timeout", UINT, "Seconds of handler silence a handoff waits through",
        "When a live session moves to another process (SIGHUP, or a restart "
        "through systemd's fd store), condure sends its handler handoff-start "
        "and waits for handoff-proceed while the handler keeps sending (it is "
        "behind, not gone), up to --drain-timeout; once nothing came from the "
        "handler for this long, a session not answered moves without the "
        "answer (see --handoff). See docs/handover.md. Not a Condure option.",
        metavar="SECONDS", default="5",
    ),
    Option(
        "--handoff", TEXT,
        "Whether a moving session asks its handler first: auto, ask or skip",
        "`ask`: before a WebSocket, or an HTTP request in flight (a held "
        "long-poll, a streamed response), moves to another process, condure "
        "sends its handler handoff-start and waits for handoff-proceed (see "
        "--handoff-timeout), so that nothing the handler sends is missed, "
        "even across a restart; a handler that does not answer in time "
        "(Pushpin 1.36 does not implement it) has its sessions moved "
        "anyway. `skip`: do not ask; sessions move at once. `auto`: skip on "
        "a reload (the new worker keeps what the handler sends meanwhile, so "
        "nothing is lost), ask on a restart. A handler packet missed by a "
        "move that was not answered closes that WebSocket with 1012, or ends "
        "that HTTP request (connection closed, or response cut short). See "
        "docs/handover.md. Not a Condure option.",
        metavar="MODE", default="auto",
    ),
    Option(
        "--worker-timeout", UINT, "Seconds a worker may go without answering",
        "Each worker reports to the supervisor every second. One that has "
        "said nothing for this long (stuck in a loop, blocked, stopped) has "
        "its Python stacks written to the log, is killed and replaced (time in "
        "which the supervisor itself got no turn, as in a paused VM, does not "
        "count); while "
        "a worker is silent the systemd watchdog is not pinged. Workers that "
        "are stopping or handing over are bounded by --drain-timeout instead. "
        "0 turns the check off. See docs/operations.md. Not a Condure option.",
        metavar="SECONDS", default="20",
    ),
    Option(
        "--pid-file", PATH, "Write the supervisor's pid to this file",
        "Write the supervisor's process id to this file at start and remove "
        "it at exit. Not a Condure option.",
        metavar="PATH",
    ),
    Option(
        "--control-socket", PATH, "Control socket for condure ctl (empty: none)",
        "Path of the control socket that `condure ctl` talks to (status, "
        "connections, stacks, log level, reload; see CONTROL SOCKET in the man "
        "page and docs/operations.md). By default `condure-ID.ctl` (ID being "
        "`--id`) in `$RUNTIME_DIRECTORY`, else `$XDG_RUNTIME_DIR`, else the "
        "temporary directory; an empty value opens none. The socket is mode "
        "0600 and serves only root and condure's own user. If another live "
        "process serves that path, a given path stops condure with status 1, "
        "the default one is left to it (condure runs without a control "
        "socket and logs a warning). Not a Condure option.",
        metavar="PATH", shown_default="RUNTIME_DIR/condure-ID.ctl",
    ),
    Option(
        "--req-maxconn", UINT, "Maximum concurrent connections in req mode",
        "Limit on concurrent connections of req-mode listeners, over all "
        "workers: each worker holds N / workers. It must be at least the "
        "number of workers, and together "
        "with --stream-maxconn at most 10,000,000.",
        metavar="N", default="100",
    ),
    Option(
        "--stream-maxconn", UINT, "Maximum concurrent connections in stream mode",
        "Limit on concurrent connections of stream-mode listeners, over all "
        "workers: each worker holds N / workers. It must be at least the "
        "number of workers. It also sets the "
        "ZeroMQ high-water mark: max((req + stream maxconn) / 20, 1).",
        metavar="N", default="10000",
    ),
    Option(
        "--buffer-size", UINT, "Connection buffer size in bytes (two per connection)",
        "Size of each of the two buffers of a connection. The request head "
        "must fit in one buffer. It is also the credit offered to the handler "
        "in a request packet and the largest body chunk put in one packet.",
        metavar="N", default="8192",
    ),
    Option(
        "--body-buffer-size", UINT, "Body buffer size in bytes for req mode",
        "Req mode only: the largest request body and the largest response "
        "body of one exchange.",
        metavar="N", default="100000",
    ),
    Option(
        "--messages-max", UINT, "Maximum queued WebSocket messages per connection",
        "Largest number of handler-to-client WebSocket messages queued for "
        "one connection.",
        metavar="N", default="100",
    ),
    Option(
        "--max-message-size", UINT, "Largest WebSocket message from a client (0: no limit)",
        "Largest WebSocket message, in bytes after decompression, that a client "
        "may send. A longer message fails the connection with close code 1009 "
        "(RFC 6455 7.4.1) and the handler gets a cancel. 0, the default, sets no "
        "limit, as in Condure: messages are streamed to the handler in pieces "
        "against its credits whatever their size. Not a Condure option.",
        metavar="BYTES", default="0",
    ),
    Option(
        "--req-timeout", UINT, "Connection timeout in req mode (seconds)",
        "Req mode: time allowed for one request cycle (receiving the request, "
        "the handler's answer and writing it out). It also limits how long "
        "an idle persistent connection is kept. When it passes, a client still "
        "sending its request gets `408 Request Timeout`, one awaiting the "
        "handler `504 Gateway Timeout`; an idle connection is closed.",
        metavar="N", default="30",
    ),
    Option(
        "--stream-timeout", UINT, "Connection timeout in stream mode (seconds)",
        "Stream mode: a client connection with no activity for this long is "
        "closed and the handler is sent a cancel.",
        metavar="N", default="1800",
    ),
    Option(
        "--head-timeout", UINT, "Seconds a client has to send a whole request head (0: no limit)",
        "Stream mode: a new connection must deliver a complete request head "
        "within this many seconds of being accepted, and on a kept-alive "
        "connection a request must be complete this long after its first "
        "byte arrived (an idle kept-alive connection is closed by the 60 s "
        "session timeout instead, as in Condure). A client that sent part of "
        "a request by then gets `408 Request Timeout` and the connection "
        "closes; a new connection that sent nothing is closed without a "
        "response. This stops clients that trickle a head (slowloris) from "
        "holding connections. 0 turns it off. Req mode is bounded by "
        "--req-timeout. See docs/operations.md. Not a Condure option.",
        metavar="SECONDS", default="10",
    ),
    Option(
        "--body-min-rate", UINT, "Slowest request body accepted, in bytes per second (0: any)",
        "Stream mode: while condure waits for request body bytes, the client "
        "must send at least this many bytes per second, measured over windows "
        "of 10 seconds. Time during which condure itself does not read (the "
        "handler has not granted credits for more body) does not count. A "
        "client below the rate gets `408 Request Timeout` if no response has "
        "started, and the connection closes; the handler gets a cancel. 0 "
        "turns it off. See docs/operations.md. Not a Condure option.",
        metavar="BYTES", default="1024",
    ),
    Option(
        "--max-conns-per-ip", UINT, "Most connections per client address and worker (0: any)",
        "A new TCP connection from an address that already holds this many "
        "connections in the worker that accepted it is closed at once, before "
        "anything is read or written. The count is per worker (with N workers "
        "an address may hold up to N times this). Unix-socket clients are not "
        "counted. Connections moved in by a reload or a restart count too (they "
        "are never closed for it). 0, the default, sets no limit: clients "
        "behind one proxy or NAT share an address. See docs/operations.md. Not a Condure option.",
        metavar="N", default="0",
    ),
    Option(
        "--listen", LISTEN, "Address to listen on",
        "A listener, `[ADDR:]PORT[,PARAM...]` or `PATH,local[,PARAM...]`. "
        "ADDR is an IPv4 address or a bracketed IPv6 address (`[::1]:8000`); "
        "a port alone listens on 0.0.0.0; port 0 lets the kernel choose. "
        "PARAM is one of the listen parameters below; a later `req` or "
        "`stream` overrides an earlier one. Without any --listen (and "
        "without --zserver-req/--zserver-stream) the listener is "
        "`0.0.0.0:8000,stream`.",
        metavar="[ADDR:]PORT[,PARAMS...]", repeatable=True, shown_default=DEFAULT_LISTEN,
    ),
    Option(
        "--zclient-req", ZMQ_SPEC, "ZeroMQ endpoint of the req-mode DEALER socket",
        "Server role, req mode: endpoint of the DEALER socket that carries "
        "requests to handlers and their responses back.",
        metavar="SPEC", default=("ipc://client",), repeatable=True,
    ),
    Option(
        "--zclient-stream", ZMQ_BASE, "ZeroMQ endpoint base of the stream-mode sockets",
        "Server role, stream mode: base of the three endpoints (PUSH for "
        "first packets, ROUTER for later packets, SUB for packets from "
        "handlers). `ipc://X` gives `ipc://X-out`, `ipc://X-out-stream`, "
        "`ipc://X-in`; `tcp://HOST:P` gives ports P, P+1, P+2. Before "
        "binding, an `ipc://` socket file that another process listens on "
        "(a second condure on the same base) stops condure with status 1 "
        "instead of being taken over; one nobody listens on is removed; a "
        "file that is not a socket is an error. The same goes for "
        "`--zclient-req`.",
        metavar="BASE", default=("ipc://client",), repeatable=True,
    ),
    Option(
        "--zclient-connect", FLAG, "Connect the server-role ZeroMQ sockets instead of binding",
        "The ZeroMQ sockets of the server role connect to the given endpoints "
        "instead of binding them.",
        default=False,
    ),
    Option(
        "--zserver-req", ZMQ_SPEC, "ZeroMQ endpoint of the client-mode req ROUTER socket",
        "Client role, req mode: endpoint of the ROUTER socket on which "
        "handlers send requests for outgoing HTTP connections; each gets the "
        "whole response (or an error) as one reply on its envelope.",
        metavar="SPEC", repeatable=True,
    ),
    Option(
        "--zserver-stream", ZMQ_BASE, "ZeroMQ endpoint base of the client-mode stream sockets",
        "Client role, stream mode: base of the endpoints through which handlers "
        "have condure make outgoing HTTP and WebSocket requests: PULL "
        "`BASE-in` (first packets), ROUTER `BASE-in-stream` with identity "
        "`--id` (later packets) and PUB `BASE-out` (everything condure sends, "
        "prefixed with the handler's address). With `--zserver-*` options and "
        "no `--listen`, condure opens no listener.",
        metavar="BASE", repeatable=True,
    ),
    Option(
        "--zserver-connect", FLAG, "Connect the client-role ZeroMQ sockets instead of binding",
        "The ZeroMQ sockets of the client role connect to the given endpoints "
        "instead of binding them.",
        default=False,
    ),
    Option(
        "--ipc-file-mode", OCTAL, "Permissions (octal) of bound ZeroMQ ipc socket files",
        "After binding an `ipc://` endpoint, set the socket file's permissions "
        "to this octal mode (`600` is rw-------). 0 or absent: leave them as "
        "created. (Condure 1.9.1 read this value as decimal.)",
        metavar="OCTAL", default="0",
    ),
    Option(
        "--zmq-curve-secret", PATH, "condure's CURVE key pair (enables CURVE to handlers)",
        "Secure every handler-facing ZeroMQ socket (server and client role, "
        "stream and req, whatever the transport) with CURVE, using the key "
        "pair in FILE: a ZeroMQ certificate with a secret key, as "
        "`zmq.auth.create_certificates` writes it (the `.key_secret` file). "
        "Sockets condure binds become CURVE servers and admit only the "
        "handlers in `--zmq-curve-clients`; sockets it connects "
        "(`--zclient-connect`, `--zserver-connect`) become CURVE clients of "
        "`--zmq-curve-server`. The supervisor's internal hops to its workers "
        "stay plain. Without this option nothing changes. See "
        "docs/operations.md. Not a Condure option.",
        metavar="FILE",
    ),
    Option(
        "--zmq-curve-clients", PATH, "Directory of the public keys of allowed handlers",
        "With `--zmq-curve-secret`, required when condure binds handler "
        "sockets: the handlers allowed to connect are those whose public "
        "certificate (a `*.key` file) is in DIR. A handler with any other key "
        "gets nothing and a warning is logged (at most one line per 10 s, "
        "with a count of the others). The directory is read again when its "
        "modification time changes: adding or removing a handler needs no "
        "restart. Not a Condure option.",
        metavar="DIR",
    ),
    Option(
        "--zmq-curve-server", PATH, "Public key of the handler condure connects to",
        "With `--zmq-curve-secret`, required with `--zclient-connect` or "
        "`--zserver-connect`: the public certificate (a `.key` file) of the "
        "CURVE server condure connects to; one key for every endpoint it "
        "connects. Not a Condure option.",
        metavar="FILE",
    ),
    Option(
        "--tls-identities-dir", PATH, "Directory of TLS certificates and keys",
        "Directory of the certificates of TLS listeners: a name N is the PEM "
        "certificate chain `N.crt` and the PEM private key `N.key`. The name "
        "is the client's server name (SNI) in lower case, else the same with "
        "its first label replaced by `_` (wildcard), else the listener's "
        "`default-cert`; when none exists the handshake fails. Files are read "
        "on first use and again whenever they change, so certificates can be "
        "replaced without a restart (while new files cannot be used, the ones "
        "loaded before go on being served). A relative path is taken from condure's "
        "working directory, which for a systemd service is `/` unless the unit "
        "sets `WorkingDirectory=`.",
        metavar="DIR", default=".",
    ),
    Option(
        "--compression", FLAG, "Allow WebSocket compression",
        "Allow permessage-deflate on WebSocket connections when the client "
        "offers it.",
        default=False,
    ),
    Option(
        "--compression-context", TEXT,
        "Which side keeps its compression context: server, none or keep",
        "With --compression, what condure adds to its permessage-deflate "
        "answer (RFC 7692 7.1.1). `server`: `client_no_context_takeover`, "
        "so the client compresses each message on its own and the session "
        "can move to another process (reload, restart) between its "
        "messages; condure's own messages still refer back to earlier "
        "ones (an adopted session starts afresh). `none`: "
        "`server_no_context_takeover` too: neither side keeps anything "
        "between messages (less memory per idle WebSocket, larger "
        "messages). `keep`: Condure's answer, only what the client "
        "offered: a client that keeps its context (browsers do) cannot "
        "move, and is closed with 1012 on every reload and restart. See "
        "docs/performance.md for the cost. Not a Condure option.",
        metavar="MODE", default="server",
    ),
    Option(
        "--deny-out-internal", FLAG, "Refuse outgoing connections to internal addresses",
        "Client role: refuse to connect to loopback, private and link-local "
        "ranges (127.0.0.0/8, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, "
        "169.254.0.0/16, ::1/128, fc00::/7, fe80::/10), checked on every "
        "resolved address; a request with `ignore-policies` is exempt.",
        default=False,
    ),
    Option(
        "--sizes", ACTION, "Print the memory one connection takes and exit",
        "Print what one connection costs a worker in Python heap, one "
        "`name: N bytes` line each, and exit with status 0 without starting "
        "anything (the values of other options are not checked, as in "
        "Condure). The figures are measured on the spot with tracemalloc, "
        "over 200 connections of each kind built as a worker builds them "
        "with the default options: `req_connection`, a req-mode connection "
        "idle after one request and its response; `stream_connection`, a "
        "stream-mode HTTP connection kept alive after one request and its "
        "response; `websocket_connection`, an uncompressed WebSocket idle "
        "after one message each way; `deflate_codec_state`, what "
        "permessage-deflate (`--compression`) adds to a WebSocket, mostly "
        "zlib's window and hash tables. Kernel socket buffers are not "
        "included. The names differ from Condure's, whose figures are the "
        "sizes of its Rust tasks.",
    ),
    Option(
        "--help", ACTION, "Print help and exit",
        "Print a summary of the options and exit with status 0.",
        short="-h",
    ),
    Option(
        "--version", ACTION, "Print version and exit",
        "Print `condure VERSION` and exit with status 0.",
        short="-V",
    ),
)

BY_FLAG: dict[str, Option] = {opt.flag: opt for opt in OPTIONS}


@dataclass(frozen=True, slots=True)
class ListenParam:
    key: str
    value: str | None  # metavar of the value after "=", None for a bare key
    help: str


LISTEN_PARAMS: tuple[ListenParam, ...] = (
    ListenParam("stream", None, "stream mode (the default)"),
    ListenParam("req", None, "req mode"),
    ListenParam("tls", None, "TLS on this TCP listener (ignored with `local`)"),
    ListenParam("default-cert", "NAME",
                "certificate used when SNI is absent or unmatched"),
    ListenParam("local", None,
                "the address part is a filesystem path: listen on a Unix socket there "
                "(an existing file is replaced; the file is removed at exit)"),
    ListenParam("mode", "OCTAL", "with `local`: permissions of the socket file"),
    ListenParam("user", "NAME", "with `local`: owner of the socket file"),
    ListenParam("group", "NAME", "with `local`: group of the socket file"),
    ListenParam("fd-name", "NAME",
                "use the inherited socket of this name (socket activation, "
                "`FileDescriptorName=`) instead of binding; the address may then be "
                "left out (`--listen fd-name=web,tls`)"),
)
