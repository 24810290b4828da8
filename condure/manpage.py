"""The condure(1) manual page, generated from the options table.

``python -m condure.manpage > man/condure.1`` writes the page; a test checks
that the committed page equals this output, so an option added to
:data:`condure.options.OPTIONS` without regenerating the page is caught.
The page is plain man(7) roff, checked with ``mandoc -T lint``.
"""

from __future__ import annotations

import re
import sys
import textwrap

from condure import __version__
from condure.ctl import COMMANDS as CTL_COMMANDS
from condure.options import DEFAULT_LISTEN, LISTEN_PARAMS, OPTIONS, PATH, ListenParam, Option

# The date in the title line: update it when the page's content changes in a
# release (a fixed date keeps the output reproducible).
DATE = "2026-11-21"

WIDTH = 78  # source line length (mandoc's style check wants at most 80)
_CODE = re.compile(r"`([^`]*)`")


def _escape(text: str) -> str:
    """Escape roff's special characters in running text."""
    return text.replace("\\", "\\e")


def _code(text: str) -> str:
    """A literal (flag, command, value) in bold, dashes as minus signs."""
    return "\\fB" + _escape(text).replace("-", "\\-") + "\\fR"


def _text(text: str) -> str:
    """Running text with Markdown `code` spans turned into bold literals."""
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out.append(_escape(text[pos:m.start()]))
        out.append(_code(m.group(1)))
        pos = m.end()
    out.append(_escape(text[pos:]))
    lines = textwrap.wrap("".join(out), width=WIDTH, break_long_words=False,
                          break_on_hyphens=False)
    return "\n".join(_line_safe(line) for line in lines)


def _line_safe(line: str) -> str:
    """A text line must not start with a control character ('.' or ')."""
    return "\\&" + line if line[:1] in (".", "'") else line


def _paragraphs(*paras: str) -> list[str]:
    out: list[str] = []
    for i, para in enumerate(paras):
        if i:
            out.append(".PP")
        out.append(_text(para))
    return out


def _option_head(opt: Option) -> str:
    head = _code(opt.flag)
    if opt.short:
        head = _code(opt.short) + ", " + head
    if opt.metavar:
        head += " \\fI" + _escape(opt.metavar).replace("-", "\\-") + "\\fR"
    return head


# Directory defaults in words: "Default: `.`." would read as two dots.
_DIR_WORDS = {".": "the working directory", "..": "the parent of the working directory"}


def default_note(opt: Option) -> str:
    """The sentence giving an option's default ("" when there is none).

    A conditional default (``shown_default``) is explained by the option's
    own text, so it gets no sentence. A relative path is said to be taken
    from the working directory, and ``.``/``..`` are said in words."""
    text = opt.default_text()
    if not text or opt.shown_default:
        return ""
    if opt.kind == PATH and text in _DIR_WORDS:
        return f"Default: {_DIR_WORDS[text]}."
    if opt.kind == PATH and not text.startswith("/"):
        return f"Default: `{text}` in the working directory."
    return f"Default: `{text}`."


def _option(opt: Option) -> list[str]:
    body = opt.doc
    notes = []
    if default_note(opt):
        notes.append(default_note(opt))
    if opt.repeatable:
        notes.append("May be given several times; the values replace the default.")
    if notes:
        body += " " + " ".join(notes)
    return [".TP", _option_head(opt), _text(body)]


def _listen_param(p: ListenParam) -> list[str]:
    head = _code(p.key) + ("=\\fI" + _escape(p.value) + "\\fR" if p.value else "")
    text = p.help[:1].upper() + p.help[1:] + "."
    return [".TP", head, _text(text)]


def _tagged(items: list[tuple[str, str]]) -> list[str]:
    out: list[str] = []
    for head, text in items:
        out += [".TP", _code(head), _text(text)]
    return out


DESCRIPTION = (
    "condure owns HTTP/1.x and WebSocket client connections and lets handler "
    "processes drive them over ZeroMQ with the ZHTTP protocol. It is "
    "wire-compatible with Condure 1.10, the connection manager used by Pushpin.",
    "condure runs as a supervisor process and `--workers` worker processes. "
    "The supervisor holds the listening sockets and, unless "
    "`--zclient-connect` is given, binds the public ZeroMQ endpoints and "
    "relays them to the workers; it restarts a worker that dies and talks "
    "to systemd. Each worker is one event loop serving its share of the "
    "connections.",
    "A listener works in stream mode (every packet of a request or WebSocket "
    "session goes to handlers over PUSH, ROUTER and SUB sockets) or in req "
    "mode (one whole request to a DEALER socket, one whole response back).",
)

