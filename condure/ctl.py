"""``condure ctl``: ask a running condure over its control socket.

The client side of condure/supervisor/ctl.py (which it does not import: the
two only share the socket path rule, condure/runtime.py, and the line
protocol: one JSON request, one JSON answer). ``python -m condure ctl ...``
and ``condure ctl ...`` land here (cli.py). Output is for a person unless
``--json`` is given, which prints the supervisor's answer as it came.

Exit status: 0 done, 1 the control socket could not be reached or the
request (or the client) was refused, 2 a usage error, 141 (128 + SIGPIPE)
when the reader of the output went away.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from condure import runtime

USAGE = "condure ctl [--socket PATH | --id ID] [--json] COMMAND [ARGS]"
DESCRIPTION = ("Ask a running condure over its control socket (docs/operations.md, "
               "CONTROL SOCKET in condure(1)).")
# (command, its arguments, summary, what it does): the parser, the help and
# the man page.
COMMANDS: tuple[tuple[str, str, str, str], ...] = (
    ("status", "", "the workers and the supervisor, at a glance",
     "Each worker process: slot, pid, role, state (starting, ready, handing over, "
     "stopping, hung), connections by kind (http, websocket, req, outgoing), sessions "
     "waiting for a handler's first answer, event-loop lag, ZeroMQ queue depths, "
     "handover counts and respawns of its slot; and the supervisor's state (starting, "
     "running, reloading, restarting, stopping) with the slots a reload still has to "
     "replace."),
    ("connections", "[--worker N] [--kind KIND] [--limit N]", "list connections",
     "Connections one by one: worker, slot, session id, peer, age, kind, bytes in and "
     "out, state. --worker picks one slot, --kind one of http, websocket, req, outgoing "
     "(the client role's exchanges with origins); at most "
     "--limit are listed (default 100, at most 500); the total counts all that "
     "match."),
    ("stacks", "", "every process's Python stacks",
     "The Python stack of every thread of the supervisor and of every worker. A worker "
     "that does not answer within 2 seconds is named as such."),
    ("log-level", "N", "change the log level at runtime",
     "Set the log level (as --log-level: 0 error .. 4 or more trace) of the supervisor "
     "and every worker, including workers started later, until condure stops."),
    ("reload", "", "replace the workers (as SIGHUP)",
     "Replace the workers one by one, moving their connections, as SIGHUP does."),
)
KINDS = ("http", "websocket", "req", "outgoing")
TIMEOUT = 10.0  # seconds to wait for an answer (workers get 2 s each, in parallel)


class CtlError(Exception):
    """The control socket could not be used; the message says why."""


def _positive(text: str) -> float:
    """--timeout: seconds, more than 0 (socket timeouts of 0 or less mean
    "do not wait" or are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _slot(text: str) -> int:
    """--worker: a slot number, 0 or more (which slots exist, the server
    checks)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a slot number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"slots are numbered from 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="condure ctl", usage=USAGE, description=DESCRIPTION,
                                     allow_abbrev=False)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH",
                       help="the control socket (as --control-socket was given)")
    where.add_argument("--id", metavar="ID", default="condure",
                       help="the instance's --id: its socket is condure-ID.ctl in the "
                            "runtime directory [default: condure]")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("--timeout", type=_positive, default=TIMEOUT, metavar="SECONDS",
                        help=f"wait this long for the answer [default: {TIMEOUT:g}]")
    # prog: the sub-commands' messages start "condure ctl log-level: ...",
    # not with the whole usage string.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                prog="condure ctl")
    for name, _, summary, text in COMMANDS:
        cmd = sub.add_parser(name, help=summary, description=text)
        # --json after the command too; SUPPRESS keeps one given before it.
        cmd.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="print the answer as JSON")
        if name == "connections":
            cmd.add_argument("--worker", type=_slot, metavar="N", help="only this slot")
            cmd.add_argument("--kind", choices=KINDS, help="only this kind")
            cmd.add_argument("--limit", type=int, default=100, metavar="N",
                             help="list at most N [default: 100]")
        elif name == "log-level":
            cmd.add_argument("level", type=int, metavar="N")
    return parser


def request(path: str, payload: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request, return the answer; raises CtlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as e:
            raise CtlError(f"cannot connect to {path}: {e.strerror or e} "
                           "(is condure running, with this --id or --socket?)") from None
        data = bytearray()
        try:
            try:
                sock.sendall(json.dumps(payload).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused at once: the server's reason may be waiting, below
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise CtlError(f"no answer from {path} within {timeout:g} s") from None
        except OSError as e:
            raise CtlError(f"{path}: {e.strerror or e}") from None
    finally:
        sock.close()
    if not data.endswith(b"\n"):
        raise CtlError(f"{path} closed the connection without an answer "
                       "(not condure's control socket, or not allowed to use it?)")
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise CtlError(f"unexpected answer {answer!r}")
    return answer


def payload_of(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {"command": args.command}
    if args.command == "connections":
        payload.update(worker=args.worker, kind=args.kind, limit=args.limit)
    elif args.command == "log-level":
        payload["level"] = args.level
    return payload


# -- output for a person ------------------------------------------------------

def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in head]] + [["-" if c is None else str(c) for c in row]
                                        for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def show_status(answer: dict[str, Any]) -> str:
    reload = answer.get("reload") or {}
    lines = [f"condure {answer.get('id')} (pid {answer.get('pid')}): {answer.get('state')}, "
             f"log level {answer.get('log_level')}, {answer.get('slots')} slots"]
    if reload.get("pending") or reload.get("starting"):
        lines.append(f"reload: slots to replace {reload.get('pending')}, "
                     f"successors starting {reload.get('starting')}")
    left = answer.get("closed_by_clients")
    lines.append(f"moved between processes so far: {answer.get('moved')} "
                 f"(lost {answer.get('lost')}"
                 + (f"; {left} closed by their clients while in the fd store" if left else "")
                 + ")")
    rows = []
    for w in answer.get("workers", []):
        c, q, h = w.get("connections") or {}, w.get("queues") or {}, w.get("handover")
        rows.append((w.get("slot"), w.get("pid"), w.get("role"), w.get("state"),
                     f"{w.get('up', 0):.0f}s", c.get("http"), c.get("websocket"), c.get("req"),
                     c.get("outgoing"), w.get("waiting"), w.get("lag_ms"), q.get("router"),
                     q.get("push"),
                     f"{h.get('moved')}/{h.get('closed')}/{h.get('lost')}" if h else None,
                     (w.get("limits") or {}).get("per_ip_refused"), w.get("respawns")))
    lines.append(_table(("SLOT", "PID", "ROLE", "STATE", "UP", "HTTP", "WS", "REQ", "OUT",
                         "WAITING", "LAG_MS", "ROUTER_Q", "PUSH_Q", "MOVED/CLOSED/LOST",
                         "PER_IP_REFUSED", "RESPAWNS"), rows))
    return "\n".join(lines)


def show_connections(answer: dict[str, Any]) -> str:
    rows = [(c.get("worker"), c.get("slot"), c.get("id"), c.get("peer"), f"{c.get('age', 0)}s",
             c.get("kind"), c.get("bytes_in"), c.get("bytes_out"), c.get("state"))
            for c in answer.get("connections", [])]
    out = [_table(("WORKER", "SLOT", "ID", "PEER", "AGE", "KIND", "IN", "OUT", "STATE"), rows),
           f"{len(rows)} listed of {answer.get('total')}"]
    out += [f"worker {u.get('slot')} (pid {u.get('pid')}): {u.get('error')}"
            for u in answer.get("unanswered", [])]
    return "\n".join(out)


def show_stacks(answer: dict[str, Any]) -> str:
    sup = answer.get("supervisor") or {}
    out = [f"=== supervisor (pid {sup.get('pid')})", sup.get("stacks", "").rstrip()]
    for w in answer.get("workers", []):
        out.append(f"=== worker {w.get('slot')} (pid {w.get('pid')}, {w.get('role')})")
        out.append(w["stacks"].rstrip() if "stacks" in w else w.get("error", "?"))
    return "\n".join(out)


def show(command: str, answer: dict[str, Any]) -> str:
    if command == "status":
        return show_status(answer)
    if command == "connections":
        return show_connections(answer)
    if command == "stacks":
        return show_stacks(answer)
    if command == "log-level":
        return f"log level {answer.get('log_level')} (supervisor and {answer.get('workers')} " \
               "workers)"
    return f"reload {answer.get('reload')}"


def main(argv: Sequence[str]) -> int:
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    path = args.socket or runtime.find_control_socket(args.id)
    try:
        answer = request(path, payload_of(args), args.timeout)
    except (CtlError, ValueError) as e:
        print(f"condure ctl: {e}", file=sys.stderr)
        return 1
    try:
        if args.json:
            print(json.dumps(answer, indent=2), flush=True)
        elif answer.get("ok"):
            print(show(args.command, answer), flush=True)
    except BrokenPipeError:
        # The reader went away (`condure ctl stacks | head`): stop quietly,
        # as a Unix tool killed by SIGPIPE would. stdout goes to /dev/null
        # so that the interpreter's last flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    if not answer.get("ok"):
        if not args.json:
            print(f"condure ctl: {answer.get('error')}", file=sys.stderr)
        return 1
    return 0
