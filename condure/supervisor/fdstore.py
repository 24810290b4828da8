"""systemd's file descriptor store: connections and listeners across a restart.

On ``systemctl restart`` the supervisor puts every live connection it can
hand over, and the listening sockets it bound itself, into the service's fd
store (``FDSTORE=1`` with the descriptors as ``SCM_RIGHTS``, sd_notify(3)),
plus a manifest: a sealed memfd holding JSON that says what each descriptor
is. The next start finds all of them among the passed descriptors
(``LISTEN_FDS``/``LISTEN_FDNAMES``), reads the manifests and matches each
descriptor to its entry by inode, the identity of a socket in every process
that holds it. systemd hands the descriptors back in another order, and
keeps only the first name of a descriptor stored twice, so neither position
nor name is trusted. Once adopted, every name goes with ``FDSTOREREMOVE=1``
(stored descriptors that are not removed accumulate).

Every name condure stores starts with :data:`STORE_PREFIX`:
``condure-store-<generation>-<n>`` for the n-th batch of at most
:data:`MAX_FDS` descriptors, ``condure-store-<generation>-manifest`` for the
manifest. The manifest is ``{"v": 1, "generation": G, "written": UNIX_TIME,
"entries": [...]}``; each entry is a caller's dict (``"kind"`` is
``"session"`` or ``"listener"``) plus ``"name"`` and ``"ino"``.

``systemctl stop`` drops the store, so the supervisor only uploads when a
restart job is pending for its own unit (:func:`restart_pending`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from condure.net.control import MAX_FDS
from condure.supervisor.activation import STORE_PREFIX, Inherited
from condure.supervisor.notify import NotifySocket

log = logging.getLogger("condure")

MANIFEST_SUFFIX = "-manifest"
FDNAME_MAX = 255
MANIFEST_VERSION = 1
MANIFEST_MAX = 256 << 20  # bytes; a larger "manifest" is refused
RESTART_JOBS = frozenset({"restart", "try-restart", "reload-or-restart"})
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class ManifestError(ValueError):
    """A manifest that cannot be read or is not one of ours."""


def check_name(name: str) -> None:
    """FDNAME rules (systemd's fdname_is_valid): 1..255 printable ASCII
    characters, no ``:`` (the separator of ``LISTEN_FDNAMES``)."""
    if not name or len(name) > FDNAME_MAX:
        raise ValueError(f"fd store name must be 1..{FDNAME_MAX} characters: {name!r}")
    if ":" in name or not all(" " <= c <= "~" for c in name):
        raise ValueError(f"fd store name may not contain ':' or control characters: {name!r}")


class FdStore:
    """The fd store messages of sd_notify (through condure.supervisor.notify)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.socket = NotifySocket(environ)
        self.enabled = self.socket.enabled

    def upload(self, name: str, fds: Sequence[int]) -> None:
        """``FDSTORE=1`` + ``FDNAME=name`` with ``fds``; ValueError for a bad
        name or count, OSError when the message cannot be sent."""
        check_name(name)
        if not fds or len(fds) > MAX_FDS:
            raise ValueError(f"fd store upload takes 1..{MAX_FDS} descriptors, not {len(fds)}")
        self._send(f"FDSTORE=1\nFDNAME={name}", fds)

    def remove(self, name: str) -> None:
        """``FDSTOREREMOVE=1`` + ``FDNAME=name``; a failure is only logged."""
        check_name(name)
        if not self.enabled:
            return
        try:
            self._send(f"FDSTOREREMOVE=1\nFDNAME={name}", ())
        except OSError as e:
            log.warning("fd store: removing %s failed: %s", name, e)

    def barrier(self, write_end: int) -> None:
        """``BARRIER=1`` with the write end of a pipe, which systemd closes
        once it has processed every message before (sd_notify_barrier(3))."""
        self._send("BARRIER=1", [write_end])

    def _send(self, text: str, fds: Sequence[int]) -> None:
        self.socket.send(text, fds)


def inode(fd: int) -> int:
    """``st_ino`` of ``fd``: a socket's identity, the same in every process holding it."""
    return os.fstat(fd).st_ino


class Uploader:
    """Puts one generation's sessions and listeners into the store."""

    def __init__(self, store: FdStore, generation: str, store_max: int | None = None) -> None:
        check_name(f"{STORE_PREFIX}{generation}{MANIFEST_SUFFIX}")
        self.store = store
        self.generation = generation
        self.store_max = store_max  # the unit's FileDescriptorStoreMax=, when known
        self.entries: list[dict] = []
        self.batches = 0
        self.stored = 0
        self.failed = 0

    def add(self, fds: Sequence[int], entries: Sequence[dict]) -> None:
        """Store ``fds`` (at most MAX_FDS per message); ``entries[i]``
        describes ``fds[i]``. Failures are counted in ``failed``, not raised."""
        if len(fds) != len(entries):
            raise ValueError(f"{len(fds)} descriptors but {len(entries)} entries")
        for start in range(0, len(fds), MAX_FDS):
            chunk = fds[start:start + MAX_FDS]
            name = f"{STORE_PREFIX}{self.generation}-{self.batches}"
            self.batches += 1
            try:
                described = [dict(entry, name=name, ino=inode(fd)) for fd, entry
                             in zip(chunk, entries[start:start + MAX_FDS], strict=True)]
                self.store.upload(name, chunk)
            except OSError as e:
                self.failed += len(chunk)
                log.warning("fd store: %d descriptors not stored (%s): %s", len(chunk), name, e)
                continue
            self.entries.extend(described)
            self.stored += len(chunk)

    def finish(self) -> int:
        """Upload the manifest; returns how many entries it describes (0 when
        nothing was stored or the manifest itself could not be stored)."""
        if not self.entries:
            return 0
        name = f"{STORE_PREFIX}{self.generation}{MANIFEST_SUFFIX}"
        manifest: dict = {"v": MANIFEST_VERSION, "generation": self.generation,
                          "written": time.time(), "entries": self.entries}
        if self.store_max is not None:
            manifest["store_max"] = self.store_max
        fd = write_manifest(manifest)
        try:
            self.store.upload(name, [fd])
        except OSError as e:
            log.error("fd store: the manifest could not be stored, %d descriptors are "
                      "lost: %s", len(self.entries), e)
            self.failed += self.stored
            self.stored = 0
            return 0
        finally:
            os.close(fd)
        return len(self.entries)


def write_manifest(manifest: dict) -> int:
    """A sealed memfd (close-on-exec) holding ``manifest`` as JSON, at offset 0."""
    data = json.dumps(manifest, separators=(",", ":")).encode()
    fd = os.memfd_create("condure-manifest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_manifest(fd: int) -> dict:
    """The manifest in ``fd`` (read from offset 0); ManifestError if it is
    not a readable, well-formed version-1 manifest."""
    try:
        size = os.fstat(fd).st_size
        if size > MANIFEST_MAX:
            raise ManifestError(f"manifest too large ({size} bytes)")
        chunks, offset = [], 0
        while True:
            chunk = os.pread(fd, 1 << 20, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            if offset > MANIFEST_MAX:
                raise ManifestError("manifest too large")
    except OSError as e:
        raise ManifestError(f"manifest unreadable: {e.strerror or e}") from None
    try:
        manifest = json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"manifest is not JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("v") != MANIFEST_VERSION:
        raise ManifestError("not a version 1 manifest")
    entries = manifest.get("entries")
    if not isinstance(manifest.get("generation"), str) or not isinstance(entries, list):
        raise ManifestError("manifest without generation or entries")
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and type(entry.get("ino")) is int and isinstance(entry.get("kind"), str)):
            raise ManifestError(f"bad manifest entry: {str(entry)[:80]}")
    return manifest


@dataclass
class Recovered:
    """What a start found in the store."""

    sessions: list[tuple[int, dict]] = field(default_factory=list)
    listeners: list[tuple[socket.socket, dict]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    lost: int = 0  # store fds that matched no manifest entry (closed)
    missing: int = 0  # manifest entries whose fd did not come back, unexplained
    closed_by_clients: int = 0  # sessions that did not come back: their peer hung up
    problems: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Close everything recovered (nothing adopts it)."""
        for fd, _ in self.sessions:
            os.close(fd)
        for sock, _ in self.listeners:
            sock.close()
        self.sessions.clear()
        self.listeners.clear()


def recover(items: list[Inherited]) -> Recovered:
    """Match the passed store descriptors to their manifest entries by inode.

    Every descriptor in ``items`` ends up adopted (in the result) or closed.
    Session fds are returned as plain descriptors (their socket objects are
    detached), listeners as sockets."""
    found = Recovered()
    by_ino: dict[int, tuple[dict, float]] = {}
    limits: list[int | None] = []  # each manifest's store_max
    order: list[int] = []
    others = []
    for item in items:
        found.names.add(item.name)
        if not item.name.endswith(MANIFEST_SUFFIX):
            others.append(item)
            continue
        try:
            manifest = read_manifest(item.fd)
        except ManifestError as e:
            found.problems.append(f'fd store "{item.name}": {e}')
            continue
        finally:
            _close(item)
        written = manifest.get("written")
        written = float(written) if isinstance(written, (int, float)) else 0.0
        limit = manifest.get("store_max")
        limits.append(limit if type(limit) is int else None)
        for entry in manifest["entries"]:
            ino = entry["ino"]
            if ino not in by_ino:
                order.append(ino)
            elif by_ino[ino][1] > written:
                continue  # an older manifest also lists this socket: the newer wins
            by_ino[ino] = (entry, written)
    held: dict[int, Inherited] = {}
    for item in others:
        try:
            ino = inode(item.fd)
        except OSError:
            ino = -1
        if item.sock is None or ino not in by_ino or ino in held:
            found.lost += 1
            found.problems.append(f'fd store "{item.name}": descriptor {item.fd} is in no manifest')
            _close(item)
        else:
            held[ino] = item
    gone_sessions = 0
    for ino in order:
        entry = by_ino[ino][0]
        held_item = held.pop(ino, None)
        if held_item is None or held_item.sock is None:  # (held only has sockets)
            found.missing += 1
            gone_sessions += entry["kind"] == "session"
            continue
        if entry["kind"] == "session":
            found.sessions.append((held_item.sock.detach(), entry))
        elif entry["kind"] == "listener":
            found.listeners.append((held_item.sock, entry))
        else:
            found.lost += 1
            found.problems.append(f'fd store "{held_item.name}": unknown kind {entry["kind"]!r}')
            _close(held_item)
    if found.missing:
        _explain_missing(found, gone_sessions, len(items), limits)
    return found


def _explain_missing(found: Recovered, gone_sessions: int, came_back: int,
                     limits: list[int | None]) -> None:
    """Why manifest entries did not come back. Every descriptor a manifest
    lists reached systemd (an upload that failed is not listed, and the
    manifest goes last, after a barrier). systemd then drops a stored
    descriptor for two reasons only: its peer hung up or failed (it watches
    them for EPOLLHUP and EPOLLERR: a client that reset its connection), or
    the store was full (``FileDescriptorStoreMax=``). The store never held
    more than what came back plus what is missing; when that fits under
    the limit every manifest recorded, the store was never full, and the
    missing sessions are clients that left."""
    known = [limit for limit in limits if limit is not None]
    never_full = (len(known) == len(limits) and known
                  and came_back + found.missing <= min(known))
    if never_full and gone_sessions:
        found.closed_by_clients = gone_sessions
        found.missing -= gone_sessions
    if not found.missing:
        return
    why = (f" (closed by their clients, or refused by a full store: "
           f"FileDescriptorStoreMax={min(known)})" if known and not never_full else "")
    found.problems.append(f"fd store: {found.missing} descriptors in the manifest "
                          f"did not come back{why}")


def _close(item: Inherited) -> None:
    if item.sock is not None:
        item.sock.close()
    else:
        try:
            os.close(item.fd)
        except OSError:
            pass


def own_unit(cgroup_text: str | None = None) -> str | None:
    """The systemd service this process runs in, from its cgroup (v2)
    path: the deepest component ending in ``.service``; None elsewhere."""
    if cgroup_text is None:
        try:
            with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as f:
                cgroup_text = f.read()
        except OSError:
            return None
    for line in cgroup_text.splitlines():
        if line.startswith("0::"):
            for part in reversed(line[3:].strip().split("/")):
                if part.endswith(".service") and len(part) > len(".service"):
                    return part
    return None


def jobs_in(text: str, unit: str) -> set[str]:
    """The job types ``systemctl list-jobs --no-legend --plain`` output
    ``text`` lists for ``unit`` (lines: ``JOB UNIT TYPE STATE``)."""
    return {fields[2] for fields in map(str.split, text.splitlines())
            if len(fields) >= 3 and fields[1] == unit}


def restart_in_jobs(text: str, unit: str) -> bool:
    """Whether ``text`` (as for :func:`jobs_in`) has a restart job for ``unit``."""
    return bool(jobs_in(text, unit) & RESTART_JOBS)


def unit_jobs(unit: str | None, timeout: float = 3.0) -> set[str] | None:
    """The types of systemd's jobs for ``unit``; None when that cannot be asked."""
    if not unit:
        return None
    try:
        out = subprocess.run(["systemctl", "list-jobs", "--no-legend", "--plain"],
                             capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("systemctl list-jobs: %s", e)
        return None
    return jobs_in(out.stdout, unit) if out.returncode == 0 else None


def restart_pending(unit: str | None, timeout: float = 3.0) -> bool:
    """True when systemd has a restart job for ``unit``; False on any failure."""
    return bool((unit_jobs(unit, timeout) or set()) & RESTART_JOBS)


def store_max(unit: str | None, timeout: float = 3.0) -> int | None:
    """The unit's ``FileDescriptorStoreMax=`` as systemd has it; None when
    it cannot be asked."""
    if not unit:
        return None
    try:
        out = subprocess.run(["systemctl", "show", "--value", "-p", "FileDescriptorStoreMax",
                              unit], capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("systemctl show: %s", e)
        return None
    text = out.stdout.strip()
    return int(text) if out.returncode == 0 and text.isdigit() else None


def match_listener(sock: socket.socket, host: str | None, port: int | None,
                   path: str | None) -> bool:
    """Whether a recovered listening socket serves this address (port 0 or
    None: any port)."""
    try:
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
        addr = sock.getsockname()
    except OSError:
        return False
    if path is not None:
        return sock.family == socket.AF_UNIX and addr == path
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(addr, tuple):
        return False
    want = host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in want else socket.AF_INET
    try:
        same_host = (family == sock.family and socket.inet_pton(family, want)
                     == socket.inet_pton(family, addr[0]))
    except OSError:
        return False
    return same_host and (not port or addr[1] == port)


def take_listeners(pool: list[tuple[socket.socket, dict]],
                   wanted: Iterable[tuple[int, int | None, str | None, int | None, str | None]]
                   ) -> dict[tuple[int, int | None], socket.socket]:
    """Pick the recovered listeners to reuse: ``wanted`` holds
    ``(spec, slot, host, port, path)``; the entry's spec and slot and the
    socket's address must agree. Every socket not picked is closed."""
    taken: dict[tuple[int, int | None], socket.socket] = {}
    rest = list(pool)
    for spec, slot, host, port, path in wanted:
        for i, (sock, entry) in enumerate(rest):
            if (entry.get("spec"), entry.get("slot")) == (spec, slot) and match_listener(
                    sock, host, port, path):
                sock.setblocking(False)  # as bound; still listening, never listen() again
                taken[(spec, slot)] = sock
                del rest[i]
                break
    for sock, entry in rest:
        log.info("fd store: listener %s (spec %s, slot %s) is not used any more; closed",
                 _where(sock), entry.get("spec"), entry.get("slot"))
        sock.close()
    return taken


def _where(sock: socket.socket) -> str:
    try:
        return str(sock.getsockname())
    except OSError:
        return "?"
