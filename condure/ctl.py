"""``condure ctl``: ask a running condure over its control socket.

The client side of condure/supervisor/ctl.py (which it does not import: the
two only share the socket path rule, condure/runtime.py, and the line
protocol: one JSON request, one JSON answer). ``python -m condure ctl ...``
and ``condure ctl ...`` land here (cli.py). Output is for a person unless
``--json`` is given, which prints the supervisor's answer as it came.

Exit status: 0 done, 1 the control socket could not be reached or the
request (or the client) was refused (for ``reload --wait``: the reload
failed, was cut short by a stop, or did not end in time), 2 a usage error,
141 (128 + SIGPIPE) when the reader of the output went away. ``reload
--wait`` ended by SIGTERM (systemd stopping or restarting the service
while its ExecReload= waits) exits 0, saying so on stderr.
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
    ("reload", "[--wait] [--timeout SECONDS] [--fallback-pid PID]",
     "replace the workers (as SIGHUP)",
     "Replace the workers one by one, moving their connections, as SIGHUP does; a "
     "reload asked for during a reload follows it. --wait returns only once the reload "
     "that covers this request is done (the `reloaded` log line, READY=1 to systemd), "
     "with status 1 and the reason if it fails, is cut short by a stop or restart, or "
     "is not done within --timeout (default 80 s with --wait; the reload goes on). "
     "--fallback-pid: when the control socket cannot be reached, send SIGHUP to PID "
     "instead (without waiting: said on stderr), for the unit's ExecReload= "
     "with $MAINPID."),
)
KINDS = ("http", "websocket", "req", "outgoing")
TIMEOUT = 10.0  # seconds to wait for an answer (workers get 2 s each, in parallel)
RELOAD_WAIT = 80.0  # seconds `reload --wait` waits for the reload by default
ANSWER_GRACE = 5.0  # beyond a wait the supervisor bounds: room for its answer


class CtlError(Exception):
    """The control socket could not be used; the message says why."""


class Unreachable(CtlError):
    """Nothing to connect to: no control socket there, or nobody serving it."""


class Terminated(Exception):
    """SIGTERM while waiting for a reload."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


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
    parser.add_argument("--timeout", type=_positive, metavar="SECONDS",
                        help=f"wait this long for the answer [default: {TIMEOUT:g}; "
                             f"reload --wait: {RELOAD_WAIT:g}]")
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
        elif name == "reload":
            cmd.add_argument("--wait", action="store_true",
                             help="return once the reload is done")
            cmd.add_argument("--timeout", type=_positive, metavar="SECONDS",
                             default=argparse.SUPPRESS,
                             help=f"with --wait: wait this long [default: {RELOAD_WAIT:g}]")
            cmd.add_argument("--fallback-pid", type=_pid, metavar="PID",
                             help="no control socket: send SIGHUP to PID instead")
    return parser


def request(path: str, payload: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request, return the answer; raises CtlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as e:
            raise Unreachable(f"cannot connect to {path}: {e.strerror or e} "
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
    elif args.command == "reload" and args.wait:
        payload.update(wait=True, timeout=timeout_of(args))
    return payload


def timeout_of(args: argparse.Namespace) -> float:
    """The --timeout given, else the default for the command."""
    if args.timeout is not None:
        return float(args.timeout)
    return RELOAD_WAIT if getattr(args, "wait", False) else TIMEOUT


def _pid(text: str) -> int:
    """--fallback-pid: a process id, more than 1 (0 and -1 would signal
    groups; 1 is init)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}") from None
    if value <= 1:
        raise argparse.ArgumentTypeError(f"not a process id to signal: {text!r}")
    return value


def fall_back(path: str, why: CtlError, pid: int) -> int:
    """reload --fallback-pid: the control socket is out of reach, so
    SIGHUP does the reload, which cannot be waited for."""
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        print(f"condure ctl: {why}; and SIGHUP to pid {pid} failed: {e.strerror or e}",
              file=sys.stderr)
        return 1
    print(f"condure ctl: {why}; sent SIGHUP to pid {pid} instead (the reload goes on "
          "without this command waiting for it)", file=sys.stderr)
    return 0


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
    how, number = answer.get("reload"), answer.get("number")
    which = "reload" if number is None else f"reload {number}"
    if how == "done":
        return f"{which} done (waited {answer.get('waited')} s)"
    if how == "queued":
        return f"{which} queued: it follows the reload under way"
    return f"{which} {how}"


def main(argv: Sequence[str]) -> int:
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    path = args.socket or runtime.find_control_socket(args.id)
    payload = payload_of(args)
    # A reload waited for is bounded by the supervisor, which then says why.
    timeout = timeout_of(args) + (ANSWER_GRACE if payload.get("wait") else 0.0)
    if payload.get("wait"):
        # systemd sends SIGTERM to ExecReload= when a stop or restart takes
        # over the reload job; that is not a failed reload (which systemd
        # would record as the unit's failure, result 'signal').
        signal.signal(signal.SIGTERM, _terminated)
    try:
        try:
            answer = request(path, payload, timeout)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except Terminated:
        print("condure ctl: terminated (a stop or restart of the service?); no longer "
              "waiting for the reload", file=sys.stderr)
        return 0
    except Unreachable as e:
        if getattr(args, "fallback_pid", None) is None:
            print(f"condure ctl: {e}", file=sys.stderr)
            return 1
        return fall_back(path, e, args.fallback_pid)
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
