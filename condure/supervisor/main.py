"""The supervisor: start the workers, keep them running, stop them.

Theory of operation. Signal handlers only enqueue; one loop (asyncio, so
the dispatch-mode accept loop can share it) wakes on a signal, a control
message or a timer and runs the same phases every time: dispatch queued
signals (signals.py), reap exited workers, then maintain (respawn due slots, move a reload on by
one slot, kill workers overdue to stop, tell systemd what changed).

A slot is one worker position 0..N-1 with its own address and, in
reuseport mode, its own listening sockets. A worker that dies is
respawned after a delay that doubles per crash (0.1 s up to 30 s) and
resets once a worker of that slot has run for ``STABLE`` seconds. Workers
that die before ever saying ``ready`` are boot failures: ``BOOT_FAILURES``
in a row stop condure with status 1, since respawning cannot help.

SIGHUP replaces the workers one slot at a time: the successor starts next
to the old worker, and only once it is ready does the old one hand its
live connections over (through us, see moves.py) and drain what cannot
move, while the successor accepts. SIGTERM stops every worker gracefully,
SIGINT and SIGQUIT at once; a SIGTERM that is part of `systemctl restart`
hands the connections to the next start through systemd's fd store
(signals.py). The workers are :class:`children.Child` records.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import condure
from condure.config import Config
from condure.net import control, ipcclaim
from condure.net.unanswered import UnansweredLog
from condure.supervisor import children, ctl, dispatch, fdstore, moves, pidfile, sockets
from condure.supervisor.children import Child, State, describe_exit
from condure.supervisor.notify import Notifier, status_text
from condure.supervisor.reloads import Reloads, SupervisorReloads
from condure.supervisor.signals import HANDLED, SupervisorSignals

if TYPE_CHECKING:
    from condure.supervisor.zmqproxy import ZmqProxy

log = logging.getLogger("condure")

BACKOFF_MIN = 0.1  # seconds before the first respawn of a slot
BACKOFF_MAX = 30.0
STABLE = 10.0  # a worker up this long resets its slot's backoff
BOOT_FAILURES = 3  # workers in a row dying before "ready": give up
READY_TIMEOUT = 60.0  # a worker not ready by then is killed (a boot failure)
KILL_GRACE = 5.0  # beyond its drain time, a stopping worker gets this long
FAST_STOP = 12.0  # a fast stop: the worker's cancel flush (10 s) and some
TICK = 0.5  # maintenance at least this often
# Variables meant for the supervisor only.
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID",
                "LISTEN_FDS", "LISTEN_FDNAMES")


def acquire_listeners(config: Config, n_workers: int) -> sockets.Listeners:
    """The listening sockets (inherited or bound); raises AcquireError."""
    return sockets.acquire_listeners(config, n_workers)


def start_zmq(config: Config, hold: int = 0) -> tuple[ZmqProxy | None, dict[str, Any]]:
    """(proxy or None, the worker spec's ``zmq`` part). ``hold``: the number
    of workers to hold handler packets for until they subscribe (subhold.py)."""
    from condure.supervisor.zmqproxy import ZmqProxy, clients_bound, connect_spec, serves_bound

    if not (serves_bound(config) or clients_bound(config)):
        return None, connect_spec(config)
    hold_for = [children.worker_address(config.id, hold, slot) for slot in range(hold)]
    proxy = ZmqProxy(config, hold_for=hold_for)
    return proxy, proxy.start()


class Supervisor(SupervisorSignals, SupervisorReloads, moves.SupervisorMoves):
    # Set by run() before anything uses them.
    listeners: sockets.Listeners
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event

    def __init__(self, config: Config) -> None:
        self.config = config
        self.n = config.workers
        self.notify = Notifier()
        self.signals: deque[int] = deque()
        self.state = State(slots=[None] * self.n)
        # Worker ids embed the generation: start somewhere new each run (32
        # random bits, room for 256 workers after them), so ids of
        # connections adopted across a restart are not made again.
        self.generation = int.from_bytes(os.urandom(4), "big") << 8
        self.store_id = (os.environ.get("INVOCATION_ID", "")[:16]
                         or f"{os.getpid()}-{int(time.time())}")
        self.moves = moves.Moves(self._send_to)
        self.restart_store: moves.RestartStore | None = None
        self.recovered: fdstore.Recovered | None = None
        self.adopt_until: float | None = None
        self.moved_note = ""
        self.boot_failures = 0
        self.stopping: str | None = None  # "graceful" or "fast"
        self.stop_deferred = False  # until the fd store's connections are adopted
        self.restart_deferred: tuple[int | None] | None = None
        self.reloads = Reloads()  # asked for, under way, awaited (reloads.py)
        self.exit_status = 0
        self.announced = False
        self.zmq_spec: dict[str, Any] | None = None
        self.proxy: ZmqProxy | None = None
        self.dispatcher: dispatch.Dispatcher | None = None
        self._least_loaded = dispatch.LeastLoaded()
        self.last_watchdog = 0.0
        self.turned_at = time.monotonic()  # maintain()'s last turn (a long gap: a stall)
        self.unanswered = UnansweredLog(config, time.monotonic)
        self.control: ctl.ControlServer | None = None  # condure ctl (supervisor/ctl.py)

    # -- the loop --------------------------------------------------------------

    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self.control is not None:
                self.control.close()  # its socket file goes, whatever the way out

    def _run(self) -> int:
        log.info("starting...")
        try:
            ipcclaim.claim(self.config)  # ipc files in use: refuse before binding anything
            self.listeners = acquire_listeners(self.config, self.n)
        except (ipcclaim.ClaimError, sockets.AcquireError, OSError) as e:
            log.error("%s", e)
            return 1
        rec = self.listeners.recovered
        if rec is not None and (rec.sessions or rec.names):
            self.recovered = rec
            log.info("fd store: %d connections to adopt from the previous start",
                     len(rec.sessions))
        if self.listeners.connection is not None:
            # Accept=yes: systemd passed one connected socket; serve it here,
            # in this one process, and exit when it ends.
            from condure.supervisor import inetd
            return inetd.run(self.listeners)
        try:
            self.control = ctl.open_server(self, self.config)  # condure ctl
            # Connections to adopt: hold what handlers send them meanwhile.
            self.proxy, self.zmq_spec = start_zmq(self.listeners.config,
                                                  self.n if self.recovered is not None else 0)
        except Exception as e:  # noqa: BLE001 - zmq.ZMQError, OSError: reported as Condure does
            log.error("%s", e)
            self.listeners.close()
            return 1
        try:
            pidfile.write(self.config.pid_file)
        except OSError as e:
            log.error("failed to write pid file %s: %s", self.config.pid_file, e.strerror)
            self.listeners.close()
            if self.proxy is not None:
                self.proxy.close()
            return 1
        self.loop = asyncio.new_event_loop()
        try:
            return self.loop.run_until_complete(self._main())
        finally:
            if self.dispatcher is not None:
                self.dispatcher.close()
            self.listeners.close(keep_files=self.restart_store is not None)
            if self.proxy is not None:
                self.proxy.close()
            self.loop.close()
            pidfile.remove(self.config.pid_file)
            log.info("stopped")

    async def _main(self) -> int:
        loop = self.loop
        self.wake = asyncio.Event()
        for sig in HANDLED:
            loop.add_signal_handler(sig, self._enqueue, sig)
        self.take_early_signals()  # those that came while starting (signals.py)
        if self.control is not None:
            await self.control.start()
        for slot in range(self.n):
            self.state.slots[slot] = self.spawn(slot)
        if self.listeners.mode == sockets.DISPATCH:
            self.dispatcher = dispatch.Dispatcher(self.listeners, loop, self.dispatch_conn)
            self.dispatcher.start()
        self.turned_at = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), TICK)
            except TimeoutError:
                pass
            self.wake.clear()
            while self.signals:
                began = time.monotonic()
                await self.dispatch_signal(self.signals.popleft())
                self.turned_at += time.monotonic() - began  # the loop ran meanwhile
            self.reap()
            self.place_held()  # batches waiting for a worker to adopt them (moves.py)
            if self.stopping and not self.children():
                self.drop_recovered()  # no worker left to adopt them (signals.py)
                await self.finish_restart()  # signals.py
                if self.control is not None:
                    await self.control.stop()
                return self.exit_status
            self.maintain()

    def _enqueue(self, sig: int) -> None:
        self.signals.append(sig)
        self.wake.set()

    def children(self) -> list[Child]:
        return self.state.children()

    # -- workers -----------------------------------------------------------------

    def spawn(self, slot: int) -> Child:
        self.generation += 1
        config = self.listeners.config
        if self.control is not None and self.control.log_level is not None:
            config = dataclasses.replace(config, log_level=self.control.log_level)
        sup_end, worker_end = control.socketpair()
        worker_listeners = self.listeners.worker_listeners(slot)
        address = children.worker_address(config.id, self.n, slot)
        spec = {
            "index": slot, "generation": self.generation,
            "config": control.config_to_json(config), "address": address,
            "control_fd": worker_end.fileno(), "listeners": worker_listeners,
            "zmq": self.zmq_spec,
        }
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        env[control.SPEC_VARIABLE] = json.dumps(spec)
        root = os.path.dirname(os.path.dirname(os.path.abspath(condure.__file__)))
        path = env.get("PYTHONPATH", "")
        if root not in path.split(os.pathsep):
            env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
        fds = [worker_end.fileno()] + [item["fd"] for item in worker_listeners]
        try:
            popen = children.start_worker([sys.executable, "-m", "condure.workerproc"],
                                          env, fds)
        finally:
            worker_end.close()
        sup_end.setblocking(False)
        child = Child(slot, self.generation, popen, sup_end, control.Outbox(self.loop, sup_end),
                      time.monotonic())
        self.loop.add_reader(sup_end.fileno(), self.on_control, child)
        log.debug("worker %d started (pid %d)", slot, popen.pid)
        return child

    def stop_child(self, child: Child, graceful: bool) -> None:
        drain = float(self.config.drain_timeout)
        child.graceful = graceful
        child.stop_deadline = time.monotonic() + (drain + KILL_GRACE if graceful else FAST_STOP)
        try:
            child.outbox.send({"type": "stop", "graceful": graceful, "drain": drain})
        except OSError:
            pass  # it is exiting already (reap() will see) or killed at stop_deadline

    def on_control(self, child: Child) -> None:
        child.heard_at = time.monotonic()
        while True:
            try:
                message, fds = control.recv(child.ctl)
            except BlockingIOError:
                return
            except (control.ControlError, OSError) as e:
                # A worker that exits (a SIGTERM to the whole process group,
                # as `timeout` and container stops send) resets its end, and
                # may not be reapable yet when the reset is read: its exit is
                # reported by on_exit() with its status, so a reset says nothing.
                exiting = isinstance(e, ConnectionResetError)
                (log.debug if exiting else log.warning)(
                    "worker %d control channel: %s", child.slot, e)
                message, fds = None, []
            if message is not None and message["type"] == "sessions":
                self.on_sessions(child, message, fds)
                continue
            control.close_fds(fds)
            if message is None:
                self.loop.remove_reader(child.ctl.fileno())
                self.wake.set()
                return
            kind = message["type"]
            if kind == "stats":
                child.stats = message
                child.exported = 0  # its count of connections is as of now
                child.connections = int(message.get("connections", 0))
                child.requests = int(message.get("requests", 0))
                for mode, count in (message.get("unanswered") or {}).items():
                    self.unanswered.note(mode, int(count))
                if self.dispatcher is not None:
                    self.dispatcher_load(child)
            elif kind == "ready":
                child.ready_at = time.monotonic()
                self.boot_failures = 0
                log.debug("worker %d ready (pid %d)", child.slot, child.pid)
                if self.dispatcher is not None and self.announced:
                    self.dispatcher.resume()  # connections may wait for a worker
                self.wake.set()
            elif kind == "adopted":
                self.on_adopted(child, message)
                self.wake.set()
            elif kind in ("list-result", "stacks-result"):
                if self.control is not None:
                    self.control.answer(child, message)
            elif kind == "handover-done":
                child.handed_over = {k: message.get(k) for k in ("moved", "closed", "lost")}
                (log.warning if message.get("lost") else log.info)(
                    "worker %d (pid %d) handed over %s connections, closed %s, lost %s",
                    child.slot, child.pid, message.get("moved"), message.get("closed"),
                    message.get("lost"))
            elif kind == "drained":
                log.debug("worker %d drained (pid %d)", child.slot, child.pid)

    def reap(self) -> None:
        for child in self.children():
            status = child.popen.poll()
            if status is not None:
                self.on_exit(child, status)

    def _forget(self, child: Child) -> None:
        child.gone = True
        child.outbox.close()
        try:
            self.loop.remove_reader(child.ctl.fileno())
        except (ValueError, OSError):
            pass
        child.ctl.close()

    def on_exit(self, child: Child, status: int) -> None:
        st = self.state
        self._forget(child)
        if self.control is not None:
            self.control.child_gone(child)
        self.moves.target_gone(child)
        how = describe_exit(status)
        if child in st.retiring:
            st.retiring.remove(child)
            self.retired_exit(child, status, how)
            return
        now = time.monotonic()
        if st.successors.get(child.slot) is child:
            del st.successors[child.slot]
            if self.stopping:
                return
            self.boot_failures += 1
            log.warning("new worker %d (pid %d) exited with %s before it was ready",
                        child.slot, child.pid, how)
            if self.boot_failures >= BOOT_FAILURES:
                log.error("reload failed: new workers cannot start (%d failures in a row); "
                          "keeping the running workers", self.boot_failures)
                self.reload_failed(f"new workers cannot start ({self.boot_failures} "
                                   "failures in a row)")
                self.boot_failures = 0
            return
        if st.slots[child.slot] is child:
            st.slots[child.slot] = None
        if self.stopping:
            self.retired_exit(child, status, how)  # a death mid-handover is reported
            return
        if not child.ready:
            self.boot_failures += 1
            if self.boot_failures >= BOOT_FAILURES:
                log.error("workers failed to start %d times in a row (last: worker %d exited "
                          "with %s); giving up", self.boot_failures, child.slot, how)
                self.exit_status = 1
                self.handle_int()
                return
        crashes = st.crashes.get(child.slot, 0)
        if child.ready_at is not None and now - child.ready_at >= STABLE:
            crashes = 0
        delay = min(BACKOFF_MIN * 2 ** crashes, BACKOFF_MAX)
        st.crashes[child.slot] = crashes + 1
        st.respawns[child.slot] = st.respawns.get(child.slot, 0) + 1
        st.respawn_at[child.slot] = now + delay
        log.warning("worker %d (pid %d) exited with %s; restarting in %.1fs",
                    child.slot, child.pid, how, delay)

    # -- maintenance -------------------------------------------------------------

    def maintain(self) -> None:
        st = self.state
        now = time.monotonic()
        gap, self.turned_at = now - self.turned_at - TICK, now
        if gap > children.STALL:  # maintenance comes every TICK: the process had no turn
            log.warning("the supervisor had no turn for %.1fs (the machine paused or was "
                        "overloaded); workers are not blamed for that time", gap)
            children.excuse_stall(self.children(), gap, now)
        for child in self.children():
            if child.stop_deadline is not None and now >= child.stop_deadline:
                log.warning("worker %d (pid %d) did not stop in time; killing it",
                            child.slot, child.pid)
                child.popen.kill()
                child.stop_deadline = now + KILL_GRACE
            elif child.ready and child.stop_deadline is None:
                children.check_answering(child, self.config.worker_timeout, now)
            elif not child.ready and now - child.started > READY_TIMEOUT:
                log.warning("worker %d (pid %d) not ready after %.0fs; killing it",
                            child.slot, child.pid, READY_TIMEOUT)
                child.popen.kill()
                child.started = now
        self.restart_after_reload()
        if self.stopping:
            self.stop_when_adopted(now)  # a stop during a restart's start (signals.py)
            self.update_status()
            return
        for slot, due in list(st.respawn_at.items()):
            if now >= due:
                del st.respawn_at[slot]
                st.slots[slot] = self.spawn(slot)
        self.step_reload(now)
        ready = self.all_ready()
        if ready and not self.announced and not self.adopt_recovered(now):
            ready = False
        if ready and not self.announced:
            self.announced = True
            log.info("started")
            self.notify.ready(self.status())
            if self.dispatcher is not None:
                self.dispatcher.resume()
        self.update_status()
        interval = self.notify.watchdog_interval
        answering = children.all_answering(self.children(), self.config.worker_timeout, now)
        if interval and ready and answering and now - self.last_watchdog >= interval:
            self.last_watchdog = now
            self.notify.watchdog()

    def step_reload(self, now: float) -> None:
        st = self.state
        if not st.reloading:
            return
        while st.reload_pending:
            slot = st.reload_pending[0]
            old = st.slots[slot]
            succ = st.successors.get(slot)
            if old is None:
                st.reload_pending.pop(0)  # respawning anyway, with fresh code
                continue
            if succ is None:
                if slot not in st.respawn_at or now >= st.respawn_at[slot]:
                    st.respawn_at.pop(slot, None)
                    st.successors[slot] = self.spawn(slot)
                return
            if not succ.ready:
                return
            del st.successors[slot]
            st.slots[slot] = succ
            self.hand_over(old, succ)
            st.retiring.append(old)
            st.reload_pending.pop(0)
            log.info("worker %d replaced (pid %d -> %d)", slot, old.pid, succ.pid)
        # Done once the replaced workers have handed over too: until then
        # systemd keeps the reload job (a restart queued behind it would
        # otherwise find sessions moving without the handler's handoff).
        if not st.successors and self.all_ready() and not self._reload_moving():
            self.reload_done()  # "reloaded", READY=1; the next one asked for (reloads.py)

    def all_ready(self) -> bool:
        return all(c is not None and c.ready for c in self.state.slots)

    def status(self) -> str:
        ready = sum(1 for c in self.state.slots if c is not None and c.ready)
        conns = sum(c.connections for c in self.children())
        return status_text(ready, self.n, conns) + self.moved_note

    def update_status(self) -> None:
        if self.announced:
            self.notify.status(self.status())

    # -- dispatch mode -------------------------------------------------------------

    def dispatcher_load(self, child: Child) -> None:
        self._load().report(child.slot, child.connections)

    def _load(self) -> dispatch.LeastLoaded:
        return self._least_loaded

    def dispatch_conn(self, sock: socket.socket, spec: int) -> bool:
        """Pass one accepted connection to the least-loaded ready worker."""
        ready = {c.slot: c for c in self.state.slots
                 if c is not None and c.ready and c.stop_deadline is None}
        slot = self._load().pick(ready)
        if slot is None:
            return False
        control.send(ready[slot].ctl, {"type": "conn", "spec": spec}, [sock.fileno()])
        self._load().dispatched(slot)
        return True


def run(config: Config) -> int:
    """Run the supervisor and its workers until stopped; the exit status."""
    return Supervisor(config).run()