LISTEN_SYNTAX = (
    "`--listen [ADDR:]PORT[,PARAM...]` listens on TCP; `--listen "
    "PATH,local[,PARAM...]` on a Unix socket. ADDR is an IPv4 address or a "
    "bracketed IPv6 address; a port alone means 0.0.0.0. Without any "
    f"`--listen` the listener is `{DEFAULT_LISTEN}`. Parameters:",
)

LISTEN_AFTER = (
    "Under socket activation (see ENVIRONMENT) the listening sockets come from "
    "systemd and are never bound again: a `--listen` entry picks the socket "
    "whose `FileDescriptorName=` is NAME with `fd-name=NAME`; a name that was "
    "not passed, or a passed socket that no entry names, stops condure with "
    "an error. Without any `--listen`, every passed socket is a stream "
    "listener. A single connection passed by `Accept=yes` (name "
    "`connection`) is served by one process, which exits when it ends.",
)

SIGNALS = [
    ("SIGTERM", "Graceful stop: stop accepting, let requests in flight finish "
                "within the drain timeout, close idle HTTP connections and "
                "close WebSocket connections with code 1001, then exit 0."),
    ("SIGINT", "Fast stop, as Condure: close every connection, send the "
               "handlers batched `cancel` packets, exit 0."),
    ("SIGQUIT", "The same as SIGINT."),
    ("SIGHUP", "Rolling reload: replace the workers one at a time; each new "
               "worker is ready before the one it replaces stops accepting "
               "and drains. No connection is refused meanwhile. A SIGHUP during "
               "a reload is carried out once that reload is done (any number "
               "of them give one more reload). `condure ctl reload --wait` "
               "does the same and returns when the reload is done."),
]

SIGNALS_AFTER = (
    "A second SIGTERM, SIGINT or SIGQUIT during a stop makes condure exit at "
    "once with status 1.",
)

ENVIRONMENT = [
    ("LISTEN_FDS", "Number of listening sockets passed by systemd, starting "
                   "at descriptor 3. Used only when LISTEN_PID is condure's "
                   "process id; these variables are removed from the "
                   "environment once read."),
    ("LISTEN_PID", "Process id the passed sockets are meant for."),
    ("LISTEN_FDNAMES", "Colon-separated names of the passed sockets "
                       "(`FileDescriptorName=`), matched by `fd-name=`."),
    ("NOTIFY_SOCKET", "Where condure reports to systemd (sd_notify): "
                      "`READY=1` once every worker is ready, `STATUS=` with "
                      "worker and connection counts, `RELOADING=1` during "
                      "a reload, `STOPPING=1`. Nothing is sent when unset."),
    ("WATCHDOG_USEC", "When set (`WatchdogSec=`), condure sends `WATCHDOG=1` "
                      "from the supervisor, at half that interval, while every "
                      "worker is up and ready. A worker that hangs without "
                      "exiting is not noticed."),
    ("JOURNAL_STREAM", "When standard output is the journal, log lines carry "
                       "syslog priority prefixes (`<3>` for errors and so on) "
                       "instead of Condure's level tags."),
]

# Where docs/systemd.md installs condure; the shipped service unit runs
# PROGRAM (tests/unit/test_units.py checks that they agree).
PREFIX = "/opt/condure"
PROGRAM = f"{PREFIX}/bin/condure"

FILES = [
    (PROGRAM, "The program, as installed by docs/systemd.md: a virtualenv "
              f"made with `python3 -m venv {PREFIX}` and `{PREFIX}/bin/pip "
              "install` of a checkout. The shipped service unit runs it from "
              "there; Debian's `condure` package (the Rust original) owns "
              "`/usr/bin/condure`."),
    ("/etc/systemd/system/condure.socket", "Listening socket unit (socket "
                                           "activation, port 8000), installed "
                                           "from `systemd/condure.socket`."),
    ("/etc/systemd/system/condure.service", "Service unit (`Type=notify`, "
                                            "reload with SIGHUP), installed "
                                            "from `systemd/condure.service`."),
    ("/run/condure/client-*", "The ZeroMQ endpoints of the shipped service "
                              "unit (`--zclient-stream ipc:///run/condure/client`, "
                              "`RuntimeDirectory=condure`): `client-out`, "
                              "`client-out-stream` and `client-in`, to which "
                              "handlers connect."),
    ("DIR/NAME.crt, DIR/NAME.key", "TLS certificate chain and key for server "
                                   "name NAME, DIR being `--tls-identities-dir`."),
]

