"""The commands the documentation shows, read from its Markdown.

Tests run these lines as written (``sh -c LINE``), so a command that a
first-time user would copy from README.md, examples/README.md or docs/ is
a command the test suite has run. ``code_blocks(path, section)`` returns
the fenced code blocks of a file, or of one ``##`` section of it;
``commands(block)`` the command lines of a shell block (comments and blank
lines left out, a trailing ``# comment`` removed). :class:`DocShell` runs
them the way a first-time user would.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

_FENCE = re.compile(r"^```(\S*)\s*$")


def code_blocks(path: Path, section: str | None = None,
                lang: str | None = None) -> list[list[str]]:
    """The fenced blocks of ``path`` (only those under ``## section`` when
    given, only those whose info string is ``lang`` when given), each as
    its list of lines."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    current_lang = ""
    in_section = section is None
    for line in path.read_text(encoding="utf-8").splitlines():
        if current is not None:
            if line.strip() == "```":
                if in_section and (lang is None or current_lang == lang):
                    blocks.append(current)
                current = None
            else:
                current.append(line)
            continue
        if line.startswith("## ") and section is not None:
            in_section = line[3:].strip() == section
            continue
        m = _FENCE.match(line)
        if m:
            current, current_lang = [], m.group(1)
    return blocks


def commands(block: list[str]) -> list[str]:
    """The command lines of a shell block, without comments."""
    out = []
    for line in block:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        # a trailing comment: "#" after whitespace, outside quotes
        quoted = None
        for i, ch in enumerate(text):
            if quoted:
                if ch == quoted:
                    quoted = None
            elif ch in "'\"":
                quoted = ch
            elif ch == "#" and i > 0 and text[i - 1] in " \t":
                text = text[:i].rstrip()
                break
        out.append(text)
    return out


# What a first-time user's root shell has on Debian 12: no virtualenv.
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DOC_PORT = "8000"  # the port the documentation uses
READY_TIMEOUT = 15.0
RUN_TIMEOUT = 10.0


class DocShell:
    """Runs documented command lines as written, with ``sh -c``, in a
    scratch directory that looks like the checkout ``repo`` (its ``.venv``
    and ``examples`` are linked there), with Debian's PATH and no
    PYTHONPATH. The only change to a line: the documented port 8000 becomes
    ``port``. condure gets a NOTIFY_SOCKET (in the environment, not the
    line), so that what follows it waits for its READY=1."""

    def __init__(self, repo: Path, workdir: Path, port: int) -> None:
        self.dir = workdir / "checkout"
        self.dir.mkdir()
        for name in (".venv", "examples"):
            (self.dir / name).symlink_to(repo / name)
        self.port = port
        self.workdir = workdir
        notify_path = workdir / "doc-notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        self.env = {"PATH": DEBIAN_PATH, "HOME": os.environ.get("HOME", "/root"),
                    "LANG": "C.UTF-8", "NOTIFY_SOCKET": str(notify_path)}
        self.running: list[subprocess.Popen] = []
        self.started = 0

    def line(self, text: str) -> str:
        return text.replace(DOC_PORT, str(self.port))

    def start(self, text: str, condure: bool | None = None) -> None:
        """A command that keeps running (condure, a handler, a pipeline of
        them). Starting condure (``condure``: whether the line does; by
        default whether it starts with ``.venv/bin/condure``) first stops
        whatever runs, then waits for its READY=1."""
        is_condure = text.startswith(".venv/bin/condure ") if condure is None else condure
        if is_condure:
            self.stop_all()
        self.started += 1
        with open(self.workdir / f"doc-{self.started}.log", "wb") as log:
            proc = subprocess.Popen(["sh", "-c", self.line(text)], cwd=self.dir, env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append(proc)
        if is_condure:
            self._wait_ready(proc, text)

    def _wait_ready(self, proc: subprocess.Popen, text: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        self.notify.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                datagram = self.notify.recv(4096)
            except TimeoutError:
                if proc.poll() is not None:
                    raise AssertionError(f"{text!r} exited with status {proc.returncode}:\n"
                                         + self.log(self.started)) from None
                continue
            if b"READY=1" in datagram.split(b"\n"):
                return
        raise AssertionError(f"{text!r} sent no READY=1:\n" + self.log(self.started))

    def log(self, n: int) -> str:
        return (self.workdir / f"doc-{n}.log").read_text(errors="replace")[-3000:]

    def run(self, text: str) -> str:
        """A command that finishes (curl); its output."""
        r = subprocess.run(["sh", "-c", self.line(text)], cwd=self.dir, env=self.env,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=RUN_TIMEOUT)
        assert r.returncode == 0, (text, r.returncode, r.stderr)
        return r.stdout.decode(errors="replace")

    def play(self, lines: list[str], skip=lambda line: False) -> list[str]:
        """Every line in order, but for those ``skip`` says to leave out;
        returns the outputs of the curl lines."""
        outputs = []
        for text in lines:
            if skip(text):
                continue
            if text.startswith("curl "):
                outputs.append(self.run(text))
            else:
                self.start(text)
        return outputs

    def stop_all(self) -> None:
        """SIGTERM to each command's process group, SIGKILL after 10 s and
        to whatever is left of the group."""
        for proc in self.running:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # The shell goes at once; what it started (condure finishing a
            # graceful stop, removing its files) gets its 10 s as well.
            deadline = time.monotonic() + 10
            while group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.running = []

    def close(self) -> None:
        self.stop_all()
        self.notify.close()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def answered(output: str, body: str) -> bool:
    """Whether ``curl -i`` output is a 200 response with exactly ``body``."""
    head, _, rest = output.replace("\r\n", "\n").partition("\n\n")
    return head.startswith("HTTP/1.1 200 OK") and rest == body
