"""One worker process, as the supervisor starts it.

``python -m condure.workerproc`` reads its instructions from the
``CONDURE_WORKER`` variable (the worker spec, docs/supervisor.md): the
Config, its index and generation, its ZHTTP address, its control
descriptor, the listening descriptors it accepts on and its ZeroMQ
endpoints. It builds a :class:`condure.worker.Worker` from them and then
talks to the supervisor over the control socket:

- ``ready`` once the worker accepts, ``stats`` every second;
- ``stop``: graceful (stop accepting, idle connections closed politely,
  requests in flight given ``drain`` seconds, then ``drained``) or fast
  (Condure's shutdown: batched cancels);
- ``conn``: one connection accepted by the supervisor (dispatch mode);
- ``handover``: move every session that can move to the supervisor
  (``sessions`` batches with descriptors, each closed here once ``taken``,
  or closed politely once ``returned``), close the others politely, report
  ``handover-done``, then stop as a graceful stop does
  (condure/handover.py); a ``stop`` during a handover ends the exporting
  and closes what is left with WebSocket close 1001;
- ``adopt``: sessions exported by another worker; answered ``adopted``
  (``refused`` when stopping: the supervisor places them elsewhere);
- ``list``, ``stacks`` (answered ``list-result``, ``stacks-result``) and
  ``log-level``: for ``condure ctl`` (condure/introspect.py);
- EOF on the control socket (the supervisor is gone): graceful stop.

SIGINT and SIGHUP are ignored (a terminal's Ctrl-C reaches the whole
process group; the supervisor decides); SIGTERM stops gracefully.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from condure import handover, introspect
from condure import log as condure_log
from condure.net import control
from condure.session.contract import Kind
from condure.worker import Worker

log = logging.getLogger("condure")

STATS_INTERVAL = 1.0
DRAIN_SWEEP = 0.1  # idle connections are looked for again this often while draining
CANCEL_FLUSH = 10.0  # Condure spends at most this long getting cancels out
BOOT_FAILURE = 3  # exit status of a worker that could not start
# the handover's log lines of sessions moved without the handler's answer
UNANSWERED_KINDS = ((Kind.WEBSOCKET, "WebSockets"), (Kind.HTTP, "HTTP requests in flight"))


class WorkerProcess:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.config = control.config_from_json(spec["config"])
        self.index = int(spec.get("index", 0))
        self.generation = int(spec.get("generation", 0))
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.ctl = socket.socket(fileno=spec["control_fd"])
        self.ctl.setblocking(False)
        self.outbox = control.Outbox(self.loop, self.ctl)
        self.listen_socks = []
        for item in spec.get("listeners", ()):
            sock = socket.socket(fileno=item["fd"])
            sock.setblocking(False)
            self.listen_socks.append((sock, self.config.listen[item["spec"]]))
        # Ids stay unique across restarts of the same slot: a retiring worker
        # and its successor share the address while the old one drains.
        # Unanswered requests are counted in stats; the supervisor logs them.
        self.worker = Worker(self.config, self.loop, self.index, listen_socks=self.listen_socks,
                             address=spec.get("address"), zmq_spec=spec.get("zmq"),
                             first_id=first_id(self.generation), log_unanswered=False)
        self.stop_request: asyncio.Future[tuple[bool, float, float | None]] = \
            self.loop.create_future()
        self.stats_handle: asyncio.TimerHandle | None = None
        self.stats_due = 0.0  # when the stats timer should fire (its lateness is the loop's lag)
        self.census = introspect.Census()
        self._fast = asyncio.Event()
        self.exporter: handover.Exporter | None = None
        self.handoff_ask = True  # the handover asks handlers first (--handoff)
        self.batches = 0
        # A stop that came during a handover: when its drain time ends.
        self.stop_until: float | None = None

    # -- control channel ------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Sent now, or once the socket has room (control.SEND_TIMEOUT at
        most); if the supervisor is gone, EOF will say so."""
        try:
            self.outbox.send(message)
        except OSError:
            log.debug("control: %s not sent", message["type"])

    def on_control(self) -> None:
        while True:
            try:
                message, fds = control.recv(self.ctl)
            except BlockingIOError:
                return
            except control.ControlError as e:
                log.error("control channel: %s", e)
                continue
            except OSError:
                message, fds = None, []
            if message is None:
                self.loop.remove_reader(self.ctl.fileno())
                if self.exporter is not None:
                    self.exporter.abandon()
                self.request_stop(True, float(self.config.drain_timeout))
                return
            kind = message["type"]
            if kind == "stop":
                self.request_stop(bool(message.get("graceful", True)),
                                  float(message.get("drain", self.config.drain_timeout)),
                                  interrupt=True)
            elif kind == "conn" and fds:
                self.worker.adopt_connection(socket.socket(fileno=fds[0]),
                                             int(message.get("spec", 0)))
                control.close_fds(fds[1:])
            elif kind == "handover":
                self.handoff_ask = bool(message.get("ask", self.config.handoff == "ask"))
                self.request_stop(True, float(message.get("drain", self.config.drain_timeout)),
                                  handoff=float(message.get("handoff_timeout",
                                                            self.config.handoff_timeout)))
            elif kind == "taken" and self.exporter is not None:
                self.exporter.taken(int(message.get("batch", 0)), int(message.get("lost", 0)))
            elif kind == "returned" and self.exporter is not None:
                self.exporter.returned(int(message.get("batch", 0)))
            elif kind == "adopt":
                self.adopt(message, fds)
            elif kind in ("list", "stacks", "log-level"):
                control.close_fds(fds)
                self.on_ctl(message)
            else:
                control.close_fds(fds)
                log.debug("control: unexpected %r", message)

    def adopt(self, message: dict[str, Any], fds: list[int]) -> None:
        result = handover.adopt(self.worker, list(message.get("records", ())), fds)
        if result is None:
            self.send({"type": "adopted", "batch": message.get("batch"), "refused": True})
            return
        adopted, failed = result
        if adopted or failed:
            log.info("adopted %d connections%s", adopted,
                     f", {failed} could not be" if failed else "")
        self.send({"type": "adopted", "batch": message.get("batch"),
                   "adopted": adopted, "failed": failed})

    def on_ctl(self, message: dict[str, Any]) -> None:
        """A request of ``condure ctl``, relayed by the supervisor."""
        kind = message["type"]
        if kind == "log-level":
            level = message.get("level")
            if isinstance(level, int) and level >= 0:
                condure_log.setup(level)
                self.worker.trace = condure_log.trace_enabled()
                if self.worker.clients is not None:
                    self.worker.clients.trace = self.worker.trace
            return
        if kind == "list":
            limit = message.get("limit")
            limit = limit if isinstance(limit, int) and limit >= 0 else 100
            want = message.get("kind")
            conns, total = introspect.listing(self.worker, self.census,
                                              want if isinstance(want, str) else None,
                                              limit, time.monotonic())
            answer = {"type": "list-result", "req": message.get("req"),
                      "connections": conns, "total": total}
        else:
            answer = {"type": "stacks-result", "req": message.get("req"),
                      "stacks": introspect.stacks()}
        try:
            self.send(answer)
        except control.ControlError as e:  # larger than a control message
            self.send({"type": f"{kind}-result", "req": message.get("req"), "error": str(e)})

    def request_stop(self, graceful: bool, drain: float, handoff: float | None = None,
                     interrupt: bool = False) -> None:
        """``handoff``: a handover, with that handoff timeout (see above).
        ``interrupt``: the supervisor's stop, which ends a handover under
        way (a SIGTERM of our own does not: the supervisor decides)."""
        if not self.stop_request.done():
            self.stop_request.set_result((graceful, drain, handoff))
        elif not graceful:
            self._fast.set()  # a fast stop cuts a graceful one short
        elif interrupt and self.stop_request.result()[2] is not None \
                and self.stop_until is None:
            self.stop_until = self.loop.time() + drain
            self.end_handover()

    def end_handover(self) -> None:
        """A stop during a handover: nothing more is exported, and what
        is left closes with 1001 (at once, or once the exporter exists)."""
        exporter = self.exporter
        if exporter is not None and not exporter.stopped and not exporter.done:
            log.info("stopping: the handover ends")
            exporter.stop()

    def stats(self) -> None:
        now = self.loop.time()
        lag = max(now - self.stats_due, 0.0)
        self.stats_due = now + STATS_INTERVAL
        self.stats_handle = self.loop.call_at(self.stats_due, self.stats)
        stats = self.worker.take_stats()
        stats.update(self.census.count(self.worker, time.monotonic()))
        exporter = self.exporter
        stats["lag_ms"] = round(lag * 1000, 1)
        stats["state"] = ("handing over" if exporter is not None and not exporter.done
                          else "stopping" if self.stop_request.done() else "ready")
        if exporter is not None:
            stats["handover"] = {"moved": exporter.moved, "closed": exporter.closed,
                                 "lost": exporter.lost}
        if not self.outbox.post({"type": "stats", **stats}):
            log.debug("control socket full, stats dropped")

    # -- running --------------------------------------------------------------

    def run(self) -> int:
        loop, worker = self.loop, self.worker
        try:
            loop.run_until_complete(worker.start())
        except Exception as e:  # noqa: BLE001 - reported, and the supervisor counts it
            log.error("%s", e)
            return BOOT_FAILURE
        loop.add_reader(self.ctl.fileno(), self.on_control)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, True,
                                float(self.config.drain_timeout))
        self.send({"type": "ready", "pid": os.getpid()})
        self.stats_due = loop.time() + STATS_INTERVAL
        self.stats_handle = loop.call_at(self.stats_due, self.stats)
        try:
            graceful, drain, handoff = loop.run_until_complete(self.stop_request)
            worker.mark_stopping("stop")  # no accept restarts from here on
            if handoff is not None:
                until = loop.time() + drain
                loop.run_until_complete(self.hand_over(drain, handoff))
                if self.stop_until is not None:  # stopped during the handover
                    until = self.stop_until
                drain = max(until - loop.time(), 0.0)
            if graceful:
                loop.run_until_complete(self.drain(drain))
            worker.stop()
            loop.run_until_complete(worker.settle(CANCEL_FLUSH))
            if graceful:
                self.send({"type": "drained"})
        finally:
            if self.stats_handle is not None:
                self.stats_handle.cancel()
            self.outbox.close()
            worker.close()
            loop.close()
        return 0

    async def hand_over(self, drain: float, handoff_timeout: float) -> None:
        """Export every session that can move (see condure/handover.py)."""
        worker, loop = self.worker, self.loop
        worker.set_accepting(False)
        worker.close_listeners()
        exporter = self.exporter = handover.Exporter(
            worker, self.send_batch, handoff_timeout=handoff_timeout,
            drain_deadline=time.monotonic() + drain, ask=self.handoff_ask)
        exporter.start()
        # Past this, batches the supervisor never confirmed count as lost.
        give_up = loop.time() + drain + handoff_timeout + handover.CONFIRM_GRACE
        while not exporter.done and not self._fast.is_set() and loop.time() < give_up:
            if self.stop_until is not None:
                self.end_handover()
            exporter.poll()
            try:
                await asyncio.wait_for(self._fast.wait(), handover.POLL)
            except TimeoutError:
                pass
        exporter.abandon()
        why = "not asked" if not exporter.ask else "it did not answer in time"
        for kind, what in UNANSWERED_KINDS:
            if exporter.unanswered[kind]:
                log.info("handover: %d %s moved without their handler's handoff-proceed (%s)",
                         exporter.unanswered[kind], what, why)
        (log.warning if exporter.lost else log.info)(
            "handover: %d connections moved, %d closed, %d lost",
            exporter.moved, exporter.closed, exporter.lost)
        self.send({"type": "handover-done", "moved": exporter.moved,
                   "closed": exporter.closed, "lost": exporter.lost})

    def send_batch(self, records: list[str], fds: list[int]) -> int | None:
        """One batch of exported sessions to the supervisor; its number, or
        None when it could not be sent. A batch that has to wait for room
        is sent by the loop; if that fails in time, the batch is lost
        (the exporter closes its sockets)."""
        self.batches += 1
        batch = self.batches
        message = {"type": "sessions", "batch": batch, "records": records}

        def failed() -> None:
            log.warning("handover: cannot pass sessions to the supervisor in time")
            if self.exporter is not None:
                self.exporter.taken(batch, len(fds))

        try:
            self.outbox.send(message, fds, timeout=handover.SEND_TIMEOUT, on_fail=failed)
        except OSError as e:
            log.warning("handover: cannot pass sessions to the supervisor: %s", e)
            return None
        return batch

    async def drain(self, seconds: float) -> None:
        """Graceful stop: no new connections; idle ones closed politely,
        the others once their request is done, within ``seconds``."""
        worker, loop = self.worker, self.loop
        worker.set_accepting(False)
        worker.close_listeners()
        deadline = loop.time() + seconds
        while not self._fast.is_set():
            live = worker.live_connections()
            if not live and not worker.clients:
                return
            if loop.time() >= deadline:
                log.info("drain time over, %d connections left",
                         len(live) + len(worker.clients or ()))
                return
            for conn in live:
                if not conn.closed:
                    try:
                        conn.session.going_away(time.monotonic())
                    except Exception:  # noqa: BLE001 - a bug in the session: end it alone
                        conn.fail("closing it for a stop")
                        continue
                    conn.run()
            try:
                await asyncio.wait_for(self._fast.wait(), DRAIN_SWEEP)
            except TimeoutError:
                pass


def first_id(generation: int) -> int:
    """Where a worker's id counter starts: its generation (all of it: the
    supervisor's random start and the spawn count) above 32 bits of
    sessions, so that no worker makes an id another one made, in this run
    or before a restart (adopted sessions keep theirs)."""
    return generation << 32


def main() -> int:
    # A worker the supervisor finds hung gets SIGABRT: its stacks go to stderr
    # (the journal under systemd) before it ends.
    faulthandler.enable(all_threads=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The supervisor started us with both blocked (supervisor/children.py,
    # start_worker): ignored now, they may be let through.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGHUP})
    text = os.environ.pop(control.SPEC_VARIABLE, None)
    if text is None:
        print(f"condure worker: {control.SPEC_VARIABLE} is not set", file=sys.stderr)
        return 2
    spec = json.loads(text)
    condure_log.setup(int(spec["config"].get("log_level", 2)))
    try:
        process = WorkerProcess(spec)
    except Exception as e:  # noqa: BLE001 - a bad spec or Config: a boot failure
        log.error("worker %s: %s", spec.get("index"), e)
        return BOOT_FAILURE
    return process.run()


if __name__ == "__main__":
    sys.exit(main())