CONTROL = (
    "The supervisor serves a Unix stream socket, `--control-socket` (by default "
    "`condure-ID.ctl` in `$RUNTIME_DIRECTORY`, else `$XDG_RUNTIME_DIR`, else the "
    "temporary directory), mode 0600; a client that is neither root nor condure's "
    "own user is refused (SO_PEERCRED) and logged. Each request is a line of JSON, "
    "`{\"command\": \"status\"}`, answered by one line of JSON with `\"ok\"`. "
    "`condure ctl` speaks it:",
    "`condure ctl [--socket PATH | --id ID] [--json] [--timeout SECONDS] COMMAND "
    "[ARGS]` finds the socket by `--id` (the running condure's `--id`, default "
    "`condure`, and the same environment) or takes its path. It prints for a "
    "person, or the answer as JSON with `--json` (before or after the command). "
    "Exit status 0, 1 when the socket cannot be reached or the request is "
    "refused (the reason on stderr, also when condure refuses the client itself), 2 for "
    "a usage error, 141 when the reader of its output has gone (`| head`). Commands:",
)

CONTROL_AFTER = (
    "Every field of every answer is described in docs/operations.md.",
)

EXIT_STATUS = [
    ("0", "Stopped by a signal after a clean shutdown; `--help`, `--version` and "
          "`--sizes`."),
    ("1", "Invalid option value, a listener or endpoint that cannot be set "
          "up, a socket-activation mismatch, workers that cannot start, or a "
          "second stop signal."),
    ("2", "Command-line syntax error."),
]

EXAMPLES = [
    ("Serve port 8000 in stream mode; handlers connect to the ipc endpoints "
     "in the current directory:", "condure \\-\\-listen 8000 \\-\\-zclient\\-stream ipc://client"),
    ("Four workers, a req-mode listener on loopback:",
     "condure \\-\\-workers 4 \\-\\-listen 127.0.0.1:8080,req \\-\\-zclient\\-req ipc://client"),
    ("Under systemd, the socket unit passes a socket named `http`:",
     f"ExecStart={PROGRAM} \\-\\-listen fd\\-name=http"),
    ("Rolling reload (returns once it is done) and status:",
     "systemctl reload condure.service\nsystemctl status condure.service"),
    (f"What each worker of the service is doing, and its WebSocket connections (as root, "
     f"or with sudo from another account; "
     f"`condure` on Debian's PATH is the Rust original, which has no `ctl`: name "
     f"{PROGRAM}, or a checkout's `.venv/bin/condure`):",
     f"{PROGRAM} ctl status\n"
     f"{PROGRAM} ctl connections \\-\\-kind websocket \\-\\-limit 20"),
]


def render() -> str:
    """The whole page as man(7) roff."""
    out = [
        f'.TH CONDURE 1 {DATE} "condure {__version__}" "User Commands"',
        ".SH NAME",
        "condure \\- HTTP and WebSocket connection manager for ZHTTP handlers",
        ".SH SYNOPSIS",
        ".B condure",
        "[\\fIOPTION\\fR]...",
        ".br",
        ".B condure ctl",
        "[\\fB\\-\\-socket\\fR \\fIPATH\\fR | \\fB\\-\\-id\\fR \\fIID\\fR]",
        "[\\fB\\-\\-json\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
        ".SH DESCRIPTION",
        *_paragraphs(*DESCRIPTION),
        ".SH OPTIONS",
    ]
    for opt in OPTIONS:
        out += _option(opt)
    out += [".SH LISTEN SYNTAX", *_paragraphs(*LISTEN_SYNTAX)]
    for p in LISTEN_PARAMS:
        out += _listen_param(p)
    out += [".PP", *_paragraphs(*LISTEN_AFTER)]
    out += [".SH SIGNALS", *_tagged(SIGNALS), ".PP", *_paragraphs(*SIGNALS_AFTER)]
    out += [".SH CONTROL SOCKET", *_paragraphs(*CONTROL)]
    for name, args, _, text in CTL_COMMANDS:
        head = _code(name) + (" \\fI" + _escape(args).replace("-", "\\-") + "\\fR"
                              if args else "")
        out += [".TP", head, _text(text)]
    out += [".PP", *_paragraphs(*CONTROL_AFTER)]
    out += [".SH ENVIRONMENT", *_tagged(ENVIRONMENT)]
    out += [".SH FILES", *_tagged(FILES)]
    out += [".SH EXIT STATUS", *_tagged(EXIT_STATUS)]
    out += [".SH EXAMPLES"]
    for i, (intro, command) in enumerate(EXAMPLES):
        if i:
            out.append(".PP")
        out += [_text(intro), ".PP", ".RS 4", ".nf", *command.split("\n"), ".fi", ".RE"]
    out += [
        ".SH SEE ALSO",
        ".BR systemd.socket (5),",
        ".BR systemd.service (5),",
        ".BR sd_notify (3),",
        ".BR systemctl (1),",
        ".BR journalctl (1),",
        ".BR pushpin (1)",
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
